"""Differential privacy of the class statistics a FedVTC client uploads.

What is protected: one record (an image and its label) of a client's training data, under the
add/remove-one neighbouring relation. What each round releases: per class y, the count n_y, the sum
of the feature vectors S_y and the sum of their squares per dimension Q_y (or the second-moment
matrix for ``covariance=full``), each with Gaussian noise; everything the server sees is computed
from these (``to_class_stats``), so it is post-processing and costs no further privacy.

The mechanism, per round:

1. every feature vector g(x) is scaled down to L2 norm <= C (``clip_features``);
2. the exact per-class sums of the clipped features are computed for *all* C classes, including the
   ones the client does not hold (``class_sums``): which classes are sent must itself come out of
   the noise, or the presence of a class would leak;
3. Gaussian noise is added (``add_noise``): std z*C on S_y, z on n_y, z*C^2 on Q_y;
4. post-processing (``to_class_stats``): classes whose noisy count is too small are dropped, and
   what remains becomes the (count, mean, variance) the payload carries.

Sensitivity. Adding or removing one record x of class y changes only class y's entries, by
(x, 1, x*x) (x*x elementwise, or x x^T for full covariance). With ||x|| <= C:
||x|| <= C, |1| = 1, and ||x*x||_2 = sqrt(sum_i x_i^4) <= sum_i x_i^2 = ||x||^2 <= C^2 (likewise
||x x^T||_F = ||x||^2 <= C^2, and the upper triangle that is actually noised is smaller still).
Divide each part by its bound: (S/C, n, Q/C^2) is then released with noise of std z on every
coordinate, and one record moves it by at most sqrt(1 + 1 + 1) = sqrt(3) in L2 norm (reached when
x = C e_i). The scaling is a fixed invertible map, so the three noisy parts together are *one*
Gaussian mechanism with L2 sensitivity sqrt(3) and noise std z, i.e. noise multiplier
z / sqrt(3) (std over sensitivity). That is what ``accounting_noise_multiplier`` gives the
accountant; z itself is the multiplier of each part on its own.

Accounting. Each round a client takes part in is one such release on all of its data (no
subsampling). The releases are composed with the privacy-loss-distribution (PLD) accountant of
Google's ``dp_accounting``: for Gaussian mechanisms it is tight (its epsilon equals the analytic
one of Balle & Wang 2018 to better than 1e-6 relative at the discretization used here, and errs on
the safe side), whereas the RDP accountant's conversion to (epsilon, delta) is an upper bound that
overstates epsilon (by 6-9% here: 8.6 instead of 8.0 for z = 2.32, 5 rounds, delta = 1e-5).
Without subsampling, R releases at multiplier s compose exactly to one release at s / sqrt(R) (the
privacy losses are Gaussian); the PLD accountant uses that, so a query costs the same whatever R is.

Scope of the guarantee (read this before quoting an epsilon). The sensitivity above holds for a
*fixed* feature extractor g. FedVTC's g_k is trained, without noise, on the same records whose
statistics it then summarizes, so removing one record can also change g_k and with it every other
record's feature. The reported epsilon is therefore the cost of the statistics release *given the
extractor*, not an end-to-end guarantee for the client's data; that would also need the extractor's
training to be private (DP-SGD, e.g. Opacus) and its cost composed in. Likewise outside it: the
Flower metadata a simulation reports for measurement (evaluation accuracies, timings, the
reference classifier's scores of the synthetic images), and a shared VTC, whose weights are trained
on private images (``dp.enabled`` with ``algorithm.shared_vtc=true`` is rejected).

``dp_accounting`` is an optional dependency: ``pip install -e ".[privacy]"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

import numpy as np
import torch

from fedvtc.stats import ClassStats

# Parts released together per class (sum, count, second moments); see the module docstring.
RELEASED_PARTS = 3
# Width of the PLD accountant's privacy-loss grid. 1e-3 keeps a query to ~0.1 s while the epsilon
# of a Gaussian mechanism stays within ~1e-6 (relative) of the exact value, always above it.
PLD_DISCRETIZATION = 1e-3
_PIP_HINT = 'differential privacy needs Google\'s dp-accounting: pip install -e ".[privacy]"  (or: pip install dp-accounting)'


def require_dp_accounting() -> ModuleType:
    """Import ``dp_accounting``, or raise ``ImportError`` saying how to install it."""
    try:
        import dp_accounting
    except ImportError as error:
        raise ImportError(_PIP_HINT) from error
    return dp_accounting


def dp_accounting_available() -> bool:
    """True when ``dp_accounting`` can be imported."""
    try:
        require_dp_accounting()
    except ImportError:
        return False
    return True


# ---- the mechanism: pure functions on tensors -------------------------------------------------


@dataclass(frozen=True)
class ClassSums:
    """Per-class sufficient statistics of (clipped) features, for every class 0..C-1.

    Attributes:
        counts: (C,) number of records per class (noisy: any real number).
        sums: (C, p) sum of the feature vectors per class.
        squares: (C, p) sum of the elementwise squares per class (diagonal second moment), or
            (C, p, p) sum of the outer products x x^T (full second moment).
    """

    counts: torch.Tensor
    sums: torch.Tensor
    squares: torch.Tensor

    @property
    def full(self) -> bool:
        """True when ``squares`` holds full (p, p) second-moment matrices."""
        return self.squares.dim() == 3


def clip_features(features: torch.Tensor, clip: float) -> torch.Tensor:
    """Scale every row of ``features`` down to L2 norm at most ``clip`` (rows already within stay).

    Args:
        features: (N, p) feature vectors.
        clip: the bound C > 0 on each row's L2 norm.
    """
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    norms = features.norm(dim=1, keepdim=True)
    # clamp_min: a zero row stays zero instead of dividing by zero.
    return features * (clip / norms.clamp_min(1e-12)).clamp(max=1.0)


def class_sums(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, full: bool = False) -> ClassSums:
    """Exact per-class count, sum and sum of squares (or outer products) of ``features``, in float64.

    Args:
        features: (N, p) feature vectors (clip them first for the sensitivity to hold).
        labels: (N,) class ids in [0, num_classes).
        num_classes: C; every class gets a row, zeros where no record has it.
        full: sum outer products x x^T (C, p, p) instead of elementwise squares (C, p).
    """
    z = features.detach().to(torch.float64).cpu()
    y = labels.detach().to(torch.int64).cpu()
    if z.dim() != 2 or y.shape != (z.shape[0],):
        raise ValueError(f"expected features (N, p) and labels (N,), got {tuple(z.shape)} and {tuple(y.shape)}")
    p = z.shape[1]
    counts = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, y, torch.ones(len(y), dtype=torch.float64))
    sums = torch.zeros(num_classes, p, dtype=torch.float64).index_add_(0, y, z)
    if full:
        squares = torch.zeros(num_classes, p, p, dtype=torch.float64).index_add_(0, y, z[:, :, None] * z[:, None, :])
    else:
        squares = torch.zeros(num_classes, p, dtype=torch.float64).index_add_(0, y, z * z)
    return ClassSums(counts, sums, squares)


def add_noise(sums: ClassSums, *, clip: float, noise_multiplier: float, generator: torch.Generator) -> ClassSums:
    """The Gaussian mechanism on ``sums``: noise std z*C on sums, z on counts, z*C^2 on squares.

    For full second moments one noise value is drawn per entry of the upper triangle (diagonal
    included) and mirrored, so the released matrix stays symmetric and each distinct entry has std
    z*C^2; the sensitivity argument (module docstring) covers exactly those entries.

    Args:
        sums: exact sums of features clipped to norm ``clip``.
        clip: the bound C used to clip the features.
        noise_multiplier: z >= 0 (0 releases the exact sums: for tests, no privacy).
        generator: source of the noise (drawn on the CPU in a fixed order: counts, sums, squares).
    """
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    z = float(noise_multiplier)

    def gaussian(shape: torch.Size, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float64) * std

    counts = sums.counts + gaussian(sums.counts.shape, z)
    means_part = sums.sums + gaussian(sums.sums.shape, z * clip)
    noise = gaussian(sums.squares.shape, z * clip**2)
    if sums.full:
        upper = torch.triu(noise)
        noise = upper + torch.triu(noise, diagonal=1).transpose(1, 2)
    return ClassSums(counts, means_part, sums.squares + noise)


def release_threshold(noise_multiplier: float, count_threshold: float) -> float:
    """Smallest noisy count for which a class is sent: max(1, count_threshold * z).

    A class no record has gets a noisy count ~ N(0, z^2); with ``count_threshold`` = 3 such a class
    is sent with probability 0.13% per class and round, and then its mean is noise over a count of
    at least 3z (and is further bounded by the clip). The floor of 1 keeps means and variances
    finite when z is tiny.
    """
    return max(1.0, float(count_threshold) * float(noise_multiplier))


def to_class_stats(sums: ClassSums, *, clip: float, min_count: float, variance_floor: float) -> ClassStats:
    """Post-process (noisy) sums into the (count, mean, variance) statistics a payload carries.

    Every step is a function of the released sums only, so the result is as private as they are:

    - classes whose count is below ``min_count`` are dropped; dropping is chosen over keeping them
      at count 1 because a kept row of an absent class would be pure noise that the server pools
      and the VTC then draws latents from. If no class reaches ``min_count``, the one with the
      largest count is sent (count raised to >= 1): an upload must carry at least one class;
    - means are S/n, projected onto the ball of radius C (every clipped feature lies in it, so the
      projection can only move a noisy mean closer to the true one);
    - variances are Q/n - mean^2 (diagonal), or the eigenvalues of Q/n - mean mean^T (full), clamped
      to [variance_floor, C^2]: a variance of features bounded by C cannot exceed C^2, and noise can
      make the raw estimate negative.

    Args:
        sums: per-class sums (noisy, or exact for the noiseless check).
        clip: the bound C the features were clipped to.
        min_count: smallest count for a class to be sent (see ``release_threshold``), >= 1.
        variance_floor: lower bound on every released variance (eigenvalue for full), > 0.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    counts = sums.counts.detach().to(torch.float64)
    keep = torch.nonzero(counts >= min_count).flatten()
    if len(keep) == 0:
        keep = counts.argmax().reshape(1)
    n = counts[keep].clamp_min(1.0)
    means = sums.sums[keep] / n[:, None]
    norms = means.norm(dim=1, keepdim=True)
    means = means * (clip / norms.clamp_min(1e-12)).clamp(max=1.0)
    ceiling = float(clip) ** 2
    floor = min(float(variance_floor), ceiling)
    if sums.full:
        second = sums.squares[keep] / n[:, None, None] - means[:, :, None] * means[:, None, :]
        second = (second + second.transpose(1, 2)) / 2
        values, vectors = torch.linalg.eigh(second)
        values = values.clamp(floor, ceiling)
        second = vectors @ torch.diag_embed(values) @ vectors.transpose(1, 2)
        second = (second + second.transpose(1, 2)) / 2  # exact symmetry for the payload check
    else:
        second = (sums.squares[keep] / n[:, None] - means**2).clamp(floor, ceiling)
    return ClassStats(keep.numpy().astype(np.int64), n.numpy(), means.numpy(), second.numpy())


