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
    """
    mu = means[labels]
    # Drawn on the CPU (where the generator lives) and moved: the same numbers on every device.
    noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
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
