"""FedTGP (Zhang et al., AAAI 2024): trainable global prototypes with an adaptive-margin contrastive loss.

Client: FedProto's (``FedProtoClient``): cross-entropy + lambda * distance to the global prototype
of the sample's class, then uploads its per-class mean features.
Server (``FedTGPStrategy``): keeps a small trainable network that maps each class id to a global
prototype (``TrainablePrototypes``: class embedding -> Linear -> ReLU -> Linear). Every round it
trains that network for ``server_epochs`` passes over the uploaded prototypes (one per client and
class, unweighted) with ``losses.margin_prototype_loss``: cross-entropy over negative Euclidean
distances to all global prototypes, with the adaptive margin

    delta = min( max_c min_{c' != c} || Q^c - Q^{c'} ||, margin_threshold ),

Q^c being the plain mean of the uploaded prototypes of class c, added to the true class's
distance. It then sends down the network's prototypes of every class some client has uploaded.
The network and its training are seeded (``fedvtc.seeding``), so a run is reproducible.
Read against HtFLlib's ``servertgp.py`` / ``clienttgp.py`` (TsingZ0/HtFLlib); see
``conf/algorithm/fedtgp.yaml`` for every option and its default.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from fedvtc.algorithms.fedproto import FedProtoClient, FedProtoStrategy, check_proto_weight
from fedvtc.client import make_optimizer
from fedvtc.settings import ConfigError, RunSettings
from fedvtc.losses import euclidean_distances, margin_prototype_loss
from fedvtc.payload import Payload
from fedvtc.seeding import INIT, SERVER, derive_seed, torch_generator
from fedvtc.stats import ClassStats
from fedvtc.strategy import Upload
from fedvtc.training import batches

log = logging.getLogger("fedvtc")


@dataclass(frozen=True)
class FedTGPSettings:
    """``conf/algorithm/fedtgp.yaml``; each field is documented there."""

    proto_weight: float = 1.0
    server_epochs: int = 100
    server_lr: float = 0.01
    server_optimizer: str = "sgd"
    server_batch_size: int = 10
    margin_threshold: float = 100.0
    hidden_dim: int | None = None

    def check(self, run: RunSettings) -> None:
        """Raise ``ConfigError`` for values that cannot work."""
        check_proto_weight(self.proto_weight)
        if self.server_optimizer not in ("sgd", "adam"):
            raise ConfigError(f"algorithm.server_optimizer must be sgd or adam, got '{self.server_optimizer}'")
        positive = {
            "server_epochs": self.server_epochs,
            "server_lr": self.server_lr,
            "server_batch_size": self.server_batch_size,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"algorithm.{key} must be > 0, got {value}")
        if self.margin_threshold < 0:
            raise ConfigError(f"algorithm.margin_threshold must be >= 0, got {self.margin_threshold}")
        if self.hidden_dim is not None and self.hidden_dim < 1:
            raise ConfigError(f"algorithm.hidden_dim must be null or >= 1, got {self.hidden_dim}")


class TrainablePrototypes(nn.Module):
    """Maps class ids to global prototypes: embedding (p) -> Linear(p, h) -> ReLU -> Linear(h, p).

    Args:
        num_classes: C, one embedding per class.
        feature_dim: p, the size of the embeddings and of the prototypes.
        hidden_dim: h, the width of the hidden layer.
    """

    def __init__(self, num_classes: int, feature_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_classes, feature_dim)
        self.mlp = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, feature_dim)
        )
        self.num_classes = num_classes

    def forward(self, classes: torch.Tensor) -> torch.Tensor:
        """(k, p) prototypes of the (k,) class ids ``classes``."""
        return self.mlp(self.embedding(classes))

    def all_prototypes(self) -> torch.Tensor:
        """(C, p) the prototype of every class, in class order."""
        return self(torch.arange(self.num_classes, device=self.embedding.weight.device))


def adaptive_margin(prototypes: torch.Tensor, labels: torch.Tensor, threshold: float) -> float:
    """FedTGP's margin: the largest nearest-other-class distance between class centres, capped.

    Each class centre Q^c is the plain mean of the uploaded prototypes of class c. With fewer than
    two classes there is no distance to measure, and the cap itself is returned.

    Args:
        prototypes: (n, p) uploaded prototypes.
        labels: (n,) their classes.
        threshold: the cap (``margin_threshold``).
    """
    classes, inverse = torch.unique(labels, return_inverse=True)
    if len(classes) < 2:
        return float(threshold)
    counts = torch.bincount(inverse, minlength=len(classes)).to(prototypes.dtype)
    centres = torch.zeros(len(classes), prototypes.shape[1], dtype=prototypes.dtype)
    centres.index_add_(0, inverse, prototypes)
    centres /= counts[:, None]
    distances = euclidean_distances(centres, centres)
    distances.fill_diagonal_(float("inf"))
    nearest_other = distances.min(dim=1).values
    return float(min(float(nearest_other.max()), threshold))


def train_prototypes(
    model: TrainablePrototypes,
    prototypes: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    margin: float,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
) -> list[float]:
    """Train the global prototypes on the uploaded ones with the margin contrastive loss.

    Args:
        model: the trainable prototypes; trained in place.
        prototypes: (n, p) uploaded prototypes, one per client and class.
        labels: (n,) their classes.
        optimizer: an optimizer over ``model``'s parameters.
        margin: added to the distance of each prototype's true class (see ``adaptive_margin``).
        epochs: passes over the uploaded prototypes.
        batch_size: uploaded prototypes per step.
        generator: seeds the batch order.

    Returns:
        The mean loss of every epoch, in order.
    """
    model.train()
    history: list[float] = []
    for _ in range(epochs):
        total = 0.0
        for idx in batches(len(labels), batch_size, generator):
            # Every class's prototype moves at every step, so regenerate them all each time.
            loss = margin_prototype_loss(prototypes[idx], labels[idx], model.all_prototypes(), margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(labels))
    return history


def stack_prototypes(uploads: list[Upload]) -> tuple[torch.Tensor, torch.Tensor]:
    """All uploaded prototypes as one (n, p) float32 tensor and their (n,) classes."""
    means = np.concatenate([u.payload.stats.means for u in uploads])
    classes = np.concatenate([u.payload.stats.classes for u in uploads])
    return torch.as_tensor(means, dtype=torch.float32), torch.as_tensor(classes, dtype=torch.int64)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block, then restore the previous count.

    The prototype network is a few small matrices: more threads only add synchronization, and on a
    machine whose cores are busy (clients, other runs) they made each step ~50x slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class FedTGPClient(FedProtoClient):
    """FedTGP's client is FedProto's: the two differ only on the server."""


class FedTGPStrategy(FedProtoStrategy):
    """Trains the global prototypes on the clients' prototypes every round.

    Args:
        seed: the run seed; seeds the network's initialization and each round's batch order.
        server_epochs: passes over the uploaded prototypes each round.
        server_lr: learning rate of the server optimizer.
        server_optimizer: ``"sgd"`` (plain, no momentum) or ``"adam"``; rebuilt every round.
        server_batch_size: uploaded prototypes per server step.
        margin_threshold: cap of the adaptive margin.
        hidden_dim: width of the network's hidden layer (None: the feature size).
        **kwargs: see ``HeteroStrategy``.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        server_epochs: int = 100,
        server_lr: float = 0.01,
        server_optimizer: str = "sgd",
        server_batch_size: int = 10,
        margin_threshold: float = 100.0,
        hidden_dim: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.seed = seed
        self.server_epochs = server_epochs
        self.server_lr = server_lr
        self.server_optimizer = server_optimizer
        self.server_batch_size = server_batch_size
        self.margin_threshold = margin_threshold
        # A local generator state, so seeding the network leaves the process's global RNG alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, SERVER, INIT))
            self.prototype_net = TrainablePrototypes(
                self.num_classes, self.feature_dim, hidden_dim or self.feature_dim
            )
        # Latest pooled sample count of every class ever uploaded: which classes get a prototype.
        self.class_counts = np.zeros(self.num_classes)
        self.loss_history: list[float] = []  # per-epoch server losses of the latest round

    @classmethod
    def from_settings(cls, run: RunSettings, **kwargs: Any) -> FedTGPStrategy:
        a: FedTGPSettings = run.algorithm
        return cls(
            seed=run.seed, server_epochs=a.server_epochs, server_lr=a.server_lr,
            server_optimizer=a.server_optimizer, server_batch_size=a.server_batch_size,
            margin_threshold=a.margin_threshold, hidden_dim=a.hidden_dim, **kwargs,
        )

    def server_state(self) -> dict[str, Any]:
        # The optimizer is rebuilt every round, so the network and the class counts are all it keeps.
        return {
            **super().server_state(),
            "prototype_net": self.prototype_net.state_dict(),
            "class_counts": self.class_counts.copy(),
            "loss_history": list(self.loss_history),
        }

    def load_server_state(self, state: dict[str, Any]) -> None:
        super().load_server_state(state)
        self.prototype_net.load_state_dict(state["prototype_net"])
        self.class_counts = np.asarray(state["class_counts"], dtype=np.float64).copy()
        self.loss_history = list(state["loss_history"])

    def aggregate(self, server_round: int, uploads: list[Upload]) -> Payload:
        prototypes, labels = stack_prototypes(uploads)
        margin = adaptive_margin(prototypes, labels, self.margin_threshold)
        optimizer = make_optimizer(
            self.prototype_net.parameters(), name=self.server_optimizer, lr=self.server_lr,
            momentum=0.0, weight_decay=0.0,
        )
        with one_thread():
            self.loss_history = train_prototypes(
                self.prototype_net, prototypes, labels, optimizer, margin=margin,
                epochs=self.server_epochs, batch_size=self.server_batch_size,
                generator=torch_generator(self.seed, SERVER, server_round),
            )
        log.debug(  # the run log keeps one line per round
            "round %d: FedTGP server loss %.4f -> %.4f (margin %.3f, %d prototypes)",
            server_round, self.loss_history[0], self.loss_history[-1], margin, len(labels),
        )
        self._update_class_counts(uploads)
        return Payload(stats=self._global_prototypes())

    def _update_class_counts(self, uploads: list[Upload]) -> None:
        counts = np.zeros(self.num_classes)
        for u in uploads:
            counts[u.payload.stats.classes] += u.payload.stats.counts
        self.class_counts = np.where(counts > 0, counts, self.class_counts)

    @torch.no_grad()
    def _global_prototypes(self) -> ClassStats:
        """The network's prototypes of the classes some client has uploaded (untrained ones stay home)."""
        self.prototype_net.eval()
        classes = np.flatnonzero(self.class_counts)
        means = self.prototype_net(torch.as_tensor(classes, dtype=torch.int64))
        return ClassStats(classes.astype(np.int64), self.class_counts[classes], means.double().numpy(), None)
