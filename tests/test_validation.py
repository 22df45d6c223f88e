"""The validation protocol and the per-group accuracies (held / missing classes).

The validation set is carved from the official training set before the training pool and the
partition are drawn: disjoint from every client's data and from the test set, class-balanced, and
the same images whatever the algorithm or seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedvtc.config import build_settings
from fedvtc.federated_data import _SPLITS, federated_split, training_pool, validation_indices, validation_set
from fedvtc.reference import synthetic_accuracy
from fedvtc.results import ResultsRecorder
from fedvtc.training import group_accuracies
from tests.helpers import TINY_RUN, compose_config


def _settings(tmp_path: Path, data_dir: Path, *overrides: str):
    cfg = compose_config([*TINY_RUN, f"data_dir={data_dir}", *overrides])
    return build_settings(cfg, output_dir=tmp_path)


def test_validation_indices_are_class_balanced_and_seed_free() -> None:
    labels = np.repeat(np.arange(10), 100)
    np.random.default_rng(0).shuffle(labels)
    idx = validation_indices(labels, 205, 10)
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.tolist() == [21] * 5 + [20] * 5  # the remainder goes to the first classes
    assert len(np.unique(idx)) == 205
    assert np.array_equal(idx, validation_indices(labels, 205, 10))  # fixed, whatever runs it
    assert len(validation_indices(labels, 0, 10)) == 0


def test_validation_indices_refuse_what_cannot_be_drawn() -> None:
    labels = np.array([0] * 50 + [1] * 3)
    with pytest.raises(ValueError, match="class 1"):
        validation_indices(labels, 20, 2)
    with pytest.raises(ValueError, match="no training images"):
        validation_indices(labels, 53, 2)


def test_validation_split_is_disjoint_and_shared_by_every_algorithm_and_seed(tmp_path: Path, data_dir: Path) -> None:
    _SPLITS.clear()
    runs = [
        _settings(tmp_path, data_dir, "eval.validation=500", f"seed={seed}", f"algorithm={algorithm}")
        for seed, algorithm in ((0, "fedvtc"), (1, "fedvtc"), (0, "fedproto"))
    ]
    splits = [federated_split(s) for s in runs]
    for split in splits:
        assert np.array_equal(split.validation, splits[0].validation)
        clients = np.concatenate(split.train + split.test)
        assert len(np.intersect1d(clients, split.validation)) == 0
    val = validation_set(runs[0])
    assert len(val) == 500
    assert np.bincount(val.y.numpy(), minlength=10).tolist() == [50] * 10
    # The test set is another file altogether; the validation images are training images.
    from fedvtc.data import load_dataset

    train, _ = load_dataset(runs[0].dataset, runs[0].data_dir)
    assert torch.equal(val.x, train.x[torch.as_tensor(splits[0].validation)])


def test_the_oracles_pool_is_every_clients_training_images_and_nothing_else(tmp_path: Path, data_dir: Path) -> None:
    _SPLITS.clear()
    s = _settings(tmp_path, data_dir, "eval.validation=500")
    split = federated_split(s)
    pool = training_pool(s)
    from fedvtc.data import load_dataset

    train, _ = load_dataset(s.dataset, s.data_dir)
    expected = np.sort(np.concatenate(split.train))
    assert torch.equal(pool.x, train.x[torch.as_tensor(expected)])
    assert torch.equal(pool.y, train.y[torch.as_tensor(expected)])
    # Not one local test or validation image (those judge the clients).
    assert len(np.intersect1d(expected, np.concatenate([*split.test, split.validation]))) == 0
    assert training_pool(s) is pool  # made once per process


def test_no_validation_leaves_the_split_as_it_was(tmp_path: Path, data_dir: Path) -> None:
    """eval.validation=0 draws exactly the pool and partition of a run made before it existed."""
    _SPLITS.clear()
    s = _settings(tmp_path, data_dir)
    split = federated_split(s)
    assert validation_set(s) is None and len(split.validation) == 0
    from fedvtc.data import load_dataset
    from fedvtc.seeding import PARTITION, numpy_rng

    train, _ = load_dataset(s.dataset, s.data_dir)
    n = len(train)
    expected_pool = np.sort(numpy_rng(s.seed, PARTITION, 1).choice(n, int(round(s.train_fraction * n)), replace=False))
    assert np.array_equal(np.sort(np.concatenate(split.train + split.test)), expected_pool)


def test_group_accuracies_on_a_hand_built_case() -> None:
    labels = torch.tensor([0, 0, 1, 2, 2, 3])
    correct = torch.tensor([True, False, True, False, False, True])
    out = group_accuracies(correct, labels, held_classes=torch.tensor([0, 1]))
    assert out == {"held": pytest.approx(2 / 3), "missing": pytest.approx(1 / 3)}
    # A client holding every class has no missing group (omitted, never NaN).
    assert group_accuracies(correct, labels, torch.arange(4)) == {"held": pytest.approx(0.5)}


def test_synthetic_accuracy_per_group() -> None:
    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # predicts the class written in pixel 0
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float()

    labels = torch.tensor([0, 0, 1, 2])
    images = torch.zeros(4, 1, 2, 2)
    images[:, 0, 0, 0] = torch.tensor([0.0, 1.0, 1.0, 0.0])  # right, wrong, right, wrong
    out = synthetic_accuracy(Fixed(), images, labels, np.array([0]))
    assert out["synthetic_accuracy"] == pytest.approx(0.5)
    assert out["synthetic_accuracy_held"] == pytest.approx(0.5)
    assert out["synthetic_accuracy_missing"] == pytest.approx(0.5)


def test_recorder_means_groups_over_the_clients_that_have_them(tmp_path: Path) -> None:
    recorder = ResultsRecorder(tmp_path, meta={}, clients=[], num_rounds=1)
    recorder.record_fit(1, bytes_up=0, bytes_down=0, array_bytes_up=0, array_bytes_down=0, clients_sent=2,
                        fit_metrics=[], rejected=[], failures=0, server_seconds=0.0)
    recorder.record_eval(1, [
        {"cid": 0, "arch": "a", "global_accuracy": 0.5, "local_accuracy": 0.9, "global_accuracy_held": 0.9,
         "global_accuracy_missing": 0.1, "validation_accuracy": 0.4},
        {"cid": 1, "arch": "a", "global_accuracy": 0.7, "local_accuracy": 0.8, "global_accuracy_held": 0.7,
         "validation_accuracy": 0.6},  # holds every class: no missing group
    ])
    recorder.end_round(1, 1.0)
    final = recorder.final
    assert final["global_accuracy_held"] == pytest.approx(0.8)
    assert final["global_accuracy_missing"] == pytest.approx(0.1)
    assert final["validation_accuracy"] == pytest.approx(0.5)
    assert final["validation_accuracy_std"] == pytest.approx(0.1)
    assert "missing-class acc 0.1000" in recorder.round_line(recorder.rounds[0])


def test_degraded_copies_keep_labels_and_stay_in_the_pixel_range() -> None:
    from fedvtc.data import ImageSet
    from fedvtc.reference import degraded

    mean, std = (0.5,), (0.25,)
    pixels = torch.rand(40, 1, 28, 28)
    data = ImageSet((pixels - 0.5) / 0.25, torch.arange(40) % 10)
    out = degraded(data, mean, std, generator=torch.Generator().manual_seed(0))
    back = out.x * 0.25 + 0.5
    assert torch.equal(out.y, data.y) and out.x.shape == data.x.shape
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5
    # Blurred and dimmed: less variation between neighbouring pixels, a lower mean brightness.
    assert back.diff(dim=-1).abs().mean() < pixels.diff(dim=-1).abs().mean()
    assert back.mean() < pixels.mean()


def test_a_new_run_in_an_old_directory_starts_from_scratch(tmp_path: Path, data_dir: Path) -> None:
    """A cell run again into its old directory must not continue the earlier run's client states."""
    from fedvtc.inprocess import run_in_process
    from fedvtc.runner import prepare_run

    cfg = compose_config([*TINY_RUN, f"data_dir={data_dir}", "algorithm=local", "num_rounds=1"])
    first = run_in_process(prepare_run(cfg, tmp_path))
    assert (tmp_path / "client_state" / "client_0.pt").exists()
    again = run_in_process(prepare_run(cfg, tmp_path))
    assert again[-1]["global_accuracy"] == first[-1]["global_accuracy"]


