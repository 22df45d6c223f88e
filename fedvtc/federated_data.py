"""Each client's share of the data, derived deterministically from the run settings.

The dataset is loaded once per process into tensors (``fedvtc.data``); the partition is a pure
function of the labels and the seed, so every process (the driver, each Ray worker, each SuperNode)
computes the same split without it ever being sent.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedvtc.settings import RunSettings
from fedvtc.data import ImageSet, load_dataset
from fedvtc.partition import class_counts, partition, split_local
from fedvtc.seeding import EVAL_SUBSET, PARTITION, VALIDATION, derive_seed, numpy_rng


@dataclass(frozen=True)
class FederatedSplit:
    """Index sets into the official training set, one per client.

    Attributes:
        train: per client, indices of its local training data.
        test: per client, indices of its local (held-out) test split.
        class_counts: (K, C) samples per class of each client's whole share.
        validation: indices of the validation set (``eval.validation``; empty when off), disjoint
            from every client's share and drawn before the training pool and the partition.
    """

    train: list[np.ndarray]
    test: list[np.ndarray]
    class_counts: np.ndarray
    validation: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


_SPLITS: dict[tuple, FederatedSplit] = {}


def _split_key(s: RunSettings) -> tuple:
    return (s.dataset.name, s.data_dir, s.train_fraction, s.num_clients, s.partition, s.seed, s.eval.validation)


def validation_indices(labels: np.ndarray, size: int, num_classes: int) -> np.ndarray:
    """A class-balanced validation set of ``size`` indices into ``labels`` (sorted).

    ``size // num_classes`` images of every class (the remainder to the first classes), drawn with a
    fixed seed that is not the run's: every algorithm and every seed is tuned on the same images.

    Raises:
        ValueError: when a class has fewer images than its share, or ``size`` leaves no training data.
    """
    if size <= 0:
        return np.zeros(0, dtype=np.int64)
    if size >= len(labels):
        raise ValueError(f"eval.validation={size} leaves no training images of the {len(labels)}; use fewer")
    rng = numpy_rng(VALIDATION)
    per_class = np.full(num_classes, size // num_classes)
    per_class[: size % num_classes] += 1
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class[c]:
            raise ValueError(
                f"eval.validation={size} needs {per_class[c]} images of class {c}, the training set has "
                f"{len(members)}; use a smaller eval.validation"
            )
        chosen.append(rng.choice(members, per_class[c], replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def federated_split(s: RunSettings) -> FederatedSplit:
    """The clients' index sets (memoized per process). Raises ValueError if the split is impossible."""
    key = _split_key(s)
    if key not in _SPLITS:
        train, _ = load_dataset(s.dataset, s.data_dir)
        labels = train.y.numpy()
        validation = validation_indices(labels, s.eval.validation, s.dataset.num_classes)
        # Carved out first, so the pool (and every client's share) never holds a validation image.
        pool = np.setdiff1d(np.arange(len(labels)), validation)
        if s.train_fraction < 1.0:
            rng = numpy_rng(s.seed, PARTITION, 1)
            # train_fraction is of the official training set, as without validation.
            n = min(int(round(s.train_fraction * len(labels))), len(pool))
            pool = np.sort(rng.choice(pool, n, replace=False))
        if s.num_clients > len(pool):
            raise ValueError(
                f"num_clients={s.num_clients} exceeds the {len(pool)} training samples available; "
                "use fewer clients or a larger train_fraction"
            )
        shares = partition(
            labels[pool],
            s.num_clients,
            scheme=s.partition.scheme,
            alpha=s.partition.alpha,
            classes_per_client=s.partition.classes_per_client,
            min_size=s.partition.min_size,
            seed=derive_seed(s.seed, PARTITION),
        )
        shares = [pool[idx] for idx in shares]
        local = [
            split_local(idx, s.partition.test_fraction, seed=derive_seed(s.seed, PARTITION, cid))
            for cid, idx in enumerate(shares)
        ]
        _SPLITS[key] = FederatedSplit(
            train=[tr for tr, _ in local],
            test=[te for _, te in local],
            class_counts=class_counts(labels, shares, s.dataset.num_classes),
            validation=validation,
        )
    return _SPLITS[key]


@dataclass(frozen=True)
class ClientShare:
    """What one client evaluates and trains on: its training data and local test split, and the
    run's global test set and validation set (None when the run has none)."""

    train: ImageSet
    test: ImageSet
    global_test: ImageSet
    validation: ImageSet | None


