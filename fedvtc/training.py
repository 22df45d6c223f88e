"""The client-side loops of FedVTC and the baselines, one phase per function (METHOD.md §2, §6).

Plain torch in, plain numbers out: no Flower, no configuration objects. Data are in-memory tensors
(``ImageSet``); batches are drawn by indexing them with a seeded permutation, never sample by
sample. Every function that draws random numbers takes a ``torch.Generator`` so a client's round is
reproducible whatever process or order it runs in.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from fedvtc.data import ImageSet
from fedvtc.losses import (
    alignment_loss,
    dm_loss,
    mutual_learning_loss,
    prediction_sets,
    set_consensus,
    trusted_samples,
)
from fedvtc.stats import ClassStats, class_statistics, sample_latents
from fedvtc.vtc import VTC, AdaptedVTC
from fedvtc.zoo import HeteroModel


@dataclass(frozen=True)
class GlobalGaussians:
    """The pooled class Gaussians as dense tensors, ready for the losses and for sampling.

    Attributes:
        present: (C,) bool, classes some client holds.
        means: (C, p) c^y.
        variances: (C, p) sigma_y^2, floored.
        second: (C, p) variances or (C, p, p) covariances used for sampling.
    """

    present: torch.Tensor
    means: torch.Tensor
    variances: torch.Tensor
    second: torch.Tensor

    @property
    def classes(self) -> torch.Tensor:
        return self.present.nonzero().flatten()

    @classmethod
    def from_stats(
        cls, stats: ClassStats, num_classes: int, *, variance_floor: float, device: torch.device
    ) -> GlobalGaussians:
        """Densify pooled statistics, flooring variances at ``variance_floor``."""
        present, means, variances = stats.dense(num_classes)
        if stats.full:
            second = torch.zeros(num_classes, stats.feature_dim, stats.feature_dim)
            second[torch.as_tensor(stats.classes)] = torch.as_tensor(stats.second, dtype=torch.float32)
        else:
            second = torch.as_tensor(variances, dtype=torch.float32)
        as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
        return cls(
            present=torch.as_tensor(present, device=device),
            means=as_tensor(means),
            variances=as_tensor(variances).clamp_min(variance_floor),
            second=second.to(device),
        )


@dataclass(frozen=True)
class Alignment:
    """The KL term of local training: which Gaussians to pull toward, and how hard."""

    target: GlobalGaussians
    local_variances: torch.Tensor  # (C, p) the client's own class variances, floored
    weight: float
    reduction: str = "sum"


# A loss term on a batch's features and labels, e.g. ``lambda z, y: weight * prototype_loss(...)``.
FeatureLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index batches covering range(n) once (the last batch may be smaller)."""
    order = torch.randperm(n, generator=generator)
    yield from order.split(batch_size)


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params, grad_clip: float) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()


@contextmanager
def _frozen_extractor(model: HeteroModel, *, frozen: bool) -> Iterator[None]:
    """While active (if ``frozen``), the extractor gets no gradients and its BatchNorm is in eval mode."""
    if not frozen:
        yield
        return
    model.extractor.requires_grad_(False)
    model.extractor.eval()
    try:
        yield
    finally:
        model.extractor.requires_grad_(True)


