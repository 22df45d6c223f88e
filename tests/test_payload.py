"""The payload codec: round trips, its size, and every kind of malformed input."""

from typing import Callable

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters

from fedvtc.payload import Payload, PayloadError, decode, encode, layout, payload_nbytes
from fedvtc.stats import class_statistics, pool_statistics

C, P = 10, 6


def _stats(full=False):
    rng = np.random.default_rng(0)
    return class_statistics(rng.normal(size=(40, P)), rng.choice([1, 4, 7], size=40), full=full)


@pytest.mark.parametrize("full", [False, True])
def test_round_trip(full):
    stats = _stats(full)
    extra = [np.ones((3, 2), np.float32), np.zeros(4, np.float32)]
    out = decode(encode(Payload(stats, extra)), num_classes=C, feature_dim=P, extra_shapes=[(3, 2), (4,)])
    np.testing.assert_array_equal(out.stats.classes, stats.classes)
    np.testing.assert_allclose(out.stats.counts, stats.counts)
    np.testing.assert_allclose(out.stats.means, stats.means, rtol=1e-6)
    np.testing.assert_allclose(out.stats.second, stats.second, rtol=1e-5, atol=1e-7)
    assert out.stats.full == full
    assert [a.shape for a in out.extra] == [(3, 2), (4,)]
    np.testing.assert_array_equal(out.extra[0], extra[0])


def test_one_array_whose_size_is_what_is_sent():
    assert decode(encode(Payload()), num_classes=C, feature_dim=P).stats is None
    stats = _stats()
    k = len(stats)
    arrays = encode(Payload(stats))
    # One array, so one serialization header per message; its values: the 4-value header, class
    # ids, counts, means and variances, 4 bytes each.
    assert len(arrays) == 1
    assert payload_nbytes(arrays) == 4 * (4 + k + k + 2 * k * P)
    # On the wire (Flower's serialization) that is one .npy record: the values plus a 128-byte header.
    assert len(ndarrays_to_parameters(arrays).tensors[0]) == payload_nbytes(arrays) + 128
    with_extra = encode(Payload(stats, [np.zeros((2, 3), np.float32)]))
    assert payload_nbytes(with_extra) == payload_nbytes(arrays) + 4 * (3 + 6)  # shape (ndim, 2, 3) + values


def _set(part: str, change: Callable[[np.ndarray], np.ndarray], full: bool = False) -> list[np.ndarray]:
    """An encoded payload with one named part replaced in place."""
    arrays = encode(Payload(_stats(full)))
    view = layout(arrays, feature_dim=P)[part]
    view[...] = change(view.copy())
    return arrays


def _nan_first(a):
    a.flat[0] = np.nan
    return a


BAD = {
    "nan mean": (lambda: _set("means", _nan_first), "NaN"),
    "inf variance": (lambda: _set("second", lambda a: np.full_like(a, np.inf)), "NaN or infinite"),
    "negative variance": (lambda: _set("second", lambda a: -np.abs(a) - 1), "non-negative"),
    "class out of range": (lambda: _set("classes", lambda a: np.array([1, 4, C])), "out of range"),
    "unsorted classes": (lambda: _set("classes", lambda a: a[::-1]), "sorted"),
    "fractional class ids": (lambda: _set("classes", lambda a: a + 0.5), "integers"),
    "nan class id": (lambda: _set("classes", _nan_first), "NaN"),
    "zero count": (lambda: _set("counts", np.zeros_like), "positive"),
    "absurd count": (lambda: _set("counts", lambda a: np.full_like(a, 1e12)), "more than"),
    "bad version": (lambda: _set("header", lambda a: np.array([99, *a[1:]])), "version"),
    "unknown kind": (lambda: _set("header", lambda a: np.array([a[0], 7, *a[2:]])), "kind"),
    "nan in header": (lambda: _set("header", _nan_first), "version"),
    "lying header": (lambda: _set("header", lambda a: np.array([a[0], a[1], a[2] + 1, a[3]])), "announces"),
    "absurd extra count": (lambda: _set("header", lambda a: np.array([*a[:3], 1e6])), "extra array"),
    "wrong width": (lambda: encode(Payload(class_statistics(np.zeros((4, P + 1)), np.arange(4)))), "announces"),
    "integer array": (lambda: [encode(Payload(_stats()))[0].astype(np.int64)], "float32"),
    "two arrays": (lambda: encode(Payload(_stats())) * 2, "one array"),
    "no array": (lambda: [], "one array"),
    "truncated": (lambda: [encode(Payload(_stats()))[0][:-1]], "announces"),
    "asymmetric covariance": (lambda: _set("second", lambda a: a + np.triu(np.ones((P, P)), 1), full=True), "symmetric"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_malformed_payloads_are_rejected_with_the_reason(name):
    make, reason = BAD[name]
    with pytest.raises(PayloadError, match=reason):
        decode(make(), num_classes=C, feature_dim=P, max_count=1e6)


def test_extras_must_be_expected_and_of_the_expected_shapes():
    extra = encode(Payload(_stats(), [np.ones(3, np.float32)]))
    with pytest.raises(PayloadError, match="unexpected"):
        decode(extra, num_classes=C, feature_dim=P)  # no extras expected
    with pytest.raises(PayloadError, match="shape"):
        decode(extra, num_classes=C, feature_dim=P, extra_shapes=[(4,)])
    with pytest.raises(PayloadError, match="expected 1"):
        decode(encode(Payload(_stats())), num_classes=C, feature_dim=P, extra_shapes=[(3,)])
    assert decode(encode(Payload(_stats())), num_classes=C, feature_dim=P, extra_shapes=[(3,)], extra_optional=True).extra == []
    nan = encode(Payload(_stats(), [np.array([0.0, np.nan, 1.0], np.float32)]))
    with pytest.raises(PayloadError, match="finite"):
        decode(nan, num_classes=C, feature_dim=P, extra_shapes=[(3,)])


def test_layout_names_the_parts():
    stats = _stats()
    parts = layout(encode(Payload(stats, [np.ones((2, 2), np.float32)])), feature_dim=P)
    assert list(parts) == ["header", "classes", "counts", "means", "second", "extra"]
    np.testing.assert_array_equal(parts["classes"], stats.classes)
    assert parts["header"].tolist() == [2, 1, len(stats), 1, 2, 2, 2]
    assert [a.shape for a in parts["extra"]] == [(2, 2)]


def test_means_only_round_trip_and_pooling():
    rng = np.random.default_rng(3)
    parts = [class_statistics(rng.normal(size=(20, P)), rng.choice([0, 2], size=20), means_only=True) for _ in range(2)]
    arrays = encode(Payload(parts[0]))
    assert list(layout(arrays, feature_dim=P)) == ["header", "classes", "counts", "means", "extra"]
    out = decode(arrays, num_classes=C, feature_dim=P).stats
    assert out.means_only and out.second is None
    np.testing.assert_allclose(out.means, parts[0].means, rtol=1e-6)
    pooled = pool_statistics(parts)
    assert pooled.means_only
    with pytest.raises(ValueError):
        pool_statistics([parts[0], _stats()])
