"""Run one FedVTC (or baseline) experiment as an in-process Flower simulation, configured by Hydra.

    python run_simulation.py                                  # the default: FedVTC, MNIST, alpha 0.1
    python run_simulation.py dataset=cifar10 num_rounds=3     # any override
    python run_simulation.py experiment=debug                 # a preset from conf/experiment/
    python run_simulation.py -m partition.alpha=0.1,1.0 seed=0,1   # a sweep, one job per cell
    python run_simulation.py -m hydra.sweep.dir=multirun/mine seed=0,1,2   # again: only unfinished cells run
    python run_simulation.py resume=outputs/<date>/<time>     # continue a run from its checkpoint

Results go to Hydra's output directory (``hydra.run.dir=...`` to choose it): ``results.json``,
``config.yaml``, ``accuracy.png`` and ``synthetic_client*.png``.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fedvtc.apps import set_quiet_env

set_quiet_env()  # before Flower or Ray are imported

log = logging.getLogger("fedvtc")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from fedvtc.checkpoint import StoppedAfterRound
    from fedvtc.runner import RunError, prepare_run, simulate

    hydra_config = HydraConfig.get()
    output_dir = hydra_config.runtime.output_dir
    _quiet_flower(verbose=bool(cfg.get("verbose", False)))
    if hydra_config.mode == RunMode.MULTIRUN and cfg.get("skip_finished", True):
        from fedvtc.config import to_container
        from fedvtc.sweep import finished_cell

        done = finished_cell(hydra_config.sweep.dir, to_container(cfg))
        if done is not None:  # a sweep started again: this cell has its results already
            log.info("  its results: %s (same resolved config); not run again", done)
            return _objective(_saved_final(done), str(cfg.get("objective", "global_accuracy")))
    try:
        settings = prepare_run(cfg, output_dir, overrides=list(hydra_config.overrides.task))
    except RunError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("output directory: %s", output_dir)
    log.debug(OmegaConf.to_yaml(cfg))
    try:
        final = simulate(settings, in_sweep=hydra_config.mode == RunMode.MULTIRUN)
    except StoppedAfterRound as stop:  # the requested stand-in for a crash: say how to go on
        print(str(stop), file=sys.stderr)
        raise SystemExit(3) from None
    return _objective(final, settings.objective)


def _saved_final(run_dir) -> dict | None:
    import json
    from pathlib import Path

    return json.loads((Path(run_dir) / "results.json").read_text()).get("final")


def _objective(final: dict | None, objective: str) -> float | None:
    """What this job returns to Hydra's sweeper (Optuna maximizes it): the final ``objective``."""
    from fedvtc.sweep import objective_value

    try:
        return objective_value(final, objective)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _quiet_flower(*, verbose: bool) -> None:
    """Flower prints its own coloured log; keep it out of Hydra's (no duplicates) and, unless
    ``verbose=true``, limit it to warnings so the console shows one line per round."""
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.propagate = False
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
        # Flower's state database migrates its schema with alembic, which logs each plugin at INFO.
        logging.getLogger("alembic").setLevel(logging.WARNING)


if __name__ == "__main__":
    main()