def train_local(
    model: HeteroModel,
    data: ImageSet,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    alignment: Alignment | None = None,
    grad_clip: float = 0.0,
    extra_loss: FeatureLoss | None = None,
    train_extractor: bool = True,
    update_norm_stats: bool = True,
) -> float:
    """Cross-entropy training on local data, plus the KL alignment once global statistics exist.

    Args:
        model: the client's model; trained in place.
        data: the local training set.
        optimizer: the optimizer over ``model``'s parameters.
        epochs: passes over ``data``.
        batch_size: samples per step.
        generator: seeds the batch order.
        alignment: FedVTC's KL term, or None.
        grad_clip: clip the gradient norm of every step at this value (0 = off).
        extra_loss: a further term ``extra_loss(features, labels)`` added to every step's loss,
            already weighted (e.g. FedProto's distance to the global prototypes), or None.
        train_extractor: False freezes the extractor (no gradients, BatchNorm in eval mode) so
            only the head learns; parameters without gradients are skipped by the optimizer,
            momentum included.
        update_norm_stats: False keeps every BatchNorm layer in eval mode (running statistics
            as they are, affine parameters still trained), e.g. so batches of synthetic images do
            not move the statistics the model later reads real images with.

    Returns the mean training loss of the last epoch.
    """
    model.train()
    if not update_norm_stats:
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                module.eval()
    with _frozen_extractor(model, frozen=not train_extractor):
        device = next(model.parameters()).device
        params = [p for p in model.parameters() if p.requires_grad]
        total, seen = 0.0, 0
        for _ in range(epochs):
            total, seen = 0.0, 0
            for idx in batches(len(data), batch_size, generator):
                x, y = data.x[idx].to(device), data.y[idx].to(device)
                features = model.forward_features(x)
                loss = F.cross_entropy(model.head(features), y)
                if alignment is not None and alignment.weight > 0:
                    t = alignment.target
                    loss = loss + alignment.weight * alignment_loss(
                        features, y, t.means, t.variances, alignment.local_variances, t.present,
                        reduction=alignment.reduction,
                    )
                if extra_loss is not None:
                    loss = loss + extra_loss(features, y)
                _step(optimizer, loss, params, grad_clip)
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
    return total / max(seen, 1)


DM_SPACES = ("features", "logits")
# What the VTC decodes in training: the image's features g(x) (METHOD.md §2) or its class's pooled mean.
VTC_INPUTS = ("features", "class_mean")
NORM_STATS = ("update", "frozen")


