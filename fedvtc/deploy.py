"""A real Flower deployment on this machine: one SuperLink, N SuperNodes, one run, then clean up.

    python -m fedvtc.deploy --clients 2 --overrides "experiment=debug num_clients=2" --workdir /tmp/fl
    python -m fedvtc.deploy --clients 2 --overrides "experiment=debug num_clients=2" --workdir /tmp/fl --tls --auth
    python -m fedvtc.deploy --clients 2 --overrides "experiment=debug num_clients=2" --workdir /tmp/fl --tls --auth --hosts netns

Everything listens on 127.0.0.1 only (free ports picked at start), or, with ``--hosts netns`` (needs
root), each of the SuperLink, the SuperNodes and the operator's ``flwr run`` runs in a network
namespace of its own with its own address on a virtual network made for the run (``fedvtc.netns``),
and TLS certifies the SuperLink's address there. ``WORKDIR`` receives
``flwr_home/`` (``FLWR_HOME``, with the ``deploy`` connection in ``config.toml``), ``certs/`` (with
``--tls``: a CA and a server certificate for 127.0.0.1/localhost), ``keys/`` (with ``--auth``: one
ECDSA P-384 key pair per SuperNode, registered with ``flwr supernode register``), ``state/node<i>/``
(each SuperNode's client state), ``logs/`` (one log per process) and ``results/`` (the run's
``results.json`` and figures). Every process is started in its own process group and every group
is stopped on exit (and every namespace removed), whether the run completed, failed, a process died
early, or on Ctrl-C. The exit
code is 0 only if the run completed and wrote its results.

The steps are small functions (``prepare``, ``start_superlink``, ``register_node``,
``start_supernode``, ``start_run``, ``wait_run``, ``stop_process``, ``stop_all``) so that tests can
script other scenarios, e.g. a SuperNode that is stopped and restarted during a run.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from fedvtc import netns
from fedvtc.netns import VirtualNetwork

APP_DIR = Path(__file__).resolve().parents[1]
# Flower's flower-superexec reads its task poll interval (seconds, 0.01-60; Flower's default 1.0) here.
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
SUPEREXEC_POLL_SECONDS = "0.5"
CONNECTION = "deploy"
HOST = "127.0.0.1"


class DeploymentError(RuntimeError):
    """A deployment step failed; the message says which and where its log is."""


@dataclass
class Proc:
    """A process started by the launcher, leader of its own process group."""

    name: str
    popen: subprocess.Popen
    log: Path
    # Every process seen in this process's tree (pid -> start time), including those that left
    # its process group (the SuperLink starts its SuperExec in a session of its own).
    tree: dict[int, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Deployment:
    """Paths, environment and processes of one deployment: on loopback, or with ``net`` each host in
    a network namespace of its own (``fedvtc.netns``: hosts ``link``, ``node<i>``, ``operator``)."""

    workdir: Path
    tls: bool = False
    auth: bool = False
    env: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    superlink_port: int | None = None
    net: VirtualNetwork | None = None

    @property
    def superlink_host(self) -> str:
        return self.net.address("link") if self.net else HOST

    def on(self, host: str | None) -> list[str]:
        """The prefix that runs a command on ``host`` (nothing on loopback)."""
        return self.net.prefix(host) if self.net and host else []

    @property
    def flwr_home(self) -> Path:
        return self.workdir / "flwr_home"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def certs(self) -> Path:
        return self.workdir / "certs"

    @property
    def keys(self) -> Path:
        return self.workdir / "keys"

    @property
    def results(self) -> Path:
        return self.workdir / "results"

    def state_dir(self, index: int) -> Path:
        return self.workdir / "state" / f"node{index}"

    @property
    def superlink_address(self) -> str:
        if self.superlink_port is None:
            raise DeploymentError("the SuperLink is not started")
        return f"{self.superlink_host}:{self.superlink_port}"

    @property
    def ca_cert(self) -> Path:
        return self.certs / "ca.crt"

    def node_key(self, index: int) -> Path:
        """The private key of SuperNode ``index`` (the public key is the same path + ``.pub``)."""
        return self.keys / f"node{index}"

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


# ---- setup ------------------------------------------------------------------------------------


HOSTS = ("loopback", "netns")


def prepare(workdir: str | os.PathLike, *, tls: bool = False, auth: bool = False, clients: int = 0,
            hosts: str = "loopback") -> Deployment:
    """Create the work directory, ``FLWR_HOME``, the hosts' network (``hosts="netns"``: a namespace
    per host, which ``stop_all`` removes), certificates (``tls``, for the SuperLink's address) and
    node keys (``auth``)."""
    if auth and not tls:
        raise DeploymentError("SuperNode authentication needs TLS: use --tls with --auth")
    if hosts not in HOSTS:
        raise DeploymentError(f"--hosts must be one of {HOSTS}, got {hosts!r}")
    dep = Deployment(workdir=Path(workdir).resolve(), tls=tls, auth=auth)
    for path in (dep.workdir, dep.flwr_home, dep.logs, dep.results):
        path.mkdir(parents=True, exist_ok=True)
    dep.env = flower_env(dep.flwr_home)
    if hosts == "netns":
        why = netns.unavailable()
        if why:
            raise DeploymentError(f"--hosts netns: network namespaces cannot be made here: {why}; "
                                  "run as root, or use --hosts loopback")
        dep.net = netns.create(["link", *[f"node{i}" for i in range(clients)], "operator"])
    try:
        if tls:
            make_certificates(dep.certs, address=dep.superlink_host)
        if auth:
            for index in range(clients):
                make_node_key(dep.node_key(index))
    except BaseException:
        if dep.net is not None:
            dep.net.destroy()
        raise
    return dep


def flower_env(flwr_home: Path) -> dict[str, str]:
    """This process's environment plus ``FLWR_HOME``, the quiet/offline settings and our ``bin`` on PATH
    (the SuperLink and SuperNodes start ``flower-superexec`` and ``flwr-*app`` by name)."""
    from fedvtc.apps import QUIET_ENV

    env = dict(os.environ)
    for key, value in QUIET_ENV.items():
        env.setdefault(key, value)
    env["FLWR_HOME"] = str(flwr_home)
    env["PYTHONUNBUFFERED"] = "1"
    # Each SuperNode's flower-superexec asks for a new message to run every second by default, so
    # every message of every round waited up to a second before its ClientApp even started. Not
    # much less: every poll is a gRPC call that costs the SuperExec and the SuperNode CPU time for
    # as long as the node is up (at 0.1 s, about 5 s more in a 50 s two-node deployment;
    # docs/DEPLOYMENT.md).
    env.setdefault(SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_SECONDS)
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def make_certificates(certs: Path, *, days: int = 30, address: str = HOST) -> None:
    """A self-signed CA (``ca.crt``) and a server certificate for ``address`` (the SuperLink's IP;
    127.0.0.1 and localhost besides) (``server.pem``, key ``server.key``) signed by it, with the
    ``cryptography`` package."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    certs.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedvtc deployment CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"),
                 *{x509.IPAddress(ipaddress.ip_address(a)) for a in (HOST, address)}]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    (certs / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (certs / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(certs / "server.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ))


def make_node_key(path: Path) -> None:
    """An ECDSA P-384 key pair in OpenSSH format (what ``ssh-keygen -t ecdsa -b 384`` writes):
    private key at ``path``, public key at ``path.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    Path(f"{path}.pub").write_bytes(public + f" fedvtc-{path.name}\n".encode())


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def write_connection(dep: Deployment) -> None:
    """``[superlink.deploy]`` in ``$FLWR_HOME/config.toml``: the SuperLink's address, and TLS or not."""
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
             f'address = "{dep.superlink_address}"']
    if dep.tls:
        lines.append(f'root-certificates = "{dep.ca_cert}"')
    else:
        lines.append("insecure = true")
    (dep.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


# ---- processes --------------------------------------------------------------------------------


def start_process(dep: Deployment, name: str, cmd: Sequence[str], *, cwd: Path | None = None,
                  env: Mapping[str, str] | None = None, host: str | None = None) -> Proc:
    """Start ``cmd`` in a new session (its own process group), output to ``logs/<name>.log``, on
    ``host`` (its namespace, with ``--hosts netns``); ``env`` adds to (or replaces in) the
    deployment's environment for this process alone."""
    cmd = [*dep.on(host), *cmd]
    log = dep.logs / f"{name}.log"
    with open(log, "ab") as handle:
        handle.write(f"$ {shlex.join(cmd)}\n".encode())
        handle.flush()
        popen = subprocess.Popen(
            list(cmd), cwd=cwd or dep.workdir, env={**dep.env, **(env or {})}, stdin=subprocess.DEVNULL,
            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )
    proc = Proc(name, popen, log)
    dep.procs.append(proc)
    return proc


def start_superlink(dep: Deployment, *, port: int | None = None, timeout: float = 60) -> Proc:
    """``flower-superlink`` on 127.0.0.1:<port> (one port serves SuperNodes and ``flwr`` CLIs);
    waits until it accepts connections and writes the ``deploy`` connection."""
    dep.superlink_port = port or free_port()
    cmd = ["flower-superlink", "--host", dep.superlink_host, "--port", str(dep.superlink_port),
           "--disable-runtime-dependency-installation"]
    if dep.tls:
        cmd += ["--ssl-ca-certfile", str(dep.ca_cert), "--ssl-certfile", str(dep.certs / "server.pem"),
                "--ssl-keyfile", str(dep.certs / "server.key")]
    else:
        cmd += ["--insecure"]
    if dep.auth:
        cmd += ["--enable-supernode-auth"]
    proc = start_process(dep, "superlink", cmd, host="link")
    _wait_for_port(dep, proc, dep.superlink_port, timeout)
    write_connection(dep)
    return proc


def _accepts(dep: Deployment, port: int) -> bool:
    """Whether the SuperLink accepts connections, tried from where the operator is (the root
    namespace on loopback; the operator's namespace, which can reach it, with netns)."""
    if dep.net is None:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return True
        except OSError:
            return False
    probe = f"import socket; socket.create_connection(({dep.superlink_host!r}, {port}), timeout=1).close()"
    return subprocess.run([*dep.on("operator"), sys.executable, "-c", probe], capture_output=True,
                          timeout=30).returncode == 0


def _wait_for_port(dep: Deployment, proc: Proc, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise DeploymentError(f"{proc.name} exited with code {proc.popen.returncode}; see {proc.log}:\n{proc.tail()}")
        if _accepts(dep, port):
            return
        time.sleep(0.3)
    raise DeploymentError(f"{proc.name} does not accept connections on {dep.superlink_host}:{port} after "
                          f"{timeout:.0f} s; see {proc.log}")


def flwr_cli(dep: Deployment, args: Sequence[str], *, timeout: float = 60) -> subprocess.CompletedProcess:
    """A short ``flwr`` CLI call with this deployment's ``FLWR_HOME``."""
    return subprocess.run([*dep.on("operator"), "flwr", *args], cwd=APP_DIR, env=dep.env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def register_node(dep: Deployment, public_key: Path, *, timeout: float = 60) -> int:
    """``flwr supernode register KEY.pub deploy``: allow the SuperNode with this key; returns its node id."""
    deadline = time.monotonic() + timeout
    while True:
        done = flwr_cli(dep, ["supernode", "register", str(public_key), CONNECTION, "--format", "json"],
                        timeout=timeout)
        try:
            answer = json.loads(done.stdout)
        except json.JSONDecodeError:
            answer = {}
        if done.returncode == 0 and answer.get("success", True) and "node-id" in answer:
            return int(answer["node-id"])
        if time.monotonic() > deadline:
            raise DeploymentError(f"flwr supernode register {public_key} failed:\n{done.stdout}\n{done.stderr}")
        time.sleep(1)


def start_supernode(
    dep: Deployment,
    index: int,
    num_nodes: int,
    *,
    data_dir: str | os.PathLike | None = None,
    state_dir: Path | None = None,
    private_key: Path | None = None,
    name: str | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Proc:
    """``flower-supernode`` for client ``index`` of ``num_nodes``, with its node config (partition-id,
    num-partitions, data-dir, state-dir, by default state/node<index>) and, with auth, its private
    key (by default keys/node<index>). Restarting a node = calling this again with the same index."""
    data = Path(data_dir or os.environ.get("FEDVTC_DATA_DIR", "./data")).expanduser().resolve()
    state = Path(state_dir) if state_dir is not None else dep.state_dir(index)
    state.mkdir(parents=True, exist_ok=True)
    node_config = (f"partition-id={index} num-partitions={num_nodes} "
                   f"data-dir={json.dumps(str(data))} state-dir={json.dumps(str(state))}")
    cmd = ["flower-supernode", "--superlink", dep.superlink_address, "--port", str(free_port()),
           "--node-config", node_config]
    cmd += ["--root-certificates", str(dep.ca_cert)] if dep.tls else ["--insecure"]
    if dep.auth:
        cmd += ["--auth-supernode-private-key", str(private_key or dep.node_key(index))]
    cmd += list(extra_args)
    return start_process(dep, name or f"supernode{index}", cmd, env=env, host=f"node{index}")


def restart_supernode(dep: Deployment, index: int, num_nodes: int, *, data_dir: str | os.PathLike | None = None,
                      timeout: float = 240, name: str | None = None) -> Proc:
    """Start SuperNode ``index`` again (same node config, key and state dir) and return it once the
    SuperLink has activated it.

    The SuperLink refuses to activate a node it still counts as online ("Failed to activate
    SuperNode"): one that was killed, or stopped before it could sign off, stays online until its
    heartbeat expires (2 x 30 s in Flower 1.42). So a refused start is retried until ``timeout``.
    """
    deadline = time.monotonic() + timeout
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        node = start_supernode(dep, index, num_nodes, data_dir=data_dir,
                               name=f"{name or f'supernode{index}-restart'}{attempt}")
        settle = time.monotonic() + 30
        while node.alive() and time.monotonic() < settle:
            if "SuperNode ID:" in node.log.read_text(errors="replace"):
                return node
            time.sleep(0.5)
        stop_process(node)
        time.sleep(5)
    raise DeploymentError(f"SuperNode {index} was not let back in within {timeout:.0f} s; "
                          f"see the supernode{index}-restart*.log files in {dep.logs}")


def start_run(dep: Deployment, overrides: str, *, app_dir: Path = APP_DIR) -> Proc:
    """``flwr run <app> deploy --stream`` with ``overrides`` plus ``output_dir=<workdir>/results``."""
    output = shlex.quote(f"output_dir={dep.results}")
    run_config = "overrides=" + json.dumps(f"{overrides} {output}".strip())
    cmd = ["flwr", "run", str(app_dir), CONNECTION, "--stream", "--run-config", run_config]
    return start_process(dep, "flwr-run", cmd, cwd=app_dir, host="operator")


def wait_for_log(proc: Proc, text: str, *, count: int = 1, timeout: float = 300) -> None:
    """Wait until ``text`` appears ``count`` times in ``proc``'s log (raises if it exits or times out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.log.read_text(errors="replace").count(text) >= count:
            return
        if not proc.alive():
            raise DeploymentError(f"{proc.name} exited before logging {text!r} {count}x; see {proc.log}")
        time.sleep(0.2)
    raise DeploymentError(f"{proc.name} did not log {text!r} {count}x within {timeout:.0f} s; see {proc.log}")


def run_id_of(run: Proc) -> int | None:
    """The run id ``flwr run`` printed (None before it did)."""
    found = re.search(r"started run (\d+)", run.log.read_text(errors="replace"))
    return int(found.group(1)) if found else None


def run_status(dep: Deployment, run_id: int) -> str:
    """The run's status as ``flwr list`` reports it, e.g. ``finished:completed``."""
    done = flwr_cli(dep, ["list", CONNECTION, "--run-id", str(run_id), "--format", "json"])
    try:
        runs = json.loads(done.stdout).get("runs", [])
    except json.JSONDecodeError:
        return "unknown"
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


def wait_run(dep: Deployment, run: Proc, *, timeout: float, watch: Iterable[Proc] | None = None) -> str:
    """Wait for ``flwr run`` to end; returns the run's final status.

    Raises ``DeploymentError`` if a watched process (by default the SuperLink and the SuperNodes)
    exits first or the run takes longer than ``timeout`` seconds.
    """
    watched = list(watch) if watch is not None else [p for p in dep.procs if p is not run]
    deadline = time.monotonic() + timeout
    last_track = 0.0
    while run.alive():
        if time.monotonic() - last_track > 2:
            track(dep.procs)
            last_track = time.monotonic()
        for proc in watched:
            if not proc.alive():
                raise DeploymentError(
                    f"{proc.name} (pid {proc.pid}) exited early with code {proc.popen.returncode}; "
                    f"see {proc.log}:\n{proc.tail()}"
                )
        if time.monotonic() > deadline:
            raise DeploymentError(f"the run did not finish within {timeout:.0f} s; see {run.log}")
        time.sleep(0.5)
    run_id = run_id_of(run)
    status = "unknown"
    if run_id is not None:  # the SuperLink may take a moment to mark the run finished
        settle = time.monotonic() + 30
        while not (status := run_status(dep, run_id)).startswith("finished") and time.monotonic() < settle:
            time.sleep(1)
    if run.popen.returncode != 0 and status == "unknown":
        status = f"flwr run exited with code {run.popen.returncode}"
    return status


# ---- stopping ---------------------------------------------------------------------------------


def _ps() -> dict[int, tuple[int, int, str, str]]:
    """pid -> (ppid, pgid, state, start time) of every process on the machine."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,pgid=,stat=,lstart="], capture_output=True, text=True,
                         timeout=30, env=dict(os.environ, LC_ALL="C")).stdout
    table = {}
    for line in out.splitlines():
        parts = line.split(None, 4)
        if len(parts) == 5 and parts[0].isdigit():
            table[int(parts[0])] = (int(parts[1]), int(parts[2]), parts[3], parts[4])
    return table


def track(procs: Iterable[Proc], table: dict[int, tuple[int, int, str, str]] | None = None) -> None:
    """Add the current descendants and group members of each process to its ``tree``."""
    table = table if table is not None else _ps()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    for proc in procs:
        todo = [proc.pid, *proc.tree, *(pid for pid, row in table.items() if row[1] == proc.pid)]
        while todo:
            pid = todo.pop()
            if pid in table and (pid not in proc.tree or proc.tree[pid] == table[pid][3]):
                if pid not in proc.tree:
                    proc.tree[pid] = table[pid][3]
                todo += [c for c in children.get(pid, []) if c not in proc.tree]


def _alive(proc: Proc, table: dict[int, tuple[int, int, str, str]]) -> list[int]:
    """The processes of ``proc``'s tree that still run (same pid and start time; zombies do not count)."""
    proc.alive()  # reaps the leader if it exited
    return [pid for pid, started in proc.tree.items()
            if pid in table and table[pid][3] == started and not table[pid][2].startswith("Z")]


def stop_process(proc: Proc, *, grace: float = 10) -> None:
    """Stop ``proc`` and everything it started: SIGTERM, then SIGKILL after ``grace`` seconds."""
    stop_processes([proc], grace=grace)


def _signal_trees(procs: Sequence[Proc], sig: signal.Signals, *, then_continue: bool = False) -> list[int]:
    """Send ``sig`` once to every process of the trees of ``procs`` (their process groups' members
    included: ``track`` adds them); with ``then_continue``, SIGCONT after it (a frozen process
    handles SIGTERM only once let run). Returns the processes that were alive.

    Once, not also through ``killpg``: Flower's processes take a first SIGTERM as a request to shut
    down gracefully and reset their handlers, so a second one is the default, immediate death, and
    a SuperNode that gets two never signs off at the SuperLink (which then counts it online, and
    refuses it back, until its heartbeat expires a minute later)."""
    table = _ps()
    track(procs, table)
    alive = [pid for proc in procs for pid in _alive(proc, table)]
    for pid in dict.fromkeys(alive):
        try:
            os.kill(pid, sig)
            if then_continue:
                os.kill(pid, signal.SIGCONT)
        except (ProcessLookupError, PermissionError):
            pass
    return alive


def kill_process(proc: Proc) -> None:
    """Lose ``proc`` as a machine failure would: SIGKILL to it and everything it started, with no
    chance to sign off (a SuperNode killed so stays "online" at the SuperLink until its heartbeat
    expires)."""
    _signal_trees([proc], signal.SIGKILL)
    proc.popen.wait(timeout=10)


def pause_process(proc: Proc) -> None:
    """Freeze ``proc`` and everything it started (SIGSTOP), as a machine that stalls would be. A
    SuperNode frozen for less than its heartbeat patience (2 x 30 s in Flower 1.42) stays online
    at the SuperLink and goes on where it was after ``resume_process``."""
    _signal_trees([proc], signal.SIGSTOP)


def resume_process(proc: Proc) -> None:
    """Let a process tree frozen by ``pause_process`` run again (SIGCONT)."""
    _signal_trees([proc], signal.SIGCONT)


def stop_processes(procs: Sequence[Proc], *, grace: float = 10) -> None:
    """Stop several process trees at once: SIGTERM once to every process of theirs, wait up to
    ``grace`` seconds, then SIGKILL to whatever is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        left = _signal_trees(procs, sig, then_continue=sig == signal.SIGTERM)
        if not left:
            break
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            table = _ps()
            track(procs, table)
            left = [pid for proc in procs for pid in _alive(proc, table)]
    for proc in procs:
        try:
            proc.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def stop_all(dep: Deployment, *, grace: float = 10) -> None:
    """Stop every process the deployment started: the run and the SuperNodes (they sign off at the
    SuperLink), then the SuperLink; then remove the hosts' namespaces, if it made them."""
    try:
        stop_processes([p for p in dep.procs if p.name != "superlink"], grace=grace)
        stop_processes([p for p in dep.procs if p.name == "superlink"], grace=grace)
    finally:
        if dep.net is not None:
            dep.net.destroy()


def leftover_pids(dep: Deployment) -> list[int]:
    """Processes started by the deployment (directly or not) that still run; [] after ``stop_all``."""
    table = _ps()
    return sorted({pid for proc in dep.procs for pid in _alive(proc, table)})


def leftover_namespaces(dep: Deployment) -> list[str]:
    """The deployment's network namespaces that still exist; [] after ``stop_all``."""
    return netns.existing(dep.net.tag) if dep.net is not None else []


# ---- the launcher -----------------------------------------------------------------------------


def check_overrides(overrides: str, clients: int):
    """Compose the config as the apps will and check ``num_clients``; returns the ``RunSettings``."""
    from hydra import compose, initialize_config_dir

    from fedvtc.config import build_settings
    from fedvtc.flwr_config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=shlex.split(overrides))
    settings = build_settings(cfg, output_dir="results")
    if settings.num_clients != clients:
        raise DeploymentError(
            f"--clients {clients} but the config has num_clients={settings.num_clients}: "
            f"add 'num_clients={clients}' to --overrides"
        )
    return settings


def deploy(
    workdir: str | os.PathLike,
    *,
    clients: int,
    overrides: str,
    tls: bool = False,
    auth: bool = False,
    data_dir: str | None = None,
    timeout: float = 1800,
    hosts: str = "loopback",
) -> Path:
    """Run the whole deployment; returns the path of ``results.json``. Always stops what it started."""
    settings = check_overrides(overrides, clients)
    # One data root for the ServerApp and every ClientApp, whatever their working directories.
    data = str(Path(data_dir).expanduser().resolve()) if data_dir else settings.data_dir
    overrides = f"{overrides} {shlex.quote(f'data_dir={data}')}"
    dep = prepare(workdir, tls=tls, auth=auth, clients=clients, hosts=hosts)
    try:
        if dep.net is not None:
            print(f"hosts: {', '.join(f'{h} {a} ({n})' for h, (n, a) in dep.net.hosts.items())}", flush=True)
        start_superlink(dep)
        print(f"SuperLink on {dep.superlink_address} ({'TLS' if tls else 'insecure'}"
              f"{', SuperNode authentication' if auth else ''}); logs in {dep.logs}", flush=True)
        if auth:
            for index in range(clients):
                node_id = register_node(dep, Path(f"{dep.node_key(index)}.pub"))
                print(f"registered SuperNode {index}: node id {node_id}", flush=True)
        for index in range(clients):
            start_supernode(dep, index, clients, data_dir=data)
        run = start_run(dep, overrides)
        print(f"flwr run started; following {run.log}", flush=True)
        status = wait_run(dep, run, timeout=timeout)
        results = dep.results / "results.json"
        if status != "finished:completed" or not results.exists():
            raise DeploymentError(f"the run ended with status '{status}'; see {run.log} and the other logs in {dep.logs}")
        final = json.loads(results.read_text()).get("final") or {}
        evaluated = len(final.get("clients", []))
        print(f"run completed; results in {dep.results}", flush=True)
        if evaluated != clients:
            raise DeploymentError(
                f"only {evaluated} of {clients} clients were evaluated in the last round; "
                f"the failures are in {run.log} and the SuperNode logs in {dep.logs}"
            )
        return results
    finally:
        stop_all(dep)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedvtc.deploy", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, required=True, help="number of SuperNodes (= num_clients)")
    parser.add_argument("--overrides", default="", help="Hydra overrides for the run, e.g. 'experiment=debug num_clients=2'")
    parser.add_argument("--workdir", required=True, help="directory for FLWR_HOME, certificates, keys, state, logs, results")
    parser.add_argument("--tls", action="store_true", help="TLS between SuperNodes/CLI and the SuperLink")
    parser.add_argument("--auth", action="store_true", help="SuperNode authentication (needs --tls)")
    parser.add_argument("--data-dir", default=None, help="data root for the SuperNodes (default: $FEDVTC_DATA_DIR or ./data)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds the run may take (default 1800)")
    parser.add_argument("--hosts", choices=HOSTS, default="loopback",
                        help="loopback: every process on 127.0.0.1; netns: the SuperLink, each SuperNode and "
                             "the operator in a network namespace of its own, on a virtual network (needs root)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        deploy(args.workdir, clients=args.clients, overrides=args.overrides, tls=args.tls, auth=args.auth,
               data_dir=args.data_dir, timeout=args.timeout, hosts=args.hosts)
    except KeyboardInterrupt:
        print("interrupted; every started process was stopped", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the launcher reports any failure and exits non-zero
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
