"""Helpers shared by the tests that compose configs or run simulations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The composed Hydra config for ``overrides``, as ``run_simulation.py`` would see it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))


def run_cli(args: list[str], data_dir: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``run_simulation.py`` in a subprocess with the test data root."""
    env = dict(os.environ, FEDVTC_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, str(REPO / "run_simulation.py"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
