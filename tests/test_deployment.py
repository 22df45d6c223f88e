"""Flower deployment: the node config of the ClientApp, and real SuperLink/SuperNode processes on
127.0.0.1 (slow): the launcher end to end (insecure), against the simulation of the same config,
and stopped by SIGTERM. tests/test_deployment_secure.py runs the TLS + authentication deployment
(with a node stopped and a node lost mid-round). Every test checks that no process it started (or
that those started) is left.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest

from fedvtc import deploy as D
from fedvtc.config import ConfigError
from fedvtc.flwr_config import for_node
from deployment_helpers import (RUN_TIMEOUT, check_shape, deploy_beside, interrupt_launcher, leftover_of, results_of, round_metrics,
                                start_launcher, wait_launcher)
from helpers import compose_config

# ---- node config (fast) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings():
    from fedvtc.config import build_settings

    return build_settings(compose_config(["experiment=debug", "num_clients=2"]), output_dir="/tmp/fedvtc-x")


def test_simulation_node_config_leaves_the_settings_unchanged(settings) -> None:
    cid, s = for_node(settings, {"partition-id": 1, "num-partitions": 2}, run_id=7)
    assert cid == 1 and s is settings


def test_deployment_node_config_sets_data_and_state_dirs(settings, tmp_path: Path) -> None:
    node = {"partition-id": 0, "num-partitions": 2, "data-dir": str(tmp_path / "d"), "state-dir": str(tmp_path / "s")}
    cid, s = for_node(settings, node, run_id=7)
    assert cid == 0
    assert s.data_dir == str(tmp_path / "d")
    assert s.state_dir == s.simulation.state_dir == str(tmp_path / "s" / "run-7")
    assert settings.data_dir != s.data_dir  # the original is frozen and untouched
    assert s.output_dir == settings.output_dir and s.num_clients == 2


def test_deployment_processes_poll_for_work_quickly_unless_told_otherwise(tmp_path: Path, monkeypatch) -> None:
    """flower-superexec's 1 s default poll delayed every message's ClientApp; the launcher's processes
    get 0.5 s, and an operator's own value is kept."""
    monkeypatch.delenv(D.SUPEREXEC_POLL_ENV, raising=False)
    assert D.flower_env(tmp_path)[D.SUPEREXEC_POLL_ENV] == "0.5"
    monkeypatch.setenv(D.SUPEREXEC_POLL_ENV, "2.5")
    assert D.flower_env(tmp_path)[D.SUPEREXEC_POLL_ENV] == "2.5"


