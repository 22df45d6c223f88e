"""Hydra multiruns that resume and report progress.

A cell of a sweep is identified by its resolved config (everything but Hydra's own node): when a
sweep is started again with the same ``hydra.sweep.dir``, a cell whose config matches a finished
run under that directory (a ``results.json`` with its ``final`` entry) is not run again, so a table
larger than one sitting is built in parts. ``SweepProgress`` is a Hydra callback
(``hydra.callbacks`` in ``conf/config.yaml``) that prints, before each cell, how many cells are done,
which one starts, and an estimate of the time left.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("fedvtc")

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"


# Where and how a cell runs, not what it computes: the same cell run from another data directory,
# on a Ray cluster, or warm in a multirun gives the same numbers (tests/test_simulation.py,
# tests/test_ray_cluster.py), so these keys are not part of what identifies it.
# What a sweeper reads of a cell (``objective``) does not change the cell either.
WHERE_IT_RUNS = {
    "hydra": None, "data_dir": None, "verbose": None, "skip_finished": None, "objective": None,
    "simulation": ("ray_address", "keep_runtime", "state_dir"),
}


# What a multirun's sweeper may maximize (``objective=...``): keys of results.json's ``final``.
# Choose on a validation split; the test set's accuracy is for final figures only.
OBJECTIVES = {
    "global_accuracy": "accuracy on the official test set (the default; final figures only)",
    "validation_accuracy": "accuracy on the validation split (needs eval.validation > 0)",
    "validation_accuracy_held": "validation accuracy on the classes each client holds",
    "validation_accuracy_missing": "validation accuracy on the classes each client lacks",
}


def objective_value(final: Mapping[str, Any] | None, objective: str) -> float | None:
    """The value a sweeper maximizes, from a run's ``final`` results; None for a run without them.

    Raises:
        ValueError: ``objective`` is not one of ``OBJECTIVES``, or the run did not measure it
            (e.g. a validation objective on a run without ``eval.validation``).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got '{objective}'")
    if final is None:
        return None
    value = final.get(objective)
    if value is None:
        if objective.startswith("validation") and final.get("validation_accuracy") is not None:
            raise ValueError(f"objective={objective}: the run has no final {objective} (no client lacks "
                             "or holds such classes in this partition); choose validation_accuracy")
        raise ValueError(f"objective={objective}: the run has no final {objective}; "
                         "a validation objective needs eval.validation > 0 (e.g. experiment=readings)")
    return float(value)


# Keys added to the config after cells had run, each with the value that computes what the code did
# before the key existed (checked with benchmarks/same_numbers.py when it was added). A finished
# cell whose config lacks one is read as having that value, so that adding an option does not make
# every finished cell of a table run again. Fixed values, not today's defaults: a default that
# changes later must not claim the old cells.
ADDED_KEYS: dict[tuple[str, ...], Any] = {
    ("algorithm", "synthesis", "classes"): "all",
    ("algorithm", "synthesis", "source"): "vtc",
    ("algorithm", "vtc", "style_dim"): 0,
    ("algorithm", "vtc", "style_beta"): 1.0,
    ("algorithm", "vtc", "style_reads_class"): False,
    ("algorithm", "synthesis", "augment"): 0.0,
    ("algorithm", "vtc", "train_input"): "features",
}


