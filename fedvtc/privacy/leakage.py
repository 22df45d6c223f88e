"""What a client's synthetic images reveal about its real training images.

A FedVTC client trains its VTC decoder with a reconstruction loss on its own images; the worry is
that the decoder memorizes them and that its synthetic images are near-copies. This module
measures that, in pixel space ([0, 1], the dataset normalization undone):

- every synthetic image is matched to its nearest real training image of the client (L2 distance
  over all pixels and channels): its *distance to the closest record* (DCR), and the SSIM and PSNR
  of that pair;
- the same is done for real images the client never trained on (its local test split): their DCR,
  SSIM and PSNR are the level that merely *resembling* the training data gives;
- the two DCR distributions are compared. A generator that memorizes produces images much closer
  to the training set than fresh real images are; one that does not gives DCRs at or above the
  held-out ones. The summary reports both medians and 5th percentiles, and the fraction of
  synthetic images at most as far as the held-out 5th percentile (about 5% when the synthetic
  images are no closer than unseen real data; near 100% for copies).

Matching is reported two ways. ``same_class`` (the headline): each synthetic image of a class the
client holds against the client's training images of that class, which is the comparison an
attacker who knows the label would make; synthetic images of classes the client lacks have no
same-class record to leak and are counted, not matched. ``any_class``: every synthetic image against
every training image, the conservative bound (a missing-class image that copies some other training
image shows up here). Held-out images are matched by the same rule in each case.

The maths are pure functions on tensors (``nearest_neighbours``, ``similarity``, ``dcr_summary``,
``measure_leakage``); ``evaluate_client`` / ``evaluate_run`` load a finished run's client state and
write ``privacy_client<id>.json`` / ``.png`` and the ``privacy`` entry of ``results.json``; the
command line does the same for a run directory::

    python -m fedvtc.privacy.leakage RUN_DIR --client 0

SSIM and PSNR come from torchmetrics (``pip install -e ".[privacy]"``), imported only when used.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fedvtc.config import ConfigError, RunSettings, build_settings, resolve_device
from fedvtc.data import DatasetNotFoundError, to_unit_pixels
from fedvtc.results import write_json_atomic
from fedvtc.seeding import PRIVACY_EVAL, numpy_rng, torch_generator

log = logging.getLogger("fedvtc")

# PSNR of identical images is infinite; JSON has no infinity, and any value above ~48 dB already
# means "equal up to 8-bit quantization" (a one-level error on every pixel gives 48.1 dB).
PSNR_CAP_DB = 100.0
# The held-out DCR quantile that synthetic DCRs are compared against.
DCR_QUANTILE = 0.05
# Memorization is flagged when more than this fraction of synthetic images is at most as far from
# the training set as the closest 5% of unseen real images: twice what data no closer than unseen
# real images would give, so sampling noise of a few hundred images does not trigger it.
MEMORIZATION_FRACTION = 0.10
# Largest distance-matrix block computed at once (elements): 64 MB of float32.
_BLOCK_ELEMENTS = 1 << 24
_PIXEL_TOLERANCE = 1e-4
_PIP_HINT = 'pip install -e ".[privacy]"  (or: pip install torchmetrics)'


class PrivacyEvalError(RuntimeError):
    """The privacy evaluation cannot run for a client; the message says why and what to do."""


# ---- pure functions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Neighbours:
    """Nearest reference image of each query.

    Attributes:
        index: (N,) int64 position in the reference set, -1 where the query had no candidate
            (same-class matching and a class absent from the reference).
        distance: (N,) L2 distance to that image, ``inf`` where there was no candidate.
    """

    index: torch.Tensor
    distance: torch.Tensor


def nearest_neighbours(
    queries: torch.Tensor,
    reference: torch.Tensor,
    *,
    query_labels: torch.Tensor | None = None,
    reference_labels: torch.Tensor | None = None,
    block_elements: int = _BLOCK_ELEMENTS,
) -> Neighbours:
    """Nearest reference image of each query by L2 distance over all pixels and channels.

    Args:
        queries: (N, ...) images (any shape after the first axis; flattened).
        reference: (M, ...) images of the same per-image shape.
        query_labels, reference_labels: (N,) and (M,) class ids; when given (both), a query is only
            matched to reference images of its own class.
        block_elements: largest number of distance-matrix entries held at once; queries are
            processed in blocks of ``block_elements // M`` rows (one ``torch.cdist`` per block).
    """
    if (query_labels is None) != (reference_labels is None):
        raise ValueError("give both query_labels and reference_labels, or neither")
    q = queries.flatten(1).float()
    r = reference.flatten(1).float().to(q.device)
    if len(q) and len(r) and q.shape[1] != r.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} values per image, the reference {r.shape[1]}")
    index = torch.full((len(q),), -1, dtype=torch.long, device=q.device)
    distance = torch.full((len(q),), math.inf, device=q.device)
    if len(q) == 0 or len(r) == 0:
        return Neighbours(index, distance)
    rows = max(1, block_elements // len(r))
    for lo in range(0, len(q), rows):
        block = torch.cdist(q[lo : lo + rows], r)
        if query_labels is not None:
            qy = query_labels[lo : lo + rows].to(q.device)
            block = block.masked_fill(qy[:, None] != reference_labels.to(q.device)[None, :], math.inf)
        best, where = block.min(dim=1)
        index[lo : lo + rows] = torch.where(torch.isfinite(best), where, torch.full_like(where, -1))
    # cdist's matrix-product form loses ~1e-3 near zero; recompute the chosen pairs directly so
    # that an exact copy reports exactly 0.
    found = index >= 0
    distance[found] = (q[found] - r[index[found]]).norm(dim=1)
    return Neighbours(index, distance)


def _metric_functions() -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    """torchmetrics' SSIM and PSNR, or a PrivacyEvalError that says how to install them."""
    try:
        import fedvtc.tv  # noqa: F401  (torchmetrics imports torchvision: patch it first, see tv.py)
        from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
    except ImportError as error:
        raise PrivacyEvalError(f"the privacy evaluation needs torchmetrics ({error}); {_PIP_HINT}") from error
    return structural_similarity_index_measure, peak_signal_noise_ratio


