"""Differential privacy of the shared statistics (``fedvtc.privacy.dp``): the mechanism, its
post-processing, the accountant against the closed form, the config checks, and a tiny DP run."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedvtc.config import ConfigError, build_settings
from fedvtc.payload import Payload, decode, encode
from fedvtc.privacy import dp
from fedvtc.stats import class_statistics
from helpers import TINY_FEDVTC, TINY_RUN, compose_config

dp_accounting = pytest.importorskip("dp_accounting")

DELTA = 1e-5


def _features(n: int, p: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- the mechanism ------------------------------------------------------------------------------


def test_clipping_bounds_norms_and_keeps_short_vectors_and_directions() -> None:
    x = _features(500, 16, scale=1.0) * torch.linspace(0.01, 3.0, 500)[:, None]
    x[0] = 0.0  # a zero vector must stay zero, not become NaN
    c = 2.0
    clipped = dp.clip_features(x, c)
    norms, clipped_norms = x.norm(dim=1), clipped.norm(dim=1)
    assert torch.all(clipped_norms <= c * (1 + 1e-12))
    short = norms <= c
    assert short.any() and (~short).any()
    assert torch.equal(clipped[short], x[short])
    assert torch.allclose(clipped_norms[~short], torch.full_like(clipped_norms[~short], c))
    cosine = (clipped[~short] * x[~short]).sum(1) / (clipped_norms[~short] * norms[~short])
    assert torch.allclose(cosine, torch.ones_like(cosine))
    with pytest.raises(ValueError):
        dp.clip_features(x, 0.0)


def test_class_sums_are_the_per_class_sufficient_statistics() -> None:
    x = _features(40, 5)
    y = torch.arange(40) % 3  # classes 0..2 of C = 4: class 3 absent
    s = dp.class_sums(x, y, 4)
    assert s.counts.tolist() == [14.0, 13.0, 13.0, 0.0]
    assert torch.allclose(s.sums[1], x[y == 1].sum(0))
    assert torch.allclose(s.squares[2], (x[y == 2] ** 2).sum(0))
    assert torch.all(s.sums[3] == 0) and torch.all(s.squares[3] == 0)
    full = dp.class_sums(x, y, 4, full=True)
    assert torch.allclose(full.squares[0], x[y == 0].T @ x[y == 0])


def test_noise_has_the_stated_standard_deviations() -> None:
    z, c, C, p = 1.7, 0.5, 4000, 16
    exact = dp.class_sums(torch.zeros(0, p), torch.zeros(0, dtype=torch.long), C)
    noisy = dp.add_noise(exact, clip=c, noise_multiplier=z, generator=_gen(1))
    for noise, std in ((noisy.counts, z), (noisy.sums, z * c), (noisy.squares, z * c**2)):
        n = noise.numel()
        assert abs(float(noise.mean())) < 4 * std / math.sqrt(n)
        # The sample std of n normal draws is within 4 standard errors (std / sqrt(2n)) of std.
        assert abs(float(noise.std()) - std) < 4 * std / math.sqrt(2 * n), (float(noise.std()), std)
    again = dp.add_noise(exact, clip=c, noise_multiplier=z, generator=_gen(1))
    other = dp.add_noise(exact, clip=c, noise_multiplier=z, generator=_gen(2))
    assert torch.equal(again.sums, noisy.sums) and not torch.equal(other.sums, noisy.sums)


def test_full_second_moment_noise_is_symmetric_with_the_stated_std() -> None:
    z, c, C, p = 0.8, 1.5, 60, 12
    exact = dp.class_sums(torch.zeros(0, p), torch.zeros(0, dtype=torch.long), C, full=True)
    noise = dp.add_noise(exact, clip=c, noise_multiplier=z, generator=_gen(3)).squares
    assert torch.equal(noise, noise.transpose(1, 2))
    rows, cols = torch.triu_indices(p, p)
    upper = noise[:, rows, cols]  # each distinct entry once, diagonal included
    n = upper.numel()
    assert abs(float(upper.std()) - z * c**2) < 4 * z * c**2 / math.sqrt(2 * n)


@pytest.mark.parametrize("full", [False, True])
def test_zero_noise_reproduces_the_statistics_of_clipped_features(full: bool) -> None:
    c = 4.0
    x = _features(300, 6, seed=4)
    y = torch.randint(0, 5, (300,), generator=_gen(5))
    y[y == 3] = 1  # class 3 absent: it must not be released
    stats = dp.private_class_statistics(
        x, y, num_classes=7, clip=c, noise_multiplier=0.0, generator=_gen(0), full=full, variance_floor=1e-12
    )
    expected = class_statistics(dp.clip_features(x, c), y, full=full)
    assert stats.classes.tolist() == expected.classes.tolist() == [0, 1, 2, 4]
    np.testing.assert_array_equal(stats.counts, expected.counts)
    np.testing.assert_allclose(stats.means, expected.means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats.second, expected.second, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("full", [False, True])
def test_noisy_statistics_decode_as_a_valid_payload(full: bool) -> None:
    c, z, C, p, floor = 2.0, 4.0, 10, 8, 1e-3
    x = _features(200, p, seed=6)
    y = torch.randint(0, 4, (200,), generator=_gen(7))  # classes 4..9 absent
    stats = dp.private_class_statistics(
        x, y, num_classes=C, clip=c, noise_multiplier=z, generator=_gen(8), full=full, variance_floor=floor
    )
    assert len(stats) >= 1
    assert np.all(stats.counts >= dp.release_threshold(z, 3.0))
    assert np.all(np.linalg.norm(stats.means, axis=1) <= c * (1 + 1e-9))
    variances = stats.variances
    assert np.all(variances >= floor * (1 - 1e-6)) and np.all(variances <= c**2 * (1 + 1e-6))
    decoded = decode(encode(Payload(stats)), num_classes=C, feature_dim=p).stats
    assert decoded is not None and decoded.full == full
    assert decoded.classes.tolist() == stats.classes.tolist()
    np.testing.assert_allclose(decoded.means, stats.means, rtol=1e-5, atol=1e-6)
    if full:
        assert np.linalg.eigvalsh(decoded.second).min() > 0  # positive definite: a Cholesky factor exists


def test_classes_below_the_threshold_are_dropped_but_one_class_is_always_sent() -> None:
    x = _features(30, 4, seed=9)
    y = torch.zeros(30, dtype=torch.long)  # only class 0 of 2000
    stats = dp.private_class_statistics(
        x, y, num_classes=2000, clip=1.0, noise_multiplier=1.0, generator=_gen(10), count_threshold=3.0
    )
    absent_sent = len(set(stats.classes.tolist()) - {0})
    assert 0 in stats.classes
    assert absent_sent <= 12  # P(N(0, 1) >= 3) = 0.13%: about 3 of 1999 absent classes, rarely 12
    none_pass = dp.private_class_statistics(
        x, y, num_classes=5, clip=1.0, noise_multiplier=1.0, generator=_gen(11), count_threshold=1000.0
    )
    assert len(none_pass) == 1 and none_pass.counts[0] >= 1
    with pytest.raises(ValueError):
        dp.to_class_stats(dp.class_sums(x, y, 2), clip=1.0, min_count=0.5, variance_floor=1e-3)


# ---- accounting ---------------------------------------------------------------------------------


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _balle_wang_delta(epsilon: float, sigma: float) -> float:
    """delta(epsilon) of the Gaussian mechanism, sensitivity 1, noise std sigma (Balle & Wang 2018)."""
    return _phi(1 / (2 * sigma) - epsilon * sigma) - math.exp(epsilon) * _phi(-1 / (2 * sigma) - epsilon * sigma)


def _balle_wang_epsilon(sigma: float, delta: float) -> float:
    lo, hi = 0.0, 200.0  # delta(epsilon) decreases in epsilon: bisect
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _balle_wang_delta(mid, sigma) > delta else (lo, mid)
    return hi


def test_closed_form_known_value() -> None:
    # The analytic Gaussian mechanism at sigma = 1, delta = 1e-5 (Balle & Wang 2018, Eq. 6).
    assert _balle_wang_epsilon(1.0, DELTA) == pytest.approx(4.37718, abs=1e-5)


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.5])
def test_accountant_epsilon_matches_the_closed_form(sigma: float) -> None:
    # One release at z is one Gaussian mechanism of multiplier z / sqrt(3).
    z = sigma * math.sqrt(dp.RELEASED_PARTS)
    assert dp.accounting_noise_multiplier(z) == pytest.approx(sigma)
    eps = dp.epsilon_spent(z, 1, DELTA)
    exact = _balle_wang_epsilon(sigma, DELTA)
    assert eps == pytest.approx(exact, rel=1e-4)
    assert eps >= exact * (1 - 1e-9)  # the PLD accountant errs on the safe side
    assert _balle_wang_delta(eps, sigma) <= DELTA * (1 + 1e-6)


def test_composition_over_rounds_equals_one_release_at_z_over_sqrt_r() -> None:
    z, rounds = 3.0, 4
    composed = dp.epsilon_spent(z, rounds, DELTA)
    assert composed == pytest.approx(dp.epsilon_spent(z / math.sqrt(rounds), 1, DELTA), rel=1e-6)
    assert composed == pytest.approx(_balle_wang_epsilon(z / math.sqrt(3 * rounds), DELTA), rel=1e-4)
    # The same composition done step by step (convolving four PLDs), not by the sqrt(R) identity.
    events = [dp_accounting.GaussianDpEvent(dp.accounting_noise_multiplier(z))] * rounds
    accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=dp.PLD_DISCRETIZATION)
    stepwise = accountant.compose(dp_accounting.ComposedDpEvent(events)).get_epsilon(DELTA)
    assert composed == pytest.approx(stepwise, rel=2e-3)
    spent = [dp.epsilon_spent(z, r, DELTA) for r in range(4)]
    assert spent[0] == 0.0 and spent[1] < spent[2] < spent[3]


@pytest.mark.parametrize("target,rounds", [(8.0, 5), (1.0, 3)])
def test_target_epsilon_to_noise_multiplier_round_trips(target: float, rounds: int) -> None:
    z = dp.noise_multiplier_for_epsilon(target, rounds, DELTA)
    assert target * (1 - 1e-3) <= dp.epsilon_spent(z, rounds, DELTA) <= target
    assert dp.epsilon_spent(z * 0.99, rounds, DELTA) > target  # and no much smaller z would do
    assert dp.resolve_noise_multiplier(None, target, rounds, DELTA) == z
    assert dp.resolve_noise_multiplier(1.5, None, rounds, DELTA) == 1.5
    with pytest.raises(ValueError):
        dp.resolve_noise_multiplier(1.5, target, rounds, DELTA)


# ---- configuration --------------------------------------------------------------------------------

# DP needs a private VTC (a shared one would upload weights trained on private images, unnoised).
ON = ["dp.enabled=true", "algorithm=fedvtc_private_vtc"]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (ON, "exactly one of dp.noise_multiplier"),
        (ON + ["dp.noise_multiplier=1", "dp.target_epsilon=8"], "exactly one of dp.noise_multiplier"),
        (ON + ["dp.noise_multiplier=-1"], "dp.noise_multiplier must be null or > 0"),
        (ON + ["dp.target_epsilon=0"], "dp.target_epsilon must be null or > 0"),
        (ON + ["dp.noise_multiplier=1", "dp.clip=0"], "dp.clip must be > 0"),
        (ON + ["dp.noise_multiplier=1", "dp.delta=1"], "dp.delta must be in (0, 1)"),
        (ON + ["dp.noise_multiplier=1", "dp.delta=0"], "dp.delta must be in (0, 1)"),
        (ON + ["dp.noise_multiplier=1", "dp.count_threshold=-1"], "dp.count_threshold must be >= 0"),
        (ON + ["dp.noise_multiplier=1", "algorithm=fedproto"], "implemented for algorithm=fedvtc"),
        (["dp.enabled=true", "dp.noise_multiplier=1", "algorithm=fedvtc"], "algorithm.shared_vtc=false"),
        (["dp.enabled=sometimes"], "dp.enabled must be true or false"),
        (["+dp.epsilon=3"], "unknown key(s) ['epsilon']"),
    ],
)
def test_bad_dp_values_fail_before_training(overrides: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        build_settings(compose_config(overrides), output_dir=tmp_path)
    assert message in str(error.value)


def test_valid_dp_config_builds_with_full_covariance(tmp_path: Path) -> None:
    cfg = compose_config([*ON, "dp.target_epsilon=4", "algorithm.covariance=full"])
    settings = build_settings(cfg, output_dir=tmp_path)
    assert settings.dp.enabled and settings.dp.target_epsilon == 4 and settings.dp.noise_multiplier is None


def test_missing_dp_accounting_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # makes `import dp_accounting` fail
    with pytest.raises(ImportError, match=r'pip install -e "\.\[privacy\]"'):
        dp.require_dp_accounting()
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[privacy\]"'):
        build_settings(compose_config(ON + ["dp.noise_multiplier=1"]), output_dir=tmp_path)
    # Without DP nothing needs it.
    assert not build_settings(compose_config(), output_dir=tmp_path).dp.enabled


# ---- a tiny run ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dp_run_reports_growing_epsilon(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from flwr.server.client_manager import SimpleClientManager

    from fedvtc.apps import build_strategy
    from fedvtc.inprocess import DirectProxy

    monkeypatch.setenv("FEDVTC_DATA_DIR", str(data_dir))
    cfg = compose_config([
        *TINY_RUN, *TINY_FEDVTC,
        "eval.reference_model=null",  # the reference classifier's training would be 90% of the time
        "dp.enabled=true", "dp.target_epsilon=8", "dp.delta=1e-4", "algorithm=fedvtc_private_vtc",
    ])
    settings = build_settings(cfg, output_dir=tmp_path)
    # run_in_process's loop, keeping each client's fit metrics (results.json keeps a selection).
    manager = SimpleClientManager()
    for cid in range(settings.num_clients):
        manager.register(DirectProxy(cid, settings))
    strategy = build_strategy(settings)
    parameters = strategy.initialize_parameters(manager)
    epsilons: dict[int, list[float]] = {cid: [] for cid in range(settings.num_clients)}
    for rnd in (1, 2):
        fits = sorted(strategy.configure_fit(rnd, parameters, manager), key=lambda f: int(f[0].cid))
        results = [(proxy, proxy.fit(ins, None, rnd)) for proxy, ins in fits]
        for _, res in results:
            assert res.metrics["dp_delta"] == 1e-4
            epsilons[int(res.metrics["cid"])].append(float(res.metrics["dp_epsilon"]))
        parameters, _ = strategy.aggregate_fit(rnd, results, [])
        evals = strategy.configure_evaluate(rnd, parameters, manager)
        strategy.aggregate_evaluate(rnd, [(p, p.evaluate(ins, None, rnd)) for p, ins in evals], [])
    rounds = strategy.recorder.rounds
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["accepted"] == 3 and not r["rejected"] for r in rounds), rounds[-1]["rejected"]
    assert 0.0 <= rounds[-1]["global_accuracy"] <= 1.0
    for cid, (first, second) in epsilons.items():
        assert 0 < first < second <= 8.0, (cid, first, second)
        assert second == pytest.approx(8.0, rel=1e-3)  # the budget covers exactly num_rounds releases
