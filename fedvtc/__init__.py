"""FedVTC: model-heterogeneous federated learning with a variational transposed-convolution generator."""

__version__ = "0.1.0"
