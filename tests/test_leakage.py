"""The privacy evaluation of synthetic images (``fedvtc.privacy.leakage``).

Pure functions on hand-built images (nearest neighbours, SSIM/PSNR, the DCR summary), the config
checks, and one tiny in-process FedVTC run evaluated afterwards, from the API and the command line.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from fedvtc.config import ConfigError, build_settings, to_container
from fedvtc.privacy.leakage import (
    MEMORIZATION_FRACTION,
    PSNR_CAP_DB,
    PrivacyEvalError,
    closest_per_class,
    dcr_summary,
    distribution_summary,
    evaluate_client,
    evaluate_run,
    main,
    measure_leakage,
    nearest_neighbours,
    preflight,
    similarity,
    skip_reason,
)
from fedvtc.state import load_state, state_path
from helpers import REPO, TINY_FEDVTC, TINY_RUN, compose_config


def _images(n: int, seed: int, shape: tuple[int, ...] = (1, 28, 28)) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


# ---- nearest neighbours -------------------------------------------------------------------------


def test_nearest_neighbour_of_a_copy_is_the_original_at_distance_zero() -> None:
    train = _images(40, 0)
    # More than 25 rows, so torch.cdist takes its matrix-product path (error ~1e-2 near zero).
    queries = torch.cat([torch.stack([train[4], train[1] + 0.01, torch.zeros(1, 28, 28)]), train[10:37]])
    nn = nearest_neighbours(queries, train)
    assert nn.index[:2].tolist() == [4, 1] and nn.index[3:].tolist() == list(range(10, 37))
    assert nn.distance[0].item() == 0.0 and nn.distance[3:].abs().max().item() == 0.0  # exactly
    assert nn.distance[1].item() == pytest.approx(0.01 * 28, rel=1e-4)  # 784 pixels off by 0.01
    nearest_to_black = int(train.flatten(1).norm(dim=1).argmin())
    assert nn.index[2].item() == nearest_to_black


def test_same_class_matching_ignores_other_classes_and_marks_missing_ones() -> None:
    train = _images(6, 1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    # A copy of image 4 (class 2) labelled 0: its nearest class-0 image, not itself.
    queries = torch.stack([train[4], train[4], train[0]])
    q_labels = torch.tensor([2, 0, 7])
    nn = nearest_neighbours(queries, train, query_labels=q_labels, reference_labels=labels)
    assert nn.index[0].item() == 4 and nn.distance[0].item() == 0.0
    expected = int((train[:2] - train[4]).flatten(1).norm(dim=1).argmin())
    assert nn.index[1].item() == expected and nn.distance[1].item() > 0
    assert nn.index[2].item() == -1 and math.isinf(nn.distance[2].item())  # class 7 has no record


def test_blocked_search_equals_brute_force() -> None:
    queries, train = _images(37, 2, (3, 4, 4)), _images(23, 3, (3, 4, 4))
    q_labels, labels = torch.arange(37) % 3, torch.arange(23) % 3
    # block_elements=50: two query rows per cdist call, so the blocking is exercised.
    nn = nearest_neighbours(queries, train, query_labels=q_labels, reference_labels=labels, block_elements=50)
    q, r = queries.flatten(1).double().numpy(), train.flatten(1).double().numpy()
    d = np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1))
    d[q_labels.numpy()[:, None] != labels.numpy()[None, :]] = np.inf
    assert nn.index.tolist() == d.argmin(1).tolist()
    np.testing.assert_allclose(nn.distance.numpy(), d.min(1), rtol=1e-5)


# ---- SSIM / PSNR ----------------------------------------------------------------------------------


def _direct_ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """SSIM written out (Wang et al. 2004): Gaussian window 11, sigma 1.5, reflection padding."""
    k, sigma, c = 11, 1.5, x.shape[0]
    ax = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).expand(c, 1, k, k)
    px, py = (F.pad(t[None].double(), [(k - 1) // 2] * 4, mode="reflect") for t in (x, y))
    f = lambda t: F.conv2d(t, w, groups=c)  # noqa: E731
    mx, my = f(px), f(py)
    sxx, syy, sxy = f(px * px) - mx**2, f(py * py) - my**2, f(px * py) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(ssim_map.mean())


def test_similarity_agrees_with_direct_computation() -> None:
    a = _images(3, 4, (3, 32, 32))
    b = (0.7 * a + 0.3 * _images(3, 5, (3, 32, 32))).clamp(0, 1)
    ssim, psnr = similarity(a, b)
    for i in range(3):
        assert ssim[i].item() == pytest.approx(_direct_ssim(a[i], b[i]), abs=1e-6)
        mse = float(((a[i].double() - b[i].double()) ** 2).mean())
        assert psnr[i].item() == pytest.approx(10 * math.log10(1.0 / mse), abs=1e-6)
    # Two constant images: SSIM is the luminance term alone, (2ab + C1) / (a^2 + b^2 + C1).
    ssim, psnr = similarity(torch.full((1, 1, 28, 28), 0.3), torch.full((1, 1, 28, 28), 0.6))
    assert ssim.item() == pytest.approx((2 * 0.18 + 1e-4) / (0.45 + 1e-4), abs=1e-6)
    assert psnr.item() == pytest.approx(10 * math.log10(1 / 0.09), abs=1e-4)


def test_a_copy_has_ssim_one_and_capped_psnr() -> None:
    a = _images(2, 6)
    ssim, psnr = similarity(a, a.clone())
    assert ssim.tolist() == pytest.approx([1.0, 1.0], abs=1e-9)
    assert psnr.tolist() == [PSNR_CAP_DB, PSNR_CAP_DB]


# ---- DCR summary and the whole measurement ----------------------------------------------------


def test_dcr_summary_by_hand() -> None:
    heldout = np.arange(1.0, 101.0)  # 5th percentile (linear) = 1 + 0.05 * 99 = 5.95
    out = dcr_summary([0.0, 0.0, 6.0, 50.0], heldout)
    assert out["heldout_p5"] == pytest.approx(5.95)
    assert out["fraction_below_heldout_quantile"] == 0.5
    assert out["synthetic_median"] == 3.0 and out["heldout_median"] == 50.5
    assert out["median_ratio"] == pytest.approx(3.0 / 50.5)
    assert out["memorization_suspected"] is True
    assert dcr_summary([60.0, 70.0, 80.0], heldout)["memorization_suspected"] is False
    with pytest.raises(ValueError):
        dcr_summary([], heldout)
    with pytest.raises(ValueError):
        dcr_summary([1.0, math.inf], heldout)
    assert distribution_summary([1.0, 2.0, 3.0])["median"] == 2.0


def _pool(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images scattered around one prototype per class, so class and nearest neighbour matter."""
    protos = _images(4, 100)
    labels = torch.arange(n) % 4
    noise = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))
    return (protos[labels] + 0.15 * noise).clamp(0, 1), labels


