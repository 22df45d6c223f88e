"""From the composed Hydra config to typed, validated settings.

The configuration is composed once at the entry point (``run_simulation.py`` or the Flower apps)
and turned into the frozen dataclasses of ``fedvtc.settings`` by ``build_settings``; nothing further
down takes a ``DictConfig``. ``build_settings`` checks every key's type (``dataclass_from_mapping``)
and every value it can without touching data, and raises ``ConfigError`` with the key, the bad
value and what to change, before any training starts.

Imports go one way: ``fedvtc.settings`` <- ``fedvtc.algorithms`` <- this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import DictConfig, OmegaConf

from fedvtc.algorithms import algorithm_settings
from fedvtc.data import DatasetSpec
from fedvtc.settings import (
    CheckpointSettings,
    ConfigError,
    DPSettings,
    EvalSettings,
    FaultSettings,
    OutputSettings,
    PartitionSettings,
    PrivacyEvalSettings,
    RobustSettings,
    RunSettings,
    SimulationSettings,
    TrainSettings,
    dataclass_from_mapping,
    resolve_device,
    typed_value,
)
from fedvtc.sweep import OBJECTIVES


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
    robust = dataclass_from_mapping(RobustSettings, c.get("robust", {}), "robust")
    dp = dataclass_from_mapping(DPSettings, c.get("dp", {}), "dp")
    privacy_eval = dataclass_from_mapping(PrivacyEvalSettings, c.get("privacy_eval", {}), "privacy_eval")
    checkpoint = dataclass_from_mapping(CheckpointSettings, c.get("checkpoint", {}), "checkpoint")
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
        seed=typed_value(c.get("seed", 0), int, "seed"),
        num_clients=typed_value(c.get("num_clients", 10), int, "num_clients"),
        num_rounds=typed_value(c.get("num_rounds", 1), int, "num_rounds"),
        data_dir=str(Path(str(c.get("data_dir", "./data"))).expanduser().resolve()),
        train_fraction=typed_value(c.get("train_fraction", 1.0), float, "train_fraction"),
        device=typed_value(c.get("device", "auto"), str, "device"),
        dataset=dataset,
        partition=partition,
        zoo_name=str(zoo.get("name", "custom")),
        models=models,
        feature_dim=typed_value(zoo.get("feature_dim", 64), int, "zoo.feature_dim"),
        algorithm_name=algorithm_name,
        algorithm_label=algorithm_label,
        algorithm=algorithm,
        train=train,
        eval=evaluation,
        simulation=simulation,
        output=output,
        faults=faults,
        robust=robust,
        dp=dp,
        privacy_eval=privacy_eval,
        checkpoint=checkpoint,
        resume=None if c.get("resume") in (None, "") else str(c["resume"]),
        objective=typed_value(c.get("objective", "global_accuracy"), str, "objective"),
        output_dir=output_dir,
        state_dir=state_dir,
    )
    _check_values(settings)
    return settings


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _registered(name: str | None) -> bool:
    from fedvtc.zoo import list_models

    return name in list_models()


def _dp_accounting() -> bool:
    from fedvtc.privacy.dp import dp_accounting_available  # late: only DP runs need it

    return dp_accounting_available()


def _client_ids(s: RunSettings) -> bool:
    return all(_is_int(c) and 0 <= c < s.num_clients for c in s.privacy_eval.clients)


# Range and choice checks that need no data, in the order they are reported: (what must hold, what
# to say when it does not). Types were checked when the settings were built. A check of a DP value
# holds trivially while DP is off.
Check = tuple[Callable[[RunSettings], bool], Callable[[RunSettings], str]]
CHECKS: list[Check] = [
    (lambda s: s.num_clients >= 1, lambda s: f"num_clients must be >= 1, got {s.num_clients}"),
    (lambda s: s.num_rounds >= 1, lambda s: f"num_rounds must be >= 1, got {s.num_rounds}"),
    (lambda s: 0 < s.train_fraction <= 1, lambda s: f"train_fraction must be in (0, 1], got {s.train_fraction}"),
    (lambda s: s.device == "auto" or s.device.split(":")[0] in ("cpu", "cuda", "mps"),
     lambda s: f"device must be auto, cpu, cuda, cuda:N or mps, got '{s.device}'"),
    (lambda s: s.partition.scheme in ("dirichlet", "pathological", "iid"),
     lambda s: f"partition.scheme must be dirichlet, pathological or iid, got '{s.partition.scheme}'"),
    (lambda s: s.partition.alpha > 0,
     lambda s: f"partition.alpha must be > 0 (smaller = more label skew), got {s.partition.alpha}"),
    (lambda s: s.partition.min_size >= 1, lambda s: f"partition.min_size must be >= 1, got {s.partition.min_size}"),
    (lambda s: 0 < s.partition.test_fraction < 1,
     lambda s: "partition.test_fraction must be in (0, 1) (each client needs local train and test data), "
               f"got {s.partition.test_fraction}"),
    (lambda s: 1 <= s.partition.classes_per_client <= s.dataset.num_classes,
     lambda s: f"partition.classes_per_client must be in 1..{s.dataset.num_classes}, got {s.partition.classes_per_client}"),
    (lambda s: s.train.optimizer in ("sgd", "adam"),
     lambda s: f"train.optimizer must be sgd or adam, got '{s.train.optimizer}'"),
    (lambda s: s.train.lr > 0, lambda s: f"train.lr must be > 0, got {s.train.lr}"),
    (lambda s: s.train.batch_size >= 1, lambda s: f"train.batch_size must be >= 1, got {s.train.batch_size}"),
    (lambda s: s.train.local_epochs >= 0, lambda s: f"train.local_epochs must be >= 0, got {s.train.local_epochs}"),
    (lambda s: s.feature_dim >= 1, lambda s: f"zoo.feature_dim must be >= 1, got {s.feature_dim}"),
    (lambda s: s.eval.every >= 1, lambda s: f"eval.every must be >= 1, got {s.eval.every}"),
    (lambda s: s.eval.global_subset >= 0, lambda s: f"eval.global_subset must be >= 0, got {s.eval.global_subset}"),
    (lambda s: s.eval.validation >= 0,
     lambda s: f"eval.validation must be >= 0 (0 = no validation split; e.g. 2000), got {s.eval.validation}"),
    (lambda s: s.eval.reference_model is None or _registered(s.eval.reference_model),
     lambda s: f"eval.reference_model must be null or a registered model, got '{s.eval.reference_model}'"),
    (lambda s: s.simulation.num_cpus_per_client > 0, lambda s: "simulation.num_cpus_per_client must be > 0"),
    (lambda s: s.simulation.threads_per_client >= 1, lambda s: "simulation.threads_per_client must be >= 1"),
    (lambda s: 0 < s.simulation.fraction_fit <= 1,
     lambda s: f"simulation.fraction_fit must be in (0, 1], got {s.simulation.fraction_fit}"),
    (lambda s: 0 < s.simulation.min_fit_fraction <= 1,
     lambda s: f"simulation.min_fit_fraction must be in (0, 1], got {s.simulation.min_fit_fraction}"),
    (lambda s: _is_int(s.checkpoint.every) and s.checkpoint.every >= 0,
     lambda s: f"checkpoint.every must be an integer >= 0 (0 = no checkpoints), got {s.checkpoint.every!r}"),
    (lambda s: s.faults.stop_after_round is None or 1 <= s.faults.stop_after_round < s.num_rounds,
     lambda s: f"faults.stop_after_round must be null or a round in 1..{s.num_rounds - 1} (before the last), "
               f"got {s.faults.stop_after_round!r}"),
    (lambda s: s.robust.max_client_share is None or 0 < s.robust.max_client_share <= 1,
     lambda s: f"robust.max_client_share must be null or in (0, 1] (e.g. 0.3), got {s.robust.max_client_share}"),
    (_client_ids,
     lambda s: f"privacy_eval.clients must be client ids in 0..{s.num_clients - 1}, got {list(s.privacy_eval.clients)}; "
               "e.g. privacy_eval.clients=[0]"),
    (lambda s: len(set(s.privacy_eval.clients)) == len(s.privacy_eval.clients),
     lambda s: f"privacy_eval.clients lists a client twice: {list(s.privacy_eval.clients)}; list each id once"),
    (lambda s: s.privacy_eval.per_class >= 1,
     lambda s: f"privacy_eval.per_class must be >= 1 (e.g. 50), got {s.privacy_eval.per_class}"),
    (lambda s: s.privacy_eval.heldout >= 0,
     lambda s: f"privacy_eval.heldout must be >= 0 (0 = the whole local test split), got {s.privacy_eval.heldout}"),
    (lambda s: s.privacy_eval.plot_pairs >= 0,
     lambda s: f"privacy_eval.plot_pairs must be >= 0 (0 = no image pairs), got {s.privacy_eval.plot_pairs}"),
    (lambda s: not s.dp.enabled or s.algorithm_name == "fedvtc",
     lambda s: f"dp.enabled=true is implemented for algorithm=fedvtc and its variants, got '{s.algorithm_name}'; "
               "set dp.enabled=false or pick a fedvtc algorithm"),
    (lambda s: not s.dp.enabled or not getattr(s.algorithm, "shared_vtc", False),
     lambda s: "dp.enabled=true with algorithm.shared_vtc=true: the shared VTC's weights are trained on "
               "private images and uploaded without noise; set algorithm.shared_vtc=false"),
    (lambda s: not s.dp.enabled or s.dp.clip > 0,
     lambda s: f"dp.clip must be > 0 (L2 bound on a feature vector, e.g. 5), got {s.dp.clip!r}"),
    (lambda s: not s.dp.enabled or (s.dp.noise_multiplier is None) != (s.dp.target_epsilon is None),
     lambda s: "dp: set exactly one of dp.noise_multiplier (e.g. 1.0) and dp.target_epsilon (e.g. 8), got "
               f"noise_multiplier={s.dp.noise_multiplier!r}, target_epsilon={s.dp.target_epsilon!r}"),
    (lambda s: not s.dp.enabled or s.dp.noise_multiplier is None or s.dp.noise_multiplier > 0,
     lambda s: f"dp.noise_multiplier must be null or > 0 (e.g. 1.0), got {s.dp.noise_multiplier!r}"),
    (lambda s: not s.dp.enabled or s.dp.target_epsilon is None or s.dp.target_epsilon > 0,
     lambda s: f"dp.target_epsilon must be null or > 0 (e.g. 8), got {s.dp.target_epsilon!r}"),
    (lambda s: not s.dp.enabled or 0 < s.dp.delta < 1,
     lambda s: f"dp.delta must be in (0, 1), below 1 / (records per client), e.g. 1e-5; got {s.dp.delta!r}"),
    (lambda s: not s.dp.enabled or s.dp.count_threshold >= 0,
     lambda s: f"dp.count_threshold must be >= 0 (e.g. 3), got {s.dp.count_threshold!r}"),
    (lambda s: s.objective in OBJECTIVES,
     lambda s: f"objective must be one of {', '.join(OBJECTIVES)}, got '{s.objective}'"),
    (lambda s: not s.objective.startswith("validation") or s.eval.validation > 0,
     lambda s: f"objective={s.objective} needs a validation split: set eval.validation (e.g. 2000) "
               "or experiment=readings"),
    (lambda s: not s.dp.enabled or _dp_accounting(),
     lambda s: 'dp.enabled=true needs Google\'s dp-accounting: pip install -e ".[privacy]" (or set dp.enabled=false)'),
]


def _check_values(s: RunSettings) -> None:
    """Raise ``ConfigError`` for the first of ``CHECKS`` that fails, then run the algorithm's own."""
    for holds, message in CHECKS:
        if not holds(s):
            raise ConfigError(message(s))
    check = getattr(s.algorithm, "check", None)
    if check is not None:
        check(s)


__all__ = [
    "CheckpointSettings",
    "ConfigError",
    "DPSettings",
    "EvalSettings",
    "OutputSettings",
    "PartitionSettings",
    "PrivacyEvalSettings",
    "RobustSettings",
    "RunSettings",
    "SimulationSettings",
    "TrainSettings",
    "build_settings",
    "dataclass_from_mapping",
    "resolve_device",
]
