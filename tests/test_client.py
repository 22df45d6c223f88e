"""FedVTC clients driven directly (no Flower runtime): state across rounds, uploads, evaluation."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from fedvtc.algorithms.fedvtc import FedVTCClient
from fedvtc.config import build_settings
from fedvtc.payload import Payload, decode, encode
from fedvtc.stats import pool_statistics
from fedvtc.state import load_state, state_path
from fedvtc.vtc import shared_shapes
from helpers import REPO, compose_config

pytestmark = pytest.mark.slow

OVERRIDES = ["experiment=debug", "algorithm=fedvtc_private_vtc", "algorithm.vtc.epochs=null", "algorithm.vtc.steps=5",
             "algorithm.synthesis.per_class=4"]


@pytest.fixture()
def settings(data_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FEDVTC_DATA_DIR", str(data_dir))
    # The private-VTC reading: the client decodes and trains alone (the shared one is tested end to end).
    return build_settings(compose_config(OVERRIDES), output_dir=tmp_path)


def _fit(settings, cid, arrays, server_round):
    client = FedVTCClient(cid, settings)  # a new object every round, as Flower does
    return client.fit(arrays, {"server_round": server_round, "num_rounds": 2})


def test_two_rounds_keep_state_and_upload_valid_statistics(settings) -> None:
    uploads = [_fit(settings, cid, encode(Payload()), 1) for cid in range(3)]
    decoded = [decode(u[0], num_classes=10, feature_dim=settings.feature_dim) for u in uploads]
    for (arrays, n, metrics), payload in zip(uploads, decoded):
        assert payload.stats is not None and payload.stats.counts.sum() == n
        assert "time_vtc_train" not in metrics  # round 1: no global statistics yet, no generator
    state_before = load_state(state_path(settings.state_dir, 0))
    assert state_before["round"] == 1 and state_before["extra"]["local_stats"] is not None

    pooled = encode(Payload(pool_statistics([p.stats for p in decoded])))
    arrays, n, metrics = _fit(settings, 0, pooled, 2)
    assert metrics["cid"] == 0 and metrics["arch"] == settings.model_name(0)
    assert metrics["time_vtc_train"] > 0 and metrics["time_finetune"] > 0
    state_after = load_state(state_path(settings.state_dir, 0))
    assert state_after["round"] == 2
    moved = [not torch.equal(a, b) for a, b in zip(state_before["model"].values(), state_after["model"].values())
             if a.is_floating_point()]
    assert any(moved)  # the model trained on top of its saved state
    assert (Path(settings.output_dir) / "synthetic_client0.png").exists()

    loss, n_test, ev = FedVTCClient(0, settings).evaluate([], {"server_round": 2})
    assert 0.0 <= ev["global_accuracy"] <= 1.0 and 0.0 <= ev["local_accuracy"] <= 1.0
    assert np.isfinite(loss)


def test_a_round_is_reproducible(settings, tmp_path: Path) -> None:
    first = _fit(settings, 1, encode(Payload()), 1)
    state_path(settings.state_dir, 1).unlink()
    second = _fit(settings, 1, encode(Payload()), 1)
    for a, b in zip(first[0], second[0]):
        np.testing.assert_array_equal(a, b)


def test_an_evaluate_message_builds_no_optimizer(settings, data_dir: Path, tmp_path: Path) -> None:
    """A deployment's fresh ClientApp process evaluating a saved client never imports torch._dynamo
    (torch's optimizers do, about 1.3 s), and a fit after it still resumes every optimizer's state."""
    # As on a SuperNode: the client's data share cached, so no process loads the dataset files
    # (torchvision imports torch._dynamo too).
    settings = dataclasses.replace(settings, share_cache_dir=str(tmp_path / "shares"))
    pooled = encode(Payload(pool_statistics(
        [decode(_fit(settings, cid, encode(Payload()), 1)[0], num_classes=10,
                feature_dim=settings.feature_dim).stats for cid in range(2)])))
    _fit(settings, 0, pooled, 2)  # the VTC's and the model's optimizers now have state to resume
    script = textwrap.dedent(f"""
        import dataclasses
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from helpers import compose_config
        from fedvtc.algorithms.fedvtc import FedVTCClient
        from fedvtc.config import build_settings
        settings = build_settings(compose_config({OVERRIDES!r}), output_dir={str(tmp_path)!r})
        settings = dataclasses.replace(settings, share_cache_dir={settings.share_cache_dir!r})
        FedVTCClient(0, settings).evaluate([], {{"server_round": 2}})
        print("dynamo imported:", "torch._dynamo" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FEDVTC_DATA_DIR": str(data_dir)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dynamo imported: False" in done.stdout

    saved = load_state(state_path(settings.state_dir, 0))
    client = FedVTCClient(0, settings)
    assert client.optimizer.state_dict()["state"].keys() == saved["optimizer"]["state"].keys()
    for key, value in saved["extra"]["vtc_optimizer"]["state"].items():
        torch.testing.assert_close(client._vtc_optimizer.get().state_dict()["state"][key], value)


def test_an_adapter_trains_on_the_client_and_is_never_sent(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """``vtc.adapter``: the client's private map in front of the shared VTC learns, is kept in its
    state, and the upload carries the shared VTC's arrays only."""
    monkeypatch.setenv("FEDVTC_DATA_DIR", str(data_dir))
    cfg = compose_config(["experiment=debug", "algorithm=fedvtc", "algorithm.vtc.adapter=true",
                          "algorithm.vtc.steps=5", "algorithm.vtc.epochs=null", "algorithm.synthesis.per_class=4"])
    settings = build_settings(cfg, output_dir=tmp_path)
    first = [_fit(settings, cid, encode(Payload()), 1) for cid in range(2)]
    client = FedVTCClient(0, settings)
    shapes = shared_shapes(client.vtc)
    stats = [decode(u[0], num_classes=10, feature_dim=settings.feature_dim, extra_shapes=shapes).stats
             for u in first]
    arrays, _, metrics = _fit(settings, 0, encode(Payload(pool_statistics(stats))), 2)
    assert metrics["time_vtc_train"] > 0
    upload = decode(arrays, num_classes=10, feature_dim=settings.feature_dim, extra_shapes=shapes)
    assert [a.shape for a in upload.extra] == shapes  # the VTC's arrays, no adapter among them
    adapter = load_state(state_path(settings.state_dir, 0))["extra"]["adapter"]
    assert not torch.equal(adapter["weight"], torch.eye(settings.feature_dim))  # it trained
    resumed = FedVTCClient(0, settings)
    torch.testing.assert_close(resumed.adapter.weight, adapter["weight"])


def test_synthesis_of_missing_classes_only(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """``synthesis.classes=missing``: a client synthesizes the global classes it holds no image of,
    and only those; a round with it runs through fine-tuning."""
    from fedvtc.training import GlobalGaussians, synthesize

    monkeypatch.setenv("FEDVTC_DATA_DIR", str(data_dir))
    settings = build_settings(compose_config([*OVERRIDES, "algorithm.synthesis.classes=missing"]),
                              output_dir=tmp_path)
    client = FedVTCClient(0, settings)
    held = set(np.unique(client.train_data.y.numpy()).tolist())
    assert 0 < len(held) < 10  # the debug partition is skewed, so client 0 lacks some classes
    p = settings.feature_dim
    target = GlobalGaussians(present=torch.ones(10, dtype=torch.bool), means=torch.zeros(10, p),
                             variances=torch.ones(10, p), second=torch.ones(10, p))
    classes = client._synthesis_classes(target)
    assert set(classes.tolist()) == set(range(10)) - held
    images = synthesize(client.decoder, target, per_class=3, classes=classes, generator=torch.Generator())
    assert images.y.tolist() == classes.repeat_interleave(3).tolist()

    uploads = [_fit(settings, cid, encode(Payload()), 1) for cid in range(2)]
    pooled = pool_statistics([decode(u[0], num_classes=10, feature_dim=p).stats for u in uploads])
    _, _, metrics = _fit(settings, 0, encode(Payload(pooled)), 2)
    assert metrics["time_synthesis"] > 0 and metrics["time_finetune"] > 0


@pytest.mark.parametrize("reading", [
    # the shared VTC trains last (synthesize_from=global, round 2 only trains it): its features are
    # those the statistics read, extracted once
    ["algorithm=fedvtc", "algorithm.vtc.epochs=null", "algorithm.vtc.steps=5", "algorithm.synthesis.per_class=4"],
    # the private VTC trains, then fine-tuning changes the model: the statistics extract anew
    OVERRIDES,
])
def test_uploaded_statistics_are_those_of_the_model_after_its_round(reading, data_dir: Path, tmp_path: Path,
                                                                    monkeypatch) -> None:
    from fedvtc.algorithms import fedvtc as fedvtc_module
    from fedvtc.algorithms.fedvtc import build_vtc
    from fedvtc.training import extract_features, feature_statistics

    monkeypatch.setenv("FEDVTC_DATA_DIR", str(data_dir))
    settings = build_settings(compose_config(["experiment=debug", *reading]), output_dir=tmp_path)
    uploads = [_fit(settings, cid, encode(Payload()), 1) for cid in range(2)]
    shapes = shared_shapes(build_vtc(settings)) if settings.algorithm.shared_vtc else None
    pooled = pool_statistics([decode(u[0], num_classes=10, feature_dim=settings.feature_dim, extra_shapes=shapes).stats
                              for u in uploads])
    extractions = []
    monkeypatch.setattr(fedvtc_module, "extract_features",
                        lambda *args, **kwargs: extractions.append(1) or extract_features(*args, **kwargs))
    client = FedVTCClient(0, settings)
    client.fit(encode(Payload(pooled)), {"server_round": 2, "num_rounds": 2})
    fresh = feature_statistics(client.model, client.train_data)
    for name in ("classes", "counts", "means", "second"):
        torch.testing.assert_close(torch.as_tensor(getattr(client.local_stats, name)),
                                   torch.as_tensor(getattr(fresh, name)), rtol=0, atol=0)
    assert len(extractions) == (1 if reading[0] == "algorithm=fedvtc" else 2)
