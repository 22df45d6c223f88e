"""The one encoding of everything any algorithm sends over the network, and its validation.

A payload travels as Flower ``Parameters`` holding exactly one array: a flat float32 vector, so a
message costs its values x 4 bytes plus one ``.npy`` header (128 bytes) of framing. In order:

==========================  =====================================================================
 values                      meaning
==========================  =====================================================================
 4                           header: version, kind, k, n_extra. kind 0 = no statistics,
                             1 = diagonal, 2 = full covariance, 3 = means only (prototypes);
                             k = number of classes sent
 n_extra x (1 + ndim)        the shape of each extra array: ndim, then its dimensions
 k                           class ids, sorted, unique, integers in [0, C)    (only if kind > 0)
 k                           sample count per class, > 0                      (only if kind > 0)
 k x p                       per-class feature means                          (only if kind > 0)
 k x p, or k x p x p         per-class variances (kind 1) or covariances (kind 2)
 prod(shape) each            the ``n_extra`` extra arrays, flattened: model weights that are
                             shared, e.g. the VTC's state-dict values when the VTC is FedAvg'd
==========================  =====================================================================

Only the classes a client holds are sent, so a client with 3 of 10 classes sends 3 rows. Uploads
and downloads use the same encoding. ``decode`` checks everything a malformed or hostile peer could
get wrong and raises ``PayloadError`` with the reason, so the server can drop that client alone.
One array rather than one per part because each array costs its own 128-byte ``.npy`` header, which
for a client holding few classes was a fifth of what it sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from fedvtc.stats import ClassStats

VERSION = 2
KIND_NONE, KIND_DIAG, KIND_FULL, KIND_MEANS = 0, 1, 2, 3
KINDS = (KIND_NONE, KIND_DIAG, KIND_FULL, KIND_MEANS)
HEADER_SIZE = 4
MAX_EXTRA_NDIM = 8
# Integers travel as float32, exact up to 2**24: far beyond any class id, count of arrays or dimension.
MAX_EXACT_INT = 2**24


class PayloadError(ValueError):
    """A payload that cannot be accepted; the message says why."""


@dataclass(frozen=True)
class Payload:
    """What one message carries: class statistics and/or shared model weights."""

    stats: ClassStats | None = None
    extra: list[np.ndarray] = field(default_factory=list)


def encode(payload: Payload) -> list[np.ndarray]:
    """Turn a payload into the one-array list described in the module docstring."""
    stats = payload.stats
    extra = [np.asarray(a, dtype=np.float32) for a in payload.extra]
    kind = KIND_NONE if stats is None else KIND_MEANS if stats.means_only else KIND_FULL if stats.full else KIND_DIAG
    k = 0 if stats is None else len(stats)
    parts: list[np.ndarray] = [np.array([VERSION, kind, k, len(extra)])]
    parts += [np.array([a.ndim, *a.shape]) for a in extra]
    if stats is not None:
        parts += [np.asarray(stats.classes), np.asarray(stats.counts), np.asarray(stats.means)]
        if not stats.means_only:
            parts.append(np.asarray(stats.second))
    parts += extra
    return [np.concatenate([np.asarray(part, dtype=np.float32).ravel() for part in parts])]


def layout(arrays: Sequence[np.ndarray], *, feature_dim: int) -> dict[str, np.ndarray | list[np.ndarray]]:
    """The named parts of an encoded payload, as views into its array (editing them edits it).

    Keys: ``header``, ``classes``, ``counts``, ``means``, ``second`` (the present ones) and ``extra``
    (a list). Meant for inspection and for tests that corrupt one part; ``decode`` validates.

    Raises:
        PayloadError: the array is not one flat float32 vector or its header does not add up.
    """
    flat = _single_vector(arrays)
    kind, k, shapes = _read_header(flat)
    sizes = _section_sizes(kind, k, feature_dim, shapes)
    if len(flat) != sum(size for _, size, _ in sizes):
        raise PayloadError(
            f"payload carries {len(flat)} values, its header announces {sum(size for _, size, _ in sizes)} "
            f"(kind {kind}, {k} classes, feature size {feature_dim}, extra shapes {shapes})"
        )
    parts: dict[str, np.ndarray | list[np.ndarray]] = {}
    extra: list[np.ndarray] = []
    offset = 0
    for name, size, shape in sizes:
        view = flat[offset : offset + size].reshape(shape)
        offset += size
        if name == "extra":
            extra.append(view)
        else:
            parts[name] = view
    parts["extra"] = extra
    return parts


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
    parts = layout(arrays, feature_dim=feature_dim)
    kind = int(parts["header"][1])  # type: ignore[index]
    stats = None
    if kind != KIND_NONE:
        stats = _decode_stats(parts, kind, num_classes=num_classes, max_count=max_count)  # type: ignore[arg-type]
    extra = [np.array(a) for a in parts["extra"]]  # copies: the payload outlives the received buffer
    if extra or not extra_optional:
        _check_extra(extra, extra_shapes)
    return Payload(stats=stats, extra=extra)


def payload_nbytes(arrays: Sequence[np.ndarray]) -> int:
    """Analytic size of a payload: the raw bytes of its values, without serialization framing."""
    return int(sum(np.asarray(a).nbytes for a in arrays))


def _single_vector(arrays: Sequence[np.ndarray]) -> np.ndarray:
    if len(arrays) != 1:
        raise PayloadError(f"a payload is one array, got {len(arrays)}")
    flat = np.asarray(arrays[0])
    if flat.dtype != np.float32 or flat.ndim != 1:
        raise PayloadError(f"a payload is one flat float32 array, got {flat.dtype} of shape {flat.shape}")
    if len(flat) < HEADER_SIZE:
        raise PayloadError(f"payload of {len(flat)} values is shorter than its {HEADER_SIZE}-value header")
    return flat


def _as_int(value: float, what: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high], or a PayloadError naming ``what``."""
    if not np.isfinite(value) or value != np.floor(value) or not low <= value <= high:
        raise PayloadError(f"{what} must be an integer in [{low}, {high}], got {value}")
    return int(value)


