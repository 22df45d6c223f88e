"""Collect the results.json files under one or more directories into a comparison table.

    python benchmarks/compare.py multirun/2026-11-25/12-00-00 [more dirs] [--out table]

Rows are grouped by (algorithm + options that differ, dataset, partition); each row gives mean ± std
over seeds of the final-round and best-round mean global-test accuracy (labelled), the final local
test accuracy, bytes up/down per client per round and in total, and seconds per round. Writes
``<out>.md`` and ``<out>.csv`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any


def _label(run_dir: Path, results: dict[str, Any]) -> str:
    """Algorithm name, plus the experiment preset when the run used one."""
    label = results["meta"]["algorithm"]
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.exists():
        for line in overrides.read_text().splitlines():
            line = line.strip("- '\"")
            if line.startswith("experiment="):
                return line.split("=", 1)[1]
    return label


def _fmt(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def collect(dirs: list[Path]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for root in dirs:
        for path in sorted(root.rglob("results.json")):
            results = json.loads(path.read_text())
            if not results.get("final"):
                continue  # an unfinished run
            meta = results["meta"]
            key = (_label(path.parent, results), meta["dataset"], meta["partition_label"])
            groups[key].append(results)
    rows = []
    for (method, dataset, partition), runs in sorted(groups.items()):
        finals = [r["final"] for r in runs]
        rounds = [len(r["rounds"]) for r in runs]
        clients = [r["meta"]["num_clients"] for r in runs]
        per_client_round = lambda total: [  # noqa: E731
            f[total] / (n * k) for f, n, k in zip(finals, clients, rounds)
        ]
        rows.append({
            "method": method,
            "dataset": dataset,
            "partition": partition,
            "seeds": len(runs),
            "final global acc (%)": _fmt([f["global_accuracy"] for f in finals], 100),
            "best-round global acc (%)": _fmt([f["best_round"]["global_accuracy"] for f in finals], 100),
            "final local acc (%)": _fmt([f["local_accuracy"] for f in finals], 100),
            "up KB/client/round": _fmt(per_client_round("total_bytes_up"), 1 / 1024),
            "down KB/client/round": _fmt(per_client_round("total_bytes_down"), 1 / 1024),
            "total MB": _fmt([(f["total_bytes_up"] + f["total_bytes_down"]) for f in finals], 1 / 2**20, 2),
            "s/round": _fmt([f["total_seconds"] / k for f, k in zip(finals, rounds)]),
        })
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no finished runs found)"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="directories searched for results.json")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.md and <out>.csv")
    args = parser.parse_args()
    rows = collect(args.dirs)
    markdown = to_markdown(rows)
    print(markdown)
    if args.out is not None and rows:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(markdown + "\n")
        with args.out.with_suffix(".csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
