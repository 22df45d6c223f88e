"""Flower's simulation on a Ray cluster of two nodes (slow): a head and a worker started with
``ray start`` as docs/DEPLOYMENT.md gives them, both on this machine (Ray runs several nodes on one
host, each with its own raylet and resources: 1 CPU each here) and on loopback only. FedVTC runs on
it through ``run_simulation.py`` (with the address from the config and from ``RAY_ADDRESS``) and
through ``flwr run`` (``RAY_ADDRESS``); the client actors ran on both nodes (Ray's GCS says so),
the metrics are those of the same config run on a Ray of its own, and the cluster is stopped
afterwards with nothing left running.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

from fedvtc import deploy as D
from helpers import TINY_FEDVTC, run_cli

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
# 2 clients so that each node's one CPU holds one client actor; FedVTC's averaged VTC trains in
# round 2; no reference classifier (nothing here reads synthetic scores).
CELL = ["experiment=debug", "num_clients=2", "num_rounds=2", "eval.reference_model=null", *TINY_FEDVTC]


def _ray_start(args: list[str], log: Path, data_dir: Path) -> subprocess.Popen:
    """``ray start --block ...``: the node's processes live as long as this command does. Its
    client actors find the data as a cluster node's would: in the node's $FEDVTC_DATA_DIR."""
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", FEDVTC_DATA_DIR=str(data_dir))
    env.pop("RAY_ADDRESS", None)
    handle = open(log, "wb")
    return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1", *args],
                            stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_started(proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"ray start did not come up:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)


def _pids_whose(proc_file: str, matches: Callable[[bytes], bool]) -> list[int]:
    """PIDs of the other processes on the machine whose ``/proc/<pid>/<proc_file>`` ``matches``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if matches((entry / proc_file).read_bytes()):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _processes_mentioning(text: str) -> list[int]:
    """PIDs of processes whose command line mentions ``text`` (the cluster's temp directory)."""
    return _pids_whose("cmdline", lambda cmdline: text.encode() in cmdline.replace(b"\0", b" "))