def client_share(s: RunSettings, cid: int) -> ClientShare:
    """Client ``cid``'s share of the data.

    With ``s.share_cache_dir`` (a SuperNode's state dir, in deployment) the share is kept there as
    tensors, keyed by everything it depends on, and later processes of the node load it from there:
    Flower starts a fresh ClientApp process for every message, which would otherwise load and
    partition the whole dataset each time (and import torchvision to do it).
    """
    if s.share_cache_dir:
        path = Path(s.share_cache_dir) / f"share-{_share_key(s, cid)}.pt"
        if path.exists():
            try:
                return _share_from_tensors(torch.load(path, map_location="cpu", weights_only=True))
            except Exception:  # a damaged file: make it again
                pass
    train, test = client_data(s, cid)
    share = ClientShare(train, test, global_test_set(s), validation_set(s))
    if s.share_cache_dir:
        from fedvtc.state import save_state

        try:
            save_state(path, _share_to_tensors(share))
        except OSError:  # an unwritable state dir only costs time
            pass
    return share


def _share_key(s: RunSettings, cid: int) -> str:
    what = {"split": _split_key(s), "dataset": s.dataset.cache_key(), "cid": cid, "global_subset": s.eval.global_subset}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _share_to_tensors(share: ClientShare) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("train", "test", "global_test", "validation"):
        data = getattr(share, name)
        if data is not None:
            out[f"{name}_x"], out[f"{name}_y"] = data.x, data.y
    return out


def _share_from_tensors(tensors: dict[str, torch.Tensor]) -> ClientShare:
    def imageset(name: str) -> ImageSet | None:
        return ImageSet(tensors[f"{name}_x"], tensors[f"{name}_y"]) if f"{name}_x" in tensors else None

    return ClientShare(imageset("train"), imageset("test"), imageset("global_test"), imageset("validation"))


def client_data(s: RunSettings, cid: int) -> tuple[ImageSet, ImageSet]:
    """Client ``cid``'s local training data and local test split."""
    if not 0 <= cid < s.num_clients:
        raise ValueError(f"client id {cid} outside 0..{s.num_clients - 1}")
    train, _ = load_dataset(s.dataset, s.data_dir)
    split = federated_split(s)
    return train.subset(split.train[cid]), train.subset(split.test[cid])


# The evaluation sets (and the oracles' pool), made once per process (every client of a Ray actor
# evaluates on them every round): shared with every caller, so treat them as read-only.
_EVAL_SETS: dict[tuple, ImageSet | None] = {}


def validation_set(s: RunSettings) -> ImageSet | None:
    """The validation images (``eval.validation`` > 0), or None when the run has none."""
    if s.eval.validation <= 0:
        return None
    key = ("validation", *_split_key(s))
    if key not in _EVAL_SETS:
        train, _ = load_dataset(s.dataset, s.data_dir)
        _EVAL_SETS[key] = train.subset(federated_split(s).validation)
    return _EVAL_SETS[key]


def global_test_set(s: RunSettings) -> ImageSet:
    """The official test set, or a fixed seeded subset of it when ``eval.global_subset`` > 0."""
    _, test = load_dataset(s.dataset, s.data_dir)
    n = s.eval.global_subset
    if n <= 0 or n >= len(test):
        return test
    key = ("global", s.dataset.cache_key(), s.data_dir, s.seed, n)
    if key not in _EVAL_SETS:
        rng = numpy_rng(s.seed, EVAL_SUBSET)
        _EVAL_SETS[key] = test.subset(np.sort(rng.choice(len(test), n, replace=False)))
    return _EVAL_SETS[key]  # type: ignore[return-value]


def training_pool(s: RunSettings) -> ImageSet:
    """Every client's local training images together (no local test, validation or test image).

    Only the oracle controls of ``algorithm.synthesis.source`` read it: a client of a real
    federation never sees another client's images. Made once per process; treat it as read-only.
    """
    key = ("pool", *_split_key(s))
    if key not in _EVAL_SETS:
        train, _ = load_dataset(s.dataset, s.data_dir)
        _EVAL_SETS[key] = train.subset(np.sort(np.concatenate(federated_split(s).train)))
    return _EVAL_SETS[key]  # type: ignore[return-value]
