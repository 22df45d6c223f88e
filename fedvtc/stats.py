"""Per-class feature statistics: computing them, pooling them exactly, sampling from them.

Pure numpy/torch functions, no Flower and no configuration objects. Everything is computed in
float64 so that pooling statistics from many clients equals, to float tolerance, the statistics of
the concatenated features. Variances and covariances are population moments (divide by n, not
n - 1): that is what makes pooling exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class ClassStats:
    """Feature statistics of the classes one client (or the pool) holds.

    Attributes:
        classes: (k,) int64, sorted class ids present (count > 0).
        counts: (k,) float64 sample counts per class (float so weights can be capped or noised).
        means: (k, p) float64 per-class feature means.
        second: per-class spread, (k, p) variances (diagonal) or (k, p, p) covariances (full),
            or None when only means are kept (prototype methods such as FedProto).
    """

    classes: np.ndarray
    counts: np.ndarray
    means: np.ndarray
    second: np.ndarray | None

    @property
    def full(self) -> bool:
        """True when ``second`` holds full covariance matrices."""
        return self.second is not None and self.second.ndim == 3

    @property
    def means_only(self) -> bool:
        """True when no spread is kept (prototypes)."""
        return self.second is None

    @property
    def feature_dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def variances(self) -> np.ndarray:
        """(k, p) per-dimension variances, whether the statistics are diagonal or full."""
        if self.second is None:
            raise ValueError("these statistics hold means only")
        if self.full:
            return np.diagonal(self.second, axis1=1, axis2=2).copy()
        return self.second

    def __len__(self) -> int:
        return int(self.classes.shape[0])

    def dense(self, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scatter into class-indexed arrays.

        Returns:
            present: (C,) bool, which classes have statistics.
            means: (C, p), zeros for absent classes.
            variances: (C, p), ones for absent classes (and everywhere for means-only statistics).
        """
        p = self.feature_dim
        present = np.zeros(num_classes, dtype=bool)
        means = np.zeros((num_classes, p))
        variances = np.ones((num_classes, p))
        present[self.classes] = True
        means[self.classes] = self.means
        if self.second is not None:
            variances[self.classes] = self.variances
        return present, means, variances


def class_statistics(
    features: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    full: bool = False,
    means_only: bool = False,
) -> ClassStats:
    """Count, mean and (co)variance of ``features`` for every class present in ``labels``.

    Args:
        features: (N, p) feature vectors.
        labels: (N,) integer class ids.
        full: compute (p, p) covariances instead of per-dimension variances.
        means_only: keep counts and means only (prototypes).
    """
    z = _as_float64(features)
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise ValueError(f"expected features (N, p) and labels (N,), got {z.shape} and {y.shape}")
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    k, p = len(classes), z.shape[1]
    means = np.zeros((k, p))
    np.add.at(means, inverse, z)
    means /= counts[:, None]
    if means_only:
        return ClassStats(classes.astype(np.int64), counts.astype(np.float64), means, None)
    centred = z - means[inverse]
    if full:
        second = np.zeros((k, p, p))
        for i in range(k):  # k <= number of classes: a short loop over classes, not samples
            block = centred[inverse == i]
            second[i] = block.T @ block / counts[i]
    else:
        second = np.zeros((k, p))
        np.add.at(second, inverse, centred**2)
        second /= counts[:, None]
    return ClassStats(classes.astype(np.int64), counts.astype(np.float64), means, second)


def pool_statistics(parts: Sequence[ClassStats]) -> ClassStats:
    """Pool per-class statistics from several clients exactly.

    The pooled mean is the count-weighted mean; the pooled (co)variance follows the law of total
    variance: within-client spread plus the spread of the client means around the pooled mean.
    Classes that no part holds stay absent. The parts must agree on p and on the kind of spread
    (diagonal, full or none).
    """
    if not parts:
        raise ValueError("nothing to pool")
    full, means_only = parts[0].full, parts[0].means_only
    p = parts[0].feature_dim
    if any(s.full != full or s.means_only != means_only or s.feature_dim != p for s in parts):
        raise ValueError("cannot pool statistics of different feature sizes or covariance kinds")
    classes = np.unique(np.concatenate([s.classes for s in parts]))
    index = {int(c): i for i, c in enumerate(classes)}
    k = len(classes)
    counts = np.zeros(k)
    weighted_means = np.zeros((k, p))
    for s in parts:
        rows = [index[int(c)] for c in s.classes]
        counts[rows] += s.counts
        weighted_means[rows] += s.counts[:, None] * s.means
    means = weighted_means / counts[:, None]
    if means_only:
        return ClassStats(classes.astype(np.int64), counts, means, None)
    second = np.zeros((k, p, p) if full else (k, p))
    for s in parts:
        rows = [index[int(c)] for c in s.classes]
        shift = s.means - means[rows]
        if full:
            spread = s.second + shift[:, :, None] * shift[:, None, :]
        else:
            spread = s.second + shift**2
        second[rows] += _weight(s.counts / counts[rows], spread)
    return ClassStats(classes.astype(np.int64), counts, means, second)