@pytest.fixture(scope="module")
def cluster(data_dir: Path):
    # Short: Ray's unix sockets live under it, and a socket path may not exceed 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="fedvtc-ray-", dir="/tmp"))
    port = D.free_port()
    address = f"127.0.0.1:{port}"
    procs = []
    try:
        head = _ray_start(["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                           f"--temp-dir={temp / 'head'}"], temp / "head.log", data_dir)
        procs.append(head)
        _wait_started(head, temp / "head.log")
        worker = _ray_start([f"--address={address}", "--num-cpus=1", f"--temp-dir={temp / 'worker'}"],
                            temp / "worker.log", data_dir)
        procs.append(worker)
        _wait_started(worker, temp / "worker.log")
        yield address, temp
    finally:
        for proc in procs:  # SIGTERM to `ray start --block` stops its node's processes
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _processes_mentioning(str(temp)) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _processes_mentioning(str(temp))
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
        assert left == [], f"processes of the Ray cluster left running: {left}"


def _placement(address: str) -> dict:
    """The cluster's nodes and where its client actors ran (dead ones included), from Ray's GCS, in a
    process of its own. ``ray.util.state`` needs the dashboard, which ray core does not ship, so the
    actor table is read through ``ray._private.state`` (what ``ray.util.state`` reads too)."""
    code = (
        "import json, ray\n"
        "from ray._private import state\n"
        f"ray.init(address={address!r}, logging_level='ERROR')\n"
        "nodes = {n['NodeID']: n['Resources'].get('CPU') for n in ray.nodes() if n['Alive']}\n"
        "actors = [a['Address']['NodeID'] for a in state.actors().values() if a['ActorClassName'] == 'ClientAppActor']\n"
        "print(json.dumps({'nodes': nodes, 'actor_nodes': actors}))\n"
        "ray.shutdown()\n"
    )
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _metrics(results: dict) -> list[tuple]:
    keys = ("global_accuracy", "global_accuracy_std", "local_accuracy", "bytes_up", "bytes_down")
    return [tuple(r[k] for k in keys) for r in results["rounds"]]


def test_fedvtc_runs_on_both_nodes_with_the_metrics_of_one_machine(cluster, data_dir: Path, tmp_path: Path,
                                                                   warm_simulation) -> None:
    address, _ = cluster
    proc = run_cli([*CELL, f"simulation.ray_address={address}", f"hydra.run.dir={tmp_path / 'cluster'}"], data_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    on_cluster = json.loads((tmp_path / "cluster" / "results.json").read_text())
    placement = _placement(address)
    assert len(placement["nodes"]) == 2 and set(placement["nodes"].values()) == {1.0}
    assert set(placement["actor_nodes"]) == set(placement["nodes"])  # a client actor on each node
    alone = warm_simulation(CELL, tmp_path / "alone")  # the same cell on this process's own Ray
    assert _metrics(on_cluster) == _metrics(alone)
    assert on_cluster["final"]["clients"] == alone["final"]["clients"]


def test_the_address_can_come_from_ray_address(cluster, data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    address, _ = cluster
    monkeypatch.setenv("RAY_ADDRESS", address)
    before = len(_placement(address)["actor_nodes"])
    proc = run_cli(["experiment=debug", "num_clients=2", "num_rounds=1", "algorithm=local",
                    f"hydra.run.dir={tmp_path}"], data_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(_placement(address)["actor_nodes"]) == before + 2  # its two actors ran on the cluster


def _processes_with_env(key: str, value: str) -> list[int]:
    """PIDs of processes whose environment has ``key=value`` (the detached local SuperLink that
    ``flwr run`` starts outlives it, as do its children)."""
    wanted = f"{key}={value}".encode()
    return _pids_whose("environ", lambda environ: wanted in environ.split(b"\0"))


def _kill_processes_with_env(key: str, value: str) -> None:
    for pid in _processes_with_env(key, value):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_flwr_run_runs_on_the_cluster_too(cluster, data_dir: Path, tmp_path: Path, simulated: dict) -> None:
    """``flwr run`` (Flower's local simulation) with RAY_ADDRESS exported: the local SuperLink it
    starts runs the clients on the cluster, and the metrics are the single-node simulation's."""
    address, _ = cluster
    home = tmp_path / "flwr_home"
    home.mkdir()
    env = dict(os.environ, RAY_ADDRESS=address, FLWR_HOME=str(home), FEDVTC_DATA_DIR=str(data_dir),
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", PYTHONUNBUFFERED="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    from deployment_helpers import OVERRIDES

    overrides = f"{OVERRIDES} output_dir={tmp_path / 'out'}"
    before = Counter(_placement(address)["actor_nodes"])
    command = ["flwr", "run", str(Path(__file__).resolve().parents[1]), "--stream",
               "--run-config", f"overrides='{overrides}'",
               "--federation-config", "num-supernodes=2 client-resources-num-cpus=1"]
    for attempt in (1, 2):
        try:
            proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        finally:  # the local SuperLink flwr run started (and what it started) outlive the command
            _kill_processes_with_env("FLWR_HOME", str(home))
        # flwr gives the local SuperLink it starts a fixed 15 s (LOCAL_SUPERLINK_STARTUP_TIMEOUT), which
        # a busy 2-core machine can miss before any of this project's code runs: then once more.
        if attempt == 1 and "Failed to start local SuperLink within" in proc.stdout + proc.stderr:
            continue
        break
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    placement = _placement(address)
    added = Counter(placement["actor_nodes"]) - before
    assert added == Counter({node: 1 for node in placement["nodes"]})  # one new client actor on each node
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert _metrics(results) == _metrics(simulated)
    assert _processes_with_env("FLWR_HOME", str(home)) == []
