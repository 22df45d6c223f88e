"""The heterogeneous model zoo: every architecture maps images to ``feature_dim`` features and then,
through a linear head, to class logits.

Importing this package imports each architecture module, which registers its factories, so
``create_model(name, ...)`` works for every name in ``list_models()``.
"""

from __future__ import annotations

# Imported for their registration side effects.
from fedvtc.zoo import cnn, mobilenet, resnet, torchvision_models  # noqa: F401
from fedvtc.zoo.base import HeteroModel
from fedvtc.zoo.registry import (
    UnknownModelError,
    create_model,
    list_models,
    model_info,
    register_extractor,
    register_model,
)

__all__ = [
    "HeteroModel",
    "UnknownModelError",
    "create_model",
    "list_models",
    "model_info",
    "register_extractor",
    "register_model",
]
