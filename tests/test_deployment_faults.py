"""Two failures through real deployments (slow), run side by side: the mid-round loss spends about
a minute waiting for Flower's heartbeat to expire, and the hostile deployment does its work then.

**A SuperNode lost in the middle of a round.** TLS + SuperNode authentication, two registered
SuperNodes on 127.0.0.1, three rounds. SuperNode 1 is killed (SIGKILL, its whole process tree)
while its round-2 ClientApp process runs: no sign-off, nothing saved. The SuperLink takes it for
offline once its heartbeat expires (about a minute) and answers the ServerApp with "Node
Unavailable", so round 2 completes with client 0 alone (``simulation.min_fit_fraction`` 0.5) and
counts the failure in results.json; the run finishes. Restarted with its key and state dir once
round 2 has ended (refused while the SuperLink still counts it online, so retried), the node gets
its id back and its client continues from its saved round-1 state: the training then equals,
number for number, the simulation of the same config in which client 1 fails in round 2.

**A hostile SuperNode.** Three SuperNodes on 127.0.0.1, one of which runs a ClientApp made hostile
by tests/hostile_node/sitecustomize.py (on that node's PYTHONPATH only): it trains honestly and
then sends NaN means, another client's id, absurd counts and an overlong payload, one per round.
The ServerApp logs each rejection with its reason, every round pools the two honest clients alone,
and so the honest clients end exactly where they end in the simulation of the same config in which
client 2 sends nothing at all.
"""

from __future__ import annotations

import os
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from deployment_helpers import RUN_TIMEOUT, results_of
from fedvtc import deploy as D

pytestmark = pytest.mark.slow

LOSS_OVERRIDES = "experiment=debug num_clients=2 num_rounds=3 eval.reference_model=null"
CLIENTAPP_STARTS = "Start `flwr-clientapp` process"  # one per message the node receives
ROUND_2_LOST = "aggregate_fit: received 1 results and 1 failures"

HOSTILE = Path(__file__).resolve().parent / "hostile_node"
# 4 rounds for the 4 corruptions; evaluated only in round 4 (fewer ClientApp processes).
HOSTILE_OVERRIDES = "experiment=debug num_clients=3 num_rounds=4 eval.every=4 eval.reference_model=null"


def _lose_a_node_mid_round(flower_env: dict[str, str], data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    dep = D.prepare(tmp_path_factory.mktemp("deploy_loss"), tls=True, auth=True, clients=2)
    dep.env = dict(flower_env, FLWR_HOME=str(dep.flwr_home))
    out = {}
    try:
        D.start_superlink(dep)
        node_ids = [D.register_node(dep, Path(f"{dep.node_key(i)}.pub")) for i in range(2)]
        nodes = [D.start_supernode(dep, i, 2, data_dir=data_dir) for i in range(2)]
        run = D.start_run(dep, LOSS_OVERRIDES)
        # Round 1 sends node 1 a train and an evaluate message; the third ClientApp is round 2's training.
        D.wait_for_log(nodes[1], CLIENTAPP_STARTS, count=3, timeout=RUN_TIMEOUT)
        time.sleep(1.0)  # its ClientApp process is importing and training now
        out["state_before"] = sorted(dep.state_dir(1).glob("run-*/client_1.pt"))
        D.kill_process(nodes[1])
        # Restart only once the ServerApp has counted the loss: a node back online before the
        # SuperLink answered "Node Unavailable" for its lost message leaves round 2 waiting for a
        # reply that never comes (seen in CI).
        D.wait_for_log(run, ROUND_2_LOST, timeout=RUN_TIMEOUT)
        restarted = D.restart_supernode(dep, 1, 2, data_dir=data_dir)
        out["status"] = D.wait_run(dep, run, timeout=RUN_TIMEOUT, watch=[dep.procs[0], nodes[0], restarted])
        out["restarted_log"] = restarted.log.read_text(errors="replace")
        out["node_ids"] = node_ids
        out["run_log"] = run.log.read_text(errors="replace")
    finally:
        D.stop_all(dep)
    out["left"] = D.leftover_pids(dep)
    out["results"] = results_of(dep.results) if (dep.results / "results.json").exists() else None
    return out


def _deploy_a_hostile_node(flower_env: dict[str, str], data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    dep = D.prepare(tmp_path_factory.mktemp("deploy_hostile"), clients=3)
    dep.env = dict(flower_env, FLWR_HOME=str(dep.flwr_home))
    try:
        D.start_superlink(dep)
        watch = [dep.procs[0]]
        for i in range(3):
            env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(HOSTILE), dep.env.get("PYTHONPATH")]))} if i == 2 else None
            watch.append(D.start_supernode(dep, i, 3, data_dir=data_dir, env=env))
        run = D.start_run(dep, HOSTILE_OVERRIDES)
        status = D.wait_run(dep, run, timeout=RUN_TIMEOUT, watch=watch)
        log = run.log.read_text(errors="replace")
    finally:
        D.stop_all(dep)
    results = results_of(dep.results) if (dep.results / "results.json").exists() else None
    return status, results, log, D.leftover_pids(dep)