def with_added_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with each of ``ADDED_KEYS`` it lacks filled in, where its parent section exists
    (a baseline's ``algorithm`` has no ``vtc`` section, and gets none)."""
    filled = json.loads(json.dumps(config))  # a deep copy of plain containers
    for path, value in ADDED_KEYS.items():
        node = filled
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.setdefault(path[-1], value)
    return filled


def cell_identity(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies a cell: its resolved config without ``WHERE_IT_RUNS`` (Hydra's node with its
    paths and job ids, where the data lives, which Ray runs it), with ``ADDED_KEYS`` filled in."""
    resolved = with_added_keys(resolved)
    identity = {}
    for key, value in resolved.items():
        dropped = WHERE_IT_RUNS.get(key, ())
        if key in WHERE_IT_RUNS and dropped is None:
            continue
        if dropped and isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k not in dropped}
        identity[key] = value
    return identity


def finished_cell(sweep_dir: str | Path, resolved: Mapping[str, Any]) -> Path | None:
    """A directory under ``sweep_dir`` holding a finished run of this exact config, or None.

    Args:
        sweep_dir: the sweep's directory (``hydra.sweep.dir``).
        resolved: this cell's resolved config (as ``fedvtc.config.to_container`` gives it).
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        return None
    wanted = cell_identity(resolved)
    for config_path in sorted(root.glob(f"*/{CONFIG_FILE}")):
        run_dir = config_path.parent
        results = run_dir / RESULTS_FILE
        if not results.exists():
            continue
        try:
            saved = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
            finished = json.loads(results.read_text()).get("final") is not None
        except Exception:  # a damaged file is an unfinished cell: run it again
            continue
        if finished and cell_identity(saved) == wanted:  # type: ignore[arg-type]
            return run_dir
    return None


def sweep_size(overrides: Sequence[str], params: Mapping[str, Any] | None = None) -> int:
    """Number of cells of a basic-sweeper multirun: the product of every swept key's choices.

    Args:
        overrides: the command line's task overrides (``seed=0,1``, ``algorithm=fedvtc``).
        params: the sweeper's ``params`` from the config (a preset's grid); the command line wins
            for a key given in both.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    by_key: dict[str, Any] = {}
    for key, value in (params or {}).items():
        by_key[str(key)] = parser.parse_overrides([f"{key}={value}"])[0]
    for override in parser.parse_overrides(list(overrides)):
        by_key[override.get_key_element()] = override
    return math.prod(len(list(o.sweep_iterator())) if o.is_sweep_override() else 1 for o in by_key.values())


def _format_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra-core 1.3 has it
    Callback = object  # type: ignore[assignment,misc]


class SweepProgress(Callback):  # type: ignore[misc]
    """Before each cell of a multirun: cells done, the cell starting, the time left at the pace of
    the cells run so far (cells skipped as finished already take no time and are not counted in it)."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.done = 0
        self.ran = 0
        self.ran_seconds = 0.0
        self.start_time = 0.0
        self.cell_start: float | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.start_time = time.perf_counter()
        if config.hydra.sweeper.get("n_trials") is not None:  # Optuna's sweeper: its trial budget
            self.total = int(config.hydra.sweeper.n_trials)
            return
        try:
            params = config.hydra.sweeper.get("params")
            params = OmegaConf.to_container(params, resolve=False) if params is not None else {}
            self.total = sweep_size(list(config.hydra.overrides.task), params)  # type: ignore[arg-type]
        except Exception:  # another sweeper (e.g. Optuna): its size is its own business
            self.total = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.start_time:  # a single run: nothing to report
            return
        number = f"{self.done + 1}/{self.total}" if self.total else f"{self.done + 1}"
        overrides = " ".join(config.hydra.overrides.task)
        cell = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        if config.get("skip_finished", True) and finished_cell(config.hydra.sweep.dir, OmegaConf.to_container(cell, resolve=True)):
            self.cell_start = None
            log.info("sweep: cell %s finished already: %s", number, overrides)
            return
        line = f"sweep: cell {number} starting ({self.done} done"
        if self.ran and self.total:
            left = self.ran_seconds / self.ran * (self.total - self.done)
            line += f", about {_format_minutes(left)} left at {_format_minutes(self.ran_seconds / self.ran)} a cell"
        log.info("%s): %s", line, overrides)
        self.cell_start = time.perf_counter()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not self.start_time:
            return
        self.done += 1
        if self.cell_start is not None:
            seconds = time.perf_counter() - self.cell_start
            self.ran += 1
            self.ran_seconds += seconds
            number = f"{self.done}/{self.total}" if self.total else f"{self.done}"
            log.info("sweep: cell %s done in %.1f s", number, seconds)
