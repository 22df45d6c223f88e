"""What the deployment tests share: the run they deploy and how they read its results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, TypeVar

from fedvtc import deploy as D
from helpers import REPO, TINY_FEDVTC

# Two clients, two rounds on 3% of MNIST, the tests' tiny VTC budget; no reference classifier (it
# would add a centrally trained model before round 1 and nothing to what these tests check).
OVERRIDES = " ".join(["experiment=debug", "num_clients=2", "eval.reference_model=null", *TINY_FEDVTC])
RUN_TIMEOUT = 420  # seconds per deployment; the whole run takes 1-2 minutes on 2 idle cores

Deployed = TypeVar("Deployed")
Simulated = TypeVar("Simulated")


def deploy_beside(deploy: Callable[[], Deployed], simulate: Callable[[], Simulated]) -> tuple[Deployed, Simulated]:
    """Run ``deploy`` (it starts a deployment's processes and mostly waits on them: for messages,
    heartbeats, restarts) in a thread, and meanwhile ``simulate`` here (the simulation the test
    compares it with: Flower and Ray want the main thread). Both results, once both are done; the
    deployment is waited for even if the simulation fails, so that it stops its processes."""
    with ThreadPoolExecutor(1, thread_name_prefix="deployment") as pool:
        deployed = pool.submit(deploy)
        try:
            simulated = simulate()
        finally:
            result = deployed.result()
    return result, simulated


def start_launcher(flower_env: dict[str, str], workdir: Path, *args: str) -> D.Proc:
    """``python -m fedvtc.deploy --clients 2 --overrides OVERRIDES --workdir <workdir> <args>`` in a
    session of its own, its output in ``<workdir>.launcher.log`` beside the workdir."""
    cmd = [sys.executable, "-m", "fedvtc.deploy", "--clients", "2", "--overrides", OVERRIDES,
           "--workdir", str(workdir), *args]
    log = workdir.parent / f"{workdir.name}.launcher.log"
    with open(log, "wb") as handle:
        popen = subprocess.Popen(cmd, cwd=REPO, env=flower_env, stdout=handle, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    return D.Proc("launcher", popen, log)


def wait_launcher(launcher: D.Proc, timeout: float) -> None:
    """Wait for the launcher to end, tracking the processes it starts; stop what is left after
    ``timeout`` seconds (a no-op when it ended by itself)."""
    deadline = time.monotonic() + timeout
    try:
        while launcher.alive() and time.monotonic() < deadline:
            D.track([launcher])
            time.sleep(1)
    finally:
        D.stop_processes([launcher])


def interrupt_launcher(launcher: D.Proc, *, timeout: float = 180) -> int:
    """SIGTERM to the launcher (as Ctrl-C would) once it has started ``flwr run``; its exit code."""
    try:
        deadline = time.monotonic() + timeout
        while "flwr run started" not in launcher.log.read_text() and launcher.alive() and time.monotonic() < deadline:
            D.track([launcher])
            time.sleep(0.5)
        D.track([launcher])
        assert launcher.alive(), launcher.log.read_text()[-2000:]
        os.kill(launcher.pid, signal.SIGTERM)
        return launcher.popen.wait(timeout=90)
    finally:
        D.stop_processes([launcher])


def leftover_of(launcher: D.Proc) -> list[int]:
    """The processes the launcher started (directly or not) that still run."""
    return D.leftover_pids(SimpleNamespace(procs=[launcher]))  # type: ignore[arg-type]


def results_of(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())


def round_metrics(results: dict) -> list[tuple]:
    keys = ("global_accuracy", "local_accuracy", "bytes_up", "bytes_down")
    return [tuple(r[k] for k in keys) for r in results["rounds"]]


def check_shape(results: dict, *, rounds: int = 2) -> None:
    """What a simulation's results.json holds (see test_simulation), for 2 clients and ``rounds`` rounds."""
    assert [r["round"] for r in results["rounds"]] == list(range(1, rounds + 1))
    for r in results["rounds"]:
        for key in ("global_accuracy", "global_accuracy_std", "local_accuracy", "bytes_up", "bytes_down",
                    "seconds", "accepted", "rejected", "failures", "phase_seconds"):
            assert key in r and r[key] is not None, key
    assert results["rounds"][1]["bytes_down"] > results["rounds"][0]["bytes_down"]
    final = results["final"]
    assert final["global_accuracy"] > 0.10
    assert [c["cid"] for c in final["clients"]] == [0, 1]
    assert len(results["clients"]) == 2 and results["meta"]["num_clients"] == 2

