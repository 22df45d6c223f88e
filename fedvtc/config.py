"""From the composed Hydra config to typed, validated settings.

The configuration is composed once at the entry point (``run_simulation.py`` or the Flower apps)
and turned into the frozen dataclasses below by ``build_settings``; nothing further down takes a
``DictConfig``. ``build_settings`` checks every value it can without touching data and raises
``ConfigError`` with the key, the bad value and what to change, before any training starts.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from fedvtc.data import DatasetSpec


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says which and how to fix it."""


@dataclass(frozen=True)
class PartitionSettings:
    """How the training set is split among clients (see ``fedvtc.partition``)."""

    scheme: str = "dirichlet"
    alpha: float = 0.1
    classes_per_client: int = 2
    min_size: int = 10
    test_fraction: float = 0.2


@dataclass(frozen=True)
class TrainSettings:
    """Local training of each client's own model."""

    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    local_epochs: int = 1
    grad_clip: float = 10.0


@dataclass(frozen=True)
class EvalSettings:
    every: int = 1
    global_subset: int = 0
    batch_size: int = 512
    reference_model: str | None = "cnn_m"
    reference_epochs: int = 1


@dataclass(frozen=True)
class SimulationSettings:
    backend: str = "ray"
    num_cpus_per_client: float = 1
    num_gpus_per_client: float = 0.0
    threads_per_client: int = 1
    fraction_fit: float = 1.0
    min_fit_fraction: float = 0.5
    round_timeout: float | None = None
    state_dir: str | None = None


@dataclass(frozen=True)
class OutputSettings:
    synthetic_grid_clients: tuple[int, ...] = (0, 1, 2)
    synthetic_grid_per_class: int = 8


@dataclass(frozen=True)
class FaultSettings:
    """Injected failures: every client in ``clients`` raises in the fit of every round in ``rounds``."""

    clients: tuple[int, ...] = ()
    rounds: tuple[int, ...] = ()

    def fails(self, cid: int, server_round: int) -> bool:
        return cid in self.clients and server_round in self.rounds


@dataclass(frozen=True)
class RunSettings:
    """Everything one run needs, already validated. Algorithm settings live in ``algorithm``."""

    seed: int
    num_clients: int
    num_rounds: int
    data_dir: str
    train_fraction: float
    device: str
    dataset: DatasetSpec
    partition: PartitionSettings
    zoo_name: str
    models: tuple[str, ...]
    feature_dim: int
    algorithm_name: str
    # What the results call this run's method: ``algorithm.label`` (an ablation or control's name,
    # e.g. fedvtc_no_dm), else the algorithm's name.
    algorithm_label: str
    algorithm: Any  # the algorithm's own frozen settings dataclass
    train: TrainSettings
    eval: EvalSettings
    simulation: SimulationSettings
    output: OutputSettings
    faults: FaultSettings
    output_dir: str
    state_dir: str

    def model_name(self, cid: int) -> str:
        """Client ``cid`` gets model ``cid mod n`` of the zoo."""
        return self.models[cid % len(self.models)]