def test_a_judge_is_trained_once_per_pool_and_reused_bit_for_bit(tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    """The cells that share a training pool share one reference classifier: the first trains it,
    the next copies it from the cache with the same weights and gives the same scores. Another
    partition of the same pool is the same pool; FEDVTC_CACHE_DIR=off turns the cache off."""
    import json

    from fedvtc import apps
    from fedvtc.inprocess import run_in_process
    from fedvtc.reference import REFERENCE_FILE, cache_dir
    from fedvtc.results import is_measurement
    from tests.helpers import TINY_FEDVTC

    monkeypatch.setenv("FEDVTC_CACHE_DIR", str(tmp_path / "cache"))
    # The private VTC draws images from round 2, so two rounds have scores to compare.
    base = ["algorithm=fedvtc_private_vtc", *TINY_FEDVTC]

    def run(name: str) -> tuple[dict, list[dict]]:
        rounds = run_in_process(_settings(tmp_path / name, data_dir, *base))
        return json.loads((tmp_path / name / "results.json").read_text())["meta"]["reference_classifier"], rounds

    first, first_rounds = run("first")
    assert len(list((tmp_path / "cache").glob("reference-*.pt"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the judge of this pool is in the cache: it must not be trained again")

    monkeypatch.setattr(apps, "train_reference", no_training)
    again, again_rounds = run("again")
    assert first == again  # the same test accuracy, in the same meta
    weights = [torch.load(tmp_path / n / REFERENCE_FILE, weights_only=False)["model"] for n in ("first", "again")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    def metrics(rounds: list[dict]) -> list[dict]:  # client_fit holds per-client times and memory
        return [{k: v for k, v in r.items() if not is_measurement(k) and k != "client_fit"} for r in rounds]

    assert metrics(first_rounds) == metrics(again_rounds) and first_rounds[1]["synthetic_accuracy"] is not None
    # The pool a judge trains on does not depend on the partition.
    pools = [np.sort(np.concatenate(split.train + split.test)) for split in (
        federated_split(_settings(tmp_path, data_dir, f"partition.alpha={alpha}")) for alpha in (0.1, 1.0))]
    assert np.array_equal(*pools)
    monkeypatch.setenv("FEDVTC_CACHE_DIR", "off")
    assert cache_dir() is None
