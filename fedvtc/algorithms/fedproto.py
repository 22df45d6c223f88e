"""FedProto (Tan et al., AAAI 2022): clients share per-class mean features, the server averages them.

Client (``FedProtoClient``), per round, given the global prototypes of the previous round:
local training with cross-entropy + lambda * squared distance of each feature to its class's global
prototype (``losses.prototype_loss``; classes without a global prototype are not regularized) ->
per-class mean features of the trained extractor on the local training set, uploaded.
Server (``FedProtoStrategy``): the count-weighted mean of the uploaded prototypes of every class
(``stats.pool_statistics`` on means-only statistics), sent down.
See METHOD.md §6 and ``conf/algorithm/fedproto.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedvtc.client import HeteroClient
from fedvtc.settings import ConfigError, RunSettings
from fedvtc.losses import prototype_loss
from fedvtc.payload import Payload, PayloadError
from fedvtc.stats import ClassStats, pool_statistics
from fedvtc.strategy import HeteroStrategy, Upload
from fedvtc.training import feature_statistics


@dataclass(frozen=True)
class FedProtoSettings:
    """``conf/algorithm/fedproto.yaml``; each field is documented there."""

    proto_weight: float = 1.0

    def check(self, run: RunSettings) -> None:
        """Raise ``ConfigError`` for values that cannot work."""
        check_proto_weight(self.proto_weight)


def check_proto_weight(value: float) -> None:
    """The prototype regularizer's weight lambda must be a number >= 0."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"algorithm.proto_weight must be a number >= 0, got {value!r}")


@dataclass(frozen=True)
class PrototypeTerm:
    """The prototype regularizer of local training, ready to be called on a batch.

    Attributes:
        prototypes: (C, p) global prototypes (zero rows for absent classes).
        present: (C,) bool, classes that have a global prototype.
        weight: lambda.
    """

    prototypes: torch.Tensor
    present: torch.Tensor
    weight: float

    @classmethod
    def from_stats(
        cls, stats: ClassStats, num_classes: int, *, weight: float, device: torch.device
    ) -> PrototypeTerm:
        """Densify the received means-only statistics onto ``device``."""
        present, means, _ = stats.dense(num_classes)
        return cls(
            prototypes=torch.as_tensor(means, dtype=torch.float32, device=device),
            present=torch.as_tensor(present, device=device),
            weight=weight,
        )

    def __call__(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """lambda * ``prototype_loss`` of a batch's features and labels."""
        return self.weight * prototype_loss(features, labels, self.prototypes, self.present)


class FedProtoClient(HeteroClient):
    """Trains with the prototype regularizer and uploads its own class prototypes.

    Stateless beyond model and optimizer: the global prototypes arrive every round. FedTGP's client
    is the same, so it reuses this class with its own settings (which also carry ``proto_weight``).
    """

    def train_round(self, received: Payload, server_round: int, num_rounds: int) -> Payload:
        weight = float(self.s.algorithm.proto_weight)
        term = None
        if received.stats is not None and weight > 0:  # round 1: no global prototypes yet
            term = PrototypeTerm.from_stats(
                received.stats, self.s.dataset.num_classes, weight=weight, device=self.device
            )
        self.local_training(server_round, extra_loss=term)
        with self.timer("statistics"):
            prototypes = feature_statistics(self.model, self._on_device(self.train_data), means_only=True)
        return Payload(stats=prototypes)


def check_prototype_upload(payload: Payload) -> None:
    """Accept only an upload of prototypes (means-only class statistics) and nothing else."""
    if payload.stats is None:
        raise PayloadError("an upload must carry class prototypes")
    if not payload.stats.means_only:
        raise PayloadError("an upload must carry prototypes (means only), not (co)variances")


class FedProtoStrategy(HeteroStrategy):
    """Averages the uploaded prototypes of every class, weighted by the clients' sample counts."""

    def check_upload(self, payload: Payload) -> None:
        check_prototype_upload(payload)

    def aggregate(self, server_round: int, uploads: list[Upload]) -> Payload:
        return Payload(stats=pool_statistics([u.payload.stats for u in uploads]))
