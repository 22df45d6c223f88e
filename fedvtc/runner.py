"""Preparing and running a simulation: everything ``run_simulation.py`` does besides Hydra.

``prepare_run`` fails early, before Ray or any training starts, on anything that cannot work: a bad
config value, a missing dataset, a partition that cannot be made. ``simulate`` runs the Flower
simulation and returns the ``final`` entry of ``results.json``.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from fedvtc.apps import backend_config, make_client_app, make_server_app, set_quiet_env
from fedvtc.checkpoint import CheckpointError, load_checkpoint, resume_config
from fedvtc.config import ConfigError, RunSettings, build_settings, to_container
from fedvtc.data import DatasetNotFoundError
from fedvtc.federated_data import federated_split
from fedvtc.privacy.leakage import PrivacyEvalError, evaluate_run, preflight
from fedvtc.state import clear_states

log = logging.getLogger("fedvtc")


class RunError(RuntimeError):
    """A run that cannot start; the message says what to change."""


def prepare_run(
    cfg: DictConfig | Mapping[str, Any], output_dir: str | os.PathLike, overrides: Sequence[str] = ()
) -> RunSettings:
    """Validate ``cfg``, load the data, make the partition and save the resolved config.

    Args:
        cfg: the composed config.
        output_dir: where the run writes its results.
        overrides: the command line's overrides. With ``resume=<dir>`` the run takes the
            checkpointed run's config, and these may change only what a resume allows
            (``fedvtc.checkpoint.RESUMABLE_KEYS``).

    Raises:
        RunError: with the reason and the fix, for a bad value, missing data, an impossible split,
            or a checkpoint to resume that is missing, damaged or made with other settings.
    """
    try:
        if cfg.get("resume"):
            cfg = resume_config(cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg)), overrides)
        settings = build_settings(cfg, output_dir=output_dir)
        if settings.resume:
            load_checkpoint(settings.resume, settings)  # every check, before Ray or any training starts
        federated_split(settings)  # loads the dataset and partitions it, or says why it cannot
        preflight(settings)  # the privacy evaluation's package, before hours of training
    except ConfigError as error:
        raise RunError(f"invalid configuration: {error}") from error
    except DatasetNotFoundError as error:
        raise RunError(str(error)) from error
    except ValueError as error:  # the partitioners' argument checks
        raise RunError(f"invalid configuration: {error}") from error
    except CheckpointError as error:
        raise RunError(f"cannot resume: {error}") from error
    if not settings.resume:
        removed = clear_states(settings.state_dir)
        if removed:
            log.warning("a new run: removed %d client state file(s) of an earlier run from %s", removed, settings.state_dir)
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    earlier = out / "results.json"
    if not settings.resume and earlier.exists():
        # An earlier run in this directory (e.g. a sweep cell rerun with other settings): until this
        # run's first round rewrites it, its final entry beside this run's config.yaml would read as
        # this config finished to a resuming sweep. Kept under another name (the latest earlier run's).
        earlier.replace(out / "results.previous.json")
        log.warning("a new run in %s: the results.json of an earlier run there is now results.previous.json", out)
    resolved = to_container(cfg)
    resolved.pop("hydra", None)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    return settings


class _DropRunSimulationNotice(logging.Filter):
    """Flower 1.42 marks ``run_simulation`` deprecated in favour of ``flwr run``. This project offers
    ``flwr run`` too; the in-process call is what lets Hydra sweep many cells in one process, so the
    notice is not the user's to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith("DEPRECATED FEATURE") and "run_simulation" in str(record.args))


def quiet_third_party_notices() -> None:
    """Silence the two notices every simulation would print that ask nothing of the user."""
    flwr_logger = logging.getLogger("flwr")
    if not any(isinstance(f, _DropRunSimulationNotice) for f in flwr_logger.filters):
        flwr_logger.addFilter(_DropRunSimulationNotice())
    # Ray 2.55 announces a future change for actors with num_gpus=0; the current behaviour (GPUs
    # hidden from CPU-only clients) is the one this project relies on, so the tip is noise.
    warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)


def simulate(settings: RunSettings, *, in_sweep: bool = False) -> dict[str, Any] | None:
    """Run the Flower simulation for ``settings``; return the ``final`` entry of its results.

    ``in_sweep``: more simulations follow in this process (a multirun); with
    ``simulation.keep_runtime`` they share one Ray runtime and its client actors.
    """
    set_quiet_env()
    quiet_third_party_notices()
    from flwr.simulation import run_simulation

    from fedvtc import warm_ray

    warm_ray.install()
    if in_sweep and settings.simulation.keep_runtime:
        warm_ray.keep_warm()

    run_simulation(
        server_app=make_server_app(settings),
        client_app=make_client_app(settings),
        num_supernodes=settings.num_clients,
        backend_config=backend_config(settings),
    )
    results = Path(settings.output_dir) / "results.json"
    if not results.exists():
        log.error("the simulation ended without writing %s; see the log above", results)
        return None
    if settings.privacy_eval.clients:
        try:
            evaluate_run(settings)
        except PrivacyEvalError as error:  # the run's own results stay valid; say what is missing
            log.error("privacy evaluation failed: %s", error)
    return json.loads(results.read_text()).get("final")
