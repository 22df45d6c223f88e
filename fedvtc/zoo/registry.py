"""A name -> factory registry for client architectures (in the spirit of timm's).

Configs name architectures by string (``conf/zoo/*.yaml``); ``create_model`` turns the string into
a model. Each architecture module registers its factories at import time with ``@register_model``;
``fedvtc.zoo`` imports them all, so importing the package is enough to populate the registry.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from torch import nn

from fedvtc.zoo.base import HeteroModel

__all__ = [
    "ModelFactory",
    "UnknownModelError",
    "create_model",
    "list_models",
    "model_info",
    "register_extractor",
    "register_model",
]


class ModelFactory(Protocol):
    """What ``register_model`` decorates: keyword-only sizes in, a ``HeteroModel`` out."""

    def __call__(
        self, *, num_classes: int, feature_dim: int, in_channels: int, image_size: int
    ) -> HeteroModel: ...


class UnknownModelError(KeyError, ValueError):
    """Raised by ``create_model`` for a name nobody registered.

    A ``KeyError`` (it is a failed lookup) and a ``ValueError`` (it is a bad argument), so callers
    may catch either. ``__str__`` is overridden because ``KeyError`` would print the repr of the
    message, quotes and escaped newlines included.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator that registers a model factory under ``name``.

    Args:
        name: the registry name configs use, e.g. ``"cnn_s"``; must be new.

    Returns:
        A decorator that records the factory and returns it unchanged.
    """

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            # Silently replacing an architecture would change experiments without a trace.
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


class ExtractorBuilder(Protocol):
    """What ``register_extractor`` decorates: sizes in, a module mapping images to p features out."""

    def __call__(self, *, in_channels: int, feature_dim: int, image_size: int) -> nn.Module: ...


def register_extractor(name: str) -> Callable[[ExtractorBuilder], ExtractorBuilder]:
    """Decorator that registers model ``name`` as the decorated extractor plus a linear head.

    Most architectures differ only in their extractor; this saves each of them the ``HeteroModel``
    wrapping. The builder is returned unchanged.
    """

    def decorator(build: ExtractorBuilder) -> ExtractorBuilder:
        def factory(*, num_classes: int, feature_dim: int, in_channels: int, image_size: int) -> HeteroModel:
            extractor = build(in_channels=in_channels, feature_dim=feature_dim, image_size=image_size)
            return HeteroModel(
                extractor, feature_dim=feature_dim, num_classes=num_classes,
                in_channels=in_channels, image_size=image_size,
            )

        factory.__doc__ = build.__doc__
        register_model(name)(factory)
        return build

    return decorator


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_REGISTRY)


def create_model(
    name: str,
    *,
    num_classes: int,
    feature_dim: int,
    in_channels: int = 3,
    image_size: int = 32,
) -> HeteroModel:
    """Build a freshly initialised registered model.

    Args:
        name: registry name, one of ``list_models()``.
        num_classes: number of classes ``C`` (size of the head's output).
        feature_dim: size ``p`` of the feature vector every model emits.
        in_channels: number of image channels (1 for MNIST-like data, 3 for RGB).
        image_size: side length of the (square) input images; ``cnn4`` sizes its first fully
            connected layer from it, the other models accept any size.

    Returns:
        The model, with ``model.arch == name``.

    Raises:
        UnknownModelError: ``name`` is not registered (the message lists the registered names).
        ValueError: a size argument is not a positive integer.
    """
    if name not in _REGISTRY:
        registered = ", ".join(list_models()) or "(none)"
        raise UnknownModelError(f"unknown model {name!r}; registered models: {registered}")
    sizes = {
        "num_classes": num_classes,
        "feature_dim": feature_dim,
        "in_channels": in_channels,
        "image_size": image_size,
    }
    for key, value in sizes.items():
        # bool is an int subclass; True as a size is always a mistake.
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}")
    model = _REGISTRY[name](**sizes)
    if not isinstance(model, HeteroModel):
        raise TypeError(f"factory for {name!r} returned {type(model).__name__}, not HeteroModel")
    model.arch = name
    return model


def model_info(model: nn.Module) -> dict[str, Any]:
    """Summarise a model's size.

    Args:
        model: any module; ``HeteroModel`` instances also report their split and dimensions.

    Returns:
        A dict with ``params`` (all parameters), ``trainable_params``, ``bytes`` (parameters stored
        as float32, buffers such as BatchNorm statistics excluded) and, for a ``HeteroModel``,
        ``arch``, ``extractor_params``, ``head_params``, ``feature_dim`` and ``num_classes``.
    """
    params = sum(p.numel() for p in model.parameters())
    info: dict[str, Any] = {
        "params": params,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "bytes": 4 * params,
    }
    if isinstance(model, HeteroModel):
        info.update(
            arch=model.arch,
            extractor_params=sum(p.numel() for p in model.extractor.parameters()),
            head_params=sum(p.numel() for p in model.head.parameters()),
            feature_dim=model.feature_dim,
            num_classes=model.num_classes,
        )
    return info