def private_class_statistics(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    clip: float,
    noise_multiplier: float,
    generator: torch.Generator,
    full: bool = False,
    count_threshold: float = 3.0,
    variance_floor: float = 1e-3,
) -> ClassStats:
    """The whole mechanism: clip, sum per class, add noise, post-process (see the module docstring).

    Args:
        features: (N, p) feature vectors of the client's training records.
        labels: (N,) their class ids.
        num_classes: C; noise is added for every class, held or not.
        clip: L2 bound C on each feature vector.
        noise_multiplier: z, the noise std of each part relative to its sensitivity.
        generator: source of the noise.
        full: release full (p, p) second moments instead of per-dimension ones.
        count_threshold: a class is sent when its noisy count is >= max(1, count_threshold * z).
        variance_floor: lower bound on the released variances.
    """
    exact = class_sums(clip_features(features, clip), labels, num_classes, full=full)
    noisy = add_noise(exact, clip=clip, noise_multiplier=noise_multiplier, generator=generator)
    return to_class_stats(
        noisy, clip=clip, min_count=release_threshold(noise_multiplier, count_threshold),
        variance_floor=variance_floor,
    )


# ---- accounting (dp_accounting's PLD accountant) -------------------------------------------------


def accounting_noise_multiplier(noise_multiplier: float) -> float:
    """Noise std over L2 sensitivity of one release: z / sqrt(3) (see the module docstring)."""
    return float(noise_multiplier) / math.sqrt(RELEASED_PARTS)


