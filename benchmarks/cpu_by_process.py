"""Where a command's CPU time goes, by kind of process: e.g. the test suite's.

    python benchmarks/cpu_by_process.py --out benchmarks/results/suite_cpu -- make test
    python benchmarks/cpu_by_process.py -- python -m fedvtc.deploy --clients 2 --overrides "..." --workdir /tmp/fl

Runs the command and, every ``--interval`` seconds until it ends, reads the CPU time (user +
system, from /proc) of every process the command started, directly or not (Ray's and Flower's
daemons included: a process counts when its parent did when it was first seen). A process is put
in a kind by its command line when it is first seen (a Flower ClientApp, a SuperNode, a Ray worker,
a pytest-xdist worker, ...; the ``KINDS`` table). Processes that live less than an interval may be
missed; the ClientApp processes of a deployment (seconds each) are not. Also reported: the wall
time, how busy the machine's cores were (from /proc/stat), which tells whether the command is short
of CPU or waiting, and the CPU time of everything else on the machine meanwhile, which should be
near zero for a figure. Linux only.

Writes ``<out>.md`` and ``<out>.json`` when ``--out`` is given; prints the table either way.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from fedvtc.apps import host_info

TICK = os.sysconf("SC_CLK_TCK")

# (text in the command line, kind): the first that matches names a process's kind.
KINDS = (
    ("flwr-clientapp", "Flower ClientApp (one per message)"),
    ("flwr-serverapp", "Flower ServerApp"),
    ("flower-superlink", "Flower SuperLink"),
    ("flower-supernode", "Flower SuperNode"),
    ("flower-superexec", "Flower SuperExec"),
    ("bin/flwr run", "flwr run"),
    ("bin/flwr ", "flwr CLI (register, list, ...)"),
    ("fedvtc.deploy", "deployment launcher"),
    ("run_simulation.py", "run_simulation.py runs"),
    ("ray::", "Ray workers (client actors)"),
    ("default_worker.py", "Ray workers (client actors)"),
    ("raylet", "Ray raylet"),
    ("gcs_server", "Ray GCS"),
    ("dashboard", "Ray dashboard and agents"),
    ("runtime_env", "Ray dashboard and agents"),
    ("log_monitor", "Ray log monitor"),
    ("monitor.py", "Ray autoscaler monitor"),
    ("sys.stdin.readline", "pytest-xdist workers (in-process tests)"),  # execnet starts them so
    ("pytest", "pytest"),
    ("pip", "pip"),
)


def kind_of(cmdline: str) -> str:
    for text, kind in KINDS:
        if text in cmdline:
            return kind
    return "other"


def snapshot() -> dict[tuple[str, str], tuple[float, str, str]]:
    """(pid, start time) -> (CPU seconds so far, parent pid, command line) of every process."""
    seen = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as handle:
                stat = handle.read()
            fields = stat[stat.rfind(")") + 2:].split()
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # ended meanwhile
        seen[(pid, fields[19])] = ((int(fields[11]) + int(fields[12])) / TICK, fields[1], cmdline)
    return seen


def busy_and_total() -> tuple[int, int]:
    """Busy and total jiffies of all cores since boot."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def measure(command: list[str], interval: float) -> dict:
    before = snapshot()
    busy0, total0 = busy_and_total()
    start = time.monotonic()
    proc = subprocess.Popen(command)
    ours = {str(proc.pid)}  # pids of the command's process tree
    first, last, cmdlines = {}, {}, {}
    while True:
        done = proc.poll() is not None
        now = snapshot()
        for key, (cpu, parent, cmdline) in sorted(now.items(), key=lambda item: int(item[0][1])):  # parents first
            if key not in cmdlines:
                cmdlines[key] = cmdline if (key[0] in ours or parent in ours) else None
                if cmdlines[key] is not None:
                    ours.add(key[0])
                first[key] = before[key][0] if key in before else 0.0  # older ones count from the start
            last[key] = cpu
        if done:
            break
        time.sleep(interval)
    wall = time.monotonic() - start
    busy1, total1 = busy_and_total()
    kinds: dict[str, dict[str, float]] = {}
    elsewhere = 0.0
    for key, cmdline in cmdlines.items():
        used = last[key] - first[key]
        if cmdline is None:
            elsewhere += used if key[0] != str(os.getpid()) else 0.0
            continue
        entry = kinds.setdefault(kind_of(cmdline), {"cpu_s": 0.0, "processes": 0})
        entry["cpu_s"] += used
        entry["processes"] += 1
    return {
        "command": command,
        "returncode": proc.returncode,
        "wall_s": wall,
        "cores": os.cpu_count(),
        "cores_busy_fraction": (busy1 - busy0) / max(total1 - total0, 1),
        "cpu_s": sum(k["cpu_s"] for k in kinds.values()),
        "cpu_s_elsewhere": elsewhere,
        "kinds": dict(sorted(kinds.items(), key=lambda item: -item[1]["cpu_s"])),
    }


def table(result: dict) -> str:
    total = result["cpu_s"]
    lines = [
        f"`{shlex.join(result['command'])}`: exit code {result['returncode']}, {result['wall_s']:.0f} s wall, "
        f"{total:.0f} CPU-s, cores {100 * result['cores_busy_fraction']:.0f} % busy ({result['cores']} cores), "
        f"{result['cpu_s_elsewhere']:.0f} CPU-s in other processes meanwhile",
        "",
        "| kind of process | processes | CPU s | share |",
        "|---|---|---|---|",
    ]
    lines += [f"| {kind} | {k['processes']} | {k['cpu_s']:.0f} | {100 * k['cpu_s'] / total:.0f} % |"
              for kind, k in result["kinds"].items() if k["cpu_s"] >= 0.5]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between readings (default 0.5)")
    parser.add_argument("--out", type=Path, help="write <out>.md and <out>.json")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --, e.g. -- make test")
    result = measure(command, args.interval)
    # The checkout the command ran in (e.g. a clone of another commit), not necessarily this script's.
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result.update(commit=commit, host=host_info())
    text = table(result)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(f"Commit {commit}, {result['host']}.\n\n{text}\n")
    return result["returncode"]


if __name__ == "__main__":
    sys.exit(main())