def test_copies_are_flagged_and_fresh_samples_are_not() -> None:
    train, train_y = _pool(200, 10)
    heldout, heldout_y = _pool(200, 11)
    # Memorized: near-copies of training images (a little pixel noise).
    copies = (train[:120] + 0.005 * _images(120, 12)).clamp(0, 1)
    leak = measure_leakage(train, train_y, copies, train_y[:120], heldout, heldout_y, same_class=True)
    summary = leak.summary()
    assert summary["dcr"]["fraction_below_heldout_quantile"] == 1.0
    assert summary["dcr"]["memorization_suspected"] is True
    assert summary["synthetic"]["ssim"]["mean"] > 0.99 > summary["heldout"]["ssim"]["mean"]
    assert summary["synthetic"]["psnr"]["mean"] > summary["heldout"]["psnr"]["mean"] + 20
    # Not memorized: fresh draws from the same distribution as the held-out images.
    fresh, fresh_y = _pool(200, 13)
    summary = measure_leakage(train, train_y, fresh, fresh_y, heldout, heldout_y, same_class=True).summary()
    assert summary["dcr"]["fraction_below_heldout_quantile"] < MEMORIZATION_FRACTION
    assert summary["dcr"]["memorization_suspected"] is False
    assert 0.8 < summary["dcr"]["median_ratio"] < 1.25


def test_same_class_leaves_missing_classes_unmatched() -> None:
    train, train_y = _pool(40, 20)
    train, train_y = train[train_y < 2], train_y[train_y < 2]  # the client holds classes 0, 1
    synthetic, synthetic_y = _pool(40, 21)  # classes 0..3
    heldout, heldout_y = _pool(12, 22)
    heldout, heldout_y = heldout[heldout_y < 2], heldout_y[heldout_y < 2]
    same = measure_leakage(train, train_y, synthetic, synthetic_y, heldout, heldout_y, same_class=True)
    anyc = measure_leakage(train, train_y, synthetic, synthetic_y, heldout, heldout_y, same_class=False)
    assert same.unmatched_synthetic == 20 and set(same.synthetic.labels.tolist()) == {0, 1}
    assert anyc.unmatched_synthetic == 0 and len(anyc.synthetic.distance) == 40


def test_closest_pairs_take_the_classes_in_turn() -> None:
    distance = np.array([0.1, 0.2, 0.3, 5.0, 0.4, 6.0])
    labels = np.array([0, 0, 0, 1, 0, 2])
    assert closest_per_class(distance, labels, 4).tolist() == [0, 3, 5, 1]
    assert closest_per_class(distance, labels, 10).tolist() == [0, 3, 5, 1, 2, 4]


def test_normalized_images_are_refused() -> None:
    train, train_y = _pool(8, 30)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        measure_leakage((train - 0.13) / 0.3, train_y, train, train_y, train, train_y, same_class=True)


# ---- configuration ---------------------------------------------------------------------------------


