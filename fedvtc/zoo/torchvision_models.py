"""The larger architectures of the heterogeneous-FL literature, taken from torchvision.

HtFLlib's "HtFE8" group mixes the 4-layer CNN (``cnn4``, in ``cnn.py``) with GoogLeNet,
MobileNetV2 and ResNet-18/34/50/101/152. Here each is built with ``weights=None`` (random init;
nothing is downloaded), its classifier is replaced by ``nn.Identity`` and its pooled features are
projected to ``feature_dim`` by a ``Linear`` layer, always, so every model ends the same way. All
of them pool adaptively, so they accept 28x28 inputs (their last maps are then 1x1).

GoogLeNet keeps the dropout (p=0.2) it applies to its pooled features before its classifier;
MobileNetV2's dropout lived inside its classifier and goes with it.

torchvision is imported on first use rather than at module import: it takes seconds to import,
and federations built from the CPU group never need it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

from torch import nn

from fedvtc.zoo.registry import register_extractor

__all__ = ["TORCHVISION_MODELS", "torchvision_extractor"]

TORCHVISION_MODELS: tuple[str, ...] = (
    "googlenet",
    "mobilenet_v2",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
)


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first ``Conv2d`` for one taking ``in_channels`` channels, otherwise identical."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return
            replacement = nn.Conv2d(
                in_channels,
                module.out_channels,
                kernel_size=module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                groups=module.groups,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            parent_name, _, attribute = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attribute, replacement)
            return
    raise ValueError(f"{type(model).__name__} has no Conv2d to adapt to {in_channels} channels")


def _drop_classifier(arch: str, model: nn.Module) -> int:
    """Replace the model's classifier by ``nn.Identity``; return the pooled feature size."""
    if arch == "mobilenet_v2":
        classifier = model.classifier  # Sequential(Dropout, Linear)
        width = classifier[-1].in_features
        model.classifier = nn.Identity()
    else:  # ResNets and GoogLeNet end in ``fc``
        width = model.fc.in_features
        model.fc = nn.Identity()
    return int(width)


def _build_backbone(arch: str) -> nn.Module:
    from fedvtc.tv import torchvision  # deferred: see the module docstring

    kwargs: dict[str, Any] = {"weights": None}
    if arch == "googlenet":
        # No auxiliary classifiers (they would make forward return a tuple in training), no
        # ImageNet-specific input renormalisation, and an explicit init (silences a warning).
        kwargs.update(aux_logits=False, transform_input=False, init_weights=True)
    builder: Callable[..., nn.Module] = getattr(torchvision.models, arch)
    return builder(**kwargs)


def torchvision_extractor(arch: str, *, in_channels: int, feature_dim: int) -> nn.Sequential:
    """Build a torchvision backbone followed by a ``Linear`` projection to ``feature_dim``.

    Args:
        arch: one of ``TORCHVISION_MODELS`` (the torchvision builder name).
        in_channels: input image channels; the first convolution is rebuilt (same output
            channels, kernel, stride, padding) when it is not 3.
        feature_dim: size of the output feature vector.

    Returns:
        ``Sequential(backbone=..., projection=Linear(width, feature_dim))`` mapping
        ``(B, in_channels, H, W)`` to ``(B, feature_dim)``.
    """
    if arch not in TORCHVISION_MODELS:
        raise ValueError(f"unsupported torchvision model {arch!r}; one of {TORCHVISION_MODELS}")
    backbone = _build_backbone(arch)
    _replace_first_conv(backbone, in_channels)
    width = _drop_classifier(arch, backbone)
    return nn.Sequential(
        OrderedDict(backbone=backbone, projection=nn.Linear(width, feature_dim))
    )


def _register(arch: str) -> None:
    def build(*, in_channels: int, feature_dim: int, image_size: int) -> nn.Module:
        return torchvision_extractor(arch, in_channels=in_channels, feature_dim=feature_dim)

    build.__doc__ = (
        f"torchvision ``{arch}`` (random init) with its classifier replaced by a projection to "
        "``feature_dim``; any input size from 28 up works."
    )
    register_extractor(arch)(build)


for _arch in TORCHVISION_MODELS:
    _register(_arch)
