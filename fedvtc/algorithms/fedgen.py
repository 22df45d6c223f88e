"""FedGen (Zhu et al., ICML 2021), heterogeneous form: a server-trained generator of features.

The clients' architectures differ, but every head is a ``Linear(p, C)`` on the shared feature
space, so heads can be averaged and a generator can produce features any head understands.

Client (``FedGenClient``), per round, given the server's generator (from round 2 on):
load the averaged head (``share_head``) -> local training with cross-entropy + ``generated_weight``
* CE of the head on generated features G(z, y), labels y drawn by the global label frequency
(``GeneratedFeatureTerm`` through ``train_local``'s ``extra_loss``; only the head learns from it)
-> upload the head's weight and bias and the client's per-class label counts.
Server (``FedGenStrategy``): trains the conditional generator ``FeatureGenerator`` for
``server_epochs`` Adam steps so that the uploaded heads, as a weighted ensemble, classify G(z, y)
as y (``losses.ensemble_cross_entropy``, plus an optional ``losses.diversity_loss``); sends down
the generator's float state, the pooled label counts and (``share_head``) the sample-weighted
average head (``averaging.weighted_average``). The generator's init and training are seeded.

Read against HtFLlib's ``servergen.py`` / ``clientgen.py`` (TsingZ0/HtFLlib) and FedGen's own code
(zhuangdizhu/FedGen); ``conf/algorithm/fedgen.yaml`` documents every option and its source.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedvtc.averaging import weighted_average
from fedvtc.client import HeteroClient
from fedvtc.settings import ConfigError, RunSettings
from fedvtc.losses import diversity_loss, ensemble_cross_entropy
from fedvtc.payload import Payload, PayloadError, decode
from fedvtc.seeding import GENERATED_FEATURES, INIT, SERVER, derive_seed, torch_generator
from fedvtc.strategy import HeteroStrategy, Upload
from fedvtc.vtc import load_shared_arrays, shared_arrays, shared_shapes

log = logging.getLogger("fedvtc")

ENSEMBLES = ("fedgen", "htfllib")


@dataclass(frozen=True)
class FedGenSettings:
    """``conf/algorithm/fedgen.yaml``; each field is documented there."""

    noise_dim: int = 512
    hidden_dim: int = 512
    server_epochs: int = 100
    server_lr: float = 0.005
    server_batch_size: int = 10
    ensemble: str = "fedgen"
    diversity_weight: float = 0.0
    generated_weight: float = 1.0
    generated_weight_decay: float = 1.0
    share_head: bool = True

    def check(self, run: RunSettings) -> None:
        """Raise ``ConfigError`` for values that cannot work."""
        if self.ensemble not in ENSEMBLES:
            raise ConfigError(f"algorithm.ensemble must be one of {list(ENSEMBLES)}, got '{self.ensemble}'")
        positive = {
            "noise_dim": self.noise_dim,
            "hidden_dim": self.hidden_dim,
            "server_epochs": self.server_epochs,
            "server_lr": self.server_lr,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"algorithm.{key} must be > 0, got {value}")
        if self.server_batch_size < 2:  # the generator's BatchNorm needs two samples per step
            raise ConfigError(f"algorithm.server_batch_size must be >= 2, got {self.server_batch_size}")
        for key, value in (("diversity_weight", self.diversity_weight), ("generated_weight", self.generated_weight)):
            if value < 0:
                raise ConfigError(f"algorithm.{key} must be >= 0, got {value}")
        if not 0 < self.generated_weight_decay <= 1:
            raise ConfigError(
                f"algorithm.generated_weight_decay must be in (0, 1], got {self.generated_weight_decay}"
            )


class FeatureGenerator(nn.Module):
    """G(z, y): uniform noise and a one-hot label -> a feature in R^p.

    ``Linear(noise_dim + C, hidden) -> BatchNorm1d -> ReLU -> Linear(hidden, p)``, the generator
    of FedGen's code and HtFLlib's heterogeneous FedGen; the output is unconstrained, like the
    zoo's features (no activation after the extractors' last ``Linear``).

    Args:
        noise_dim: size of the noise vector z ~ U[0, 1)^noise_dim (both reference codes draw
            uniform noise, although their comments say Gaussian).
        num_classes: C, the size of the one-hot label.
        hidden_dim: width of the hidden layer.
        feature_dim: p, the size of the generated features.
    """

    def __init__(self, noise_dim: int, num_classes: int, hidden_dim: int, feature_dim: int) -> None:
        super().__init__()
        self.noise_dim = noise_dim
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Linear(noise_dim + num_classes, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU()
        )
        self.out = nn.Linear(hidden_dim, feature_dim)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, p) features for (B, noise_dim) ``noise`` and (B,) class ids ``labels``."""
        one_hot = F.one_hot(labels, self.num_classes).to(noise.dtype)
        return self.out(self.body(torch.cat([noise, one_hot], dim=1)))

    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw noise for ``labels`` from ``generator`` (on the CPU); returns (features, noise)."""
        device = self.out.weight.device
        noise = torch.rand(len(labels), self.noise_dim, generator=generator).to(device)
        return self(noise, labels.to(device)), noise


def build_generator(run: RunSettings) -> FeatureGenerator:
    """The run's generator, freshly built (with whatever the global RNG gives)."""
    a: FedGenSettings = run.algorithm
    return FeatureGenerator(a.noise_dim, run.dataset.num_classes, a.hidden_dim, run.feature_dim)


