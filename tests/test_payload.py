"""The payload codec: round trips and every kind of malformed input."""

import numpy as np
import pytest

from fedvtc.payload import Payload, PayloadError, decode, encode, payload_nbytes
from fedvtc.stats import class_statistics

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


def test_empty_payload_and_size():
    arrays = encode(Payload())
    assert decode(arrays, num_classes=C, feature_dim=P).stats is None
    stats = _stats()
    k = len(stats)
    # header + class ids (int64) + counts, means, variances (float32)
    assert payload_nbytes(encode(Payload(stats))) == 4 * 8 + k * 8 + k * 4 + 2 * k * P * 4


def _corrupt(index, value):
    arrays = encode(Payload(_stats()))
    arrays[index] = value(arrays[index])
    return arrays


BAD = {
    "nan mean": (3, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.nan, a).astype(np.float32)),
    "inf variance": (4, lambda a: np.full_like(a, np.inf)),
    "wrong width": (3, lambda a: np.zeros((a.shape[0], P + 1), np.float32)),
    "negative variance": (4, lambda a: -np.abs(a) - 1),
    "class out of range": (1, lambda a: np.array([1, 4, C], np.int64)),
    "unsorted classes": (1, lambda a: a[::-1].copy()),
    "float class ids": (1, lambda a: a.astype(np.float32)),
    "zero count": (2, lambda a: np.zeros_like(a)),
    "absurd count": (2, lambda a: np.full_like(a, 1e12)),
    "integer means": (3, lambda a: a.astype(np.int64)),
    "bad version": (0, lambda a: np.array([99, *a[1:]], np.int64)),
    "lying header": (0, lambda a: np.array([a[0], a[1], a[2] + 1, a[3]], np.int64)),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_malformed_payloads_are_rejected(name):
    index, change = BAD[name]
    with pytest.raises(PayloadError):
        decode(_corrupt(index, change), num_classes=C, feature_dim=P, max_count=1e6)


def test_missing_arrays_and_unexpected_extras_are_rejected():
    arrays = encode(Payload(_stats()))
    with pytest.raises(PayloadError):
        decode(arrays[:-1], num_classes=C, feature_dim=P)
    with pytest.raises(PayloadError):
        decode([], num_classes=C, feature_dim=P)
    extra = encode(Payload(_stats(), [np.ones(3, np.float32)]))
    with pytest.raises(PayloadError):
        decode(extra, num_classes=C, feature_dim=P)  # no extras expected
    with pytest.raises(PayloadError):
        decode(extra, num_classes=C, feature_dim=P, extra_shapes=[(4,)])


def test_asymmetric_covariance_is_rejected():
    arrays = encode(Payload(_stats(full=True)))
    arrays[4] = arrays[4].copy()
    arrays[4][0, 0, 1] += 10.0
    with pytest.raises(PayloadError, match="symmetric"):
        decode(arrays, num_classes=C, feature_dim=P)


def test_means_only_round_trip_and_pooling():
    rng = np.random.default_rng(3)
    parts = [class_statistics(rng.normal(size=(20, P)), rng.choice([0, 2], size=20), means_only=True) for _ in range(2)]
    arrays = encode(Payload(parts[0]))
    assert len(arrays) == 4  # header, class ids, counts, means
    out = decode(arrays, num_classes=C, feature_dim=P).stats
    assert out.means_only and out.second is None
    np.testing.assert_allclose(out.means, parts[0].means, rtol=1e-6)
    from fedvtc.stats import pool_statistics

    pooled = pool_statistics(parts)
    assert pooled.means_only
    with pytest.raises(ValueError):
        pool_statistics([parts[0], _stats()])