def train_vtc(
    vtc: VTC | AdaptedVTC,
    model: HeteroModel,
    data: ImageSet,
    optimizer: torch.optim.Optimizer,
    target: GlobalGaussians,
    *,
    steps: int,
    batch_size: int,
    generator: torch.Generator,
    dm_weight: float,
    dm_per_class: int,
    grad_clip: float = 0.0,
    dm_space: str = "features",
    encoder_optimizer: torch.optim.Optimizer | None = None,
    encoder_weight: float = 1.0,
    train_noise: float = 1.0,
    style_beta: float = 1.0,
    train_input: str = "features",
    features: torch.Tensor | None = None,
) -> dict[str, float]:
    """Train the VTC with the classifier frozen: reconstruction + dm_weight * distribution matching.

    Reconstruction: z = g(x), v = z + train_noise * sigma_y * eps, loss ||vtc(v) - x||^2, with
    sigma_y the global standard deviation of the sample's class (``train_noise`` 1 = METHOD.md §2;
    smaller lets the decoder keep more of what z carries beyond its class). Distribution
    matching: ``dm_per_class`` latents from every global class Gaussian, decoded, re-encoded by
    the frozen g, and either their per-class feature mean and std matched to (c^y, sigma_y)
    (``dm_space="features"``) or the frozen classifier's cross-entropy on them (``"logits"``: the
    decoded image must be classified as y).

    With ``encoder_optimizer`` (the VAE reading, METHOD.md §3) the reconstruction loss, weighted by
    ``encoder_weight``, also trains the extractor g as the encoder, one step of that optimizer per
    VTC step; the DM term never reaches g (it would let g chase the decoder's images).

    A VTC with a style code (``vtc.style_dim`` > 0) decodes (v, u) with u ~ q(u | x) from its style
    encoder, and adds ``style_beta`` * KL(q(u | x) || N(0, I)) per pixel, doubled so that
    ``style_beta`` = 1 is the ELBO of a unit-variance Gaussian likelihood on the normalized pixels
    (the MSE is its per-pixel mean); DM draws u from the prior.

    ``train_input="class_mean"`` (a reading) decodes c^y + train_noise * sigma_y * eps instead, the
    pooled Gaussian of the image's class, which is what synthesis draws from: every client then
    trains the shared decoder on the same inputs, whatever its extractor; the extractor is not run.

    ``features``: g(x) of every image of ``data`` (``extract_features``), when the caller already
    has them for this frozen model: each step then reads its batch's rows instead of running the
    extractor. In eval mode a sample's features do not depend on its batch, up to float rounding
    (the CPU kernels may sum a batch of a few images in another order). Not with
    ``encoder_optimizer``, whose steps change g.

    Returns the mean reconstruction, DM and style-KL losses over the steps.
    """
    if dm_space not in DM_SPACES:
        raise ValueError(f"dm_space must be one of {DM_SPACES}, got {dm_space!r}")
    if train_input not in VTC_INPUTS:
        raise ValueError(f"train_input must be one of {VTC_INPUTS}, got {train_input!r}")
    if train_input == "class_mean" and encoder_optimizer is not None:
        raise ValueError("train_input='class_mean' runs no extractor, so it cannot train one as the encoder")
    if features is not None and (encoder_optimizer is not None or len(features) != len(data)):
        raise ValueError("features must be the frozen extractor's, one row per image of data")
    device = next(vtc.parameters()).device
    model.eval()  # frozen: BatchNorm uses its running statistics and is not updated
    model.requires_grad_(False)
    encoder_params = [p for p in model.extractor.parameters()] if encoder_optimizer is not None else []
    vtc.train()
    params = [p for p in vtc.parameters()]
    stds = target.variances.sqrt()
    dm_labels = target.classes.repeat_interleave(dm_per_class)
    style_dim = vtc.style_dim
    rec_sum = dm_sum = style_kl_sum = 0.0
    try:
        done = 0
        while done < steps:
            for idx in batches(len(data), batch_size, generator):
                if done == steps:
                    break
                x, y = data.x[idx].to(device), data.y[idx].to(device)
                optimizer.zero_grad(set_to_none=True)
                if encoder_optimizer is not None:
                    encoder_optimizer.zero_grad(set_to_none=True)
                    model.extractor.requires_grad_(True)
                if train_input == "class_mean":  # every client's decoder reads the same inputs
                    z = target.means[y]
                elif features is not None:
                    z = features[idx].to(device)
                else:
                    with torch.set_grad_enabled(encoder_optimizer is not None):
                        z = model.forward_features(x)
                noise = torch.randn(z.shape, generator=generator).to(device)  # drawn at any scale: same stream
                if train_noise != 1.0:
                    noise = noise * train_noise
                style = None
                if style_dim:
                    mu, logvar = vtc.encode_style(x, y)
                    eps = torch.randn(mu.shape, generator=generator).to(device)
                    style = mu + eps * (0.5 * logvar).exp()
                loss = rec = F.mse_loss(vtc(z + noise * stds[y], style), x)
                if style_dim:
                    style_kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1).mean()
                    loss = rec + style_beta * 2 * style_kl / x[0].numel()
                    style_kl_sum += float(style_kl.detach())
                # Backward now, while the encoder (if it trains) still takes gradients; the DM
                # term below is backpropagated with it frozen, so it reaches the VTC alone.
                loss.backward()
                model.extractor.requires_grad_(False)
                if dm_weight > 0 and len(dm_labels) > 0:
                    latents = sample_latents(target.means, target.second, dm_labels, generator=generator)
                    style = torch.randn(len(latents), style_dim, generator=generator).to(device) if style_dim else None
                    decoded_features = model.forward_features(vtc(latents, style))
                    if dm_space == "features":
                        dm = dm_loss(decoded_features, dm_labels, target.means, stds)
                    else:
                        dm = F.cross_entropy(model.head(decoded_features), dm_labels)
                    (dm_weight * dm).backward()
                    dm_sum += float(dm.detach())
                if grad_clip > 0:
                    nn.utils.clip_grad_norm_(params, grad_clip)
                optimizer.step()
                if encoder_optimizer is not None:
                    for p in encoder_params:
                        if p.grad is not None:
                            p.grad.mul_(encoder_weight)
                    if grad_clip > 0:
                        nn.utils.clip_grad_norm_(encoder_params, grad_clip)
                    encoder_optimizer.step()
                rec_sum += float(rec.detach())
                done += 1
    finally:
        model.requires_grad_(True)
    losses = {"vtc_rec_loss": rec_sum / max(steps, 1), "vtc_dm_loss": dm_sum / max(steps, 1)}
    if style_dim:
        losses["vtc_style_kl"] = style_kl_sum / max(steps, 1)
    return losses