def sample_labels(probs: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` class ids drawn with replacement from the (C,) frequencies ``probs`` (on the CPU)."""
    return torch.multinomial(probs.cpu(), n, replacement=True, generator=generator)


def label_frequencies(counts: np.ndarray) -> torch.Tensor:
    """(C,) sampling probabilities proportional to label counts."""
    counts = torch.as_tensor(np.asarray(counts, dtype=np.float64))
    return (counts / counts.sum()).float()


# ---- server ------------------------------------------------------------------------------------------


def teacher_weights(counts: np.ndarray, num_examples: Sequence[int], ensemble: str) -> torch.Tensor:
    """(K, C) how much client k's head counts for a feature of class c.

    ``"fedgen"``: the client's share of the class's samples, n_k[c] / sum_k n_k[c] (FedGen's label
    weights; classes nobody holds get uniform weights, they are never sampled). ``"htfllib"``: the
    client's share of all samples, the same for every class (HtFLlib).

    Args:
        counts: (K, C) per-class label counts of the K uploading clients.
        num_examples: the K clients' training-set sizes.
        ensemble: ``"fedgen"`` or ``"htfllib"``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if ensemble == "fedgen":
        totals = counts.sum(axis=0, keepdims=True)
        uniform = np.full_like(counts, 1.0 / counts.shape[0])
        weights = np.where(totals > 0, counts / np.where(totals > 0, totals, 1.0), uniform)
    elif ensemble == "htfllib":
        n = np.asarray(num_examples, dtype=np.float64)
        weights = np.repeat((n / n.sum())[:, None], counts.shape[1], axis=1)
    else:
        raise ValueError(f"unknown ensemble {ensemble!r}")
    return torch.as_tensor(weights, dtype=torch.float32)


def train_feature_generator(
    generator: FeatureGenerator,
    head_weights: torch.Tensor,
    head_biases: torch.Tensor,
    class_weights: torch.Tensor,
    label_probs: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    batch_size: int,
    rng: torch.Generator,
    combine: str,
    diversity_weight: float = 0.0,
) -> list[float]:
    """Train G so that the clients' heads, as an ensemble, classify G(z, y) as y.

    Each step draws ``batch_size`` labels from ``label_probs`` and noise, generates features, runs
    them through every head and minimizes ``ensemble_cross_entropy`` (+ ``diversity_weight`` *
    ``diversity_loss``). Only G moves; the heads are fixed tensors.

    Args:
        generator: trained in place (train mode: BatchNorm uses batch statistics).
        head_weights: (K, C, p) the K uploaded head weights.
        head_biases: (K, C) their biases.
        class_weights: (K, C) ``teacher_weights``; column c says how much each head counts for class c.
        label_probs: (C,) the frequencies the labels are drawn from.
        optimizer: an optimizer over ``generator``'s parameters.
        steps: optimizer steps.
        batch_size: generated features per step.
        rng: draws labels and noise.
        combine: ``"loss"`` or ``"logits"``, see ``ensemble_cross_entropy``.
        diversity_weight: weight of FedGen's diversity term (0 = off).

    Returns the loss of every step, in order.
    """
    generator.train()
    device = generator.out.weight.device
    head_weights, head_biases = head_weights.to(device), head_biases.to(device)
    class_weights = class_weights.to(device)
    history: list[float] = []
    for _ in range(steps):
        labels = sample_labels(label_probs, batch_size, rng).to(device)
        features, noise = generator.sample(labels, rng)
        logits = torch.einsum("bp,kcp->kbc", features, head_weights) + head_biases[:, None, :]
        loss = ensemble_cross_entropy(logits, labels, class_weights[:, labels], combine=combine)
        if diversity_weight > 0:
            loss = loss + diversity_weight * diversity_loss(noise, features)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    return history


class FedGenStrategy(HeteroStrategy):
    """Trains the feature generator on the uploaded heads; sends it, the label counts and the mean head.

    Args:
        seed: the run seed; seeds the generator's initialization and each round's draws.
        generator: the generator to train (its architecture fixes the download's shapes).
        server_epochs: generator steps per round.
        server_lr: Adam's learning rate (a new Adam every round, as HtFLlib).
        server_batch_size: generated features per step.
        ensemble: ``"fedgen"`` (label-count weights, mixture of losses) or ``"htfllib"``
            (sample-count weights, loss of the mixed logits).
        diversity_weight: weight of FedGen's diversity term.
        share_head: also send the sample-weighted mean of the uploaded heads.
        **kwargs: see ``HeteroStrategy``.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        generator: FeatureGenerator,
        server_epochs: int = 100,
        server_lr: float = 0.005,
        server_batch_size: int = 10,
        ensemble: str = "fedgen",
        diversity_weight: float = 0.0,
        share_head: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.seed = seed
        self.generator = generator
        self.server_epochs = server_epochs
        self.server_lr = server_lr
        self.server_batch_size = server_batch_size
        self.ensemble = ensemble
        self.diversity_weight = diversity_weight
        self.share_head = share_head
        self.loss_history: list[float] = []  # per-step generator losses of the latest round

    @classmethod
    def from_settings(cls, run: RunSettings, **kwargs: Any) -> FedGenStrategy:
        a: FedGenSettings = run.algorithm
        # A local RNG state, so seeding the generator leaves the process's global RNG alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(run.seed, SERVER, INIT))
            generator = build_generator(run)
        return cls(
            seed=run.seed, generator=generator, server_epochs=a.server_epochs, server_lr=a.server_lr,
            server_batch_size=a.server_batch_size, ensemble=a.ensemble,
            diversity_weight=a.diversity_weight, share_head=a.share_head, **kwargs,
        )

    def server_state(self) -> dict[str, Any]:
        # A new Adam every round, so the generator (weights and BatchNorm statistics) is all it keeps.
        return {
            **super().server_state(),
            "generator": self.generator.state_dict(),
            "loss_history": list(self.loss_history),
        }

    def load_server_state(self, state: dict[str, Any]) -> None:
        super().load_server_state(state)
        self.generator.load_state_dict(state["generator"])
        self.loss_history = list(state["loss_history"])

    def extra_upload_shapes(self) -> Sequence[tuple[int, ...]] | None:
        return upload_shapes(self.num_classes, self.feature_dim)

    def check_upload(self, payload: Payload) -> None:
        if payload.stats is not None:
            raise PayloadError("a FedGen upload carries a head and label counts, no statistics")
        counts = payload.extra[2]
        if np.any(counts < 0) or np.any(counts != np.round(counts)):
            raise PayloadError("label counts must be non-negative integers")
        if counts.sum() <= 0 or counts.sum() > self.max_count:
            raise PayloadError(f"label counts add up to {counts.sum():.0f}, not in 1..{self.max_count:.0f}")

    def aggregate(self, server_round: int, uploads: list[Upload]) -> Payload:
        weights = torch.as_tensor(np.stack([u.payload.extra[0] for u in uploads]), dtype=torch.float32)
        biases = torch.as_tensor(np.stack([u.payload.extra[1] for u in uploads]), dtype=torch.float32)
        counts = np.stack([u.payload.extra[2] for u in uploads]).astype(np.float64)
        num_examples = [u.num_examples for u in uploads]
        optimizer = torch.optim.Adam(self.generator.parameters(), lr=self.server_lr)
        self.loss_history = train_feature_generator(
            self.generator, weights, biases, teacher_weights(counts, num_examples, self.ensemble),
            label_frequencies(counts.sum(axis=0)), optimizer, steps=self.server_epochs,
            batch_size=self.server_batch_size, rng=torch_generator(self.seed, SERVER, server_round),
            combine="loss" if self.ensemble == "fedgen" else "logits",
            diversity_weight=self.diversity_weight,
        )
        log.info(
            "round %d: FedGen generator loss %.4f -> %.4f (%d heads)",
            server_round, self.loss_history[0], self.loss_history[-1], len(uploads),
        )
        extra = [*shared_arrays(self.generator), counts.sum(axis=0).astype(np.float32)]
        if self.share_head:
            extra += weighted_average([u.payload.extra[:2] for u in uploads], num_examples)
        return Payload(extra=extra)


def upload_shapes(num_classes: int, feature_dim: int) -> list[tuple[int, ...]]:
    """A client's upload: head weight (C, p), head bias (C,), label counts (C,)."""
    return [(num_classes, feature_dim), (num_classes,), (num_classes,)]


def download_shapes(
    generator: nn.Module, num_classes: int, feature_dim: int, share_head: bool
) -> list[tuple[int, ...]]:
    """The server's download: the generator's float state, pooled label counts (C,), [mean head]."""
    shapes = [*shared_shapes(generator), (num_classes,)]
    if share_head:
        shapes += upload_shapes(num_classes, feature_dim)[:2]
    return shapes


# ---- client ------------------------------------------------------------------------------------------


@dataclass
class GeneratedFeatureTerm:
    """FedGen's client regularizer, called once per local step (``train_local``'s ``extra_loss``).

    Draws ``batch_size`` labels by the global label frequency and noise, generates their features
    with the (frozen, eval-mode) generator and returns ``weight * CE(head(G(z, y)), y)``: only the
    head learns from it, since generated features never pass through the extractor.

    Attributes:
        generator: the server's generator, loaded from the download.
        head: the client's head (``model.head``).
        label_probs: (C,) global label frequencies.
        weight: the term's weight this round.
        batch_size: generated features per step.
        rng: draws labels and noise.
    """

    generator: FeatureGenerator
    head: nn.Module
    label_probs: torch.Tensor
    weight: float
    batch_size: int
    rng: torch.Generator

    def __call__(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The weighted loss; the real batch's ``features`` and ``labels`` are not used."""
        y = sample_labels(self.label_probs, self.batch_size, self.rng).to(features.device)
        with torch.no_grad():
            generated, _ = self.generator.sample(y, self.rng)
        return self.weight * F.cross_entropy(self.head(generated), y)


class FedGenClient(HeteroClient):
    """Regularizes its head on the server's generated features; uploads its head and label counts."""

    def setup(self) -> None:
        a: FedGenSettings = self.s.algorithm
        self.generator = build_generator(self.s).to(self.device)
        self.generator.eval()  # frozen on the client: BatchNorm uses the server's running statistics
        self.generator.requires_grad_(False)
        if a.share_head:
            self._init_shared_head()

    def _init_shared_head(self) -> None:
        """Give every client the same initial head, since heads are averaged (HtFLlib hands all
        clients client 0's head); the saved state replaces it from round 2 on."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.s.seed, INIT, 2))
            head = nn.Linear(self.s.feature_dim, self.s.dataset.num_classes)
        with torch.no_grad():
            self.model.head.weight.copy_(head.weight)
            self.model.head.bias.copy_(head.bias)

    def decode_download(self, parameters: list) -> Payload:
        # Nothing comes down in round 1; from round 2 the generator, label counts and head.
        a: FedGenSettings = self.s.algorithm
        C, p = self.s.dataset.num_classes, self.s.feature_dim
        return decode(
            parameters, num_classes=C, feature_dim=p,
            extra_shapes=download_shapes(self.generator, C, p, a.share_head), extra_optional=True,
        )

    def train_round(self, received: Payload, server_round: int, num_rounds: int) -> Payload:
        a: FedGenSettings = self.s.algorithm
        term = None
        if received.extra:
            n_gen = len(shared_shapes(self.generator))
            load_shared_arrays(self.generator, received.extra[:n_gen])
            if a.share_head:
                self._load_head(received.extra[n_gen + 1 :])
            weight = a.generated_weight * a.generated_weight_decay ** (server_round - 1)
            if weight > 0:
                term = GeneratedFeatureTerm(
                    self.generator, self.model.head, label_frequencies(received.extra[n_gen]), weight,
                    self.s.train.batch_size,
                    torch_generator(self.s.seed, self.cid, server_round, GENERATED_FEATURES),
                )
        self.local_training(server_round, extra_loss=term)
        return Payload(extra=self._upload())

    def _load_head(self, arrays: Sequence[np.ndarray]) -> None:
        with torch.no_grad():
            self.model.head.weight.copy_(torch.as_tensor(arrays[0]))
            self.model.head.bias.copy_(torch.as_tensor(arrays[1]))

    def _upload(self) -> list[np.ndarray]:
        counts = torch.bincount(self.train_data.y.cpu(), minlength=self.s.dataset.num_classes)
        return [
            self.model.head.weight.detach().cpu().numpy(),
            self.model.head.bias.detach().cpu().numpy(),
            counts.numpy().astype(np.float32),
        ]
