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

# A run that takes seconds: 3 clients x 2 rounds on 3 % of MNIST, a small global test subset, and
# a FedVTC that trains its VTC for 4 steps and draws 4 images per class (``vtc.epochs=null``: the
# default budget, a pass over the client's data, would override ``vtc.steps``).
TINY_RUN = [
    "num_clients=3", "num_rounds=2", "train_fraction=0.03", "partition.min_size=5", "eval.global_subset=200",
]
TINY_FEDVTC = ["algorithm.vtc.epochs=null", "algorithm.vtc.steps=4", "algorithm.synthesis.per_class=4"]


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


def assert_rejected(base: list[str], override: str, tmp_path: Path) -> None:
    """``base`` builds valid settings; adding ``override`` raises a ConfigError naming its key."""
    import pytest

    from fedvtc.config import ConfigError, build_settings

    build_settings(compose_config(base), output_dir=tmp_path)
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        build_settings(compose_config([*base, override]), output_dir=tmp_path)