def test_a_process_tree_is_frozen_let_run_and_stopped_whole(tmp_path: Path) -> None:
    """pause_process freezes every process of a tree, resume_process lets them run, and
    stop_processes ends a frozen tree too (its SIGTERM is followed by SIGCONT), a child that left
    the leader's process group included."""
    dep = D.Deployment(workdir=tmp_path)
    (tmp_path / "logs").mkdir(exist_ok=True)
    proc = D.start_process(dep, "tree", ["bash", "-c", "setsid sleep 300 & sleep 300 & wait"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        D.track([proc])
        if len(D._alive(proc, D._ps())) == 3:
            break
        time.sleep(0.1)
    pids = D._alive(proc, D._ps())
    assert len(pids) == 3

    def states_become(wanted: Callable[[set[str]], bool]) -> bool:
        # A signal takes effect when the kernel next schedules the process: poll briefly.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            table = D._ps()
            if wanted({table[pid][2][0] for pid in pids}):
                return True
            time.sleep(0.05)
        return False

    D.pause_process(proc)
    assert states_become(lambda states: states == {"T"})
    D.resume_process(proc)
    assert states_become(lambda states: "T" not in states)
    D.pause_process(proc)
    started = time.monotonic()
    D.stop_processes([proc], grace=5)
    assert D._alive(proc, D._ps()) == [] and not proc.alive()
    assert time.monotonic() - started < 5  # ended by its SIGTERM, not by the SIGKILL after the grace


def test_a_stopped_process_gets_one_sigterm(tmp_path: Path, monkeypatch) -> None:
    """stop_processes sends SIGTERM once to each process. Flower's processes, like this one, take
    the first as a request to shut down gracefully and put the default handler back, so a second
    one is an immediate death: a SuperNode that got two (once through its process group, once by
    pid) never signed off at the SuperLink."""
    script = ("import signal, sys, time\n"
              "def on_term(*_):\n"
              "    signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
              "    time.sleep(1.0)\n"  # the graceful shutdown's work, e.g. signing off
              "    open(sys.argv[1], 'w').write('signed off')\n"
              "    sys.exit(0)\n"
              "signal.signal(signal.SIGTERM, on_term)\n"
              "print('re' + 'ady', flush=True)\n"
              "time.sleep(300)\n")
    dep = D.Deployment(workdir=tmp_path)
    (tmp_path / "logs").mkdir(exist_ok=True)
    proc = D.start_process(dep, "graceful", [sys.executable, "-c", script, str(tmp_path / "done")])
    D.wait_for_log(proc, "ready", timeout=30)
    # Whether two signals sent microseconds apart both land is a race, so count what is sent.
    sent: list[int] = []

    def counting(send):
        def signal_and_count(target: int, sig: int) -> None:
            if sig == signal.SIGTERM:
                sent.append(target)
            send(target, sig)
        return signal_and_count

    monkeypatch.setattr(os, "kill", counting(os.kill))
    monkeypatch.setattr(os, "killpg", counting(os.killpg))
    D.stop_processes([proc], grace=10)
    assert sent == [proc.pid]  # the process leads its own group: a killpg would have reached it too
    assert proc.popen.returncode == 0 and (tmp_path / "done").read_text() == "signed off"


def test_the_fab_carries_only_the_package_and_its_configs() -> None:
    """``flwr run .`` packs the app with pyproject's fab-include: the package and conf/, not the rest of
    the checkout (the table's committed cells have commas in their directory names, which break the
    FAB's manifest, and their size would count against Flower's 10 MB limit)."""
    import io
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    names = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(D.APP_DIR))).namelist()
    content = [n for n in names if not n.startswith(".info/") and n != "pyproject.toml"]
    assert "fedvtc/client_app.py" in content and "conf/config.yaml" in content
    assert all(n.startswith(("fedvtc/", "conf/")) for n in content), sorted(content)


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"partition-id": 0, "num-partitions": 3}, "num-partitions=3 but the run has num_clients=2"),
        ({"partition-id": 2, "num-partitions": 2}, "partition-id=2 is outside 0..1"),
        ({"num-partitions": 2}, "'partition-id' is missing"),
        ({"partition-id": 0, "num-partitions": 2, "datadir": "/x"}, "unknown key(s) ['datadir']"),
        ({"partition-id": "a", "num-partitions": 2}, "partition-id must be an integer"),
    ],
)
def test_bad_node_config_is_a_clear_error(settings, node, message) -> None:
    with pytest.raises(ConfigError) as error:
        for_node(settings, node)
    assert message in str(error.value)


