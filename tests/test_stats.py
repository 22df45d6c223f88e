"""Per-class statistics, their exact pooling and sampling from them."""

import numpy as np
import pytest
import torch

from fedvtc.stats import cap_class_counts, cap_weights, class_statistics, pool_statistics, sample_latents


def _clients(rng, num_clients=4, p=5, num_classes=6):
    """Random features for several clients, each holding a random subset of classes."""
    parts = []
    for _ in range(num_clients):
        n = rng.integers(20, 60)
        classes = rng.choice(num_classes, size=rng.integers(1, num_classes), replace=False)
        y = rng.choice(classes, size=n)
        z = rng.normal(size=(n, p)) * rng.uniform(0.5, 3) + rng.normal(size=p) * 4
        parts.append((z, y))
    return parts


@pytest.mark.parametrize("full", [False, True])
def test_pooled_equals_statistics_of_concatenated_data(full):
    rng = np.random.default_rng(0)
    parts = _clients(rng)
    pooled = pool_statistics([class_statistics(z, y, full=full) for z, y in parts])
    z_all = np.concatenate([z for z, _ in parts])
    y_all = np.concatenate([y for _, y in parts])
    direct = class_statistics(z_all, y_all, full=full)
    np.testing.assert_array_equal(pooled.classes, direct.classes)
    np.testing.assert_allclose(pooled.counts, direct.counts)
    np.testing.assert_allclose(pooled.means, direct.means, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(pooled.second, direct.second, rtol=1e-9, atol=1e-9)


def test_statistics_match_numpy():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(50, 3))
    y = np.array([0] * 20 + [2] * 30)
    s = class_statistics(z, y, full=True)
    assert s.classes.tolist() == [0, 2]
    np.testing.assert_allclose(s.means[1], z[20:].mean(axis=0))
    np.testing.assert_allclose(s.second[1], np.cov(z[20:].T, bias=True))
    np.testing.assert_allclose(s.variances[0], z[:20].var(axis=0))


def test_absent_classes_stay_absent_and_dense_fills_defaults():
    a = class_statistics(np.ones((3, 2)), np.array([1, 1, 1]))
    b = class_statistics(np.zeros((2, 2)), np.array([3, 3]))
    pooled = pool_statistics([a, b])
    assert pooled.classes.tolist() == [1, 3]
    present, means, variances = pooled.dense(5)
    assert present.tolist() == [False, True, False, True, False]
    assert np.all(variances[~present] == 1.0) and np.all(means[~present] == 0.0)


def test_pooling_rejects_mixed_kinds():
    z, y = np.ones((4, 2)), np.zeros(4, dtype=int)
    with pytest.raises(ValueError):
        pool_statistics([class_statistics(z, y), class_statistics(z, y, full=True)])


@pytest.mark.parametrize("full", [False, True])
def test_sampling_reproduces_the_gaussians(full):
    rng = np.random.default_rng(2)
    p = 4
    mean = torch.tensor(rng.normal(size=(2, p)), dtype=torch.float64)
    a = rng.normal(size=(p, p))
    cov = torch.tensor(a @ a.T + np.eye(p), dtype=torch.float64)
    second = torch.stack([cov, cov]) if full else torch.stack([cov.diagonal(), cov.diagonal()])
    labels = torch.ones(200_000, dtype=torch.long)
    z = sample_latents(mean, second, labels, generator=torch.Generator().manual_seed(0), shrinkage=0.0,
                       variance_floor=1e-12)
    np.testing.assert_allclose(z.mean(0).numpy(), mean[1].numpy(), atol=0.03)
    emp = np.cov(z.numpy().T)
    target = cov.numpy() if full else np.diag(cov.diagonal().numpy())
    np.testing.assert_allclose(emp, target, atol=0.1 * np.abs(target).max())


@pytest.mark.parametrize(
    "weights, share",
    [([1, 1, 1, 97], 0.3), ([50, 30, 10, 5, 5], 0.25), ([5, 4, 3, 2, 1], 0.5), ([1e6, 1, 1, 1, 1, 1], 0.2)],
)
def test_cap_weights_bounds_every_share_and_keeps_small_weights(weights, share) -> None:
    w = np.asarray(weights, float)
    capped = cap_weights(w, share)
    assert capped.max() <= share * capped.sum() + 1e-9
    threshold = capped.max()
    np.testing.assert_array_equal(capped[w < threshold], w[w < threshold])  # only the top is lowered
    assert np.all(capped <= w)


def test_cap_weights_edge_cases() -> None:
    np.testing.assert_array_equal(cap_weights([3, 3, 4], 0.5), [3, 3, 4])  # already within the bound
    np.testing.assert_array_equal(cap_weights([10, 1], 0.3), [1, 1])  # infeasible: equal weights
    with pytest.raises(ValueError):
        cap_weights([1, -1], 0.5)
    with pytest.raises(ValueError):
        cap_weights([1, 1], 0.0)


def test_cap_class_counts_caps_per_class() -> None:
    rng = np.random.default_rng(0)
    a = class_statistics(rng.normal(size=(20, 3)), np.array([0] * 10 + [1] * 10))
    b = class_statistics(rng.normal(size=(1000, 3)), np.array([0] * 990 + [2] * 10))
    c = class_statistics(rng.normal(size=(30, 3)), np.array([0] * 20 + [1] * 10))
    capped = cap_class_counts([a, b, c], 0.5)
    # class 0: 10, 990, 20 -> the 990 is lowered to 30 (= 0.5 * (10 + 30 + 20))
    assert capped[1].counts[0] == pytest.approx(30.0)
    np.testing.assert_array_equal(capped[0].counts, a.counts)
    assert capped[1].counts[1] == b.counts[1]  # class 2: held by one client only, bound infeasible, kept
    np.testing.assert_array_equal(capped[1].means, b.means)
