"""The client machinery every algorithm shares: a ``flwr.client.NumPyClient`` subclass.

``HeteroClient`` owns what is common to FedVTC and the baselines: the client's data share, its
architecture from the zoo, its optimizer, the state file that carries all of it across rounds,
evaluation on the global and local test sets, and the timing of each phase. An algorithm subclasses
it and implements ``train_round`` (what to do with what the server sent, and what to send back) and,
if it keeps more state, ``extra_state`` / ``load_extra_state``. Formulas live in ``losses``,
``stats`` and ``training``; this layer only decodes, calls them and encodes.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np
import torch
from flwr.client import NumPyClient

from fedvtc.settings import RunSettings, resolve_device
from fedvtc.data import ImageSet
from fedvtc.federated_data import client_share
from fedvtc.payload import Payload, decode, encode
from fedvtc.profiling import PhaseTimer, current_rss_mb, peak_rss_mb, release_freed_memory
from fedvtc.seeding import INIT, LOCAL_TRAIN, derive_seed, torch_generator
from fedvtc.state import load_state, save_state, state_path
from fedvtc.training import evaluate, evaluate_groups, train_local
from fedvtc.zoo import HeteroModel, create_model

log = logging.getLogger("fedvtc")


def make_optimizer(params, *, name: str, lr: float, momentum: float, weight_decay: float):
    """SGD (with momentum) or Adam over ``params``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def on_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` moved to ``device``; on a CPU, with its convolutions' weights in channels-last.

    That is the layout the CPU's convolution kernels prefer: a training step of a zoo model takes
    0.57-0.87x the time of the default layout (``benchmarks/bench_layout.py``), and its activations
    follow its weights. Only the float rounding changes (RESULTS.md §2 checked it on the
    validation split); the model's outputs and state dict keep their shapes.
    """
    model = model.to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model


class LazyOptimizer:
    """An optimizer built on first use, resuming from the state loaded into it before.

    Why: torch imports ``torch._dynamo`` (about 1.3 s) the first time any optimizer is built or
    loaded, and a Flower deployment starts a fresh ClientApp process for every message; an evaluate
    message, which never steps, need not pay it. The optimizer it builds is the one an eager build
    would give: same parameters, same hyperparameters, the same loaded state.

    Args:
        build: makes the optimizer (over parameters that exist already).
    """

    def __init__(self, build: Callable[[], torch.optim.Optimizer]) -> None:
        self._build = build
        self._optimizer: torch.optim.Optimizer | None = None
        self._pending_state: dict[str, Any] | None = None

    @property
    def built(self) -> bool:
        return self._optimizer is not None

    def get(self) -> torch.optim.Optimizer:
        """The optimizer, built (and given the loaded state) on the first call."""
        if self._optimizer is None:
            self._optimizer = self._build()
            if self._pending_state is not None:
                self._optimizer.load_state_dict(self._pending_state)
                self._pending_state = None
        return self._optimizer

    def state_dict(self) -> dict[str, Any]:
        """What ``torch.optim.Optimizer.state_dict`` gives; the loaded state as is if never built."""
        if self._optimizer is None and self._pending_state is not None:
            return self._pending_state
        return self.get().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._optimizer is not None:
            self._optimizer.load_state_dict(state)
        else:
            self._pending_state = state


class HeteroClient(NumPyClient):
    """One client with its own architecture; state is loaded from and saved to disk every message.

    Args:
        cid: the client's partition id (0..num_clients-1); selects its data and its model.
        settings: the validated run settings.
    """

    def __init__(self, cid: int, settings: RunSettings) -> None:
        self.cid = cid
        self.s = settings
        self.device = torch.device(resolve_device(settings.device))
        torch.set_num_threads(settings.simulation.threads_per_client)
        self.share = client_share(settings, cid)
        self.train_data, self.test_data = self.share.train, self.share.test
        self.arch = settings.model_name(cid)
        torch.manual_seed(derive_seed(settings.seed, cid, INIT))
        self.model: HeteroModel = on_device(create_model(
            self.arch,
            num_classes=settings.dataset.num_classes,
            feature_dim=settings.feature_dim,
            in_channels=settings.dataset.channels,
            image_size=settings.dataset.image_size,
        ), self.device)
        t = settings.train
        self._optimizer = LazyOptimizer(lambda: make_optimizer(
            self.model.parameters(), name=t.optimizer, lr=t.lr, momentum=t.momentum,
            weight_decay=t.weight_decay,
        ))
        self.timer = PhaseTimer()
        self.rounds_done = 0
        self.setup()
        self._load()

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The model's optimizer (built on first use: see ``LazyOptimizer``)."""
        return self._optimizer.get()

    # ---- what an algorithm implements -------------------------------------------------------

    def train_round(self, received: Payload, server_round: int, num_rounds: int) -> Payload:
        """One round of local work given the server's payload; returns what to upload.

        The default trains locally and uploads nothing (the ``local`` baseline).
        """
        self.local_training(server_round)
        return Payload()

    def setup(self) -> None:
        """Build algorithm-specific modules (called before any saved state is loaded)."""

    def extra_state(self) -> dict[str, Any]:
        """Algorithm state beyond model and optimizer, saved with them."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state`` returned (called only when a saved state exists)."""

    def decode_download(self, parameters: list[np.ndarray]) -> Payload:
        """Parse the server's payload (an algorithm with shared weights overrides the shapes)."""
        return decode(
            parameters, num_classes=self.s.dataset.num_classes, feature_dim=self.s.feature_dim
        )

    # ---- shared phases ------------------------------------------------------------------------

    def local_training(self, server_round: int, **kwargs: Any) -> float:
        """Train the model on local data for ``train.local_epochs`` (extra kwargs to ``train_local``)."""
        t = self.s.train
        with self.timer("local_train"):
            return train_local(
                self.model, self._on_device(self.train_data), self.optimizer,
                epochs=t.local_epochs, batch_size=t.batch_size,
                generator=torch_generator(self.s.seed, self.cid, server_round, LOCAL_TRAIN),
                grad_clip=t.grad_clip, **kwargs,
            )

    # ---- Flower ---------------------------------------------------------------------------------

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        """Model parameters are private: nothing to hand the server."""
        return encode(Payload())

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]):
        server_round = int(config["server_round"])
        num_rounds = int(config["num_rounds"])
        if self.s.faults.fails(self.cid, server_round):
            raise RuntimeError(f"injected fault: client {self.cid} fails in round {server_round}")
        start = time.perf_counter()
        base_rss = current_rss_mb()  # the runtime and the in-memory dataset, before this round's work
        self.round_metrics: dict[str, Any] = {}  # what the algorithm reports beyond timings
        received = self.decode_download(parameters)
        upload = self.train_round(received, server_round, num_rounds)
        self.rounds_done = server_round
        with self.timer("save_state"):
            self._save()
        release_freed_memory()  # what this round freed, before the next client's round on this process
        metrics = {
            "cid": self.cid,
            "arch": self.arch,
            "seconds": round(time.perf_counter() - start, 4),
            **self.timer.as_metrics(),
            **self.round_metrics,
        }
        # Peak RSS of this round's work: the highest per-phase peak (each phase resets the mark).
        peak = max(self.timer.peak_rss.values(), default=peak_rss_mb())
        metrics["peak_rss_mb"] = round(peak, 1)
        if base_rss is not None:
            metrics["base_rss_mb"] = round(base_rss, 1)
            metrics["work_rss_mb"] = round(max(peak - base_rss, 0.0), 1)
        if self.timer.peak_gpu:
            metrics["peak_gpu_mb"] = round(max(self.timer.peak_gpu.values()), 1)
        return encode(upload), len(self.train_data), metrics

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]):
        batch = self.s.eval.batch_size
        # "held": the classes in this client's training data; "missing": the others, what a
        # generator of the pooled classes exists to teach it.
        held = torch.unique(self.train_data.y)
        metrics: dict[str, Any] = {"cid": self.cid, "arch": self.arch}
        with self.timer("evaluate"):
            sets = {"global": self.share.global_test, "validation": self.share.validation}
            for name, data in sets.items():
                if data is None:
                    continue
                result = evaluate_groups(self.model, data, held, batch_size=batch)
                metrics[f"{name}_loss"] = result["loss"]
                metrics[f"{name}_accuracy"] = result["accuracy"]
                for group in ("held", "missing"):
                    if group in result:
                        metrics[f"{name}_accuracy_{group}"] = result[group]
            _, metrics["local_accuracy"] = evaluate(self.model, self.test_data, batch_size=batch)
        metrics["time_evaluate"] = round(self.timer.seconds["evaluate"], 4)
        return float(metrics.pop("global_loss")), len(self.test_data), metrics

    # ---- state ----------------------------------------------------------------------------------

    def _on_device(self, data: ImageSet) -> ImageSet:
        return data if self.device.type == "cpu" else ImageSet(data.x.to(self.device), data.y.to(self.device))

    def _save(self) -> None:
        save_state(
            state_path(self.s.state_dir, self.cid),
            {
                "arch": self.arch,
                "round": self.rounds_done,
                "model": self.model.state_dict(),
                "optimizer": self._optimizer.state_dict(),
                "extra": self.extra_state(),
            },
        )

    def _load(self) -> None:
        state = load_state(state_path(self.s.state_dir, self.cid))
        if state is None:
            return
        if state.get("arch") != self.arch:
            raise RuntimeError(
                f"client {self.cid}: saved state is for '{state.get('arch')}', the zoo now gives "
                f"'{self.arch}'; use a fresh simulation.state_dir"
            )
        self.model.load_state_dict(state["model"])
        self._optimizer.load_state_dict(state["optimizer"])
        self.rounds_done = int(state["round"])
        self.load_extra_state(state["extra"])