@pytest.fixture(scope="module")
def fault_runs(flower_env: dict[str, str], data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Both deployments at once, each with its own SuperLink, SuperNodes and ports."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        lost = pool.submit(_lose_a_node_mid_round, flower_env, data_dir, tmp_path_factory)
        hostile = pool.submit(_deploy_a_hostile_node, flower_env, data_dir, tmp_path_factory)
        return {"lost": lost.result(), "hostile": hostile.result()}


@pytest.fixture(scope="module")
def lost_node_run(fault_runs: dict) -> dict:
    return fault_runs["lost"]


@pytest.fixture(scope="module")
def hostile_run(fault_runs: dict) -> tuple:
    return fault_runs["hostile"]


def test_a_supernode_lost_mid_round_costs_that_round_only(lost_node_run, warm_simulation, tmp_path: Path) -> None:
    run = lost_node_run
    assert run["status"] == "finished:completed", run["run_log"][-3000:]
    assert run["left"] == []
    rounds = run["results"]["rounds"]
    assert [(r["accepted"], r["failures"]) for r in rounds] == [(2, 0), (1, 1), (2, 0)]
    assert run["results"]["final"]["clients"][1]["cid"] == 1  # the restarted client is in the final entry
    # It rejoined under its own node id, from the state it had saved after round 1.
    assert f"SuperNode ID: {run['node_ids'][1]}" in run["restarted_log"]
    assert run["state_before"], "node 1 had saved no state before it was killed"
    # The same config simulated, client 1 failing in round 2: the same training, number for number
    # (round 2's evaluation may lack client 1 in the deployment, if it was still away then).
    alone = warm_simulation([*shlex.split(LOSS_OVERRIDES), "faults.clients=[1]", "faults.rounds=[2]"], tmp_path)
    keys = ("accepted", "failures", "bytes_up")
    assert [tuple(r[k] for k in keys) for r in rounds] == [tuple(r[k] for k in keys) for r in alone["rounds"]]
    metrics = ("global_accuracy", "local_accuracy", "bytes_up", "bytes_down")
    for index in (0, 2):
        assert tuple(rounds[index][k] for k in metrics) == tuple(alone["rounds"][index][k] for k in metrics)
    assert run["results"]["final"]["clients"] == alone["final"]["clients"]


def test_a_hostile_supernode_is_rejected_and_pooled_around(hostile_run, warm_simulation, tmp_path: Path) -> None:
    status, results, log, left = hostile_run
    assert status == "finished:completed", log[-3000:]
    assert left == []
    rounds = results["rounds"]
    assert [(r["accepted"], len(r["rejected"]), r["failures"]) for r in rounds] == [(2, 1, 0)] * 4
    reasons = [r["rejected"][0]["reason"] for r in rounds]
    assert "NaN" in reasons[0]
    assert reasons[1].startswith("client id 0 belongs to node")
    assert "count" in reasons[2]
    assert "header announces" in reasons[3]
    for reason in reasons:  # logged by the ServerApp, with the reason
        assert reason in log
    # Every round pooled the honest clients alone: they end as in the simulation where client 2
    # fails every round (and so sends nothing).
    alone = warm_simulation([*shlex.split(HOSTILE_OVERRIDES), "faults.clients=[2]", "faults.rounds=[1,2,3,4]"], tmp_path)
    assert [r["failures"] for r in alone["rounds"]] == [1] * 4
    assert results["final"]["clients"][:2] == alone["final"]["clients"][:2]