def cap_weights(weights: np.ndarray | Sequence[float], max_share: float) -> np.ndarray:
    """Lower the largest weights so that none is more than ``max_share`` of the (new) total.

    The cap is the least one that works: every weight above a threshold t is set to t, with t
    chosen so that t = max_share * (sum of the capped weights); weights below t are unchanged, and
    nothing changes when no weight exceeds ``max_share`` of the total already. When fewer than
    ``1 / max_share`` participants have positive weight the bound cannot hold; the best possible,
    equal weights, is returned.

    Args:
        weights: (n,) non-negative weights, e.g. the sample counts clients claim for one class.
        max_share: largest allowed fraction of the total for one participant, in (0, 1].
    """
    w = np.asarray(weights, dtype=np.float64)
    if not 0 < max_share <= 1:
        raise ValueError(f"max_share must be in (0, 1], got {max_share}")
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite and non-negative")
    total = w.sum()
    if total <= 0 or w.max() <= max_share * total:
        return w.copy()
    positive = w[w > 0]
    if len(positive) * max_share <= 1:
        return np.where(w > 0, positive.min(), 0.0)
    ordered = np.sort(w)[::-1]
    for m in range(1, len(ordered)):  # cap the m largest at t
        if m * max_share >= 1:
            break
        t = max_share * ordered[m:].sum() / (1 - m * max_share)
        if ordered[m] <= t <= ordered[m - 1]:
            return np.minimum(w, t)
    return np.where(w > 0, positive.min(), 0.0)  # unreachable for valid input; equal weights


def cap_class_counts(parts: Sequence[ClassStats], max_share: float) -> list[ClassStats]:
    """Cap, class by class, the count each part contributes when pooled (see ``cap_weights``).

    A client that claims an absurd number of samples of a class then moves that class's pooled
    mean and variance by at most ``max_share`` of the pool. Means and spreads are unchanged; only
    the counts used as pooling weights are lowered.
    """
    if not parts:
        return []
    classes = np.unique(np.concatenate([s.classes for s in parts]))
    counts = {int(c): [] for c in classes}  # class -> [(part index, row, count)]
    for i, s in enumerate(parts):
        for row, (c, n) in enumerate(zip(s.classes, s.counts)):
            counts[int(c)].append((i, row, float(n)))
    new_counts = [s.counts.astype(np.float64).copy() for s in parts]
    for entries in counts.values():
        capped = cap_weights([n for _, _, n in entries], max_share)
        for (i, row, _), n in zip(entries, capped):
            new_counts[i][row] = n
    return [ClassStats(s.classes, n, s.means, s.second) for s, n in zip(parts, new_counts)]


def _weight(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Multiply each class row of ``values`` (k, ...) by its scalar weight (k,)."""
    return weights.reshape((-1,) + (1,) * (values.ndim - 1)) * values


def sample_latents(
    means: torch.Tensor,
    second: torch.Tensor,
    labels: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    variance_floor: float = 1e-4,
    shrinkage: float = 0.1,
    scale: float = 1.0,
) -> torch.Tensor:
    """Draw one latent per entry of ``labels`` from its class Gaussian.

    Args:
        means: (C, p) class means (rows of absent classes are never indexed).
        second: (C, p) variances or (C, p, p) covariances.
        labels: (n,) class id of each latent to draw.
        generator: torch generator for reproducible draws.
        variance_floor: lower bound on variances (keeps the distribution proper when a class has
            one sample or collapsed features).
        shrinkage: for full covariances, weight of the diagonal target in
            (1 - s) * Sigma + s * diag(Sigma); makes the Cholesky factor exist when Sigma is
            estimated from fewer samples than dimensions.
        scale: multiplies every draw's deviation from its class mean (1 = the Gaussian itself; 0 =
            the means alone): how diverse the latents of one class are.
    """
    mu = means[labels]
    # Drawn on the CPU (where the generator lives) and moved: the same numbers on every device.
    noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
    if scale != 1.0:
        noise = noise * scale
    if second.dim() == 2:
        return mu + noise * second[labels].clamp_min(variance_floor).sqrt()
    factors = cholesky_factors(second, variance_floor=variance_floor, shrinkage=shrinkage)
    return mu + torch.einsum("npq,nq->np", factors[labels], noise)


def cholesky_factors(
    covariances: torch.Tensor, *, variance_floor: float = 1e-4, shrinkage: float = 0.1
) -> torch.Tensor:
    """Lower Cholesky factors of shrunk, floored covariances (C, p, p)."""
    diag = torch.diagonal(covariances, dim1=-2, dim2=-1).clamp_min(variance_floor)
    shrunk = (1.0 - shrinkage) * covariances + shrinkage * torch.diag_embed(diag)
    eye = torch.eye(covariances.shape[-1], dtype=covariances.dtype, device=covariances.device)
    return torch.linalg.cholesky(shrunk + variance_floor * eye)


def _as_float64(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)
