"""A deployment across hosts (slow): ``python -m fedvtc.deploy --hosts netns`` puts the SuperLink,
each SuperNode and the operator's ``flwr run`` in a Linux network namespace of its own, each with
its own address on a virtual network the launcher makes (a bridge and veth pairs, addresses only
inside those namespaces), with TLS for the SuperLink's address there and registered SuperNode keys.
The run gives the simulation's metrics; every namespace, link and process is removed on success,
on failure and on interruption. Skipped, with the reason, where namespaces cannot be made.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from deployment_helpers import (OVERRIDES, RUN_TIMEOUT, deploy_beside, interrupt_launcher, leftover_of, results_of, round_metrics,
                                start_launcher, wait_launcher)
from fedvtc import deploy as D
from fedvtc import netns
from helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(netns.unavailable()), reason=f"{netns.unavailable()}")]


def _launch(flower_env: dict[str, str], workdir: Path, *extra: str) -> D.Proc:
    return start_launcher(flower_env, workdir, "--tls", "--auth", "--hosts", "netns", *extra)


def _namespaces_of(log: Path) -> list[str]:
    """The namespaces the launcher said it made (its 'hosts:' line)."""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("hosts:"):
            return [part.split("(")[1].rstrip("),") for part in line.split(", ") if "(" in part]
    return []


def _left(names: list[str]) -> list[str]:
    """What is left of the run's namespaces (the switch's included: all share the tag)."""
    tag = names[0].rsplit("-", 1)[0]
    return netns.existing(tag + "-")


@pytest.fixture(scope="module")
def netns_run(flower_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
              request: pytest.FixtureRequest) -> SimpleNamespace:
    workdir = tmp_path_factory.mktemp("deploy_netns")

    def deploy() -> SimpleNamespace:
        launcher = _launch(flower_env, workdir, "--timeout", str(RUN_TIMEOUT))
        wait_launcher(launcher, RUN_TIMEOUT + 120)
        names = _namespaces_of(launcher.log)
        return SimpleNamespace(workdir=workdir, rc=launcher.popen.returncode,
                               output=launcher.log.read_text(errors="replace"), namespaces=names,
                               left=leftover_of(launcher), namespaces_left=_left(names) if names else None)

    # Meanwhile, the simulation it must reproduce.
    run, simulated = deploy_beside(deploy, lambda: request.getfixturevalue("simulated"))
    run.simulated = simulated
    return run


def test_a_deployment_across_namespaces_gives_the_simulations_metrics(netns_run) -> None:
    assert netns_run.rc == 0, netns_run.output[-3000:]
    logs = netns_run.workdir / "logs"
    # Each process ran in its own namespace, the SuperLink on its own address, certified for it.
    assert [n.rsplit("-", 1)[1] for n in netns_run.namespaces] == ["link", "node0", "node1", "operator"]
    superlink = (logs / "superlink.log").read_text().splitlines()[0]
    assert "ip netns exec" in superlink and "-link flower-superlink --host 10.213.0.1" in superlink
    for name, host in (("supernode0", "node0"), ("supernode1", "node1"), ("flwr-run", "operator")):
        assert f"-{host} " in (logs / f"{name}.log").read_text().splitlines()[0], name
    assert "--superlink 10.213.0.1:" in (logs / "supernode0.log").read_text().splitlines()[0]
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((netns_run.workdir / "certs" / "server.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "10.213.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    deployed = results_of(netns_run.workdir / "results")
    assert round_metrics(deployed) == round_metrics(netns_run.simulated)
    assert deployed["final"]["clients"] == netns_run.simulated["final"]["clients"]
    assert netns_run.left == [] and netns_run.namespaces_left == []


def test_a_failed_or_interrupted_netns_deployment_leaves_nothing(flower_env: dict[str, str], tmp_path: Path) -> None:
    # Failure: the run cannot finish in 5 s.
    launcher = _launch(flower_env, tmp_path / "failed", "--timeout", "5")
    wait_launcher(launcher, 180)
    log = launcher.log.read_text()
    assert launcher.popen.returncode == 1 and "did not finish within 5 s" in log, log[-2000:]
    names = _namespaces_of(launcher.log)
    assert names and _left(names) == []
    assert leftover_of(launcher) == []
    # Interruption: SIGTERM once the run has started.
    launcher = _launch(flower_env, tmp_path / "interrupted")
    rc = interrupt_launcher(launcher)
    names = _namespaces_of(launcher.log)
    assert rc == 130 and "interrupted" in launcher.log.read_text()
    assert names and _left(names) == []
    assert leftover_of(launcher) == []


def test_the_launcher_says_why_when_namespaces_cannot_be_made(flower_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(flower_env, PATH=str(Path(sys.executable).parent))  # no 'ip' on this PATH
    proc = subprocess.run([sys.executable, "-m", "fedvtc.deploy", "--clients", "2", "--overrides", OVERRIDES,
                           "--hosts", "netns", "--workdir", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "network namespaces cannot be made here: the 'ip' command (iproute2) is not installed" in proc.stderr
