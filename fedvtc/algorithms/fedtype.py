"""FedType (Wang et al., ICML 2024, arXiv 2407.03247): a shared small proxy model, FedAvg'd.

Each client keeps its private model (any zoo architecture, the one evaluated) and a proxy of one
architecture shared by all (``proxy_model``). Only the proxy's float state crosses the network.

Client (``FedTypeClient``), per round, given the averaged proxy (from round 2 on):
load it -> calibrate the trust thresholds on the local training set (``selection``) -> train both
models together (``training.train_mutual``): each with cross-entropy, the proxy also distilling the
private model on every sample (forward), the private model distilling the proxy only on samples
where the proxy's prediction set is small (backward; ``losses.mutual_learning_loss``), scaled by
the batch's set consensus -> upload the proxy.
Server (``FedTypeStrategy``): the sample-weighted mean of the proxies (``weighted_average``).

The paper's "uncertainty-based asymmetrical reciprocity learning" gates the backward direction by
conformal prediction sets of the proxy; what is implemented here, and how it departs from the
authors' code (JackqqWang/FedType), is documented in ``conf/algorithm/fedtype.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from fedvtc.averaging import weighted_average
from fedvtc.client import HeteroClient, LazyOptimizer, make_optimizer, on_device
from fedvtc.settings import ConfigError, RunSettings
from fedvtc.losses import conformal_threshold
from fedvtc.payload import Payload, PayloadError, decode
from fedvtc.seeding import INIT, LOCAL_TRAIN, derive_seed, torch_generator
from fedvtc.strategy import HeteroStrategy, Upload
from fedvtc.training import MutualLearning, predict_probs, train_mutual
from fedvtc.vtc import load_shared_arrays, shared_arrays, shared_shapes
from fedvtc.zoo import HeteroModel, create_model, list_models

SELECTIONS = ("conformal", "confidence", "none")


@dataclass(frozen=True)
class FedTypeSettings:
    """``conf/algorithm/fedtype.yaml``; each field is documented there."""

    proxy_model: str = "cnn_s"
    temperature: float = 1.0
    forward_weight: float = 1.0
    backward_weight: float = 1.0
    selection: str = "conformal"
    conformal_alpha: float = 0.1
    confidence_threshold: float = 0.9
    max_set_size: int = 1
    consensus: bool = True

    def check(self, run: RunSettings) -> None:
        """Raise ``ConfigError`` for values that cannot work."""
        if self.proxy_model not in list_models():
            raise ConfigError(f"algorithm.proxy_model must be one of {list_models()}, got '{self.proxy_model}'")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"algorithm.selection must be one of {list(SELECTIONS)}, got '{self.selection}'")
        if self.temperature <= 0:
            raise ConfigError(f"algorithm.temperature must be > 0, got {self.temperature}")
        for key, value in (("forward_weight", self.forward_weight), ("backward_weight", self.backward_weight)):
            if value < 0:
                raise ConfigError(f"algorithm.{key} must be >= 0, got {value}")
        if not 0 < self.conformal_alpha < 1:
            raise ConfigError(f"algorithm.conformal_alpha must be in (0, 1), got {self.conformal_alpha}")
        if not 0 < self.confidence_threshold <= 1:
            raise ConfigError(
                f"algorithm.confidence_threshold must be in (0, 1], got {self.confidence_threshold}"
            )
        if not 1 <= self.max_set_size <= run.dataset.num_classes:
            raise ConfigError(
                f"algorithm.max_set_size must be in 1..{run.dataset.num_classes}, got {self.max_set_size}"
            )


def build_proxy(run: RunSettings) -> HeteroModel:
    """The run's proxy model, initialized identically on every client (and wherever it is built)."""
    a: FedTypeSettings = run.algorithm
    d = run.dataset
    # A local RNG state, so the shared seed leaves the process's global RNG alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(run.seed, INIT, 3))
        return create_model(
            a.proxy_model, num_classes=d.num_classes, feature_dim=run.feature_dim,
            in_channels=d.channels, image_size=d.image_size,
        )


