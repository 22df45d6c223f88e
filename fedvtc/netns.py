"""A virtual network of Linux network namespaces, so that a deployment's hosts are hosts.

``python -m fedvtc.deploy --hosts netns`` runs the SuperLink, each SuperNode and the operator's
``flwr run`` each in a network namespace of its own, with its own address on a virtual Ethernet
made for the run: a bridge in a namespace of its own (the switch) and one veth pair per host,
``eth0`` in the host's namespace. Nothing is routed anywhere else: the addresses exist only inside
these namespaces, and each host reaches the others only through the switch. Every host also has its
own loopback, which Flower's processes on one host use among themselves (a SuperNode and its
ClientApp processes, the SuperLink and its ServerApp). ``destroy`` kills whatever runs in the
namespaces and deletes them, which deletes their links with them.

Needs the privilege to make namespaces (root, or CAP_SYS_ADMIN and CAP_NET_ADMIN) and ``ip`` from
iproute2; ``unavailable()`` says why not, where not.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass, field

IP = "ip"


class NetnsError(RuntimeError):
    """A namespace, link or address could not be made; the message says which and why."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetnsError(f"'ip {' '.join(args)}' failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can (tries one)."""
    if shutil.which(IP) is None:
        return "the 'ip' command (iproute2) is not installed"
    probe = f"fedvtc-probe-{uuid.uuid4().hex[:8]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"'ip netns add' is not permitted ({made.stderr.strip()}); it needs root or CAP_SYS_ADMIN"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass
class VirtualNetwork:
    """Hosts (name -> namespace and address) on one bridge; made by ``create``."""

    tag: str
    subnet: ipaddress.IPv4Network
    hosts: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (namespace, address)
    namespaces: list[str] = field(default_factory=list)  # every namespace made, the switch's included

    def address(self, host: str) -> str:
        return self.hosts[host][1]

    def namespace(self, host: str) -> str:
        return self.hosts[host][0]

    def prefix(self, host: str) -> list[str]:
        """What runs a command on ``host``: ``ip netns exec <namespace>`` (which execs the command,
        so the process started is the command itself)."""
        return [IP, "netns", "exec", self.namespace(host)]

    def destroy(self) -> None:
        """Kill every process left in the namespaces, then delete them (and so their links)."""
        for namespace in self.namespaces:
            pids = _ip("netns", "pids", namespace, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError, PermissionError):
                    pass
        for namespace in reversed(self.namespaces):
            _ip("netns", "del", namespace, check=False)
        self.namespaces.clear()


def existing(tag: str) -> list[str]:
    """The namespaces of this machine whose names start with ``tag`` (to check that none is left)."""
    listed = _ip("netns", "list", check=False).stdout.splitlines()
    return [line.split()[0] for line in listed if line.split() and line.split()[0].startswith(tag)]


# Every virtual network is isolated from the machine's and from every other one, so all can use the
# same addresses.
SUBNET = ipaddress.ip_network("10.213.0.0/24")


def create(host_names: list[str], *, tag: str | None = None) -> VirtualNetwork:
    """A namespace per host on one bridge, addresses 10.213.0.1, .2, ... in order; undone on failure.

    ``tag`` prefixes every namespace name (default ``fedvtc-<random>``).
    """
    tag = tag or f"fedvtc-{uuid.uuid4().hex[:6]}"
    subnet = SUBNET
    net = VirtualNetwork(tag=tag, subnet=subnet)
    try:
        switch = f"{tag}-switch"
        _ip("netns", "add", switch)
        net.namespaces.append(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        addresses = subnet.hosts()
        for index, name in enumerate(host_names):
            namespace = f"{tag}-{name}"
            address = str(next(addresses))
            _ip("netns", "add", namespace)
            net.namespaces.append(namespace)
            port = f"p{index}"
            # Both ends are made in the switch's namespace, then one moves to the host as eth0.
            _ip("-n", switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _ip("-n", switch, "link", "set", port, "master", "br0")
            _ip("-n", switch, "link", "set", port, "up")
            _ip("-n", namespace, "addr", "add", f"{address}/{subnet.prefixlen}", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            net.hosts[name] = (namespace, address)
    except BaseException:
        net.destroy()
        raise
    return net
