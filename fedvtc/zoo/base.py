"""The common shape of every client model: a feature extractor followed by a linear head.

Model-heterogeneous FL methods exchange knowledge through the one space all clients share, the
``feature_dim``-sized feature vector, and (for some methods) the classifier head acting on it. So
every architecture in the zoo is split the same way, whatever its backbone looks like inside.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["HeteroModel"]


class HeteroModel(nn.Module):
    """An image classifier split as ``head(extractor(x))``.

    Attributes:
        extractor: maps images ``(B, in_channels, H, W)`` to features ``(B, feature_dim)``.
            Every extractor in the zoo ends with a ``Linear(., feature_dim)`` projection and no
            activation after it, so features are unconstrained real vectors (not clipped at zero by
            a ReLU); methods that model the feature distribution (e.g. Gaussian priors) rely on it.
        head: ``nn.Linear(feature_dim, num_classes)``.
        feature_dim: size ``p`` of the shared feature space.
        num_classes: number of classes ``C``.
        in_channels: number of image channels the extractor expects.
        image_size: image side length the model was built for (most models accept any size).
        arch: the registry name the model was created under ("" if built by hand).
    """

    def __init__(
        self,
        extractor: nn.Module,
        *,
        feature_dim: int,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        arch: str = "",
    ) -> None:
        """Wrap ``extractor`` and add a fresh linear head.

        Args:
            extractor: module mapping ``(B, in_channels, H, W)`` images to ``(B, feature_dim)``.
            feature_dim: size of the feature vector the extractor emits.
            num_classes: number of output logits.
            in_channels: number of input image channels (recorded for callers, not checked).
            image_size: input side length the extractor was built for (recorded, not checked).
            arch: registry name; ``create_model`` fills it in.
        """
        super().__init__()
        if feature_dim < 1 or num_classes < 1:
            raise ValueError(
                f"feature_dim and num_classes must be positive, got {feature_dim} and {num_classes}"
            )
        self.extractor = extractor
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.arch = arch

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``(B, feature_dim)`` features of a batch of images ``x`` ``(B, C, H, W)``."""
        return self.extractor(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``(B, num_classes)`` logits of a batch of images ``x`` ``(B, C, H, W)``."""
        return self.head(self.forward_features(x))

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, feature_dim={self.feature_dim}, num_classes={self.num_classes}"
