"""CCVR, heterogeneous form (Luo et al., NeurIPS 2021): classifier calibration with virtual features.

Client (``CCVRClient``), per round, given the pooled class Gaussians of the previous round:
plain cross-entropy local training -> ``num_virtual_per_class`` virtual features drawn from every
pooled class Gaussian (``stats.sample_latents``) -> the head alone is recalibrated on them with
cross-entropy (``training.calibrate_head``; the head is linear on features, so no image is
involved) -> per-class feature mean and (diagonal or full) covariance of the extractor on the local
training set, uploaded.
Server (``CCVRStrategy``): pools the class Gaussians exactly (``stats.pool_statistics``) and sends
them down.
In the original CCVR the server calibrates the one global classifier after FedAvg; with a different
architecture on every client there is no global model, so each client calibrates its own head.
See METHOD.md §6 and ``conf/algorithm/ccvr.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedvtc.client import HeteroClient, make_optimizer
from fedvtc.settings import ConfigError, RunSettings
from fedvtc.payload import Payload, PayloadError
from fedvtc.seeding import CALIBRATION, torch_generator
from fedvtc.stats import ClassStats, pool_statistics, sample_latents
from fedvtc.strategy import HeteroStrategy, Upload
from fedvtc.training import GlobalGaussians, calibrate_head, feature_statistics

COVARIANCES = ("diag", "full")


@dataclass(frozen=True)
class CCVRSettings:
    """``conf/algorithm/ccvr.yaml``; each field is documented there."""

    covariance: str = "diag"
    num_virtual_per_class: int = 100
    calibration_epochs: int = 1
    variance_floor: float = 1e-4
    shrinkage: float = 0.1

    def check(self, run: RunSettings) -> None:
        """Raise ``ConfigError`` for values that cannot work."""
        if self.covariance not in COVARIANCES:
            raise ConfigError(f"algorithm.covariance must be one of {list(COVARIANCES)}, got '{self.covariance}'")
        if self.num_virtual_per_class < 1:
            raise ConfigError(f"algorithm.num_virtual_per_class must be >= 1, got {self.num_virtual_per_class}")
        if self.calibration_epochs < 0:
            raise ConfigError(f"algorithm.calibration_epochs must be >= 0, got {self.calibration_epochs}")
        if self.variance_floor <= 0:
            raise ConfigError(f"algorithm.variance_floor must be > 0, got {self.variance_floor}")
        if not 0 <= self.shrinkage <= 1:
            raise ConfigError(f"algorithm.shrinkage must be in [0, 1], got {self.shrinkage}")


def virtual_features(
    stats: ClassStats,
    num_classes: int,
    *,
    per_class: int,
    generator: torch.Generator,
    variance_floor: float,
    shrinkage: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` features drawn from the Gaussian of every class in ``stats``, on the CPU.

    Args:
        stats: pooled class statistics with diagonal or full covariances.
        num_classes: C.
        per_class: draws per class.
        generator: seeds the draws.
        variance_floor: lower bound on the variances used for sampling.
        shrinkage: weight of the diagonal in full covariances (see ``stats.sample_latents``).

    Returns:
        (n, p) float32 features and their (n,) class ids.
    """
    cpu = torch.device("cpu")  # the generator is a CPU one; the caller moves the result
    target = GlobalGaussians.from_stats(stats, num_classes, variance_floor=variance_floor, device=cpu)
    labels = target.classes.repeat_interleave(per_class)
    features = sample_latents(
        target.means, target.second, labels, generator=generator,
        variance_floor=variance_floor, shrinkage=shrinkage,
    )
    return features, labels


class CCVRClient(HeteroClient):
    """Plain local training, then head calibration on virtual features once pooled Gaussians exist."""

    def train_round(self, received: Payload, server_round: int, num_rounds: int) -> Payload:
        a: CCVRSettings = self.s.algorithm
        self.local_training(server_round)
        if received.stats is not None and a.calibration_epochs > 0:  # round 1: nothing to sample
            with self.timer("calibration"):
                self._calibrate(received.stats, server_round)
        with self.timer("statistics"):
            stats = feature_statistics(
                self.model, self._on_device(self.train_data), full=a.covariance == "full"
            )
        return Payload(stats=stats)

    def _calibrate(self, pooled: ClassStats, server_round: int) -> None:
        """Train ``model.head`` on virtual features of every pooled class."""
        a: CCVRSettings = self.s.algorithm
        t = self.s.train
        generator = torch_generator(self.s.seed, self.cid, server_round, CALIBRATION)
        features, labels = virtual_features(
            pooled, self.s.dataset.num_classes, per_class=a.num_virtual_per_class,
            generator=generator, variance_floor=a.variance_floor, shrinkage=a.shrinkage,
        )
        # A fresh optimizer with the training settings: calibration is its own short phase, and
        # its momentum must not leak into the next round's local training.
        optimizer = make_optimizer(
            self.model.head.parameters(), name=t.optimizer, lr=t.lr, momentum=t.momentum,
            weight_decay=t.weight_decay,
        )
        calibrate_head(
            self.model.head, features.to(self.device), labels.to(self.device), optimizer,
            epochs=a.calibration_epochs, batch_size=t.batch_size, generator=generator,
            grad_clip=t.grad_clip,
        )


class CCVRStrategy(HeteroStrategy):
    """Pools the clients' class Gaussians exactly.

    Args:
        covariance: ``"diag"`` or ``"full"``; uploads of another kind are rejected.
        **kwargs: see ``HeteroStrategy``.
    """

    def __init__(self, *, covariance: str = "diag", **kwargs) -> None:
        super().__init__(**kwargs)
        self.covariance = covariance

    @classmethod
    def from_settings(cls, run: RunSettings, **kwargs) -> CCVRStrategy:
        return cls(covariance=run.algorithm.covariance, **kwargs)

    def check_upload(self, payload: Payload) -> None:
        if payload.stats is None:
            raise PayloadError("a CCVR upload must carry class statistics")
        if payload.stats.means_only or payload.stats.full != (self.covariance == "full"):
            raise PayloadError(f"statistics must be {self.covariance} covariance")

    def aggregate(self, server_round: int, uploads: list[Upload]) -> Payload:
        return Payload(stats=pool_statistics([u.payload.stats for u in uploads]))
