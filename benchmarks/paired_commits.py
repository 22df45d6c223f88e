"""The same cells run by two commits, side by side: validation accuracy paired by seed, and time.

    python benchmarks/paired_commits.py BEFORE AFTER [--out benchmarks/results/x]

For a change that should not change what a method learns (a memory layout, a cache), but changes
float rounding: run the same sweep from a worktree of each commit, e.g.

    git worktree add --detach /tmp/before <commit>
    cd /tmp/before && PYTHONPATH=$PWD /path/to/.venv/bin/python run_simulation.py -m \\
        experiment=readings tuning=cpu algorithm=fedproto seed=0,1,2 hydra.sweep.dir=/tmp/ab/before/fedproto

and the same from the other commit into ``AFTER``, alternating method by method. Run from inside the
worktree: Ray's workers put the driver's working directory first on ``sys.path``, so a run started
from another checkout with only ``PYTHONPATH`` set trains its clients with that checkout's code.

``BEFORE`` and ``AFTER`` hold the cells (``*/results.json``, searched recursively); cells are matched
by their reading (the directory name without ``seed=``) and their seed. Per method (``algorithm=``): validation
accuracy after the last round (mean ± std over seeds), the paired difference seed by seed, and the
mean seconds of a round from round 2 on (round 1 holds Ray's start). Prints the table; ``--out``
also writes ``<out>.md`` and ``<out>.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from paired_readings import load  # finished cells by reading and seed


def readings(root: Path) -> dict[str, dict[int, dict]]:
    """reading -> seed -> results.json of the finished cells anywhere under ``root``
    (``paired_readings.load`` of every directory that holds cells)."""
    found: dict[str, dict[int, dict]] = {}
    for sweep in sorted({path.parent.parent for path in root.rglob("results.json")}):
        for reading, runs in load(sweep).items():
            found.setdefault(reading, {}).update(runs)
    return found


def _mean_std(values: list[float], sign: str = "") -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{sign}.1f} ± {spread:.1f}"


def _override(name: str, key: str, default: str) -> str:
    """The value of ``key`` in a cell's directory name (``a=1,b=2``), or ``default``."""
    found = re.search(rf"(?:^|,){re.escape(key)}=([^,]+)", name)
    return found.group(1) if found else default


def compare(before: dict[str, dict[int, dict]], after: dict[str, dict[int, dict]]) -> list[dict]:
    rows: dict[str, dict] = {}
    for reading in sorted(before.keys() & after.keys()):
        method = _override(reading, "algorithm", "(default)")
        for seed in sorted(before[reading].keys() & after[reading].keys()):
            row = rows.setdefault(method, {"method": method, "seeds": [], "before": [], "after": [],
                                           "seconds_before": [], "seconds_after": []})
            row["seeds"].append(seed)
            for side, results in (("before", before[reading][seed]), ("after", after[reading][seed])):
                rounds = results["rounds"]
                row[side].append(100 * rounds[-1]["validation_accuracy"])
                row[f"seconds_{side}"].append(statistics.mean(r["seconds"] for r in rounds[1:] or rounds))
    for row in rows.values():
        row["difference"] = [a - b for a, b in zip(row["after"], row["before"])]
        row["round_seconds_before"] = statistics.mean(row.pop("seconds_before"))
        row["round_seconds_after"] = statistics.mean(row.pop("seconds_after"))
    return list(rows.values())


def table(rows: list[dict]) -> str:
    lines = ["| method | seeds | before: validation accuracy (%) | after | after − before, seed by seed (points) "
             "| mean ± std | s/round before | after | after / before |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {','.join(map(str, r['seeds']))} | {_mean_std(r['before'])} | {_mean_std(r['after'])} "
            f"| {', '.join(f'{d:+.1f}' for d in r['difference'])} | {_mean_std(r['difference'], '+')} "
            f"| {r['round_seconds_before']:.2f} | {r['round_seconds_after']:.2f} "
            f"| {r['round_seconds_after'] / r['round_seconds_before']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--out", type=Path, help="write <out>.md and <out>.json")
    args = parser.parse_args()
    before, after = readings(args.before), readings(args.after)
    rows = compare(before, after)
    if not rows:
        raise SystemExit(f"error: no finished cell of the same name under both {args.before} and {args.after}")
    text = table(rows)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(f"`{args.before}` against `{args.after}`:\n\n{text}\n")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
