"""Readings side by side on the validation split, with per-seed paired differences.

    python benchmarks/paired_readings.py multirun/readings_synthesis_classes/mnist_a0.1 \
        --against "algorithm.synthesis.classes=all,algorithm=fedvtc" [--out benchmarks/results/x]

One row per reading (a run directory name without its ``seed=``), from each cell's last round:
validation accuracy over all classes, over the classes a client holds and over those it lacks
(mean over clients; mean ± std over seeds), the synthetic images of missing classes that the
reference classifier recognises, and the paired difference in validation accuracy, seed by seed,
against the reading ``--against`` and against training alone (``algorithm=local``) where the
directory holds it. Choices are made on these columns; the official test set is not read here.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

LOCAL = "algorithm=local"


def load(root: Path) -> dict[str, dict[int, dict]]:
    """reading -> seed -> results.json, for the finished cells under ``root``."""
    readings: dict[str, dict[int, dict]] = {}
    for path in sorted(root.glob("*/results.json")):
        results = json.loads(path.read_text())
        if not results.get("final"):
            continue
        parts = path.parent.name.split(",")
        name = ",".join(p for p in parts if not p.startswith("seed=")) or path.parent.name
        readings.setdefault(name, {})[int(results["meta"]["seed"])] = results
    return readings


def _last(results: dict, key: str) -> float | None:
    values = [r[key] for r in results["rounds"] if r.get(key) is not None]
    return values[-1] if values else None


def _fmt(values: list[float | None]) -> str:
    values = [100 * v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def _paired(runs: dict[int, dict], others: dict[int, dict] | None) -> str:
    if not others:
        return "–"
    deltas = {s: 100 * (runs[s]["final"]["validation_accuracy"] - others[s]["final"]["validation_accuracy"])
              for s in sorted(runs) if s in others}
    if not deltas:
        return "–"
    seeds = ", ".join(f"{d:+.1f}" for d in deltas.values())
    if len(deltas) == 1:
        return seeds
    return f"{statistics.fmean(deltas.values()):+.1f} ± {statistics.stdev(deltas.values()):.1f} ({seeds})"


def table(readings: dict[str, dict[int, dict]], against: str | None) -> str:
    rows = [
        "| reading | seeds | validation acc (%) | held classes (%) | missing classes (%) "
        "| missing-class images recognised (%) | Δ vs " + (against or "–") + " (pp, per seed) "
        "| Δ vs training alone (pp, per seed) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in sorted(readings.items()):
        finals = [r["final"] for r in runs.values()]
        rows.append(
            f"| {name} | {','.join(map(str, sorted(runs)))} "
            f"| {_fmt([f.get('validation_accuracy') for f in finals])} "
            f"| {_fmt([f.get('validation_accuracy_held') for f in finals])} "
            f"| {_fmt([f.get('validation_accuracy_missing') for f in finals])} "
            f"| {_fmt([_last(r, 'synthetic_accuracy_missing') for r in runs.values()])} "
            f"| {_paired(runs, readings.get(against)) if against and name != against else '–'} "
            f"| {_paired(runs, readings.get(LOCAL)) if name != LOCAL else '–'} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path, help="sweep directories, one table each")
    parser.add_argument("--against", help="the reading to pair every other one with (its directory name, no seed)")
    parser.add_argument("--out", type=Path, help="also write the tables to <out>.md")
    args = parser.parse_args()
    parts = []
    for root in args.roots:
        readings = load(root)
        if not readings:
            raise SystemExit(f"error: no finished cell (results.json with a final entry) under {root}")
        parts.append(f"**{root}**\n\n{table(readings, args.against)}\n")
    text = "\n".join(parts)
    print(text)
    if args.out:
        args.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