@torch.no_grad()
def synthesize(
    vtc: VTC | AdaptedVTC,
    target: GlobalGaussians,
    *,
    per_class: int,
    generator: torch.Generator,
    batch_size: int = 512,
    noise_scale: float = 1.0,
    classes: torch.Tensor | None = None,
) -> ImageSet:
    """``per_class`` labelled synthetic images of each of ``classes`` (default: every global class),
    decoded in eval mode.

    ``noise_scale`` scales each latent's deviation from its class mean (``sample_latents``). A VTC
    with a style code draws each image's code from its prior N(0, I), after the latents.
    """
    vtc.eval()
    labels = (target.classes if classes is None else classes.to(target.means.device)).repeat_interleave(per_class)
    latents = sample_latents(target.means, target.second, labels, generator=generator, scale=noise_scale)
    if not len(labels):
        raise ValueError("no global classes to synthesize")
    chunks = latents.split(batch_size)
    styles: Sequence[torch.Tensor | None] = [None] * len(chunks)
    if vtc.style_dim:
        styles = torch.randn(len(labels), vtc.style_dim, generator=generator).to(latents.device).split(batch_size)
    images = torch.cat([vtc(chunk, style) for chunk, style in zip(chunks, styles)])
    return ImageSet(images.cpu(), labels.cpu())


def finetune(
    model: HeteroModel,
    data: ImageSet,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    scope: str = "full",
    grad_clip: float = 0.0,
    norm_stats: str = "update",
) -> float:
    """Cross-entropy fine-tuning of the whole model (``scope="full"``) or of its head alone.

    ``data`` is whatever the caller chose to fine-tune on: synthetic images, real ones or a mix.
    ``norm_stats``: ``"update"`` lets its batches move BatchNorm's running statistics, ``"frozen"``
    keeps those of local training.
    """
    if norm_stats not in NORM_STATS:
        raise ValueError(f"finetune norm_stats must be one of {NORM_STATS}, got {norm_stats!r}")
    if scope not in ("full", "head"):
        raise ValueError(f"finetune scope must be 'full' or 'head', got {scope!r}")
    return train_local(
        model, data, optimizer, epochs=epochs, batch_size=batch_size, generator=generator,
        grad_clip=grad_clip, train_extractor=scope == "full", update_norm_stats=norm_stats == "update",
    )


def calibrate_head(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    grad_clip: float = 0.0,
) -> float:
    """Cross-entropy training of a classifier head directly on feature vectors (CCVR's calibration).

    The head acts on features, so no image and no extractor is involved: ``features`` are e.g.
    virtual features drawn from the pooled class Gaussians.

    Args:
        head: the classifier (``model.head``); trained in place.
        features: (n, p) input features, on the head's device.
        labels: (n,) their class ids, on the same device.
        optimizer: an optimizer over ``head``'s parameters.
        epochs: passes over the features.
        batch_size: features per step.
        generator: seeds the batch order.
        grad_clip: clip the gradient norm of every step at this value (0 = off).

    Returns the mean loss of the last epoch.
    """
    head.train()
    params = [p for p in head.parameters() if p.requires_grad]
    total, seen = 0.0, 0
    for _ in range(epochs):
        total, seen = 0.0, 0
        for idx in batches(len(labels), batch_size, generator):
            idx = idx.to(labels.device)
            loss = F.cross_entropy(head(features[idx]), labels[idx])
            _step(optimizer, loss, params, grad_clip)
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
    return total / max(seen, 1)


