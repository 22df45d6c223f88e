"""``resnet8``: a small CIFAR-style residual network.

A 3x3 stem followed by three stages of one basic residual block each (16, 32, 64 channels, the
second and third halving the resolution), global average pooling, then a projection to
``feature_dim``. Eight weight layers in all (stem, six block convolutions, projection), hence the
name; the 1x1 shortcut convolutions are not counted, as usual.
"""

from __future__ import annotations

import torch
from torch import nn

from fedvtc.zoo.registry import register_extractor

__all__ = ["BasicBlock", "resnet8_extractor"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN) shortcut, ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        """Build the block.

        Args:
            in_channels: channels of the input map.
            out_channels: channels of the output map.
            stride: stride of the first convolution (2 halves the resolution).
        """
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        # A projection shortcut only where the shapes differ; elsewhere the identity.
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block's output for feature map ``x`` ``(B, in_channels, H, W)``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def resnet8_extractor(*, in_channels: int, feature_dim: int) -> nn.Sequential:
    """Build the resnet8 body.

    Args:
        in_channels: input image channels.
        feature_dim: size of the output feature vector.

    Returns:
        A module mapping ``(B, in_channels, H, W)`` to ``(B, feature_dim)`` (no final activation).
    """
    return nn.Sequential(
        # A stride-2 stem: on a CPU, full-resolution feature maps are what costs time.
        nn.Conv2d(in_channels, 16, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
        BasicBlock(16, 16, stride=1),
        BasicBlock(16, 32, stride=2),
        BasicBlock(32, 64, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, feature_dim),
    )


@register_extractor("resnet8")
def resnet8(*, in_channels: int, feature_dim: int, image_size: int) -> nn.Module:
    """Small CIFAR-style ResNet: stride-2 stem, 3 stages x 1 basic block, 16/32/64 channels."""
    return resnet8_extractor(in_channels=in_channels, feature_dim=feature_dim)