def test_a_node_keeps_its_clients_share_of_the_data(settings, data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A deployed ClientApp is a fresh process per message: the node's first one saves its client's
    share in the state dir, the later ones load it from there, equal to the last bit, without
    loading the dataset (and so without importing torchvision)."""
    import torch

    from fedvtc import federated_data

    node = {"partition-id": 1, "num-partitions": 2, "data-dir": str(data_dir), "state-dir": str(tmp_path)}
    _, s = for_node(settings, node, run_id=7)
    assert s.share_cache_dir == str(tmp_path / "data")
    first = federated_data.client_share(s, 1)
    assert len(list((tmp_path / "data").glob("share-*.pt"))) == 1

    def no_dataset(*args, **kwargs):
        raise AssertionError("the share is cached: the dataset must not be loaded")

    monkeypatch.setattr(federated_data, "load_dataset", no_dataset)
    again = federated_data.client_share(s, 1)
    for name in ("train", "test", "global_test"):
        assert torch.equal(getattr(first, name).x, getattr(again, name).x), name
        assert torch.equal(getattr(first, name).y, getattr(again, name).y), name
    assert again.validation is None and len(again.train) == len(first.train)
    _, other = for_node(settings, {**node, "partition-id": 0}, run_id=7)  # another client: its own file
    monkeypatch.undo()
    federated_data.client_share(other, 0)
    assert len(list((tmp_path / "data").glob("share-*.pt"))) == 2


def test_launcher_checks_clients_against_the_config() -> None:
    with pytest.raises(D.DeploymentError, match="add 'num_clients=3'"):
        D.check_overrides("experiment=debug num_clients=2", clients=3)
    assert D.check_overrides("experiment=debug num_clients=2", clients=2).num_rounds == 2


# ---- real deployments (slow) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def launcher_run(flower_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
                 request: pytest.FixtureRequest) -> SimpleNamespace:
    """``python -m fedvtc.deploy`` with 2 insecure SuperNodes, its process tree tracked from outside;
    meanwhile, the simulation it must reproduce."""
    workdir = tmp_path_factory.mktemp("deploy_insecure")

    def deploy() -> SimpleNamespace:
        start = time.monotonic()
        launcher = start_launcher(flower_env, workdir, "--timeout", str(RUN_TIMEOUT))
        wait_launcher(launcher, RUN_TIMEOUT + 120)
        return SimpleNamespace(workdir=workdir, rc=launcher.popen.returncode, output=launcher.log.read_text(),
                               tree=launcher.tree, left=leftover_of(launcher), seconds=time.monotonic() - start)

    run, simulated = deploy_beside(deploy, lambda: request.getfixturevalue("simulated"))
    run.simulated = simulated
    return run


@pytest.mark.slow
def test_launcher_insecure_deployment(launcher_run: SimpleNamespace) -> None:
    """(a) 2 SuperNodes, 2 rounds, insecure: same results.json as a simulation; nothing left running."""
    assert launcher_run.rc == 0, launcher_run.output[-3000:]
    results_dir = launcher_run.workdir / "results"
    assert f"results in {results_dir}" in launcher_run.output
    check_shape(results_of(results_dir))
    for name in ("superlink", "supernode0", "supernode1", "flwr-run"):
        assert (launcher_run.workdir / "logs" / f"{name}.log").stat().st_size > 0
    assert '[superlink.deploy]' in (launcher_run.workdir / "flwr_home" / "config.toml").read_text()
    # Each node kept its client's state in its own state dir, per run.
    assert list((launcher_run.workdir / "state" / "node1").glob("run-*/client_1.pt"))
    assert len(launcher_run.tree) >= 6  # launcher, SuperLink (+SuperExec), 2 SuperNodes (+SuperExecs), flwr run
    assert launcher_run.left == []


@pytest.mark.slow
def test_deployment_gives_the_simulations_metrics(launcher_run: SimpleNamespace) -> None:
    """The same config and seed deployed and simulated: the same metrics, client for client."""
    deployed = results_of(launcher_run.workdir / "results")
    assert round_metrics(deployed) == round_metrics(launcher_run.simulated)
    assert deployed["final"]["clients"] == launcher_run.simulated["final"]["clients"]


@pytest.mark.slow
def test_launcher_stops_everything_on_sigterm(flower_env: dict[str, str], tmp_path: Path) -> None:
    """Interrupting the launcher mid-run (SIGTERM, as Ctrl-C would) stops every process it started."""
    launcher = start_launcher(flower_env, tmp_path / "w")
    rc = interrupt_launcher(launcher, timeout=120)
    assert rc == 130 and "interrupted" in launcher.log.read_text()
    assert len(launcher.tree) >= 5
    assert leftover_of(launcher) == []
