"""Plain (non-residual) CNNs of increasing depth and width, plus the literature's "4-layer CNN".

``cnn_s``, ``cnn_m`` and ``cnn_l`` differ in depth (2, 3, 4 convolutions) and width, so a federation
built from them is heterogeneous in both. They accept any input size: the last convolution is
followed by adaptive average pooling to a fixed grid before the projection to ``feature_dim``.

``cnn4`` reproduces the "4-layer CNN" (two 5x5 convolutions, two fully connected layers) that
HtFLlib and the FedAvg paper use, whose first fully connected layer is sized from the input size.
"""

from __future__ import annotations

from torch import nn

from fedvtc.zoo.registry import register_extractor

__all__ = ["plain_cnn_extractor", "cnn4_extractor"]


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm that follows has its own shift.
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def plain_cnn_extractor(
    widths: list[int], *, in_channels: int, feature_dim: int, grid: int
) -> nn.Sequential:
    """Build a stack of 3x3 conv-BN-ReLU layers ending in a ``Linear`` projection.

    Args:
        widths: output channels of each convolution; each but the last is followed by a 2x2
            max-pool that halves the resolution.
        in_channels: number of input image channels.
        feature_dim: size of the output feature vector.
        grid: the last feature map is average-pooled to ``grid x grid`` cells and flattened. The
            shallow nets use a grid > 1 because their receptive field is too small for a global
            average to keep where things are in the image.

    Returns:
        A module mapping ``(B, in_channels, H, W)`` to ``(B, feature_dim)`` (no final activation).
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for index, width in enumerate(widths):
        layers += _conv_bn_relu(channels, width)
        if index < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
        channels = width
    layers += [
        nn.AdaptiveAvgPool2d(grid),
        nn.Flatten(),
        nn.Linear(channels * grid * grid, feature_dim),
    ]
    return nn.Sequential(*layers)


@register_extractor("cnn_s")
def cnn_s(*, in_channels: int, feature_dim: int, image_size: int) -> nn.Module:
    """Small plain CNN: 2 convolutions (8, 16 channels), 4x4 pooled grid."""
    return plain_cnn_extractor([8, 16], in_channels=in_channels, feature_dim=feature_dim, grid=4)


@register_extractor("cnn_m")
def cnn_m(*, in_channels: int, feature_dim: int, image_size: int) -> nn.Module:
    """Medium plain CNN: 3 convolutions (12, 24, 48 channels), 2x2 pooled grid."""
    return plain_cnn_extractor([12, 24, 48], in_channels=in_channels, feature_dim=feature_dim, grid=2)


@register_extractor("cnn_l")
def cnn_l(*, in_channels: int, feature_dim: int, image_size: int) -> nn.Module:
    """Deep plain CNN: 4 convolutions (8, 16, 32, 64 channels), global average pooling."""
    return plain_cnn_extractor([8, 16, 32, 64], in_channels=in_channels, feature_dim=feature_dim, grid=1)


def cnn4_extractor(*, in_channels: int, image_size: int, feature_dim: int) -> nn.Sequential:
    """Build the "4-layer CNN" body: conv5x5(32)-pool-conv5x5(64)-pool-fc(512)-Linear(p).

    The 5x5 convolutions are unpadded, as in the original, so the flattened size depends on the
    input: 1024 for 28x28, 1600 for 32x32, 10816 for 64x64. Computing it here (rather than
    average-pooling to a fixed size) keeps the layer sizes the literature reports.

    Args:
        in_channels: input image channels.
        image_size: input side length; the model then only accepts that size.
        feature_dim: size of the output feature vector.

    Returns:
        A module mapping ``(B, in_channels, image_size, image_size)`` to ``(B, feature_dim)``.
    """
    side = ((image_size - 4) // 2 - 4) // 2  # two (unpadded 5x5 conv, 2x2 pool) stages
    if side < 1:
        raise ValueError(f"cnn4 needs images of at least 16x16 pixels, got {image_size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, kernel_size=5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * side * side, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, feature_dim),
    )


@register_extractor("cnn4")
def cnn4(*, in_channels: int, feature_dim: int, image_size: int) -> nn.Module:
    """The heterogeneous-FL literature's 4-layer CNN (HtFLlib's FedAvgCNN) with a projection to p;
    it only accepts images of exactly ``image_size``."""
    return cnn4_extractor(in_channels=in_channels, image_size=image_size, feature_dim=feature_dim)
