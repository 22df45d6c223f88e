"""Shared pytest fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]
# Where the offline copies of the datasets live on this project's machines (see README there).
_MATERIALIZE_CANDIDATES = (
    _REPO.parent / "shared" / "datasets" / "materialize.py",
    _REPO / "shared" / "datasets" / "materialize.py",
)


# The files that start real deployments, clusters or CLI runs, longest first (as measured with
# --junitxml; RESULTS.md §2). `make test` hands whole files to two workers in collection order
# (--no-loadscope-reorder: xdist's own order puts the files with the most tests first, which left
# the few-test deployment files to run last, one worker alone); longest first lets the quick files
# fill the gaps at the end.
HEAVIEST_FILES_FIRST = (
    "test_deployment_secure.py",  # waits about a minute for a killed node's heartbeat to expire
    "test_deployment_hostile.py",
    "test_simulation.py",
    "test_ray_cluster.py",
    "test_deployment.py",
    "test_deployment_netns.py",
    "test_checkpoint.py",
    "test_presets_smoke.py",
    "test_sweep.py",  # an Optuna search, run twice
    "test_table_script.py",
    "test_zoo.py",
    "test_validation.py",
    "test_config.py",
    "test_leakage.py",
    "test_dp.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVIEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: keeps order within a file


@pytest.fixture(scope="session", autouse=True)
def judge_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trained reference classifiers are cached for the session only (not in ~/.cache), so every
    test session starts as a fresh machine does; subprocesses inherit the variable."""
    configured = os.environ.get("FEDVTC_CACHE_DIR")
    if configured:
        return Path(configured)
    path = tmp_path_factory.mktemp("judge_cache")
    os.environ["FEDVTC_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision data root holding at least MNIST and CIFAR-10.

    ``$FEDVTC_DATA_DIR`` when set (nothing is written there beyond what torchvision unpacks);
    otherwise a temporary directory filled once per session by the shared ``materialize.py``
    (about 10 s). Skips the requesting tests when neither is available.
    """
    configured = os.environ.get("FEDVTC_DATA_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    script = next((p for p in _MATERIALIZE_CANDIDATES if p.is_file()), None)
    if script is None:
        pytest.skip("no dataset copies: set FEDVTC_DATA_DIR or provide ../shared/datasets/materialize.py")
    root = tmp_path_factory.mktemp("data")
    subprocess.run(
        [sys.executable, str(script), str(root), "--only", "mnist,cifar10"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return root


@pytest.fixture(scope="session")
def warm_simulation(data_dir: Path):
    """Run real Flower simulations (Ray backend) in this process, as the cells of a multirun run:
    one Ray runtime and one pool of client actors shared by every test that asks for it (each run
    is still a whole Flower simulation, and gives exactly the metrics it gives alone: see
    test_simulation). Returns ``run(overrides, out) -> results.json``; Ray is stopped at the end of
    the session.

    For the tests that only read what a run wrote; one run per entry point (``run_simulation.py``,
    ``flwr run``, a deployment) still goes through its own process.
    """
    import json

    from fedvtc import warm_ray
    from fedvtc.runner import prepare_run, simulate
    from helpers import compose_config

    def run(overrides: list[str], out: Path) -> dict:
        settings = prepare_run(compose_config([f"data_dir={data_dir}", *overrides]), out)
        simulate(settings, in_sweep=True)
        return json.loads((out / "results.json").read_text())

    try:
        yield run
    finally:
        warm_ray.shutdown()


@pytest.fixture(scope="session")
def flower_env(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of every Flower process a deployment test starts (its own FLWR_HOME)."""
    from fedvtc import deploy

    env = deploy.flower_env(tmp_path_factory.mktemp("flwr_home"))
    env["FEDVTC_DATA_DIR"] = str(data_dir)
    return env


@pytest.fixture(scope="session")
def simulated(warm_simulation, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """results.json of the simulation of the config the deployment tests deploy, with the same seed:
    what a deployment must reproduce exactly."""
    import shlex

    from deployment_helpers import OVERRIDES

    return warm_simulation(shlex.split(OVERRIDES), tmp_path_factory.mktemp("simulated"))
