"""The one encoding of everything FedVTC sends over the network, and its validation.

A payload travels as Flower ``Parameters``, i.e. an ordered list of numpy arrays:

====  =========  ===========  =================================================================
 idx  dtype      shape        meaning
====  =========  ===========  =================================================================
 0    int64      (4,)         header: [version, kind, k, n_extra]; kind 0 = no statistics,
                              1 = diagonal, 2 = full covariance, 3 = means only (prototypes);
                              k = number of classes sent
 1    int64      (k,)         class ids, sorted, unique, in [0, C)          (only if kind > 0)
 2    float32    (k,)         sample count per class, > 0                   (only if kind > 0)
 3    float32    (k, p)       per-class feature means                       (only if kind > 0)
 4    float32    (k, p)       per-class variances (kind 1), or
                 (k, p, p)    per-class covariances (kind 2)                (only if kind 1 or 2)
 ...  float32    any          ``n_extra`` further arrays: model weights that are shared, e.g. the
                              VTC's state-dict values in order when the VTC is FedAvg'd
====  =========  ===========  =================================================================

Only the classes a client holds are sent, so a client with 3 of 10 classes sends 3 rows. Uploads
and downloads use the same encoding. ``decode`` checks everything a malformed or hostile peer could
get wrong and raises ``PayloadError`` with the reason, so the server can drop that client alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from fedvtc.stats import ClassStats

VERSION = 1
KIND_NONE, KIND_DIAG, KIND_FULL, KIND_MEANS = 0, 1, 2, 3
# Arrays after the header for each kind of statistics.
STATS_ARRAYS = {KIND_NONE: 0, KIND_DIAG: 4, KIND_FULL: 4, KIND_MEANS: 3}
HEADER_SIZE = 4


class PayloadError(ValueError):
    """A payload that cannot be accepted; the message says why."""


@dataclass(frozen=True)
class Payload:
    """What one message carries: class statistics and/or shared model weights."""

    stats: ClassStats | None = None
    extra: list[np.ndarray] = field(default_factory=list)


def encode(payload: Payload) -> list[np.ndarray]:
    """Turn a payload into the ordered array list described in the module docstring."""
    stats = payload.stats
    extra = [np.asarray(a, dtype=np.float32) for a in payload.extra]
    if stats is None:
        header = np.array([VERSION, KIND_NONE, 0, len(extra)], dtype=np.int64)
        return [header, *extra]
    kind = KIND_MEANS if stats.means_only else KIND_FULL if stats.full else KIND_DIAG
    header = np.array([VERSION, kind, len(stats), len(extra)], dtype=np.int64)
    arrays = [
        header,
        np.asarray(stats.classes, dtype=np.int64),
        np.asarray(stats.counts, dtype=np.float32),
        np.asarray(stats.means, dtype=np.float32),
    ]
    if not stats.means_only:
        arrays.append(np.asarray(stats.second, dtype=np.float32))
    return [*arrays, *extra]


def decode(
    arrays: Sequence[np.ndarray],
    *,
    num_classes: int,
    feature_dim: int,
    max_count: float = float("inf"),
    extra_shapes: Sequence[tuple[int, ...]] | None = None,
    extra_optional: bool = False,
) -> Payload:
    """Parse and validate an array list produced by ``encode``.

    Args:
        arrays: the received arrays.
        num_classes: C; class ids must lie in [0, C).
        feature_dim: p; means and variances must have this width.
        max_count: largest plausible total count (e.g. the training-set size); a payload that
            claims more is rejected rather than allowed to dominate the pool.
        extra_shapes: the expected shapes of the extra arrays, or None to accept none.
        extra_optional: also accept a payload without extra arrays.

    Raises:
        PayloadError: with a human-readable reason for the first problem found.
    """
    if len(arrays) < 1:
        raise PayloadError("empty payload: no header array")
    header = np.asarray(arrays[0])
    if header.shape != (HEADER_SIZE,) or not np.issubdtype(header.dtype, np.integer):
        raise PayloadError(f"header must be {HEADER_SIZE} integers, got {header.dtype} {header.shape}")
    version, kind, k, n_extra = (int(v) for v in header)
    if version != VERSION:
        raise PayloadError(f"payload version {version}, this server speaks {VERSION}")
    if kind not in STATS_ARRAYS:
        raise PayloadError(f"unknown statistics kind {kind}")
    n_stats = STATS_ARRAYS[kind]
    if n_extra < 0 or len(arrays) != 1 + n_stats + n_extra:
        raise PayloadError(
            f"header announces {n_stats} statistics and {n_extra} extra arrays, got {len(arrays) - 1}"
        )
    stats = None
    if kind != KIND_NONE:
        stats = _decode_stats(
            arrays[1 : 1 + n_stats], kind, k, num_classes=num_classes, feature_dim=feature_dim,
            max_count=max_count,
        )
    extra = [np.asarray(a) for a in arrays[1 + n_stats :]]
    if extra or not extra_optional:
        _check_extra(extra, extra_shapes)
    return Payload(stats=stats, extra=extra)


def payload_nbytes(arrays: Sequence[np.ndarray]) -> int:
    """Analytic size of a payload: the raw bytes of its arrays, without serialization framing."""
    return int(sum(np.asarray(a).nbytes for a in arrays))


def _decode_stats(
    arrays: Sequence[np.ndarray],
    kind: int,
    k: int,
    *,
    num_classes: int,
    feature_dim: int,
    max_count: float,
) -> ClassStats:
    classes, counts, means = (np.asarray(a) for a in arrays[:3])
    second = np.asarray(arrays[3]) if kind != KIND_MEANS else None
    p = feature_dim
    checks = [("class ids", classes, (k,)), ("counts", counts, (k,)), ("means", means, (k, p))]
    if kind == KIND_DIAG:
        checks.append(("variances", second, (k, p)))
    elif kind == KIND_FULL:
        checks.append(("covariances", second, (k, p, p)))
    for name, arr, shape in checks:
        if arr.shape != shape:
            raise PayloadError(f"{name} have shape {arr.shape}, expected {shape}")
    if not np.issubdtype(classes.dtype, np.integer):
        raise PayloadError(f"class ids must be integers, got {classes.dtype}")
    floats = [("counts", counts), ("means", means)] + ([("second moments", second)] if second is not None else [])
    for name, arr in floats:
        if not np.issubdtype(arr.dtype, np.floating):
            raise PayloadError(f"{name} must be floating point, got {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise PayloadError(f"{name} contain NaN or infinite values")
    if k < 1 or k > num_classes:
        raise PayloadError(f"{k} classes sent, expected 1..{num_classes}")
    if classes.min() < 0 or classes.max() >= num_classes:
        raise PayloadError(f"class ids out of range [0, {num_classes}): {classes.tolist()}")
    if np.any(np.diff(classes) <= 0):
        raise PayloadError("class ids must be sorted and unique")
    if np.any(counts <= 0):
        raise PayloadError("counts must be positive")
    if counts.sum() > max_count:
        raise PayloadError(f"counts add up to {counts.sum():.0f}, more than the {max_count:.0f} possible")
    if kind == KIND_DIAG:
        if np.any(second < 0):
            raise PayloadError("variances must be non-negative")
    elif kind == KIND_FULL:
        if np.any(np.diagonal(second, axis1=1, axis2=2) < 0):
            raise PayloadError("covariance diagonals must be non-negative")
        scale = np.abs(second).max() + 1e-12
        if np.abs(second - np.swapaxes(second, 1, 2)).max() > 1e-4 * scale:
            raise PayloadError("covariances must be symmetric")
    return ClassStats(
        classes.astype(np.int64),
        counts.astype(np.float64),
        means.astype(np.float64),
        None if second is None else second.astype(np.float64),
    )


def _check_extra(extra: list[np.ndarray], shapes: Sequence[tuple[int, ...]] | None) -> None:
    if shapes is None:
        if extra:
            raise PayloadError(f"{len(extra)} unexpected extra arrays")
        return
    if len(extra) != len(shapes):
        raise PayloadError(f"{len(extra)} extra arrays, expected {len(shapes)}")
    for i, (arr, shape) in enumerate(zip(extra, shapes)):
        if tuple(arr.shape) != tuple(shape):
            raise PayloadError(f"extra array {i} has shape {arr.shape}, expected {tuple(shape)}")
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)):
            raise PayloadError(f"extra array {i} must be finite floating point")