class FedTypeClient(HeteroClient):
    """Keeps a private model and a proxy; they teach each other; the proxy is shared."""

    def setup(self) -> None:
        t = self.s.train
        self.proxy = on_device(build_proxy(self.s), self.device)
        self._proxy_optimizer = LazyOptimizer(lambda: make_optimizer(
            self.proxy.parameters(), name=t.optimizer, lr=t.lr, momentum=t.momentum,
            weight_decay=t.weight_decay,
        ))

    def extra_state(self) -> dict[str, Any]:
        return {"proxy": self.proxy.state_dict(), "proxy_optimizer": self._proxy_optimizer.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.proxy.load_state_dict(state["proxy"])
        self._proxy_optimizer.load_state_dict(state["proxy_optimizer"])

    def decode_download(self, parameters: list) -> Payload:
        # Round 1: nothing (every proxy starts from the same seeded init); then the averaged proxy.
        return decode(
            parameters, num_classes=self.s.dataset.num_classes, feature_dim=self.s.feature_dim,
            extra_shapes=shared_shapes(self.proxy), extra_optional=True,
        )

    def train_round(self, received: Payload, server_round: int, num_rounds: int) -> Payload:
        if received.extra:
            load_shared_arrays(self.proxy, received.extra)
        with self.timer("conformal"):
            spec = self._mutual_spec()
        t = self.s.train
        with self.timer("local_train"):
            result = train_mutual(
                self.model, self.proxy, self._on_device(self.train_data), self.optimizer,
                self._proxy_optimizer.get(), epochs=t.local_epochs, batch_size=t.batch_size,
                generator=torch_generator(self.s.seed, self.cid, server_round, LOCAL_TRAIN),
                spec=spec, grad_clip=t.grad_clip,
            )
        self.round_metrics["trusted_fraction"] = round(result["trusted"], 4)
        return Payload(extra=shared_arrays(self.proxy))

    def _mutual_spec(self) -> MutualLearning:
        """The round's distillation settings, with trust thresholds for the chosen ``selection``."""
        a: FedTypeSettings = self.s.algorithm
        proxy_t = private_t = None
        if a.selection == "conformal":
            proxy_t = self._conformal_threshold(self.proxy)
            private_t = self._conformal_threshold(self.model) if a.consensus else None
        elif a.selection == "confidence":
            proxy_t = a.confidence_threshold
            private_t = a.confidence_threshold if a.consensus else None
        return MutualLearning(
            temperature=a.temperature, forward_weight=a.forward_weight,
            backward_weight=a.backward_weight, proxy_threshold=proxy_t,
            private_threshold=private_t, max_set_size=a.max_set_size,
        )

    def _conformal_threshold(self, model: HeteroModel) -> float:
        """Calibrate ``model``'s prediction-set threshold on the local training set (as FedType's code)."""
        probs = predict_probs(model, self.train_data.x, batch_size=self.s.eval.batch_size)
        return conformal_threshold(probs, self.train_data.y.cpu(), self.s.algorithm.conformal_alpha)


class FedTypeStrategy(HeteroStrategy):
    """Averages the uploaded proxies, weighted by the clients' sample counts (FedAvg).

    Args:
        proxy_shapes: shapes of the proxy's float state, what every upload must carry.
        **kwargs: see ``HeteroStrategy``.
    """

    def __init__(self, *, proxy_shapes: Sequence[tuple[int, ...]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proxy_shapes = list(proxy_shapes)

    @classmethod
    def from_settings(cls, run: RunSettings, **kwargs: Any) -> FedTypeStrategy:
        return cls(proxy_shapes=shared_shapes(build_proxy(run)), **kwargs)

    def extra_upload_shapes(self) -> Sequence[tuple[int, ...]] | None:
        return self.proxy_shapes

    def check_upload(self, payload: Payload) -> None:
        if payload.stats is not None:
            raise PayloadError("a FedType upload carries the proxy's weights, no statistics")

    def aggregate(self, server_round: int, uploads: list[Upload]) -> Payload:
        proxies: list[list[np.ndarray]] = [u.payload.extra for u in uploads]
        return Payload(extra=weighted_average(proxies, [u.num_examples for u in uploads]))
