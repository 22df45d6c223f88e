"""A hostile SuperNode in a real deployment (slow): three SuperNodes on 127.0.0.1, one of which runs
a ClientApp made hostile by tests/hostile_node/sitecustomize.py (on that node's PYTHONPATH only):
it trains honestly and then sends NaN means, another client's id, absurd counts and an overlong
payload, one per round. The ServerApp logs each rejection with its reason, every round pools the
two honest clients alone, and so the honest clients end exactly where they end in the simulation
of the same config in which client 2 sends nothing at all.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from deployment_helpers import RUN_TIMEOUT, deploy_beside, results_of
from helpers import TINY_FEDVTC
from fedvtc import deploy as D

pytestmark = pytest.mark.slow

HOSTILE = Path(__file__).resolve().parent / "hostile_node"
# 4 rounds for the 4 corruptions; evaluated only in round 4 (fewer ClientApp processes).
OVERRIDES = " ".join(["experiment=debug", "num_clients=3", "num_rounds=4", "eval.every=4", "eval.reference_model=null",
                      *TINY_FEDVTC])


@pytest.fixture(scope="module")
def hostile_run(flower_env: dict[str, str], data_dir: Path, warm_simulation, tmp_path_factory: pytest.TempPathFactory):
    dep = D.prepare(tmp_path_factory.mktemp("deploy_hostile"), clients=3)
    dep.env = dict(flower_env, FLWR_HOME=str(dep.flwr_home))

    def deploy():
        try:
            D.start_superlink(dep)
            watch = [dep.procs[0]]
            for i in range(3):
                env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(HOSTILE), dep.env.get("PYTHONPATH")]))} if i == 2 else None
                watch.append(D.start_supernode(dep, i, 3, data_dir=data_dir, env=env))
            run = D.start_run(dep, OVERRIDES)
            status = D.wait_run(dep, run, timeout=RUN_TIMEOUT, watch=watch)
            log = run.log.read_text(errors="replace")
        finally:
            D.stop_all(dep)
        results = results_of(dep.results) if (dep.results / "results.json").exists() else None
        return status, results, log, D.leftover_pids(dep)

    # The honest clients alone: the simulation where client 2 fails every round (and so sends
    # nothing), run while the deployment runs.
    return deploy_beside(deploy, lambda: warm_simulation(
        [*shlex.split(OVERRIDES), "faults.clients=[2]", "faults.rounds=[1,2,3,4]"], tmp_path_factory.mktemp("hostile_alone")))


def test_a_hostile_supernode_is_rejected_and_pooled_around(hostile_run) -> None:
    (status, results, log, left), alone = hostile_run
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
    assert [r["failures"] for r in alone["rounds"]] == [1] * 4
    assert results["final"]["clients"][:2] == alone["final"]["clients"][:2]
