"""The losses of FedVTC as pure torch functions (METHOD.md §2).

- ``gaussian_kl_diag``: closed-form KL between diagonal Gaussians.
- ``alignment_loss``: local training's KL term, pulling each sample's feature distribution
  N(g(x), diag sigma_local^2) toward the global class distribution N(c^y, diag sigma_y^2).
- ``dm_loss``: distribution matching, making the features of decoded global latents match the
  global class means and standard deviations.

Baselines (METHOD.md §6):

- ``prototype_loss``: FedProto's and FedTGP's client regularizer, the squared distance of each
  feature to the global prototype of its class.
- ``margin_prototype_loss``: FedTGP's server loss, a contrastive cross-entropy over distances
  between client prototypes and trainable global prototypes, with a margin on the true class.
- ``ensemble_cross_entropy``, ``diversity_loss``: FedGen's server losses, training a conditional
  feature generator against the clients' heads.
- ``mutual_learning_loss`` (with ``prediction_sets``, ``conformal_threshold``, ``trusted_samples``,
  ``set_consensus``): FedType's distillation between a private model and a proxy, trusting only
  the samples whose teacher prediction set is small.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

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


def prototype_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    present: torch.Tensor,
) -> torch.Tensor:
    """Mean over the batch of ``mean_d (g(x)_d - c^y_d)^2``, the distance to the class prototype.

    Samples whose class has no global prototype contribute 0 but still count in the batch size:
    this is exactly ``nn.MSELoss`` over the (B, p) batch with those rows set to the features
    themselves, as in FedProto's and HtFLlib's code, so a weight lambda means the same here.

    Args:
        features: (B, p) extractor output g(x).
        labels: (B,) class ids.
        prototypes: (C, p) global prototypes c^y (rows of absent classes are ignored).
        present: (C,) bool, classes that have a global prototype.
    """
    keep = present[labels]
    if not bool(keep.any()):
        return features.sum() * 0.0
    diff = features[keep] - prototypes[labels[keep]]
    return (diff**2).mean(dim=1).sum() / features.shape[0]


def euclidean_distances(a: torch.Tensor, b: torch.Tensor, *, eps: float = 1e-12) -> torch.Tensor:
    """(n, m) Euclidean distances between the rows of ``a`` (n, p) and of ``b`` (m, p).

    The squared distances are floored at ``eps`` before the square root, so the gradient stays
    finite when a row of ``a`` equals a row of ``b``.
    """
    squared = (a**2).sum(dim=1, keepdim=True) - 2.0 * a @ b.T + (b**2).sum(dim=1)[None, :]
    return squared.clamp_min(eps).sqrt()


def margin_prototype_loss(
    client_prototypes: torch.Tensor,
    labels: torch.Tensor,
    global_prototypes: torch.Tensor,
    margin: float,
) -> torch.Tensor:
    """FedTGP's adaptive-margin contrastive loss on the server.

    For each uploaded prototype P_i^c the logits are the negative Euclidean distances to every
    global prototype, with ``margin`` added to the distance of the true class c, so the true class
    must be closer than every other by at least the margin to win; the loss is their cross-entropy.

    Args:
        client_prototypes: (n, p) prototypes uploaded by clients.
        labels: (n,) the class of each.
        global_prototypes: (C, p) the current trainable global prototypes, one row per class.
        margin: added to the true class's distance (>= 0).
    """
    distances = euclidean_distances(client_prototypes, global_prototypes)
    distances = distances + margin * F.one_hot(labels, global_prototypes.shape[0]).to(distances.dtype)
    return F.cross_entropy(-distances, labels)


# ---- FedGen (server): the generator's losses --------------------------------------------------------


def ensemble_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    *,
    combine: str = "loss",
) -> torch.Tensor:
    """Cross-entropy of generated features under an ensemble of client heads, as FedGen's teacher.

    Args:
        logits: (K, B, C) the logits of each of the K client heads on the same B features.
        labels: (B,) the class each feature was generated for.
        weights: (K, B) how much client k's head counts for sample b; each column sums to 1.
        combine: ``"loss"``: ``mean_b sum_k w_kb CE(logits_kb, y_b)``, a weighted mixture of the
            clients' losses (FedGen's paper and code, with label-count weights); ``"logits"``:
            ``mean_b CE(sum_k w_kb logits_kb, y_b)``, the loss of the weighted-average logits
            (HtFLlib's heterogeneous FedGen, with sample-count weights).
    """
    if combine == "loss":
        per_client = F.cross_entropy(
            logits.flatten(0, 1), labels.repeat(logits.shape[0]), reduction="none"
        ).view(logits.shape[0], -1)
        return (weights * per_client).sum(dim=0).mean()
    if combine == "logits":
        return F.cross_entropy((weights[..., None] * logits).sum(dim=0), labels)
    raise ValueError(f"combine must be 'loss' or 'logits', got {combine!r}")


def diversity_loss(noise: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """FedGen's diversity term: small when different noise gives different outputs.

    ``exp(-mean_ij d_noise(i, j) * d_out(i, j))`` over all pairs of the batch, with ``d_noise`` the
    mean squared difference of two noise vectors and ``d_out`` the mean absolute difference of two
    outputs (the metrics of FedGen's ``DiversityLoss``). A generator that ignores its noise (mode
    collapse) has ``d_out = 0`` and the loss is at its maximum, 1.

    Args:
        noise: (B, d) the noise each output was generated from.
        outputs: (B, p) the generated features.
    """
    noise_dist = (noise[:, None, :] - noise[None, :, :]).pow(2).mean(dim=2)
    output_dist = (outputs[:, None, :] - outputs[None, :, :]).abs().mean(dim=2)
    return torch.exp(-(noise_dist * output_dist).mean())


# ---- FedType (client): mutual learning with uncertainty-based selection ---------------------------------


def prediction_sets(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, C) bool: the classes whose probability reaches ``threshold`` (a conformal LAC set).

    A set may be empty (no class is likely enough) or hold several classes (the model hesitates);
    either way the prediction is uncertain.
    """
    return probs >= threshold


def conformal_threshold(probs: torch.Tensor, labels: torch.Tensor, alpha: float) -> float:
    """Split-conformal threshold t such that ``{c : p_c(x) >= t}`` holds the true class w.p. >= 1 - alpha.

    The nonconformity score of a calibration sample is ``1 - p_y(x)``; q is the
    ``ceil((n + 1)(1 - alpha))``-th smallest of the n scores (the largest when that rank exceeds n),
    and t = 1 - q. A confident, accurate model gets a high threshold, so its sets are singletons
    where it is sure and larger (or empty) elsewhere.

    Args:
        probs: (n, C) softmax probabilities of the model on the calibration samples.
        labels: (n,) their true classes.
        alpha: the allowed miscoverage, in (0, 1).
    """
    if len(labels) == 0:
        raise ValueError("conformal calibration needs at least one sample")
    scores = torch.sort(1.0 - probs.gather(1, labels[:, None]).squeeze(1)).values
    rank = min(len(scores), math.ceil((len(scores) + 1) * (1.0 - alpha)))
    return float(1.0 - scores[rank - 1])


def trusted_samples(teacher_probs: torch.Tensor, threshold: float, max_set_size: int = 1) -> torch.Tensor:
    """(B,) bool: samples whose prediction set is non-empty and holds at most ``max_set_size`` classes."""
    sizes = prediction_sets(teacher_probs, threshold).sum(dim=1)
    return (sizes >= 1) & (sizes <= max_set_size)


def set_consensus(student_sets: torch.Tensor, teacher_sets: torch.Tensor) -> torch.Tensor:
    """Mean agreement of two models' prediction sets over a batch, in [0, 1] (FedType's consensus).

    Per sample: the Jaccard index |S ∩ T| / |S ∪ T| when the student's set S is no larger than the
    teacher's T, else the share of the teacher's set the student also predicts, |S ∩ T| / |T|
    (the rule of FedType's code). Two empty sets agree (1); an empty set agrees with no other (0).

    Args:
        student_sets: (B, C) bool sets of the model being taught.
        teacher_sets: (B, C) bool sets of the teacher.
    """
    inter = (student_sets & teacher_sets).sum(dim=1).float()
    union = (student_sets | teacher_sets).sum(dim=1).float()
    s_size, t_size = student_sets.sum(dim=1), teacher_sets.sum(dim=1)
    denominator = torch.where(s_size <= t_size, union, t_size.float())
    agreement = inter / denominator.clamp_min(1.0)
    return torch.where(union == 0, torch.ones_like(agreement), agreement).mean()


def mutual_learning_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    threshold: float | None = None,
    max_set_size: int = 1,
) -> torch.Tensor:
    """One direction of mutual learning: ``T^2 KL(softmax(teacher/T) || softmax(student/T))``.

    The teacher is detached (only the student learns). With a ``threshold``, only the samples the
    teacher is sure of count: those whose prediction set ``{c : p_c >= threshold}`` (probabilities
    at temperature 1) holds 1 to ``max_set_size`` classes (``trusted_samples``); the others
    contribute 0 but still count in the batch mean, so the term's scale does not depend on how
    many samples are trusted. Zero when the two models predict the same distribution.

    Args:
        student_logits: (B, C) logits of the model being taught.
        teacher_logits: (B, C) logits of the teacher.
        temperature: T, softens both distributions.
        threshold: the teacher's set threshold (e.g. ``conformal_threshold``), or None to trust
            every sample.
        max_set_size: the largest prediction set still trusted.
    """
    teacher_logits = teacher_logits.detach()
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    per_sample = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1)
    if threshold is not None:
        keep = trusted_samples(F.softmax(teacher_logits, dim=1), threshold, max_set_size)
        per_sample = per_sample * keep.to(per_sample.dtype)
    return temperature**2 * per_sample.mean()
