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
from typing import Any, Mapping

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
        output_dir=output_dir,
        state_dir=state_dir,
    )
    _check_values(settings)
    return settings


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    _require(
        _is_int(s.checkpoint.every) and s.checkpoint.every >= 0,
        f"checkpoint.every must be an integer >= 0 (0 = no checkpoints), got {s.checkpoint.every!r}",
    )
    stop = s.faults.stop_after_round
    _require(
        stop is None or (_is_int(stop) and 1 <= stop < s.num_rounds),
        f"faults.stop_after_round must be null or a round in 1..{s.num_rounds - 1} (before the last), got {stop!r}",
    )
    share = s.robust.max_client_share
    _require(
        share is None or 0 < share <= 1,
        f"robust.max_client_share must be null or in (0, 1] (e.g. 0.3), got {share}",
    )
    pe = s.privacy_eval
    _require(
        isinstance(pe.clients, tuple),
        f"privacy_eval.clients must be a list of client ids, got {pe.clients!r}; e.g. privacy_eval.clients=[0]",
    )
    bad = [c for c in pe.clients if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < s.num_clients]
    _require(
        not bad,
        f"privacy_eval.clients must be client ids in 0..{s.num_clients - 1}, got {list(pe.clients)}; "
        "e.g. privacy_eval.clients=[0]",
    )
    _require(
        len(set(pe.clients)) == len(pe.clients),
        f"privacy_eval.clients lists a client twice: {list(pe.clients)}; list each id once",
    )
    _require(pe.per_class >= 1, f"privacy_eval.per_class must be >= 1 (e.g. 50), got {pe.per_class}")
    _require(pe.heldout >= 0, f"privacy_eval.heldout must be >= 0 (0 = the whole local test split), got {pe.heldout}")
    _require(pe.plot_pairs >= 0, f"privacy_eval.plot_pairs must be >= 0 (0 = no image pairs), got {pe.plot_pairs}")
    dp = s.dp
    _require(isinstance(dp.enabled, bool), f"dp.enabled must be true or false, got {dp.enabled!r}")
    if dp.enabled:
        from fedvtc.privacy.dp import dp_accounting_available  # late: only DP runs need it

        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        _require(
            s.algorithm_name == "fedvtc",
            f"dp.enabled=true is implemented for algorithm=fedvtc and its variants, got '{s.algorithm_name}'; "
            "set dp.enabled=false or pick a fedvtc algorithm",
        )
        _require(
            not getattr(s.algorithm, "shared_vtc", False),
            "dp.enabled=true with algorithm.shared_vtc=true: the shared VTC's weights are trained on "
            "private images and uploaded without noise; set algorithm.shared_vtc=false",
        )
        _require(
            number(dp.clip) and dp.clip > 0,
            f"dp.clip must be > 0 (L2 bound on a feature vector, e.g. 5), got {dp.clip!r}",
        )
        _require(
            (dp.noise_multiplier is None) != (dp.target_epsilon is None),
            "dp: set exactly one of dp.noise_multiplier (e.g. 1.0) and dp.target_epsilon (e.g. 8), got "
            f"noise_multiplier={dp.noise_multiplier!r}, target_epsilon={dp.target_epsilon!r}",
        )
        _require(
            dp.noise_multiplier is None or (number(dp.noise_multiplier) and dp.noise_multiplier > 0),
            f"dp.noise_multiplier must be null or > 0 (e.g. 1.0), got {dp.noise_multiplier!r}",
        )
        _require(
            dp.target_epsilon is None or (number(dp.target_epsilon) and dp.target_epsilon > 0),
            f"dp.target_epsilon must be null or > 0 (e.g. 8), got {dp.target_epsilon!r}",
        )
        _require(
            number(dp.delta) and 0 < dp.delta < 1,
            f"dp.delta must be in (0, 1), below 1 / (records per client), e.g. 1e-5; got {dp.delta!r}",
        )
        _require(
            number(dp.count_threshold) and dp.count_threshold >= 0,
            f"dp.count_threshold must be >= 0 (e.g. 3), got {dp.count_threshold!r}",
        )
        _require(
            dp_accounting_available(),
            'dp.enabled=true needs Google\'s dp-accounting: pip install -e ".[privacy]" (or set dp.enabled=false)',
        )
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
