"""``mobilenet_s``: a small MobileNetV2-style network for 28-64 pixel images.

Inverted residual blocks (1x1 expansion, 3x3 depthwise, 1x1 linear projection) with BatchNorm and
ReLU6, as in MobileNetV2, but downsampling 8x in all (a stride-2 stem and two stride-2 blocks)
rather than 32x, which would leave a 1x1 map after a handful of layers on 28x28 images. The stem
strides (rather than the first block, as in CIFAR adaptations) because on a CPU the expanded
full-resolution maps are what cost time: BatchNorm, ReLU6 and depthwise convolutions there are
memory-bound, and a stride-1 stem made this net 2-3x slower to train on 28-32 pixel images.
"""

from __future__ import annotations

import torch
from torch import nn

from fedvtc.zoo.registry import register_extractor

__all__ = ["InvertedResidual", "mobilenet_s_extractor"]

# (expansion factor, output channels, stride) of each inverted residual block.
_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (1, 16, 1),
    (3, 24, 2),
    (3, 48, 2),
)
_LAST_CHANNELS = 96  # width of the final 1x1 convolution before pooling


def _conv_bn_relu6(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    ]


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand (1x1), depthwise (3x3), project (1x1, no activation)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        """Build the block.

        Args:
            in_channels: channels of the input map.
            out_channels: channels of the output map.
            stride: stride of the depthwise convolution (2 halves the resolution).
            expansion: hidden width as a multiple of ``in_channels``; 1 skips the expansion conv.
        """
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += _conv_bn_relu6(in_channels, hidden, 1)
        layers += _conv_bn_relu6(hidden, hidden, 3, stride=stride, groups=hidden)
        # Linear bottleneck: no activation after the projection (MobileNetV2's point: a ReLU in a
        # narrow space destroys information).
        layers += [nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block's output for feature map ``x`` ``(B, in_channels, H, W)``."""
        out = self.body(x)
        return x + out if self.residual else out


def mobilenet_s_extractor(*, in_channels: int, feature_dim: int) -> nn.Sequential:
    """Build the mobilenet_s body.

    Args:
        in_channels: input image channels.
        feature_dim: size of the output feature vector.

    Returns:
        A module mapping ``(B, in_channels, H, W)`` to ``(B, feature_dim)`` (no final activation).
    """
    stem_channels = 16
    layers: list[nn.Module] = _conv_bn_relu6(in_channels, stem_channels, 3, stride=2)
    channels = stem_channels
    for expansion, out_channels, stride in _BLOCKS:
        layers.append(InvertedResidual(channels, out_channels, stride, expansion))
        channels = out_channels
    layers += _conv_bn_relu6(channels, _LAST_CHANNELS, 1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(_LAST_CHANNELS, feature_dim)]
    return nn.Sequential(*layers)


@register_extractor("mobilenet_s")
def mobilenet_s(*, in_channels: int, feature_dim: int, image_size: int) -> nn.Module:
    """Small MobileNetV2-style net: stride-2 stem, 3 inverted residual blocks (16-48 channels),
    8x downsampling in all."""
    return mobilenet_s_extractor(in_channels=in_channels, feature_dim=feature_dim)
