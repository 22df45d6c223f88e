"""Tests for fedvtc.partition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from fedvtc.partition import (
    SCHEMES,
    class_counts,
    dirichlet_partition,
    iid_partition,
    partition,
    pathological_partition,
    split_local,
)

NUM_CLASSES = 10
CONF = Path(__file__).resolve().parents[1] / "conf" / "partition"


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    # 10 classes of unequal size (300..570 samples), shuffled, like a small real dataset.
    rng = np.random.default_rng(0)
    y = np.concatenate([np.full(300 + 30 * c, c) for c in range(NUM_CLASSES)])
    return rng.permutation(y).astype(np.int64)


def _split(labels: np.ndarray, scheme: str, seed: int = 1, num_clients: int = 10) -> list[np.ndarray]:
    return partition(labels, num_clients, scheme=scheme, alpha=0.5, classes_per_client=2, min_size=10, seed=seed)


def _max_class_fraction(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    counts = class_counts(labels, parts, NUM_CLASSES)
    return float((counts.max(axis=1) / counts.sum(axis=1)).mean())


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_every_sample_used_exactly_once(labels: np.ndarray, scheme: str) -> None:
    parts = _split(labels, scheme)
    assert len(parts) == 10
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0), "indices must be sorted and unique"
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_seed_determines_split(labels: np.ndarray, scheme: str) -> None:
    a, b, c = _split(labels, scheme, seed=3), _split(labels, scheme, seed=3), _split(labels, scheme, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_smaller_alpha_is_more_skewed(labels: np.ndarray) -> None:
    skewed = dirichlet_partition(labels, 10, 0.05, min_size=10, seed=0)
    flat = dirichlet_partition(labels, 10, 100.0, min_size=10, seed=0)
    assert _max_class_fraction(labels, skewed) > 0.5
    assert _max_class_fraction(labels, flat) < 0.2
    # Also in the entropy of each client's label distribution, averaged over clients.
    def mean_entropy(parts: list[np.ndarray]) -> float:
        p = class_counts(labels, parts, NUM_CLASSES) / np.array([[len(x)] for x in parts])
        return float(-(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1).mean())

    assert mean_entropy(skewed) < mean_entropy(flat) - 1.0


def test_dirichlet_min_size_respected(labels: np.ndarray) -> None:
    for seed in range(5):
        parts = dirichlet_partition(labels, 20, 0.1, min_size=50, seed=seed)
        assert min(len(p) for p in parts) >= 50


def test_dirichlet_gives_up_with_clear_message() -> None:
    y = np.repeat(np.arange(5), 20)
    with pytest.raises(ValueError, match="min_size"):
        dirichlet_partition(y, 10, 0.01, min_size=10, seed=0, max_tries=3)
    with pytest.raises(ValueError, match="exceeds"):
        dirichlet_partition(y, 10, 1.0, min_size=11, seed=0)


@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_pathological_exactly_k_classes(labels: np.ndarray, k: int) -> None:
    parts = pathological_partition(labels, 10, k, seed=0)
    counts = class_counts(labels, parts, NUM_CLASSES)
    assert ((counts > 0).sum(axis=1) == k).all()
    assert (counts.sum(axis=0) == np.bincount(labels)).all()  # every class fully used
    holders = (counts > 0).sum(axis=0)
    assert holders.max() - holders.min() <= 1  # classes spread evenly over clients


def test_pathological_needs_enough_classes_in_total(labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="cannot cover"):
        pathological_partition(labels, 4, 2, seed=0)


def test_iid_sizes_balanced(labels: np.ndarray) -> None:
    sizes = [len(p) for p in iid_partition(labels, 7, seed=0)]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scheme": "dirichlet", "alpha": 0.0}, r"partition\.alpha must be > 0, got 0"),
        ({"scheme": "dirichlet", "alpha": -1.0}, r"partition\.alpha must be > 0"),
        ({"scheme": "iid", "num_clients": 0}, "num_clients"),
        ({"scheme": "dirichlet", "num_clients": 10_000}, "more clients than samples"),
        ({"scheme": "pathological", "num_clients": 10_000}, "more clients than samples"),
        ({"scheme": "pathological", "classes_per_client": 0}, r"classes_per_client must be .* 1\.\.10"),
        ({"scheme": "pathological", "classes_per_client": 11}, "classes_per_client"),
        ({"scheme": "shards"}, "valid schemes: dirichlet, iid, pathological"),
    ],
)
def test_invalid_arguments(labels: np.ndarray, kwargs: dict, match: str) -> None:
    args = {"num_clients": 10, "alpha": 0.5, "classes_per_client": 2, "min_size": 0, "seed": 0} | kwargs
    num_clients = args.pop("num_clients")
    with pytest.raises(ValueError, match=match):
        partition(labels, num_clients, **args)


def test_split_local() -> None:
    idx = np.arange(100, 200, dtype=np.int64)
    train, test = split_local(idx, 0.2, seed=0)
    assert (len(train), len(test)) == (80, 20)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), idx)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    one_train, one_test = split_local(np.array([5]), 0.9, seed=0)
    assert len(one_train) == 1 and len(one_test) == 0  # at least one train sample
    with pytest.raises(ValueError, match="test_fraction"):
        split_local(idx, 1.0, seed=0)


def test_class_counts_shape() -> None:
    y = np.array([0, 1, 1, 2, 2, 2])
    counts = class_counts(y, [np.array([0, 1]), np.array([2, 3, 4, 5])], 4)
    np.testing.assert_array_equal(counts, [[1, 1, 0, 0], [0, 1, 3, 0]])


@pytest.mark.parametrize("name", ["dirichlet", "pathological", "iid"])
def test_configs_have_every_key(labels: np.ndarray, name: str) -> None:
    cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    assert set(cfg) == {"scheme", "alpha", "classes_per_client", "min_size", "test_fraction"}
    assert cfg["scheme"] == name
    parts = partition(
        labels,
        10,
        scheme=cfg["scheme"],
        alpha=cfg["alpha"],
        classes_per_client=cfg["classes_per_client"],
        min_size=cfg["min_size"],
        seed=0,
    )
    split_local(parts[0], cfg["test_fraction"], seed=0)