def _read_header(flat: np.ndarray) -> tuple[int, int, list[tuple[int, ...]]]:
    """(kind, k, shapes of the extra arrays) from the header; checks that it can be read."""
    version = _as_int(flat[0], "payload version", 0, MAX_EXACT_INT)
    if version != VERSION:
        raise PayloadError(f"payload version {version}, this side speaks {VERSION}")
    kind = _as_int(flat[1], "statistics kind", 0, max(KINDS))
    k = _as_int(flat[2], "number of classes", 0, MAX_EXACT_INT)
    n_extra = _as_int(flat[3], "number of extra arrays", 0, MAX_EXACT_INT)
    shapes: list[tuple[int, ...]] = []
    offset = HEADER_SIZE
    for i in range(n_extra):
        if offset >= len(flat):
            raise PayloadError(f"header announces {n_extra} extra arrays but ends after {i} shapes")
        ndim = _as_int(flat[offset], f"extra array {i}'s number of dimensions", 0, MAX_EXTRA_NDIM)
        if offset + 1 + ndim > len(flat):
            raise PayloadError(f"header announces {n_extra} extra arrays but ends inside shape {i}")
        shapes.append(tuple(_as_int(d, f"a dimension of extra array {i}", 0, MAX_EXACT_INT)
                            for d in flat[offset + 1 : offset + 1 + ndim]))
        offset += 1 + ndim
    return kind, k, shapes


def _section_sizes(
    kind: int, k: int, p: int, shapes: list[tuple[int, ...]]
) -> list[tuple[str, int, tuple[int, ...]]]:
    """(name, number of values, shape) of every part, in order."""
    header = HEADER_SIZE + sum(1 + len(shape) for shape in shapes)
    sizes = [("header", header, (header,))]
    if kind != KIND_NONE:
        sizes += [("classes", k, (k,)), ("counts", k, (k,)), ("means", k * p, (k, p))]
        if kind == KIND_DIAG:
            sizes.append(("second", k * p, (k, p)))
        elif kind == KIND_FULL:
            sizes.append(("second", k * p * p, (k, p, p)))
    sizes += [("extra", math.prod(shape), shape) for shape in shapes]
    return sizes


def _decode_stats(
    parts: dict[str, np.ndarray],
    kind: int,
    *,
    num_classes: int,
    max_count: float,
) -> ClassStats:
    classes, counts, means = parts["classes"], parts["counts"], parts["means"]
    second = parts.get("second")
    k = len(classes)
    present = [("class ids", classes), ("counts", counts), ("means", means), ("second moments", second)]
    for name, values in present:
        if values is not None and not np.all(np.isfinite(values)):
            raise PayloadError(f"{name} contain NaN or infinite values")
    if k < 1 or k > num_classes:
        raise PayloadError(f"{k} classes sent, expected 1..{num_classes}")
    if np.any(classes != np.floor(classes)):
        raise PayloadError(f"class ids must be integers, got {classes.tolist()}")
    if classes.min() < 0 or classes.max() >= num_classes:
        raise PayloadError(f"class ids out of range [0, {num_classes}): {classes.tolist()}")
    if np.any(np.diff(classes) <= 0):
        raise PayloadError("class ids must be sorted and unique")
    if np.any(counts <= 0):
        raise PayloadError("counts must be positive")
    if counts.sum(dtype=np.float64) > max_count:
        raise PayloadError(f"counts add up to {counts.sum(dtype=np.float64):.0f}, more than the {max_count:.0f} possible")
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
