"""A SuperNode lost in the middle of a round, through a real deployment (slow).

TLS + SuperNode authentication, two registered SuperNodes on 127.0.0.1, three rounds. SuperNode 1
is killed (SIGKILL, its whole process tree) while its round-2 ClientApp process runs: no sign-off,
nothing saved. The SuperLink takes it for offline once its heartbeat expires (about a minute) and
answers the ServerApp with "Node Unavailable", so round 2 completes with client 0 alone
(``simulation.min_fit_fraction`` 0.5) and counts the failure in results.json; the run finishes.
Restarted with its key and state dir once round 2 has ended (refused while the SuperLink still
counts it online, so retried), the node gets its id back and its client continues from its saved round-1 state: the training then
equals, number for number, the simulation of the same config in which client 1 fails in round 2.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest

from deployment_helpers import RUN_TIMEOUT, deploy_beside, results_of
from fedvtc import deploy as D

pytestmark = pytest.mark.slow

OVERRIDES = "experiment=debug num_clients=2 num_rounds=3 eval.reference_model=null"
CLIENTAPP_STARTS = "Start `flwr-clientapp` process"  # one per message the node receives
ROUND_2_LOST = "aggregate_fit: received 1 results and 1 failures"


@pytest.fixture(scope="module")
def lost_node_run(flower_env: dict[str, str], data_dir: Path, warm_simulation,
                  tmp_path_factory: pytest.TempPathFactory) -> dict:
    dep = D.prepare(tmp_path_factory.mktemp("deploy_loss"), tls=True, auth=True, clients=2)
    dep.env = dict(flower_env, FLWR_HOME=str(dep.flwr_home))

    def deploy() -> dict:
        out = {}
        try:
            D.start_superlink(dep)
            node_ids = [D.register_node(dep, Path(f"{dep.node_key(i)}.pub")) for i in range(2)]
            nodes = [D.start_supernode(dep, i, 2, data_dir=data_dir) for i in range(2)]
            run = D.start_run(dep, OVERRIDES)
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

    # The same config simulated, client 1 failing in round 2, while the deployment waits (a minute
    # of it for the lost node's heartbeat to expire).
    out, alone = deploy_beside(deploy, lambda: warm_simulation(
        [*shlex.split(OVERRIDES), "faults.clients=[1]", "faults.rounds=[2]"], tmp_path_factory.mktemp("loss_alone")))
    return {**out, "alone": alone}


def test_a_supernode_lost_mid_round_costs_that_round_only(lost_node_run) -> None:
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
    alone = run["alone"]
    keys = ("accepted", "failures", "bytes_up")
    assert [tuple(r[k] for k in keys) for r in rounds] == [tuple(r[k] for k in keys) for r in alone["rounds"]]
    metrics = ("global_accuracy", "local_accuracy", "bytes_up", "bytes_down")
    for index in (0, 2):
        assert tuple(rounds[index][k] for k in metrics) == tuple(alone["rounds"][index][k] for k in metrics)
    assert run["results"]["final"]["clients"] == alone["final"]["clients"]
