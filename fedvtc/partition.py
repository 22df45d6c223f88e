"""Seeded splits of a labelled dataset among federated clients (pure numpy).

Every partitioner returns one sorted ``int64`` index array per client, and together the arrays use
every sample index exactly once. All randomness comes from ``np.random.default_rng(seed)``, so the
same arguments always give the same split.

Schemes (see :data:`SCHEMES` and :func:`partition`):

* ``"dirichlet"``: label skew controlled by ``alpha`` (small alpha: each client sees few classes);
* ``"pathological"``: each client holds exactly ``classes_per_client`` classes;
* ``"iid"``: uniform random split into near-equal parts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "SCHEMES",
    "class_counts",
    "dirichlet_partition",
    "iid_partition",
    "partition",
    "pathological_partition",
    "split_local",
]


# --------------------------------------------------------------------------------------------
# Argument checks shared by the schemes
# --------------------------------------------------------------------------------------------


def _as_labels(labels: np.ndarray | Sequence[int]) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("labels is empty: there is nothing to partition")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    return arr


def _check_num_clients(num_clients: int, num_samples: int) -> None:
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ValueError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    if num_clients > num_samples:
        raise ValueError(
            f"cannot split {num_samples} samples among {num_clients} clients: more clients than samples"
        )


def _finish(parts: Sequence[np.ndarray | list[int]]) -> list[np.ndarray]:
    """Sorted int64 copies, the form every partitioner promises."""
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


# --------------------------------------------------------------------------------------------
# Schemes
# --------------------------------------------------------------------------------------------


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    *,
    min_size: int = 10,
    seed: int,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Label-skewed split: each class is divided among clients in Dir(alpha) proportions.

    The usual federated-learning recipe: for every class draw proportions from a symmetric
    Dirichlet, give each client that share of the class, and redraw the whole split until every
    client holds at least ``min_size`` samples. As in the common reference implementations, a
    client that already holds its fair share (N / num_clients) receives nothing more, which keeps
    client sizes from running away and makes ``min_size`` reachable for small ``alpha``.

    Args:
        labels: (N,) integer class label of every sample; indices refer to positions in it.
        num_clients: Number of clients (parts) to produce.
        alpha: Dirichlet concentration, > 0. Small values (0.05-0.5) give strongly skewed label
            distributions; large values (100+) approach an IID split.
        min_size: Minimum number of samples every client must end up with.
        seed: Seed for ``np.random.default_rng``.
        max_tries: How many full redraws to attempt before giving up.

    Returns:
        ``num_clients`` sorted int64 index arrays that together use every index exactly once.

    Raises:
        ValueError: invalid arguments, or no draw met ``min_size`` within ``max_tries``.
    """
    labels = _as_labels(labels)
    n = labels.shape[0]
    _check_num_clients(num_clients, n)
    if not (isinstance(alpha, (int, float, np.floating)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"partition.alpha must be > 0, got {alpha!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ValueError(f"partition.min_size must be an integer >= 0, got {min_size!r}")
    if min_size * num_clients > n:
        raise ValueError(
            f"partition.min_size={min_size} is impossible: {num_clients} clients x {min_size} "
            f"samples exceeds the {n} samples available; lower min_size or use fewer clients"
        )
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")

    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    fair_share = n / num_clients
    concentration = np.full(num_clients, float(alpha))
    smallest = 0
    for _ in range(max_tries):
        pieces: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for members in by_class:
            members = rng.permutation(members)
            share = rng.dirichlet(concentration)
            share = np.where(sizes < fair_share, share, 0.0)
            total = share.sum()
            if total <= 0.0:
                # Tiny alpha can put all the mass on saturated clients (exact zeros elsewhere);
                # spread this class evenly over the clients still below their fair share instead.
                share = (sizes < fair_share).astype(np.float64)
                total = share.sum()
            cuts = (np.cumsum(share / total)[:-1] * len(members)).astype(np.int64)
            for client, piece in enumerate(np.split(members, cuts)):
                pieces[client].append(piece)
                sizes[client] += len(piece)
        smallest = int(sizes.min())
        if smallest >= min_size:
            return _finish([np.concatenate(p) for p in pieces])
    raise ValueError(
        f"dirichlet partition: no draw in {max_tries} tries gave every one of {num_clients} clients "
        f"at least partition.min_size={min_size} samples (alpha={alpha}, last smallest client: "
        f"{smallest}); lower partition.min_size, raise partition.alpha, or use fewer clients"
    )


def pathological_partition(
    labels: np.ndarray,
    num_clients: int,
    classes_per_client: int,
    *,
    seed: int,
) -> list[np.ndarray]:
    """Split where every client holds exactly ``classes_per_client`` classes.

    Classes are dealt to clients so that every class is held by someone and the number of holders
    per class differs by at most one (each client, in random order, takes the classes with the
    fewest holders so far, ties broken at random). Each class's samples are then shuffled and
    divided evenly among its holders, so every sample is used exactly once.

    Args:
        labels: (N,) integer class label of every sample.
        num_clients: Number of clients.
        classes_per_client: Classes per client, between 1 and the number of distinct labels;
            ``num_clients * classes_per_client`` must be at least the number of classes so that no
            class is left out.
        seed: Seed for ``np.random.default_rng``.

    Returns:
        ``num_clients`` sorted int64 index arrays that together use every index exactly once.

    Raises:
        ValueError: invalid arguments, or a class with fewer samples than clients holding it.
    """
    labels = _as_labels(labels)
    _check_num_clients(num_clients, labels.shape[0])
    classes = np.unique(labels)
    num_classes = len(classes)
    k = classes_per_client
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_classes:
        raise ValueError(
            f"partition.classes_per_client must be an integer in 1..{num_classes} "
            f"(the number of classes), got {k!r}"
        )
    if num_clients * k < num_classes:
        raise ValueError(
            f"pathological partition: {num_clients} clients x {k} classes each cannot cover all "
            f"{num_classes} classes, so some samples would be unused; raise "
            "partition.classes_per_client or the number of clients"
        )

    rng = np.random.default_rng(seed)
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    held = np.zeros(num_classes, dtype=np.int64)
    for client in rng.permutation(num_clients):
        # lexsort sorts by the last key first: fewest holders, then a random tie-break.
        order = np.lexsort((rng.random(num_classes), held))
        for c in order[:k]:
            holders[c].append(int(client))
            held[c] += 1

    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c, label in enumerate(classes):
        members = rng.permutation(np.flatnonzero(labels == label))
        if len(members) < len(holders[c]):
            raise ValueError(
                f"pathological partition: class {label} has {len(members)} samples but {len(holders[c])} "
                "clients hold it, so some would get none; use fewer clients or classes_per_client"
            )
        for client, piece in zip(holders[c], np.array_split(members, len(holders[c]))):
            parts[client].append(piece)
    return _finish([np.concatenate(p) for p in parts])


def iid_partition(labels: np.ndarray, num_clients: int, *, seed: int) -> list[np.ndarray]:
    """Uniform random split into parts whose sizes differ by at most one.

    Args:
        labels: (N,) integer labels; only their number matters here.
        num_clients: Number of clients.
        seed: Seed for ``np.random.default_rng``.
    """
    labels = _as_labels(labels)
    _check_num_clients(num_clients, labels.shape[0])
    order = np.random.default_rng(seed).permutation(labels.shape[0])
    return _finish(np.array_split(order, num_clients))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def split_local(
    indices: np.ndarray, test_fraction: float, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's indices into a local train and a local test part at random.

    Args:
        indices: The client's sample indices.
        test_fraction: Share of them to hold out, in [0, 1). Rounded to a whole number of samples
            and capped so that at least one sample stays in the train part.
        seed: Seed for ``np.random.default_rng`` (use a per-client seed for independent splits).

    Returns:
        ``(train, test)`` sorted int64 arrays, disjoint, together equal to ``indices``.
    """
    if not (isinstance(test_fraction, (int, float, np.floating)) and 0.0 <= test_fraction < 1.0):
        raise ValueError(f"partition.test_fraction must be in [0, 1), got {test_fraction!r}")
    arr = np.asarray(indices, dtype=np.int64).reshape(-1)
    n = arr.shape[0]
    n_test = min(int(round(n * test_fraction)), max(n - 1, 0))
    shuffled = np.random.default_rng(seed).permutation(arr)
    return np.sort(shuffled[n_test:]), np.sort(shuffled[:n_test])


def class_counts(labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Samples of each class held by each client.

    Args:
        labels: (N,) integer labels in ``0..num_classes-1``.
        parts: One index array per client (as returned by the partitioners).
        num_classes: Number of classes C.

    Returns:
        (K, C) int64 array; entry [k, c] counts client k's samples of class c.
    """
    labels = _as_labels(labels)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels span {labels.min()}..{labels.max()}, outside 0..{num_classes - 1}")
    counts = np.zeros((len(parts), num_classes), dtype=np.int64)
    for k, part in enumerate(parts):
        counts[k] = np.bincount(labels[np.asarray(part, dtype=np.int64)], minlength=num_classes)
    return counts


# --------------------------------------------------------------------------------------------
# Dispatcher
# --------------------------------------------------------------------------------------------

Scheme = Callable[..., list[np.ndarray]]


def _dirichlet_scheme(
    labels: np.ndarray, num_clients: int, *, alpha: float, classes_per_client: int, min_size: int, seed: int
) -> list[np.ndarray]:
    return dirichlet_partition(labels, num_clients, alpha, min_size=min_size, seed=seed)


def _pathological_scheme(
    labels: np.ndarray, num_clients: int, *, alpha: float, classes_per_client: int, min_size: int, seed: int
) -> list[np.ndarray]:
    return pathological_partition(labels, num_clients, classes_per_client, seed=seed)


def _iid_scheme(
    labels: np.ndarray, num_clients: int, *, alpha: float, classes_per_client: int, min_size: int, seed: int
) -> list[np.ndarray]:
    return iid_partition(labels, num_clients, seed=seed)


#: Scheme name (``partition.scheme`` in the config) -> partitioner taking the common keywords.
SCHEMES: dict[str, Scheme] = {
    "dirichlet": _dirichlet_scheme,
    "pathological": _pathological_scheme,
    "iid": _iid_scheme,
}


def partition(
    labels: np.ndarray,
    num_clients: int,
    *,
    scheme: str,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    min_size: int = 10,
    seed: int,
) -> list[np.ndarray]:
    """Split sample indices among clients with the named scheme.

    Args:
        labels: (N,) integer class label of every sample.
        num_clients: Number of clients.
        scheme: One of :data:`SCHEMES` ("dirichlet", "pathological", "iid").
        alpha: Dirichlet concentration (dirichlet only).
        classes_per_client: Classes per client (pathological only).
        min_size: Minimum samples per client (dirichlet only).
        seed: Seed for ``np.random.default_rng``.

    Returns:
        ``num_clients`` sorted int64 index arrays that together use every index exactly once.

    Raises:
        ValueError: unknown scheme or invalid arguments for it.
    """
    try:
        partitioner = SCHEMES[scheme]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown partition.scheme {scheme!r}; valid schemes: {', '.join(sorted(SCHEMES))}"
        ) from None
    return partitioner(
        labels, num_clients, alpha=alpha, classes_per_client=classes_per_client, min_size=min_size, seed=seed
    )
