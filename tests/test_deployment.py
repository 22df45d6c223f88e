"""Flower deployment: the node config of the ClientApp, and real SuperLink/SuperNode processes on
127.0.0.1 (slow): the launcher end to end (insecure), and one TLS + SuperNode-authentication
deployment with an unregistered SuperNode and a SuperNode that is stopped after round 1 and
restarted. Every test checks that no process it started (or that those started) is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedvtc import deploy as D
from fedvtc.config import ConfigError
from fedvtc.flwr_config import for_node
from helpers import REPO, compose_config

# Two clients, two rounds on 3% of MNIST; no reference classifier (it would add a centrally trained
# model before round 1 and nothing to what these tests check).
OVERRIDES = "experiment=debug num_clients=2 eval.reference_model=null"
RUN_TIMEOUT = 420  # seconds per deployment; the whole run takes 1-2 minutes on 2 idle cores


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


def test_launcher_checks_clients_against_the_config() -> None:
    with pytest.raises(D.DeploymentError, match="add 'num_clients=3'"):
        D.check_overrides("experiment=debug num_clients=2", clients=3)
    assert D.check_overrides("experiment=debug num_clients=2", clients=2).num_rounds == 2


# ---- real deployments (slow) -------------------------------------------------------------------


def _results(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())


def _round_metrics(results: dict) -> list[tuple]:
    keys = ("global_accuracy", "local_accuracy", "bytes_up", "bytes_down")
    return [tuple(r[k] for k in keys) for r in results["rounds"]]


def _check_shape(results: dict) -> None:
    """What a simulation's results.json holds (see test_simulation), for 2 clients and 2 rounds."""
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for r in results["rounds"]:
        for key in ("global_accuracy", "global_accuracy_std", "local_accuracy", "bytes_up", "bytes_down",
                    "seconds", "accepted", "rejected", "failures", "phase_seconds"):
            assert key in r and r[key] is not None, key
    assert results["rounds"][1]["bytes_down"] > results["rounds"][0]["bytes_down"]
    final = results["final"]
    assert final["global_accuracy"] > 0.10
    assert [c["cid"] for c in final["clients"]] == [0, 1]
    assert len(results["clients"]) == 2 and results["meta"]["num_clients"] == 2