def dataclass_from_mapping(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, recursing into dataclass-typed fields.

    Unknown keys raise ``ConfigError`` naming ``where`` (e.g. ``algorithm``) and the valid keys;
    missing keys take the dataclass default. Lists become tuples so settings stay hashable.
    """
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        default = known[name].default
        sub = type(default) if is_dataclass(default) else None
        if sub is None and known[name].default_factory is not MISSING:
            made = known[name].default_factory()
            sub = type(made) if is_dataclass(made) else None
        if sub is not None and isinstance(value, Mapping):
            value = dataclass_from_mapping(sub, value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def to_container(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A resolved plain-dict copy of a config (interpolations such as ${oc.env:...} applied)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def build_settings(cfg: DictConfig | Mapping[str, Any], *, output_dir: str | os.PathLike) -> RunSettings:
    """Validate the composed config and turn it into ``RunSettings``.

    Args:
        cfg: the composed Hydra config (or the same structure as plain dicts).
        output_dir: where this run writes its results (Hydra's runtime output dir).

    Raises:
        ConfigError: for the first value that cannot work, with what to change.
    """
    from fedvtc.algorithms import algorithm_settings  # late: algorithms import this module
    from fedvtc.zoo import list_models

    c = to_container(cfg)
    for key in ("dataset", "partition", "zoo", "algorithm", "train", "simulation"):
        if not isinstance(c.get(key), Mapping):
            raise ConfigError(f"config group '{key}' is missing; pick one, e.g. {key}=<name>")
    try:
        dataset = DatasetSpec.from_dict(c["dataset"])
    except (TypeError, ValueError) as error:
        raise ConfigError(f"dataset: {error}") from error
    partition = dataclass_from_mapping(PartitionSettings, c["partition"], "partition")
    train = dataclass_from_mapping(TrainSettings, c["train"], "train")
    evaluation = dataclass_from_mapping(EvalSettings, c.get("eval", {}), "eval")
    simulation = dataclass_from_mapping(SimulationSettings, c["simulation"], "simulation")
    output = dataclass_from_mapping(OutputSettings, c.get("output", {}), "output")
    faults = dataclass_from_mapping(FaultSettings, c.get("faults", {}), "faults")
    algorithm_values = dict(c["algorithm"])
    algorithm_name = str(algorithm_values.pop("name", ""))
    algorithm_label = str(algorithm_values.pop("label", None) or algorithm_name)
    algorithm = algorithm_settings(algorithm_name, algorithm_values)

    zoo = c["zoo"]
    models = tuple(zoo.get("models", ()))
    registered = list_models()
    for name in models:
        if name not in registered:
            raise ConfigError(f"zoo.models: unknown model '{name}'; registered models: {registered}")
    if not models:
        raise ConfigError("zoo.models is empty; list at least one registered model")

    output_dir = str(Path(output_dir).resolve())
    state_dir = simulation.state_dir or str(Path(output_dir) / "client_state")
    settings = RunSettings(
        seed=int(c.get("seed", 0)),
        num_clients=int(c.get("num_clients", 10)),
        num_rounds=int(c.get("num_rounds", 1)),
        data_dir=str(Path(str(c.get("data_dir", "./data"))).expanduser().resolve()),
        train_fraction=float(c.get("train_fraction", 1.0)),
        device=str(c.get("device", "auto")),
        dataset=dataset,
        partition=partition,
        zoo_name=str(zoo.get("name", "custom")),
        models=models,
        feature_dim=int(zoo.get("feature_dim", 64)),
        algorithm_name=algorithm_name,
        algorithm_label=algorithm_label,
        algorithm=algorithm,
        train=train,
        eval=evaluation,
        simulation=simulation,
        output=output,
        faults=faults,
        output_dir=output_dir,
        state_dir=state_dir,
    )
    _check_values(settings)
    return settings


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_values(s: RunSettings) -> None:
    """Range and choice checks that need no data."""
    from fedvtc.zoo import list_models

    _require(s.num_clients >= 1, f"num_clients must be >= 1, got {s.num_clients}")
    _require(s.num_rounds >= 1, f"num_rounds must be >= 1, got {s.num_rounds}")
    _require(0 < s.train_fraction <= 1, f"train_fraction must be in (0, 1], got {s.train_fraction}")
    _require(
        s.device == "auto" or s.device.split(":")[0] in ("cpu", "cuda", "mps"),
        f"device must be auto, cpu, cuda, cuda:N or mps, got '{s.device}'",
    )
    p = s.partition
    _require(
        p.scheme in ("dirichlet", "pathological", "iid"),
        f"partition.scheme must be dirichlet, pathological or iid, got '{p.scheme}'",
    )
    _require(p.alpha > 0, f"partition.alpha must be > 0 (smaller = more label skew), got {p.alpha}")
    _require(p.min_size >= 1, f"partition.min_size must be >= 1, got {p.min_size}")
    _require(
        0 < p.test_fraction < 1,
        f"partition.test_fraction must be in (0, 1) (each client needs local train and test data), "
        f"got {p.test_fraction}",
    )
    _require(
        1 <= p.classes_per_client <= s.dataset.num_classes,
        f"partition.classes_per_client must be in 1..{s.dataset.num_classes}, got {p.classes_per_client}",
    )
    t = s.train
    _require(t.optimizer in ("sgd", "adam"), f"train.optimizer must be sgd or adam, got '{t.optimizer}'")
    _require(t.lr > 0, f"train.lr must be > 0, got {t.lr}")
    _require(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
    _require(t.local_epochs >= 0, f"train.local_epochs must be >= 0, got {t.local_epochs}")
    _require(s.feature_dim >= 1, f"zoo.feature_dim must be >= 1, got {s.feature_dim}")
    _require(s.eval.every >= 1, f"eval.every must be >= 1, got {s.eval.every}")
    _require(s.eval.global_subset >= 0, f"eval.global_subset must be >= 0, got {s.eval.global_subset}")
    _require(
        s.eval.reference_model is None or s.eval.reference_model in list_models(),
        f"eval.reference_model must be null or a registered model, got '{s.eval.reference_model}'",
    )
    sim = s.simulation
    _require(sim.num_cpus_per_client > 0, "simulation.num_cpus_per_client must be > 0")
    _require(sim.threads_per_client >= 1, "simulation.threads_per_client must be >= 1")
    _require(0 < sim.fraction_fit <= 1, f"simulation.fraction_fit must be in (0, 1], got {sim.fraction_fit}")
    _require(
        0 < sim.min_fit_fraction <= 1,
        f"simulation.min_fit_fraction must be in (0, 1], got {sim.min_fit_fraction}",
    )
    check = getattr(s.algorithm, "check", None)
    if check is not None:
        check(s)


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else as given."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


__all__ = [
    "ConfigError",
    "EvalSettings",
    "OutputSettings",
    "PartitionSettings",
    "RunSettings",
    "SimulationSettings",
    "TrainSettings",
    "build_settings",
    "dataclass_from_mapping",
    "resolve_device",
]
