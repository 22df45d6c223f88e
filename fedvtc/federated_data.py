"""Each client's share of the data, derived deterministically from the run settings.

The dataset is loaded once per process into tensors (``fedvtc.data``); the partition is a pure
function of the labels and the seed, so every process (the driver, each Ray worker, each SuperNode)
computes the same split without it ever being sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedvtc.config import RunSettings
from fedvtc.data import ImageSet, load_dataset
from fedvtc.partition import class_counts, partition, split_local
from fedvtc.seeding import EVAL_SUBSET, PARTITION, derive_seed, numpy_rng


@dataclass(frozen=True)
class FederatedSplit:
    """Index sets into the official training set, one per client.

    Attributes:
        train: per client, indices of its local training data.
        test: per client, indices of its local (held-out) test split.
        class_counts: (K, C) samples per class of each client's whole share.
    """

    train: list[np.ndarray]
    test: list[np.ndarray]
    class_counts: np.ndarray


_SPLITS: dict[tuple, FederatedSplit] = {}


def _split_key(s: RunSettings) -> tuple:
    return (s.dataset.name, s.data_dir, s.train_fraction, s.num_clients, s.partition, s.seed)


def federated_split(s: RunSettings) -> FederatedSplit:
    """The clients' index sets (memoized per process). Raises ValueError if the split is impossible."""
    key = _split_key(s)
    if key not in _SPLITS:
        train, _ = load_dataset(s.dataset, s.data_dir)
        labels = train.y.numpy()
        pool = np.arange(len(labels))
        if s.train_fraction < 1.0:
            rng = numpy_rng(s.seed, PARTITION, 1)
            pool = np.sort(rng.choice(len(labels), int(round(s.train_fraction * len(labels))), replace=False))
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
        )
    return _SPLITS[key]


def client_data(s: RunSettings, cid: int) -> tuple[ImageSet, ImageSet]:
    """Client ``cid``'s local training data and local test split."""
    if not 0 <= cid < s.num_clients:
        raise ValueError(f"client id {cid} outside 0..{s.num_clients - 1}")
    train, _ = load_dataset(s.dataset, s.data_dir)
    split = federated_split(s)
    return train.subset(split.train[cid]), train.subset(split.test[cid])


def global_test_set(s: RunSettings) -> ImageSet:
    """The official test set, or a fixed seeded subset of it when ``eval.global_subset`` > 0."""
    _, test = load_dataset(s.dataset, s.data_dir)
    n = s.eval.global_subset
    if n <= 0 or n >= len(test):
        return test
    rng = numpy_rng(s.seed, EVAL_SUBSET)
    return test.subset(np.sort(rng.choice(len(test), n, replace=False)))