@pytest.fixture(scope="module")
def flower_env(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = D.flower_env(tmp_path_factory.mktemp("flwr_home"))
    env["FEDVTC_DATA_DIR"] = str(data_dir)
    return env


@pytest.fixture(scope="module")
def launcher_run(flower_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """``python -m fedvtc.deploy`` with 2 insecure SuperNodes, its process tree tracked from outside."""
    workdir = tmp_path_factory.mktemp("deploy_insecure")
    cmd = [sys.executable, "-m", "fedvtc.deploy", "--clients", "2", "--overrides", OVERRIDES,
           "--workdir", str(workdir), "--timeout", str(RUN_TIMEOUT)]
    log = workdir.parent / f"{workdir.name}.launcher.log"
    with open(log, "wb") as handle:
        popen = subprocess.Popen(cmd, cwd=REPO, env=flower_env, stdout=handle, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    launcher = D.Proc("launcher", popen, log)
    start = time.monotonic()
    try:
        while popen.poll() is None and time.monotonic() - start < RUN_TIMEOUT + 120:
            D.track([launcher])
            time.sleep(1)
    finally:
        D.stop_processes([launcher])  # a no-op when it ended by itself
        left = D.leftover_pids(SimpleNamespace(procs=[launcher]))  # type: ignore[arg-type]
    return SimpleNamespace(workdir=workdir, rc=popen.returncode, output=log.read_text(), tree=launcher.tree,
                           left=left, seconds=time.monotonic() - start)


@pytest.mark.slow
def test_launcher_insecure_deployment(launcher_run: SimpleNamespace) -> None:
    """(a) 2 SuperNodes, 2 rounds, insecure: same results.json as a simulation; nothing left running."""
    assert launcher_run.rc == 0, launcher_run.output[-3000:]
    results_dir = launcher_run.workdir / "results"
    assert f"results in {results_dir}" in launcher_run.output
    _check_shape(_results(results_dir))
    for name in ("superlink", "supernode0", "supernode1", "flwr-run"):
        assert (launcher_run.workdir / "logs" / f"{name}.log").stat().st_size > 0
    assert '[superlink.deploy]' in (launcher_run.workdir / "flwr_home" / "config.toml").read_text()
    # Each node kept its client's state in its own state dir, per run.
    assert list((launcher_run.workdir / "state" / "node1").glob("run-*/client_1.pt"))
    assert len(launcher_run.tree) >= 6  # launcher, SuperLink (+SuperExec), 2 SuperNodes (+SuperExecs), flwr run
    assert launcher_run.left == []


@pytest.fixture(scope="module")
def secure_run(flower_env: dict[str, str], data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """TLS + SuperNode authentication; a third SuperNode whose key is not registered; SuperNode 1
    stopped after its round-1 replies and restarted with the same node config, key and state dir."""
    dep = D.prepare(tmp_path_factory.mktemp("deploy_secure"), tls=True, auth=True, clients=3)
    dep.env = dict(flower_env, FLWR_HOME=str(dep.flwr_home))
    out = SimpleNamespace(dep=dep)
    try:
        D.start_superlink(dep)
        out.node_ids = [D.register_node(dep, Path(f"{dep.node_key(i)}.pub")) for i in range(2)]
        nodes = [D.start_supernode(dep, i, 2, data_dir=data_dir) for i in range(2)]
        out.intruder = D.start_supernode(dep, 0, 2, data_dir=data_dir, private_key=dep.node_key(2),
                                         state_dir=dep.workdir / "state" / "intruder", name="unregistered")
        run = D.start_run(dep, OVERRIDES)
        # Round 1 done for node 1: it replied to the train and the evaluate message.
        D.wait_for_log(nodes[1], "Sent successfully", count=2, timeout=RUN_TIMEOUT)
        out.state_before = sorted((dep.state_dir(1)).glob("run-*/client_1.pt"))
        D.stop_process(nodes[1])
        out.first_exit = nodes[1].popen.returncode
        restarted = D.start_supernode(dep, 1, 2, data_dir=data_dir, name="supernode1-restarted")
        out.status = D.wait_run(dep, run, timeout=RUN_TIMEOUT, watch=[dep.procs[0], nodes[0], restarted])
        out.restarted_log = restarted.log.read_text()
        listed = D.flwr_cli(dep, ["supernode", "list", D.CONNECTION, "--format", "json"])
        out.listed = json.loads(listed.stdout)["nodes"]
        out.intruder_alive = out.intruder.alive()
        out.intruder_rc = out.intruder.popen.returncode
    finally:
        D.stop_all(dep)
    out.left = D.leftover_pids(dep)
    out.results = _results(dep.results) if (dep.results / "results.json").exists() else None
    return out


@pytest.mark.slow
def test_tls_and_supernode_auth_deployment(secure_run: SimpleNamespace) -> None:
    """(b) the run over TLS with authenticated SuperNodes completes with the same results shape."""
    assert secure_run.status == "finished:completed"
    _check_shape(secure_run.results)
    config = (secure_run.dep.flwr_home / "config.toml").read_text()
    assert "root-certificates" in config and "insecure" not in config
    superlink_cmd = (secure_run.dep.logs / "superlink.log").read_text().splitlines()[0]
    assert "--ssl-certfile" in superlink_cmd and "--enable-supernode-auth" in superlink_cmd
    assert secure_run.left == []


@pytest.mark.slow
def test_unregistered_supernode_is_refused(secure_run: SimpleNamespace) -> None:
    """(c) a SuperNode whose public key was not registered cannot join."""
    assert not secure_run.intruder_alive and secure_run.intruder_rc != 0
    log = secure_run.intruder.log.read_text()
    assert "Failed to activate SuperNode" in log
    assert "No SuperNode found with the given public key" in (secure_run.dep.logs / "superlink.log").read_text()
    assert sorted(int(n["node-id"]) for n in secure_run.listed) == sorted(secure_run.node_ids)
    assert [c["cid"] for c in secure_run.results["final"]["clients"]] == [0, 1]


@pytest.mark.slow
def test_restarted_supernode_rejoins_with_its_state(secure_run: SimpleNamespace, launcher_run: SimpleNamespace) -> None:
    """(d) SuperNode 1 stopped after its round-1 replies and restarted: it gets the same node id (its
    key is registered), round 2 waits for it (the strategy samples all clients), and the run
    completes with both clients in the final entry.

    Its round-1 evaluate reply may be lost: Flower 1.42 answers "Node Unavailable" for a message
    whose node is offline when the ServerApp collects the reply, even if the reply had arrived. Round
    2 is then the undisturbed run's exactly, which needs the restarted client's saved round-1 model,
    generator and optimizer state (unless the node had already pulled its round-2 message when it
    was stopped, a narrow race; then round 2 has a failure and only completion is checked)."""
    assert secure_run.state_before, "node 1 had saved no state before it was stopped"
    assert secure_run.status == "finished:completed"
    assert f"SuperNode ID: {secure_run.node_ids[1]}" in secure_run.restarted_log
    assert "ROUND 2]" in secure_run.restarted_log and "Sent successfully" in secure_run.restarted_log
    results = secure_run.results
    assert [c["cid"] for c in results["final"]["clients"]] == [0, 1]
    assert results["rounds"][0]["accepted"] == 2  # round-1 uploads arrived before the stop
    second = results["rounds"][1]
    if (second["accepted"], second["failures"]) == (2, 0):
        assert launcher_run.rc == 0
        reference = _results(launcher_run.workdir / "results")
        assert _round_metrics(results)[1] == _round_metrics(reference)[1]
        assert results["final"]["clients"] == reference["final"]["clients"]
    assert secure_run.left == []


@pytest.mark.slow
def test_launcher_stops_everything_on_sigterm(flower_env: dict[str, str], tmp_path: Path) -> None:
    """Interrupting the launcher mid-run (SIGTERM, as Ctrl-C would) stops every process it started."""
    cmd = [sys.executable, "-m", "fedvtc.deploy", "--clients", "2", "--overrides", OVERRIDES,
           "--workdir", str(tmp_path / "w")]
    log = tmp_path / "launcher.log"
    with open(log, "wb") as handle:
        popen = subprocess.Popen(cmd, cwd=REPO, env=flower_env, stdout=handle, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    launcher = D.Proc("launcher", popen, log)
    try:
        deadline = time.monotonic() + 120
        while "flwr run started" not in log.read_text() and popen.poll() is None and time.monotonic() < deadline:
            D.track([launcher])
            time.sleep(0.5)
        D.track([launcher])
        assert popen.poll() is None, log.read_text()[-2000:]
        os.kill(popen.pid, signal.SIGTERM)
        rc = popen.wait(timeout=90)
    finally:
        D.stop_processes([launcher])
    assert rc == 130 and "interrupted" in log.read_text()
    assert len(launcher.tree) >= 5
    assert D.leftover_pids(SimpleNamespace(procs=[launcher])) == []  # type: ignore[arg-type]
