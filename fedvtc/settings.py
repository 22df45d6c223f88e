"""The typed run settings: frozen dataclasses, and building one from a config mapping with checks of
each key and each value's type.

The lowest layer of configuration: it imports nothing of this project but the dataset spec, so
every module (algorithms included) can import it. ``fedvtc.config`` composes these from the Hydra
config and checks the values' ranges.
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Any, Mapping

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
    # Train the reference classifier on blurred, dimmed copies too, so it judges class, not sharpness.
    reference_robust: bool = True
    # Class-balanced validation images carved from the official training set before partitioning
    # (0 = none): what readings and hyperparameters are chosen on, never the test set.
    validation: int = 0


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
    # In a multirun, keep Ray and its client actors from one cell to the next (fedvtc.warm_ray).
    keep_runtime: bool = True
    # The GCS address of a running Ray cluster; None = $RAY_ADDRESS, else a local Ray for the run.
    ray_address: str | None = None


@dataclass(frozen=True)
class OutputSettings:
    synthetic_grid_clients: tuple[int, ...] = (0, 1, 2)
    synthetic_grid_per_class: int = 8


@dataclass(frozen=True)
class FaultSettings:
    """Injected failures: every client in ``clients`` raises in the fit of every round in ``rounds``."""

    clients: tuple[int, ...] = ()
    rounds: tuple[int, ...] = ()
    # End the run after this round (and its checkpoint, if one is due) as a crash would; null = never.
    stop_after_round: int | None = None

    def fails(self, cid: int, server_round: int) -> bool:
        return cid in self.clients and server_round in self.rounds


@dataclass(frozen=True)
class RobustSettings:
    """Server-side bounds on what one client can shift (see ``fedvtc.stats.cap_weights``)."""

    # Largest share of a class's pooling weight any one client may have (null = no cap).
    max_client_share: float | None = None


@dataclass(frozen=True)
class DPSettings:
    """Differential privacy of the shared class statistics (``fedvtc.privacy.dp``).

    When enabled, each client clips every feature vector to L2 norm ``clip``, adds Gaussian noise
    to its per-class sums, counts and second moments, and reports the epsilon it has spent at
    ``delta`` (PLD accountant of ``dp_accounting``). Give exactly one of ``noise_multiplier`` and
    ``target_epsilon``.
    """

    enabled: bool = False
    # L2 bound C on each feature vector before it enters the statistics.
    clip: float = 5.0
    # z: noise std over sensitivity of each released part (sums z*C, counts z, squares z*C^2).
    noise_multiplier: float | None = None
    # Or: the epsilon each client may spend over num_rounds; z is calibrated to it.
    target_epsilon: float | None = None
    delta: float = 1e-5
    # A class is sent only when its noisy count is >= max(1, count_threshold * z).
    count_threshold: float = 3.0


@dataclass(frozen=True)
class PrivacyEvalSettings:
    """What the synthetic images reveal about a client's training data (``fedvtc.privacy.leakage``).

    After the last round, for each client in ``clients``: its VTC synthesizes ``per_class`` images
    of every pooled class; each is matched to its nearest real training image of the client, and
    the distances (and SSIM/PSNR) are compared with those of up to ``heldout`` images of the
    client's local test split, which neither its model nor its VTC ever trained on.
    """

    # Client ids to evaluate (FedVTC runs only; [] = off).
    clients: tuple[int, ...] = ()
    # Synthetic images drawn per pooled class.
    per_class: int = 50
    # Cap on the held-out reference images (a seeded random subset of the local test split); 0 = all.
    heldout: int = 1000
    # Synthetic/training image pairs shown in the figure (the closest ones); 0 = histogram only.
    plot_pairs: int = 8


@dataclass(frozen=True)
class CheckpointSettings:
    """Saving the server's and every client's state every N rounds (``fedvtc.checkpoint``)."""

    # Save after every N-th round (not after the last one), under <output dir>/checkpoint; 0 = never.
    every: int = 0


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
    robust: RobustSettings
    dp: DPSettings
    privacy_eval: PrivacyEvalSettings
    checkpoint: CheckpointSettings
    # A run directory to continue from its last checkpoint (null = a new run).
    resume: str | None
    output_dir: str
    state_dir: str
    # Deployment only (set from a SuperNode's state-dir, never from the config): where the node keeps
    # its client's share of the data as tensors, so that each message's fresh ClientApp process
    # loads a few MB instead of the dataset (fedvtc.federated_data.client_share). None = no cache.
    share_cache_dir: str | None = None
    # What a multirun's sweeper (e.g. Optuna's) maximizes: a key of results.json's final entry,
    # one of fedvtc.sweep.OBJECTIVES. It changes no number of the run.
    objective: str = "global_accuracy"

    def model_name(self, cid: int) -> str:
        """Client ``cid`` gets model ``cid mod n`` of the zoo."""
        return self.models[cid % len(self.models)]


def dataclass_from_mapping(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, recursing into dataclass-typed fields.

    Unknown keys raise ``ConfigError`` naming ``where`` (e.g. ``algorithm``) and the valid keys;
    a value of the wrong type (``train.lr=abc``) raises one naming the key and the type expected;
    missing keys take the dataclass default. Lists become tuples so settings stay hashable.
    """
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        default = known[name].default
        sub = type(default) if is_dataclass(default) else None
        if sub is None and known[name].default_factory is not MISSING:
            made = known[name].default_factory()
            sub = type(made) if is_dataclass(made) else None
        if sub is not None and isinstance(value, Mapping):
            value = dataclass_from_mapping(sub, value, f"{where}.{name}")
        else:
            value = typed_value(value, hints[name], f"{where}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


def typed_value(value: Any, annotation: Any, key: str) -> Any:
    """``value`` checked against a field's annotation: an int where a float is expected becomes a
    float, a list becomes a tuple; anything else of the wrong type raises ``ConfigError``."""
    if annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return typed_value(value, option, key)
            except ConfigError as error:
                errors.append(error)
        raise _type_error(key, value, _describe(annotation))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, value, _describe(annotation))
        args = typing.get_args(annotation)
        item = args[0] if args and (len(args) == 2 and args[1] is Ellipsis) else Any
        return tuple(typed_value(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(key, value, "a number")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(key, value, "an integer")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise _type_error(key, value, "true or false")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise _type_error(key, value, "a string")
        return value
    return value


def _describe(annotation: Any) -> str:
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string", type(None): "null"}
    if typing.get_origin(annotation) is tuple:
        return "a list"
    args = typing.get_args(annotation)
    if args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _type_error(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{key} must be {expected}, got {value!r} ({type(value).__name__})")


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else as given."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