def _release_event(noise_multiplier: float, releases: int):
    dpa = require_dp_accounting()
    gaussian = dpa.GaussianDpEvent(accounting_noise_multiplier(noise_multiplier))
    return dpa.SelfComposedDpEvent(gaussian, int(releases))


def _pld_accountant():
    dpa = require_dp_accounting()
    return dpa.pld.PLDAccountant(
        dpa.NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=PLD_DISCRETIZATION
    )


@lru_cache(maxsize=256)
def epsilon_spent(noise_multiplier: float, releases: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``releases`` rounds of statistics at noise multiplier z.

    Args:
        noise_multiplier: z of ``add_noise`` (the accountant is given z / sqrt(3)).
        releases: rounds in which the client sent statistics (each on all its data); 0 gives 0.
        delta: the target delta, in (0, 1).
    """
    if releases < 0 or noise_multiplier <= 0 or not 0 < delta < 1:
        raise ValueError(
            f"need releases >= 0, noise_multiplier > 0, 0 < delta < 1; got {releases}, {noise_multiplier}, {delta}"
        )
    if releases == 0:
        return 0.0
    accountant = _pld_accountant()
    accountant.compose(_release_event(noise_multiplier, releases))
    return float(accountant.get_epsilon(delta))


@lru_cache(maxsize=64)
def noise_multiplier_for_epsilon(target_epsilon: float, releases: int, delta: float, rel_tol: float = 1e-4) -> float:
    """Smallest noise multiplier z (within ``rel_tol``) whose ``releases`` rounds spend at most
    ``target_epsilon`` at ``delta``, by the PLD accountant.

    The search is ``dp_accounting.calibrate_dp_mechanism`` (Brent's method on the accountant's
    epsilon, then a check that the result does not exceed the target). It is bracketed around the
    analytic answer for a Gaussian mechanism (``dp_accounting.get_sigma_gaussian``, composed over
    R releases as sigma * sqrt(R)) so that no query is made at tiny z, where the accountant is slow.

    Args:
        target_epsilon: the epsilon to spend over all releases, > 0.
        releases: rounds of statistics the budget must cover (the run's ``num_rounds``), >= 1.
        delta: the target delta, in (0, 1).
        rel_tol: tolerance on z, relative to the analytic guess.
    """
    if target_epsilon <= 0 or releases < 1 or not 0 < delta < 1:
        raise ValueError(
            f"need target_epsilon > 0, releases >= 1, 0 < delta < 1; got {target_epsilon}, {releases}, {delta}"
        )
    dpa = require_dp_accounting()
    guess = dpa.get_sigma_gaussian(target_epsilon, delta) * math.sqrt(releases * RELEASED_PARTS)
    z = dpa.calibrate_dp_mechanism(
        _pld_accountant,
        lambda z: _release_event(z, releases),
        target_epsilon,
        delta,
        bracket_interval=dpa.ExplicitBracketInterval(0.5 * guess, 2.0 * guess),
        tol=rel_tol * guess,
    )
    return float(z)


def resolve_noise_multiplier(
    noise_multiplier: float | None, target_epsilon: float | None, releases: int, delta: float
) -> float:
    """z from the config: ``noise_multiplier`` when given, else calibrated to ``target_epsilon``.

    Args:
        noise_multiplier: z as configured (``dp.noise_multiplier``), or None.
        target_epsilon: the budget over ``releases`` rounds (``dp.target_epsilon``), or None.
        releases: rounds the budget covers (a client that takes part in every round releases once
            per round, so the run's ``num_rounds``; a client sampled less often spends less).
        delta: the target delta.
    """
    if (noise_multiplier is None) == (target_epsilon is None):
        raise ValueError("give exactly one of noise_multiplier and target_epsilon")
    if noise_multiplier is not None:
        return float(noise_multiplier)
    return noise_multiplier_for_epsilon(float(target_epsilon), int(releases), float(delta))


__all__ = [
    "ClassSums",
    "PLD_DISCRETIZATION",
    "RELEASED_PARTS",
    "accounting_noise_multiplier",
    "add_noise",
    "class_sums",
    "clip_features",
    "dp_accounting_available",
    "epsilon_spent",
    "noise_multiplier_for_epsilon",
    "private_class_statistics",
    "release_threshold",
    "require_dp_accounting",
    "resolve_noise_multiplier",
    "to_class_stats",
]
