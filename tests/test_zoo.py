"""Tests for the heterogeneous model zoo (``fedvtc.zoo``).

Every registered architecture is checked on every input shape the project uses, so a newly
registered model is covered without editing this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from fedvtc.zoo import HeteroModel, create_model, list_models, model_info, register_model
from fedvtc.zoo import registry as registry_module

CONF_ZOO = Path(__file__).resolve().parents[1] / "conf" / "zoo"
SHAPES: list[tuple[int, int, int]] = [(1, 28, 28), (3, 32, 32), (3, 64, 64)]
# Deliberately unusual sizes so a hard-coded 10 classes or 64/512 features would show.
FEATURE_DIM = 24
NUM_CLASSES = 7
BATCH = 2  # smallest batch BatchNorm accepts in training mode at a 1x1 map; keeps ResNet-152 cheap
CPU_GROUP = {"cnn_s", "cnn_m", "cnn_l", "resnet8", "mobilenet_s"}
GPU_GROUP = {"cnn4", "googlenet", "mobilenet_v2"} | {
    f"resnet{depth}" for depth in (18, 34, 50, 101, 152)
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Run this module's models on one intra-op thread.

    The work here is many tiny batches, which gain little from a second thread; but when another
    process is busy on the same cores, OpenMP threads spin-waiting for each other made this module
    take 6 minutes instead of 25 s on a 2-core machine.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _shape_id(shape: tuple[int, int, int]) -> str:
    return "x".join(map(str, shape))


@pytest.fixture(
    scope="module",
    params=[(name, shape) for name in list_models() for shape in SHAPES],
    ids=[f"{name}-{_shape_id(shape)}" for name in list_models() for shape in SHAPES],
)
def built(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[str, tuple[int, int, int], HeteroModel]]:
    """One model per (architecture, input shape), shared by the per-model tests.

    Module scope plus parametrisation makes pytest group the tests by parameter, so each model is
    built once and only one (e.g. ResNet-152) is alive at a time.
    """
    name, shape = request.param
    torch.manual_seed(0)
    model = create_model(
        name,
        num_classes=NUM_CLASSES,
        feature_dim=FEATURE_DIM,
        in_channels=shape[0],
        image_size=shape[1],
    )
    yield name, shape, model
    del model


def _images(shape: tuple[int, int, int], seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, *shape, generator=generator)


def test_shapes_and_head(built: tuple[str, tuple[int, int, int], HeteroModel]) -> None:
    name, shape, model = built
    assert isinstance(model, HeteroModel)
    assert model.arch == name
    assert (model.feature_dim, model.num_classes) == (FEATURE_DIM, NUM_CLASSES)
    assert type(model.head) is nn.Linear
    assert (model.head.in_features, model.head.out_features) == (FEATURE_DIM, NUM_CLASSES)
    model.eval()
    x = _images(shape)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert features.shape == (BATCH, FEATURE_DIM)
    assert logits.shape == (BATCH, NUM_CLASSES)
    assert torch.isfinite(features).all() and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, model.head(features))


def test_backward_reaches_every_parameter(
    built: tuple[str, tuple[int, int, int], HeteroModel],
) -> None:
    _, shape, model = built
    model.train()
    model.zero_grad(set_to_none=True)
    targets = torch.arange(BATCH) % NUM_CLASSES
    F.cross_entropy(model(_images(shape)), targets).backward()
    try:
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"parameters without gradient: {missing[:5]}"
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        # The gradient must reach the first layer, i.e. nothing detaches the input end.
        first = next(p for p in model.extractor.parameters() if p.dim() == 4)
        assert first.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)  # frees the gradients of the big models


def test_eval_is_deterministic(built: tuple[str, tuple[int, int, int], HeteroModel]) -> None:
    _, shape, model = built
    model.eval()
    x = _images(shape)
    with torch.no_grad():
        first, second = model.forward_features(x), model.forward_features(x)
    assert torch.equal(first, second)


def test_registry_holds_both_groups_sorted() -> None:
    names = list_models()
    assert names == sorted(names)
    assert CPU_GROUP | GPU_GROUP <= set(names)


def test_unknown_name_lists_registered_models() -> None:
    with pytest.raises(KeyError) as caught:
        create_model("nope", num_classes=10, feature_dim=8)
    assert isinstance(caught.value, ValueError)  # catchable as either
    message = str(caught.value)
    assert message.startswith("unknown model 'nope'; registered models: ")
    assert all(name in message for name in list_models())


@pytest.mark.parametrize("bad", [{"feature_dim": 0}, {"num_classes": -1}, {"in_channels": 2.0}])
def test_bad_sizes_rejected(bad: dict[str, object]) -> None:
    sizes: dict[str, object] = {"num_classes": 10, "feature_dim": 8} | bad
    with pytest.raises(ValueError):
        create_model("cnn_s", **sizes)  # type: ignore[arg-type]


def test_register_model_adds_and_rejects_duplicates() -> None:
    name = "_test_linear"

    def factory(
        *, num_classes: int, feature_dim: int, in_channels: int, image_size: int
    ) -> HeteroModel:
        extractor = nn.Sequential(nn.Flatten(), nn.LazyLinear(feature_dim))
        return HeteroModel(extractor, feature_dim=feature_dim, num_classes=num_classes)

    register_model(name)(factory)
    try:
        assert name in list_models()
        model = create_model(name, num_classes=3, feature_dim=5)
        assert model.arch == name
        assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 3)
        with pytest.raises(ValueError, match="already registered"):
            register_model(name)(factory)
    finally:
        registry_module._REGISTRY.pop(name, None)
    assert name not in list_models()


def test_model_info_counts() -> None:
    model = create_model("resnet8", num_classes=10, feature_dim=64, in_channels=1, image_size=28)
    info = model_info(model)
    total = sum(p.numel() for p in model.parameters())
    assert info["params"] == info["trainable_params"] == total
    assert info["bytes"] == 4 * total
    assert info["extractor_params"] + info["head_params"] == total
    assert info["head_params"] == 64 * 10 + 10
    assert (info["arch"], info["feature_dim"], info["num_classes"]) == ("resnet8", 64, 10)
    assert model_info(nn.Linear(3, 2))["params"] == 8


@pytest.mark.parametrize(("image_size", "flat"), [(28, 1024), (32, 1600), (64, 10816)])
def test_cnn4_matches_literature_sizes(image_size: int, flat: int) -> None:
    model = create_model(
        "cnn4", num_classes=10, feature_dim=512, in_channels=1, image_size=image_size
    )
    linears = [m for m in model.extractor.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(flat, 512), (512, 512)]


def test_cnn4_rejects_tiny_images() -> None:
    with pytest.raises(ValueError, match="16x16"):
        create_model("cnn4", num_classes=10, feature_dim=8, image_size=15)


@pytest.mark.parametrize("name", ["googlenet", "mobilenet_v2", "resnet18"])
def test_torchvision_first_conv_adapted_to_one_channel(name: str) -> None:
    rgb = create_model(name, num_classes=10, feature_dim=8, in_channels=3)
    gray = create_model(name, num_classes=10, feature_dim=8, in_channels=1)
    conv_rgb = next(m for m in rgb.modules() if isinstance(m, nn.Conv2d))
    conv_gray = next(m for m in gray.modules() if isinstance(m, nn.Conv2d))
    assert (conv_rgb.in_channels, conv_gray.in_channels) == (3, 1)
    for attribute in ("out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
        assert getattr(conv_gray, attribute) == getattr(conv_rgb, attribute)
    assert (conv_gray.bias is None) == (conv_rgb.bias is None)


@pytest.mark.parametrize("path", sorted(CONF_ZOO.glob("*.yaml")), ids=lambda p: p.stem)
def test_zoo_configs_name_registered_models(path: Path) -> None:
    conf = OmegaConf.load(path)
    assert conf.name == path.stem
    assert isinstance(conf.feature_dim, int) and conf.feature_dim > 0
    assert len(conf.models) > 0
    unknown = set(conf.models) - set(list_models())
    assert not unknown, f"{path.name} names unregistered models {sorted(unknown)}"


def test_zoo_config_groups() -> None:
    assert set(OmegaConf.load(CONF_ZOO / "cpu.yaml").models) == CPU_GROUP
    assert set(OmegaConf.load(CONF_ZOO / "gpu.yaml").models) == GPU_GROUP


@pytest.mark.parametrize("name", sorted(CPU_GROUP | {"cnn4"}))
def test_on_the_cpu_a_model_computes_in_channels_last_to_the_same_numbers(name: str) -> None:
    """``on_device`` puts a client's model in the layout the CPU's kernels prefer: its convolution
    weights and activations in channels-last, its outputs, gradients and state dict those of the
    default layout up to float rounding."""
    import copy

    from fedvtc.client import on_device

    torch.manual_seed(0)
    reference = create_model(name, num_classes=NUM_CLASSES, feature_dim=FEATURE_DIM, in_channels=3, image_size=32)
    model = on_device(copy.deepcopy(reference), torch.device("cpu"))
    convs = [p for p in model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4) % NUM_CLASSES
    for m in (reference, model):
        F.cross_entropy(m(x), y).backward()
    torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)
    for (key, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=key)
    # A state saved in either layout loads into the other, key for key and shape for shape.
    state = model.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in reference.state_dict().items()}
    reference.load_state_dict(state)
    for key, value in reference.state_dict().items():
        assert torch.equal(value, state[key]), key
