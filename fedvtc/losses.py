"""The losses of FedVTC as pure torch functions (METHOD.md §2).

- ``gaussian_kl_diag``: closed-form KL between diagonal Gaussians.
- ``alignment_loss``: local training's KL term, pulling each sample's feature distribution
  N(g(x), diag sigma_local^2) toward the global class distribution N(c^y, diag sigma_y^2).
- ``dm_loss``: distribution matching, making the features of decoded global latents match the
  global class means and standard deviations.
"""

from __future__ import annotations

import torch

REDUCTIONS = ("sum", "mean")


def gaussian_kl_diag(
    mu_q: torch.Tensor,
    var_q: torch.Tensor,
    mu_p: torch.Tensor,
    var_p: torch.Tensor,
    *,
    reduction: str = "sum",
) -> torch.Tensor:
    """KL(N(mu_q, diag var_q) || N(mu_p, diag var_p)) for each row.

    Args:
        mu_q, var_q: (B, p) mean and variance of the approximating distribution.
        mu_p, var_p: (B, p) mean and variance of the target distribution.
        reduction: ``"sum"`` over the p dimensions (the ELBO's KL) or ``"mean"`` over them.

    Returns:
        (B,) KL divergence of each row.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    per_dim = 0.5 * (torch.log(var_p / var_q) + (var_q + (mu_q - mu_p) ** 2) / var_p - 1.0)
    return per_dim.sum(dim=1) if reduction == "sum" else per_dim.mean(dim=1)


def alignment_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    global_means: torch.Tensor,
    global_vars: torch.Tensor,
    local_vars: torch.Tensor,
    present: torch.Tensor,
    *,
    reduction: str = "sum",
) -> torch.Tensor:
    """Mean over the batch of the KL from each sample's feature Gaussian to its global class Gaussian.

    Args:
        features: (B, p) extractor output g(x).
        labels: (B,) class ids.
        global_means, global_vars: (C, p) pooled class means c^y and variances sigma_y^2.
        local_vars: (C, p) the client's own class variances (the spread of N(g(x), ...)).
        present: (C,) bool, classes that have global statistics; other samples contribute 0.
        reduction: how the per-dimension KL is reduced, see ``gaussian_kl_diag``.
    """
    keep = present[labels]
    if not bool(keep.any()):
        return features.sum() * 0.0
    y = labels[keep]
    kl = gaussian_kl_diag(
        features[keep], local_vars[y], global_means[y], global_vars[y], reduction=reduction
    )
    return kl.sum() / features.shape[0]


def dm_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    target_means: torch.Tensor,
    target_stds: torch.Tensor,
) -> torch.Tensor:
    """Distribution matching between generated features and the global class statistics.

    For every class in ``labels`` the batch mean and standard deviation of its features are matched
    to the target's (squared error, averaged over dimensions), then averaged over classes. Zero when
    every class's batch statistics equal its target.

    Args:
        features: (n, p) features of decoded latents, re-encoded by the frozen extractor.
        labels: (n,) class each latent was drawn from; each class needs at least 2 samples.
        target_means, target_stds: (C, p) global class means c^y and standard deviations sigma_y.
    """
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    if bool((counts < 2).any()):
        raise ValueError("dm_loss needs at least 2 samples of every class in the batch")
    k, p = classes.shape[0], features.shape[1]
    n = counts.to(features.dtype)[:, None]
    sums = features.new_zeros(k, p).index_add_(0, inverse, features)
    means = sums / n
    centred = features - means[inverse]
    variances = features.new_zeros(k, p).index_add_(0, inverse, centred**2) / n
    stds = (variances + 1e-8).sqrt()
    mean_term = ((means - target_means[classes]) ** 2).mean(dim=1)
    std_term = ((stds - target_stds[classes]) ** 2).mean(dim=1)
    return (mean_term + std_term).mean()