def require_metrics() -> None:
    """Raise ``PrivacyEvalError`` (with the pip command) when torchmetrics is not installed."""
    _metric_functions()


def similarity(a: torch.Tensor, b: torch.Tensor, *, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM and PSNR of each pair ``(a[i], b[i])`` of images in [0, 1].

    Args:
        a, b: (N, C, H, W) pixel tensors in [0, 1] (data range 1).
        batch_size: pairs per torchmetrics call (SSIM holds several filtered copies of a batch).

    Returns:
        ssim: (N,) float64 (on the CPU) structural similarity: Gaussian window 11, sigma 1.5, K1 0.01,
            K2 0.03, reflection padding, the mean over pixels and channels; 1 for identical images.
        psnr: (N,) float64 peak signal-to-noise ratio in dB, capped at ``PSNR_CAP_DB`` (identical images).
    """
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"need two (N, C, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    ssim_fn, psnr_fn = _metric_functions()
    if len(a) == 0:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    ssim, psnr = [], []
    for lo in range(0, len(a), batch_size):
        # float64 on the CPU: in float32 the windowed covariance of near-constant images cancels to
        # ~1e-7, an SSIM error of ~2e-4 (C2 = 9e-4); the pairs are few and small, so this is cheap.
        x, y = a[lo : lo + batch_size].cpu().double(), b[lo : lo + batch_size].cpu().double()
        ssim.append(ssim_fn(x, y, data_range=1.0, reduction="none"))
        psnr.append(psnr_fn(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3)))
    return torch.cat(ssim), torch.cat(psnr).clamp(max=PSNR_CAP_DB)


def distribution_summary(values: np.ndarray | Sequence[float]) -> dict[str, float | int]:
    """Count, mean, median, 5th percentile, min and max of a non-empty set of finite values."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError("need a non-empty set of finite values")
    return {
        "count": int(v.size),
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "p5": float(np.quantile(v, 0.05)),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def dcr_summary(
    synthetic: np.ndarray | Sequence[float],
    heldout: np.ndarray | Sequence[float],
    *,
    quantile: float = DCR_QUANTILE,
    flag_fraction: float = MEMORIZATION_FRACTION,
) -> dict[str, Any]:
    """Compare distances to the closest training record of synthetic and of held-out real images.

    Args:
        synthetic: DCR of each synthetic image (non-empty, finite).
        heldout: DCR of each held-out real image (non-empty, finite).
        quantile: the held-out quantile synthetic DCRs are compared against (0.05: 5th percentile).
        flag_fraction: ``memorization_suspected`` is set when more than this fraction of synthetic
            images lies at or below that quantile (``quantile`` is what no closer data gives).

    Returns:
        medians and 5th percentiles of both, ``median_ratio`` (synthetic / held-out; below 1 means
        the synthetic images sit closer to the training set than unseen real images; None when the
        held-out median is 0), ``fraction_below_heldout_quantile``, ``expected_fraction`` and
        ``memorization_suspected``.
    """
    syn = np.asarray(synthetic, dtype=np.float64)
    held = np.asarray(heldout, dtype=np.float64)
    for name, v in (("synthetic", syn), ("heldout", held)):
        if v.size == 0 or not np.all(np.isfinite(v)):
            raise ValueError(f"{name} distances must be a non-empty set of finite values")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    threshold = float(np.quantile(held, quantile))
    # "At most" rather than "below": ties at 0 (exact copies vs duplicated real images) must count.
    fraction = float(np.mean(syn <= threshold))
    held_median = float(np.median(held))
    return {
        "synthetic_median": float(np.median(syn)),
        "synthetic_p5": float(np.quantile(syn, 0.05)),
        "heldout_median": held_median,
        "heldout_p5": float(np.quantile(held, 0.05)),
        "heldout_quantile": quantile,
        "heldout_threshold": threshold,
        "median_ratio": float(np.median(syn)) / held_median if held_median > 0 else None,
        "fraction_below_heldout_quantile": fraction,
        "expected_fraction": quantile,
        "memorization_suspected": fraction > flag_fraction,
    }


@dataclass(frozen=True)
class MatchedSet:
    """The images of one set (synthetic or held-out) that had a nearest training image.

    Attributes:
        positions: (n,) indices into the set of the matched images.
        labels: (n,) their class ids.
        neighbour: (n,) index of each one's nearest training image.
        distance: (n,) L2 distance to it (the DCR).
        ssim: (n,) SSIM of the pair.
        psnr: (n,) PSNR of the pair in dB (capped).
    """

    positions: np.ndarray
    labels: np.ndarray
    neighbour: np.ndarray
    distance: np.ndarray
    ssim: np.ndarray
    psnr: np.ndarray

    def summary(self) -> dict[str, Any]:
        """Distribution summaries of DCR, SSIM and PSNR."""
        return {
            "count": int(len(self.distance)),
            "dcr": distribution_summary(self.distance),
            "ssim": distribution_summary(self.ssim),
            "psnr": distribution_summary(self.psnr),
        }

    def per_image(self) -> dict[str, list]:
        """Per-image values, rounded, for the JSON file (to re-plot or re-analyse)."""
        return {
            "position": self.positions.tolist(),
            "label": self.labels.tolist(),
            "neighbour": self.neighbour.tolist(),
            "dcr": np.round(self.distance, 5).tolist(),
            "ssim": np.round(self.ssim, 5).tolist(),
            "psnr": np.round(self.psnr, 4).tolist(),
        }


@dataclass(frozen=True)
class Leakage:
    """Synthetic and held-out images matched to the training set by one rule.

    Attributes:
        match: ``same_class`` or ``any_class``.
        synthetic: the matched synthetic images.
        heldout: the matched held-out real images.
        unmatched_synthetic: synthetic images with no candidate (same-class: classes the client lacks).
        unmatched_heldout: held-out images with no candidate.
    """

    match: str
    synthetic: MatchedSet
    heldout: MatchedSet
    unmatched_synthetic: int
    unmatched_heldout: int

    def summary(self) -> dict[str, Any]:
        """Both sets' summaries and the DCR comparison."""
        return {
            "match": self.match,
            "unmatched_synthetic": self.unmatched_synthetic,
            "unmatched_heldout": self.unmatched_heldout,
            "synthetic": self.synthetic.summary(),
            "heldout": self.heldout.summary(),
            "dcr": dcr_summary(self.synthetic.distance, self.heldout.distance),
        }


def _check_pixels(name: str, x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} must be (N, C, H, W), got shape {tuple(x.shape)}")
    if len(x) and (x.min() < -_PIXEL_TOLERANCE or x.max() > 1 + _PIXEL_TOLERANCE):
        raise ValueError(
            f"{name} must be pixels in [0, 1], got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]; "
            "undo the dataset normalization first (to_unit_pixels)"
        )


def _match(
    images: torch.Tensor, labels: torch.Tensor, train: torch.Tensor, train_labels: torch.Tensor, same_class: bool
) -> tuple[MatchedSet, int]:
    nn = nearest_neighbours(
        images, train,
        query_labels=labels if same_class else None,
        reference_labels=train_labels if same_class else None,
    )
    found = (nn.index >= 0).nonzero().flatten()
    nearest = train.to(images.device)[nn.index[found]]
    ssim, psnr = similarity(images[found], nearest)
    matched = MatchedSet(
        positions=found.cpu().numpy(),
        labels=labels[found.cpu()].cpu().numpy(),
        neighbour=nn.index[found].cpu().numpy(),
        distance=nn.distance[found].cpu().numpy().astype(np.float64),
        ssim=ssim.cpu().numpy().astype(np.float64),
        psnr=psnr.cpu().numpy().astype(np.float64),
    )
    return matched, int(len(images) - len(found))


def measure_leakage(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    synthetic: torch.Tensor,
    synthetic_labels: torch.Tensor,
    heldout: torch.Tensor,
    heldout_labels: torch.Tensor,
    *,
    same_class: bool,
) -> Leakage:
    """Match synthetic and held-out images to their nearest training image; DCR, SSIM, PSNR of each.

    Args:
        train, train_labels: (M, C, H, W) the client's real training images in [0, 1], (M,) labels.
        synthetic, synthetic_labels: (N, C, H, W) synthetic images in [0, 1] and their classes.
        heldout, heldout_labels: (H, C, H, W) real images never trained on, in [0, 1], and classes.
        same_class: match only within a class (True) or against every training image (False).

    Raises:
        ValueError: for images outside [0, 1], or when no synthetic or no held-out image has a match.
    """
    for name, x in (("train", train), ("synthetic", synthetic), ("heldout", heldout)):
        _check_pixels(name, x)
    match = "same_class" if same_class else "any_class"
    syn, syn_unmatched = _match(synthetic, synthetic_labels, train, train_labels, same_class)
    held, held_unmatched = _match(heldout, heldout_labels, train, train_labels, same_class)
    if not len(syn.distance) or not len(held.distance):
        raise ValueError(
            f"{match}: {len(syn.distance)} synthetic and {len(held.distance)} held-out images have a "
            "training image to compare with; both need at least one"
        )
    return Leakage(match, syn, held, syn_unmatched, held_unmatched)


# ---- the figure -------------------------------------------------------------------------------


def closest_per_class(distance: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """Positions of up to ``count`` entries, closest first, taking the classes in turn.

    The closest entry of every class comes before the second-closest of any class, so a figure of
    the closest pairs shows each class rather than ``count`` near-identical images of one.

    Args:
        distance: (n,) distance of each entry (e.g. a synthetic image's DCR).
        labels: (n,) class of each entry.
        count: how many positions to return.
    """
    distance, labels = np.asarray(distance), np.asarray(labels)
    order = np.argsort(distance, kind="stable")
    rank = np.zeros(len(order), dtype=np.int64)  # rank of each sorted entry within its class
    for c in np.unique(labels):
        in_class = labels[order] == c
        rank[in_class] = np.arange(int(in_class.sum()))
    return order[np.lexsort((distance[order], rank))][:count]


def plot_leakage(
    results: Sequence[Leakage],
    synthetic: torch.Tensor,
    train: torch.Tensor,
    path: str | Path,
    *,
    pairs: int = 8,
    title: str = "",
) -> None:
    """Histograms of DCR (synthetic vs held-out) per matching rule, and the closest pairs.

    Args:
        results: one ``Leakage`` per matching rule; the first one's closest pairs are shown.
        synthetic: (N, C, H, W) the synthetic pixels ``results`` indexes into.
        train: (M, C, H, W) the training pixels.
        path: PNG file to write.
        pairs: synthetic images shown (the closest to a training image, classes in turn; see
            ``closest_per_class``), each above its nearest training image; 0 = histograms only.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = results[0]
    shown = closest_per_class(first.synthetic.distance, first.synthetic.labels, pairs)
    fig = plt.figure(figsize=(max(10.0, 1.2 * len(shown)), 7.5 if len(shown) else 4.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.3, 1.0]) if len(shown) else (fig, None)
    axes = np.atleast_1d(top.subplots(1, len(results)))
    for ax, res in zip(axes, results):
        syn, held = res.synthetic.distance, res.heldout.distance
        bins = np.linspace(0.0, max(syn.max(), held.max()) * 1.02 + 1e-9, 40)
        ax.hist(held, bins=bins, density=True, alpha=0.55, label=f"held-out real (n={len(held)})")
        ax.hist(syn, bins=bins, density=True, alpha=0.55, label=f"synthetic (n={len(syn)})")
        threshold = float(np.quantile(held, DCR_QUANTILE))
        ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label="held-out 5th percentile")
        share = float(np.mean(syn <= threshold))
        ax.set_title(f"{res.match.replace('_', '-')} match: {share:.1%} of synthetic left of the line", fontsize=9)
        ax.set_xlabel("L2 distance to the nearest training image", fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        ax.legend(fontsize=7)
    top.suptitle(
        f"{title}\n(pixels in [0, 1]; a memorizing generator puts synthetic images left of the held-out ones)",
        fontsize=9,
    )
    if bottom is not None:
        cells = bottom.subplots(2, len(shown), squeeze=False)
        for col, i in enumerate(shown):
            pos, nb = first.synthetic.positions[i], first.synthetic.neighbour[i]
            for row, image in enumerate((synthetic[pos], train[nb])):
                ax = cells[row, col]
                pixels = image.detach().cpu().float()
                if pixels.shape[0] == 1:
                    ax.imshow(pixels[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
                else:
                    ax.imshow(pixels.permute(1, 2, 0).numpy())
                ax.set_xticks([])
                ax.set_yticks([])
            d, ssim = first.synthetic.distance[i], first.synthetic.ssim[i]
            cells[0, col].set_title(f"class {first.synthetic.labels[i]}\nd={d:.2f} SSIM {ssim:.2f}", fontsize=7)
        cells[0, 0].set_ylabel("synthetic", fontsize=8)
        cells[1, 0].set_ylabel("nearest train", fontsize=8)
        bottom.suptitle(
            f"closest synthetic images per class ({first.match.replace('_', '-')} match) "
            "above their nearest training image",
            fontsize=9,
        )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- running it on a finished run -------------------------------------------------------------


def skip_reason(settings: RunSettings) -> str | None:
    """Why this run's synthetic images cannot be evaluated, or None when they can."""
    if settings.algorithm_name != "fedvtc":
        return (
            f"algorithm={settings.algorithm_label} has no VTC generator and no synthetic images; the "
            "privacy evaluation applies to FedVTC runs (algorithm=fedvtc or a fedvtc_* variant)"
        )
    if settings.algorithm.schedule == "off":
        return (
            f"algorithm={settings.algorithm_label} uses schedule=off: its VTC is never trained, so "
            "there are no synthetic images to evaluate"
        )
    return None


def preflight(settings: RunSettings) -> None:
    """Before training: fail now on what would make the evaluation fail after the run.

    Raises:
        ConfigError: when ``privacy_eval.clients`` is set and torchmetrics is missing (with the pip
            command). A run the evaluation does not apply to only gets a warning, so a sweep over
            algorithms with one ``privacy_eval`` setting still runs every cell.
    """
    if not settings.privacy_eval.clients:
        return
    reason = skip_reason(settings)
    if reason is not None:
        log.warning("privacy_eval.clients is set but will be skipped: %s", reason)
        return
    try:
        require_metrics()
    except PrivacyEvalError as error:
        raise ConfigError(f"privacy_eval.clients={list(settings.privacy_eval.clients)}: {error}") from error


def _heldout_subset(test: Any, cap: int, key: tuple[int, ...]) -> Any:
    """A seeded random subset of at most ``cap`` images of ``test`` (0 = all of it)."""
    if cap <= 0 or cap >= len(test):
        return test
    return test.subset(np.sort(numpy_rng(*key).choice(len(test), cap, replace=False)))


def evaluate_client(settings: RunSettings, cid: int) -> dict[str, Any]:
    """Evaluate client ``cid`` of a finished FedVTC run; write its JSON and PNG; return the summary.

    Loads the client's saved VTC and the pooled statistics it last received from
    ``settings.state_dir``, synthesizes ``privacy_eval.per_class`` images per pooled class with a
    seeded generator, and measures them against the client's training images (see the module
    docstring), with up to ``privacy_eval.heldout`` images of its local test split as reference.

    Writes ``<output_dir>/privacy_client<cid>.json`` (summary plus per-image values) and
    ``privacy_client<cid>.png``.

    Raises:
        PrivacyEvalError: when the run is not a FedVTC run, or the client has no usable state.
    """
    # late: the algorithms import the whole client stack
    from fedvtc.algorithms.fedvtc import build_adapter, build_vtc, decoder_of
    from fedvtc.federated_data import client_data
    from fedvtc.state import load_state, state_path
    from fedvtc.training import GlobalGaussians, synthesize

    reason = skip_reason(settings)
    if reason is not None:
        raise PrivacyEvalError(reason)
    require_metrics()
    path = state_path(settings.state_dir, cid)
    try:
        state = load_state(path)
    except RuntimeError as error:
        raise PrivacyEvalError(str(error)) from error
    if state is None:
        raise PrivacyEvalError(
            f"client {cid} has no saved state at {path}; evaluate a finished run's directory, or pass "
            "its simulation.state_dir (--state-dir on the command line)"
        )
    stats = state.get("extra", {}).get("global_stats")
    if stats is None:
        raise PrivacyEvalError(
            f"client {cid}'s state ({path}) holds no pooled statistics: it never received any (a "
            "1-round run trains no VTC) or it was saved by an older version; run at least 2 rounds"
        )
    if int(state["round"]) < settings.num_rounds:
        log.warning(
            "client %d's state is from round %s of %d (it missed the last rounds)",
            cid, state["round"], settings.num_rounds,
        )

    pe, spec = settings.privacy_eval, settings.dataset
    device = torch.device(resolve_device(settings.device))
    vtc = build_vtc(settings)
    vtc.load_state_dict(state["extra"]["vtc"])
    adapter = None
    if state["extra"].get("adapter") is not None:  # algorithm.vtc.adapter: the client's private map
        adapter = build_adapter(settings)
        adapter.load_state_dict(state["extra"]["adapter"])
    decoder = decoder_of(vtc, adapter).to(device)
    target = GlobalGaussians.from_stats(
        stats, spec.num_classes, variance_floor=settings.algorithm.variance_floor, device=device
    )
    with torch.no_grad():
        images = synthesize(
            decoder, target, per_class=pe.per_class, generator=torch_generator(settings.seed, cid, PRIVACY_EVAL, 0)
        )
    train, test = client_data(settings, cid)
    heldout = _heldout_subset(test, pe.heldout, (settings.seed, cid, PRIVACY_EVAL, 1))
    if len(heldout) < 20:
        log.warning("client %d: only %d held-out images; the held-out percentiles are coarse", cid, len(heldout))

    def pixels(x: torch.Tensor) -> torch.Tensor:
        return to_unit_pixels(x.to(device), spec.mean, spec.std)

    train_px, syn_px, held_px = pixels(train.x), pixels(images.x), pixels(heldout.x)
    try:
        results = [
            measure_leakage(train_px, train.y, syn_px, images.y, held_px, heldout.y, same_class=same)
            for same in (True, False)  # the first one is the headline (see the module docstring)
        ]
    except ValueError as error:  # e.g. a local test split without any of the client's classes
        raise PrivacyEvalError(f"client {cid}: {error}") from error
    summary: dict[str, Any] = {
        "client": cid,
        "arch": settings.model_name(cid),
        "algorithm": settings.algorithm_label,
        "dataset": spec.name,
        "state_round": int(state["round"]),
        "num_rounds": settings.num_rounds,
        "per_class": pe.per_class,
        "train_images": len(train),
        "heldout_images": len(heldout),
        "heldout_available": len(test),
        "synthetic_images": len(images),
        "client_classes": sorted(int(c) for c in train.y.unique()),
        "synthetic_classes": sorted(int(c) for c in images.y.unique()),
        "distance": f"L2 over all {int(np.prod(train.x.shape[1:]))} pixel values in [0, 1]",
        "psnr_cap_db": PSNR_CAP_DB,
        **{res.match: res.summary() for res in results},
    }
    out = Path(settings.output_dir)
    per_image = {r.match: {"synthetic": r.synthetic.per_image(), "heldout": r.heldout.per_image()} for r in results}
    write_json_atomic(out / f"privacy_client{cid}.json", {**summary, "per_image": per_image})
    plot_leakage(
        results, syn_px, train_px, out / f"privacy_client{cid}.png", pairs=pe.plot_pairs,
        title=f"client {cid} ({summary['arch']}), {settings.algorithm_label} on {spec.name}: "
        "synthetic vs held-out real images",
    )
    log.info("%s", describe(summary))
    return summary


def describe(summary: dict[str, Any]) -> str:
    """One line with the headline figures of ``evaluate_client``'s summary."""
    s = summary["same_class"]
    d = s["dcr"]
    return (
        f"privacy client {summary['client']}: same-class DCR median synthetic {d['synthetic_median']:.2f} vs "
        f"held-out {d['heldout_median']:.2f}; {d['fraction_below_heldout_quantile']:.1%} of synthetic images within "
        f"the held-out 5th percentile (about {d['expected_fraction']:.0%} if no closer than unseen data); SSIM "
        f"{s['synthetic']['ssim']['mean']:.3f} vs {s['heldout']['ssim']['mean']:.3f}, PSNR "
        f"{s['synthetic']['psnr']['mean']:.1f} vs {s['heldout']['psnr']['mean']:.1f} dB"
        + ("; MEMORIZATION SUSPECTED" if d["memorization_suspected"] else "")
    )


def evaluate_run(settings: RunSettings, clients: Sequence[int] | None = None) -> dict[str, Any]:
    """Evaluate ``clients`` (default ``privacy_eval.clients``) and add the summaries to results.json.

    A run the evaluation does not apply to (not FedVTC, or no generator) is skipped with a logged
    warning and a ``skipped`` entry. Returns what was stored under ``results.json["privacy"]``.

    Raises:
        PrivacyEvalError: for a client that cannot be evaluated (no state, no pooled statistics).
    """
    clients = list(settings.privacy_eval.clients if clients is None else clients)
    reason = skip_reason(settings)
    if reason is not None:
        log.warning("privacy evaluation skipped: %s", reason)
        entry: dict[str, Any] = {"skipped": reason}
    else:
        entry = {str(cid): evaluate_client(settings, cid) for cid in clients}
    path = Path(settings.output_dir) / "results.json"
    if path.exists():
        results = json.loads(path.read_text())
        merged = {k: v for k, v in (results.get("privacy") or {}).items() if k != "skipped"}
        results["privacy"] = entry if "skipped" in entry else {**merged, **entry}
        write_json_atomic(path, results)
    else:
        log.warning("no %s to add the privacy figures to; they are in privacy_client<id>.json", path)
    return entry


# ---- command line -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedvtc.privacy.leakage RUN_DIR --client 0``: evaluate a finished run directory."""
    parser = argparse.ArgumentParser(
        prog="python -m fedvtc.privacy.leakage",
        description="SSIM/PSNR and nearest-neighbour distances of a FedVTC client's synthetic images "
        "against its real training images, with its held-out images as reference.",
    )
    parser.add_argument("run_dir", type=Path, help="a finished run's output directory (holds config.yaml)")
    parser.add_argument("--client", type=int, action="append", dest="clients",
                        help="client id to evaluate (repeatable; default: the run's privacy_eval.clients)")
    parser.add_argument("--per-class", type=int,
                        help="synthetic images per class (default: the run's privacy_eval.per_class)")
    parser.add_argument("--heldout", type=int,
                        help="cap on held-out images, 0 = all (default: the run's privacy_eval.heldout)")
    parser.add_argument("--state-dir",
                        help="where the clients' state files are (default: the run's simulation.state_dir)")
    parser.add_argument("--data-dir", help="dataset root (default: the run's data_dir)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: the run's device)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.setLevel(logging.INFO)

    config = args.run_dir / "config.yaml"
    if not config.is_file():
        print(f"error: {config} not found; RUN_DIR must be a run's output directory", file=sys.stderr)
        return 2
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
    assert isinstance(cfg, dict)
    pe = dict(cfg.get("privacy_eval") or {})
    for key, value in (("clients", args.clients), ("per_class", args.per_class), ("heldout", args.heldout)):
        if value is not None:
            pe[key] = value
    cfg["privacy_eval"] = pe
    if args.data_dir:
        cfg["data_dir"] = args.data_dir
    if args.device:
        cfg["device"] = args.device
    if args.state_dir:
        cfg.setdefault("simulation", {})["state_dir"] = args.state_dir
    try:
        settings = build_settings(cfg, output_dir=args.run_dir)
        if not settings.privacy_eval.clients:
            raise ConfigError("no client to evaluate: pass --client ID (e.g. --client 0)")
        reason = skip_reason(settings)
        if reason is not None:
            raise PrivacyEvalError(reason)
        entry = evaluate_run(settings)
    except (ConfigError, PrivacyEvalError, DatasetNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for cid in entry:
        print(f"wrote {Path(settings.output_dir) / f'privacy_client{cid}.json'} and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