def model_version(model: nn.Module) -> tuple[int, ...]:
    """Changes whenever the model does: autograd's version counter of every parameter and buffer,
    which each in-place write bumps (an optimizer step, BatchNorm's running statistics in a
    train-mode forward, a loaded state dict). Lets a caller reuse what it computed on the model."""
    return tuple(t._version for t in (*model.parameters(), *model.buffers()))


@torch.no_grad()
def extract_features(model: HeteroModel, x: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """g(x) for a whole tensor of images, batched, in eval mode, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model.forward_features(b.to(device)).cpu() for b in x.split(batch_size)])


def feature_statistics(
    model: HeteroModel,
    data: ImageSet,
    *,
    full: bool = False,
    means_only: bool = False,
    batch_size: int = 512,
) -> ClassStats:
    """Per-class count, mean and (co)variance of the model's features on ``data``.

    ``full`` asks for (p, p) covariances, ``means_only`` for counts and means alone (prototypes).
    """
    features = extract_features(model, data.x, batch_size=batch_size)
    return class_statistics(features, data.y, full=full, means_only=means_only)


def group_accuracies(correct: torch.Tensor, labels: torch.Tensor, held_classes: torch.Tensor) -> dict[str, float]:
    """Accuracy on the images of the classes a client holds and on those of the classes it lacks.

    Args:
        correct: (n,) bool, whether each image was classified right.
        labels: (n,) their true classes.
        held_classes: the classes present in the client's training data.

    Returns ``held`` and ``missing`` accuracies; a group with no image is omitted (e.g. ``missing``
    for a client that holds every class), so no figure is ever a NaN.
    """
    held = torch.isin(labels, held_classes.to(labels.device))
    out = {}
    for name, mask in (("held", held), ("missing", ~held)):
        if bool(mask.any()):
            out[name] = float(correct[mask].float().mean())
    return out


@torch.no_grad()
def evaluate_groups(
    model: HeteroModel, data: ImageSet, held_classes: torch.Tensor, *, batch_size: int = 512
) -> dict[str, float]:
    """Loss and accuracy of ``model`` on ``data``, and the accuracy of each group (``group_accuracies``)."""
    model.eval()
    device = next(model.parameters()).device
    loss_sum, correct = 0.0, []
    for x, y in zip(data.x.split(batch_size), data.y.split(batch_size)):
        logits = model(x.to(device))
        loss_sum += float(F.cross_entropy(logits, y.to(device), reduction="sum"))
        correct.append((logits.argmax(dim=1).cpu() == y))
    hits = torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)
    n = max(len(data), 1)
    return {"loss": loss_sum / n, "accuracy": float(hits.sum()) / n,
            **group_accuracies(hits, data.y, held_classes)}


@torch.no_grad()
def evaluate(model: HeteroModel, data: ImageSet, *, batch_size: int = 512) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``data`` (batched, eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    loss_sum, correct = 0.0, 0
    for x, y in zip(data.x.split(batch_size), data.y.split(batch_size)):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(dim=1) == y).sum())
    n = max(len(data), 1)
    return loss_sum / n, correct / n


@dataclass(frozen=True)
class MutualLearning:
    """How a private model and a proxy teach each other (FedType's local update).

    Attributes:
        temperature: T of both distillation terms.
        forward_weight: weight of the proxy's term, distilled from the private model on every sample.
        backward_weight: weight of the private model's term, distilled from the proxy.
        proxy_threshold: the proxy's prediction-set threshold; only samples whose proxy set holds 1
            to ``max_set_size`` classes teach the private model. None: every sample does.
        private_threshold: the private model's set threshold; when given (with ``proxy_threshold``),
            the backward term is scaled by the batch's set consensus (``losses.set_consensus``).
        max_set_size: the largest proxy prediction set still trusted.
    """

    temperature: float = 1.0
    forward_weight: float = 1.0
    backward_weight: float = 1.0
    proxy_threshold: float | None = None
    private_threshold: float | None = None
    max_set_size: int = 1


def train_mutual(
    private: HeteroModel,
    proxy: HeteroModel,
    data: ImageSet,
    private_optimizer: torch.optim.Optimizer,
    proxy_optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    spec: MutualLearning,
    grad_clip: float = 0.0,
) -> dict[str, float]:
    """Train both models on the same batches, each with cross-entropy plus what the other teaches.

    Per batch: private loss = CE + backward_weight * consensus * ``mutual_learning_loss`` from the
    proxy (trusted samples only); proxy loss = CE + forward_weight * ``mutual_learning_loss`` from
    the private model (all samples). Each model sees the other's logits of the same forward pass,
    detached, and both take one step.

    Args:
        private: the client's own model; trained in place.
        proxy: the shared proxy; trained in place.
        data: the local training set.
        private_optimizer: an optimizer over ``private``'s parameters.
        proxy_optimizer: an optimizer over ``proxy``'s parameters.
        epochs: passes over ``data``.
        batch_size: samples per step.
        generator: seeds the batch order.
        spec: the weights, temperature and trust thresholds.
        grad_clip: clip each model's gradient norm at this value (0 = off).

    Returns the last epoch's mean private and proxy losses and the fraction of trusted samples.
    """
    private.train()
    proxy.train()
    device = next(private.parameters()).device
    private_params = [p for p in private.parameters() if p.requires_grad]
    proxy_params = [p for p in proxy.parameters() if p.requires_grad]
    totals = {"private": 0.0, "proxy": 0.0, "trusted": 0.0}
    seen = 0
    for _ in range(epochs):
        totals = dict.fromkeys(totals, 0.0)
        seen = 0
        for idx in batches(len(data), batch_size, generator):
            x, y = data.x[idx].to(device), data.y[idx].to(device)
            private_logits, proxy_logits = private(x), proxy(x)
            backward = mutual_learning_loss(
                private_logits, proxy_logits, temperature=spec.temperature,
                threshold=spec.proxy_threshold, max_set_size=spec.max_set_size,
            )
            weight = spec.backward_weight * _consensus(private_logits, proxy_logits, spec)
            private_loss = F.cross_entropy(private_logits, y) + weight * backward
            forward = mutual_learning_loss(proxy_logits, private_logits, temperature=spec.temperature)
            proxy_loss = F.cross_entropy(proxy_logits, y) + spec.forward_weight * forward
            _step(private_optimizer, private_loss, private_params, grad_clip)
            _step(proxy_optimizer, proxy_loss, proxy_params, grad_clip)
            totals["private"] += float(private_loss.detach()) * len(idx)
            totals["proxy"] += float(proxy_loss.detach()) * len(idx)
            if spec.proxy_threshold is not None:
                probs = F.softmax(proxy_logits.detach(), dim=1)
                totals["trusted"] += float(trusted_samples(probs, spec.proxy_threshold, spec.max_set_size).sum())
            else:
                totals["trusted"] += len(idx)
            seen += len(idx)
    return {key: value / max(seen, 1) for key, value in totals.items()}


def _consensus(private_logits: torch.Tensor, proxy_logits: torch.Tensor, spec: MutualLearning) -> float:
    """The batch's set consensus, or 1 when consensus weighting is off."""
    if spec.proxy_threshold is None or spec.private_threshold is None:
        return 1.0
    with torch.no_grad():
        private_sets = prediction_sets(F.softmax(private_logits, dim=1), spec.private_threshold)
        proxy_sets = prediction_sets(F.softmax(proxy_logits, dim=1), spec.proxy_threshold)
        return float(set_consensus(private_sets, proxy_sets))


@torch.no_grad()
def predict_probs(model: HeteroModel, x: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """Softmax probabilities of ``model`` on a whole tensor of images, batched, in eval mode, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([F.softmax(model(b.to(device)), dim=1).cpu() for b in x.split(batch_size)])
