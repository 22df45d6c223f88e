"""A TLS + SuperNode-authentication deployment on 127.0.0.1 (slow), with an unregistered SuperNode
and a SuperNode stopped after round 1 and restarted. In its own file so that the test runner can
run it beside the launcher's deployment (tests/test_deployment.py) on the other core. Every test
checks that no process it started (or that those started) is left.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedvtc import deploy as D
from deployment_helpers import OVERRIDES, RUN_TIMEOUT, check_shape, deploy_beside, results_of, round_metrics


@pytest.fixture(scope="module")
def secure_run(flower_env: dict[str, str], data_dir: Path, tmp_path_factory: pytest.TempPathFactory,
               request: pytest.FixtureRequest) -> SimpleNamespace:
    """TLS + SuperNode authentication; a third SuperNode whose key is not registered; SuperNode 1
    stopped after its round-1 replies and restarted with the same node config, key and state dir."""
    dep = D.prepare(tmp_path_factory.mktemp("deploy_secure"), tls=True, auth=True, clients=3)
    dep.env = dict(flower_env, FLWR_HOME=str(dep.flwr_home))
    out = SimpleNamespace(dep=dep)

    def deploy() -> None:
        try:
            D.start_superlink(dep)
            out.node_ids = [D.register_node(dep, Path(f"{dep.node_key(i)}.pub")) for i in range(2)]
            nodes = [D.start_supernode(dep, i, 2, data_dir=data_dir) for i in range(2)]
            out.intruder = D.start_supernode(dep, 0, 2, data_dir=data_dir, private_key=dep.node_key(2),
                                             state_dir=dep.workdir / "state" / "intruder", name="unregistered")
            run = D.start_run(dep, OVERRIDES)
            # Node 0 is frozen from its round-1 train reply until node 1 is back, so that round 1
            # cannot end (and round 2 cannot be sent) while node 1 is away: otherwise, where node 0
            # is quick, round 2 may go to node 1 in the seconds before it signs off, and Flower
            # answers "Node Unavailable" for it. Node 0 cannot have answered its evaluate message by
            # then: a SuperNode waits 3 s between empty pulls, and the message is sent only after
            # both train replies were collected.
            D.wait_for_log(nodes[0], "Sent successfully", count=1, timeout=RUN_TIMEOUT)
            D.pause_process(nodes[0])
            try:
                out.node0_replies_when_frozen = nodes[0].log.read_text(errors="replace").count("Sent successfully")
                # Round 1 done for node 1: it replied to the train and the evaluate message.
                D.wait_for_log(nodes[1], "Sent successfully", count=2, timeout=RUN_TIMEOUT)
                out.state_before = sorted((dep.state_dir(1)).glob("run-*/client_1.pt"))
                D.stop_process(nodes[1])
                out.first_exit = nodes[1].popen.returncode
                # Stopped, it signs off, so the SuperLink lets it back in at once (tested below);
                # a node that could not sign off would be retried until its heartbeat expired.
                restarted = D.restart_supernode(dep, 1, 2, data_dir=data_dir)
            finally:
                D.resume_process(nodes[0])
            out.status = D.wait_run(dep, run, timeout=RUN_TIMEOUT, watch=[dep.procs[0], nodes[0], restarted])
            out.restarted_log = restarted.log.read_text()
            out.restarted_name = restarted.name
            listed = D.flwr_cli(dep, ["supernode", "list", D.CONNECTION, "--format", "json"])
            out.listed = json.loads(listed.stdout)["nodes"]
            out.intruder_alive = out.intruder.alive()
            out.intruder_rc = out.intruder.popen.returncode
        finally:
            D.stop_all(dep)
        out.left = D.leftover_pids(dep)
        out.results = results_of(dep.results) if (dep.results / "results.json").exists() else None

    # What the run must reproduce, simulated while the deployment runs.
    _, out.simulated = deploy_beside(deploy, lambda: request.getfixturevalue("simulated"))
    return out


@pytest.mark.slow
def test_tls_and_supernode_auth_deployment(secure_run: SimpleNamespace) -> None:
    """(b) the run over TLS with authenticated SuperNodes completes with the same results shape."""
    assert secure_run.status == "finished:completed"
    check_shape(secure_run.results)
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
def test_restarted_supernode_rejoins_with_its_state(secure_run: SimpleNamespace) -> None:
    """(d) SuperNode 1 stopped after its round-1 replies and restarted (node 0 frozen meanwhile, so
    that round 2 is sent only once it is back): it gets the same node id (its key is registered), and
    the run completes with both clients in round 2 and in the final entry.

    Its round-1 evaluate reply may be lost: Flower 1.42 answers "Node Unavailable" for a message
    whose node is offline when the ServerApp collects the reply, even if the reply had arrived. Round
    2 is the undisturbed run's (the simulation of the same config) exactly, which needs the
    restarted client's saved round-1 model, generator and optimizer state."""
    assert secure_run.node0_replies_when_frozen == 1, "node 0 had answered round 1's evaluate before it was frozen"
    assert secure_run.state_before, "node 1 had saved no state before it was stopped"
    assert secure_run.status == "finished:completed"
    assert f"SuperNode ID: {secure_run.node_ids[1]}" in secure_run.restarted_log
    # Stopped, it signed off, so the SuperLink let it back in at once (not after its heartbeat expired).
    assert f"Deactivated node_id={secure_run.node_ids[1]}" in (secure_run.dep.logs / "superlink.log").read_text()
    assert secure_run.restarted_name == "supernode1-restart1"
    assert "ROUND 2]" in secure_run.restarted_log and "Sent successfully" in secure_run.restarted_log
    results = secure_run.results
    assert [c["cid"] for c in results["final"]["clients"]] == [0, 1]
    assert results["rounds"][0]["accepted"] == 2  # round-1 uploads arrived before the stop
    second = results["rounds"][1]
    assert (second["accepted"], second["failures"]) == (2, 0)
    assert round_metrics(results)[1] == round_metrics(secure_run.simulated)[1]
    assert results["final"]["clients"] == secure_run.simulated["final"]["clients"]
    assert secure_run.left == []