def _settings(overrides: list[str], tmp_path: Path, **privacy: object):
    cfg = to_container(compose_config(["num_clients=3", *overrides]))
    cfg["privacy_eval"] = {**cfg["privacy_eval"], **privacy}
    return build_settings(cfg, output_dir=tmp_path)


@pytest.mark.parametrize(
    "values, key",
    [
        ({"clients": [3]}, "privacy_eval.clients"),
        ({"clients": [0, 0]}, "privacy_eval.clients"),
        ({"clients": 0}, "privacy_eval.clients"),
        ({"per_class": 0}, "privacy_eval.per_class"),
        ({"heldout": -1}, "privacy_eval.heldout"),
        ({"plot_pairs": -2}, "privacy_eval.plot_pairs"),
        ({"bogus": 1}, "privacy_eval"),
    ],
)
def test_bad_privacy_values_are_refused(values: dict, key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=key):
        _settings([], tmp_path, **values)


def test_privacy_settings_and_which_runs_they_apply_to(tmp_path: Path) -> None:
    s = _settings([], tmp_path, clients=[2, 0], per_class=3, heldout=0)
    assert (s.privacy_eval.clients, s.privacy_eval.per_class, s.privacy_eval.heldout) == ((2, 0), 3, 0)
    assert skip_reason(s) is None
    preflight(s)  # torchmetrics is installed: nothing to complain about
    assert "no VTC" in skip_reason(_settings(["algorithm=fedproto"], tmp_path, clients=[0]))
    assert "schedule=off" in skip_reason(_settings(["algorithm=fedvtc_no_generator"], tmp_path, clients=[0]))


def test_a_client_without_state_is_a_clear_error(tmp_path: Path) -> None:
    s = _settings([], tmp_path, clients=[0])
    with pytest.raises(PrivacyEvalError, match="no saved state"):
        evaluate_client(s, 0)


# ---- end to end --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_fedvtc_run_is_evaluated(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from fedvtc.inprocess import run_in_process

    monkeypatch.setenv("FEDVTC_DATA_DIR", str(data_dir))
    cfg = compose_config([
        *TINY_RUN, *TINY_FEDVTC, "eval.reference_model=null", "output.synthetic_grid_clients=[]",
        "privacy_eval.clients=[0]", "privacy_eval.per_class=6", "privacy_eval.plot_pairs=4",
    ])
    settings = build_settings(cfg, output_dir=tmp_path)
    # What prepare_run saves beside the results, for the command line below.
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(to_container(cfg))))
    run_in_process(settings)
    assert load_state(state_path(settings.state_dir, 0))["extra"]["global_stats"] is not None

    entry = evaluate_run(settings)
    saved = json.loads((tmp_path / "privacy_client0.json").read_text())
    assert (tmp_path / "privacy_client0.png").stat().st_size > 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["privacy"]["0"] == entry["0"] and "rounds" in results  # added, nothing lost
    assert saved["synthetic_images"] == 6 * len(saved["synthetic_classes"])
    for match in ("same_class", "any_class"):
        part = saved[match]
        for group in ("synthetic", "heldout"):
            assert part[group]["count"] > 0
            assert all(math.isfinite(v) and v >= 0 for v in saved["per_image"][match][group]["dcr"])
            assert -1.0 <= part[group]["ssim"]["min"] <= part[group]["ssim"]["max"] <= 1.0
            assert 0.0 < part[group]["psnr"]["min"] <= PSNR_CAP_DB
        assert 0.0 <= part["dcr"]["fraction_below_heldout_quantile"] <= 1.0
    # Image by image, any-class matching can only find a record at least as close as same-class.
    same, anyc = (saved["per_image"][m]["synthetic"] for m in ("same_class", "any_class"))
    any_dcr = dict(zip(anyc["position"], anyc["dcr"]))
    assert all(any_dcr[p] <= d + 1e-4 for p, d in zip(same["position"], same["dcr"]))
    assert len(anyc["position"]) == saved["synthetic_images"] >= len(same["position"])

    # The command line on the finished run directory, for another client: merged, not replaced.
    assert main([str(tmp_path), "--client", "1", "--per-class", "3"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["privacy"]) == {"0", "1"} and results["privacy"]["1"]["per_class"] == 3
    assert (tmp_path / "privacy_client1.png").exists()

    # benchmarks/synthetic_diversity.py reads the same finished run: no latent noise, no diversity;
    # more noise, more; the real images of the dataset for scale.
    sys.path.insert(0, str(REPO / "benchmarks"))
    import synthetic_diversity

    row = synthetic_diversity.diagnose(tmp_path, 0)
    within = [row[f"synthetic within-class std, noise x{scale:g}"] for scale in synthetic_diversity.SCALES]
    assert within[0] == pytest.approx(0.0, abs=1e-6) and within == sorted(within) and within[-1] > 0
    assert row["class distance / class radius"] > 0
    assert 0 < row["psi(g(x)) within-class std"] and 0 < row["real within-class std"] < 0.5
