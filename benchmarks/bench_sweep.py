"""What a cell of a sweep costs beyond its rounds, and how a FedVTC round compares with a FedProto one.

    python benchmarks/bench_sweep.py                   # 4-cell multiruns, warm and cold; the round ratios
    python benchmarks/bench_sweep.py --cells 6 --rounds 4 --out benchmarks/results/bench_sweep

(a) Fixed cost per cell: the same multirun of ``--cells`` cells (``algorithm=local`` on the
    readings cell, seeds 0..N-1) through ``run_simulation.py -m`` as a user runs it, once with
    ``simulation.keep_runtime=true`` (one Ray runtime and actor pool for all cells) and once with
    ``false`` (Ray and actors started per cell). Reported apart: the start-up paid once per sweep
    (Python, imports, Hydra: from the process start to the first cell's start); per cell, its wall
    time (from the sweep's progress lines) outside its rounds plus round 1's excess over the later
    rounds, for the first cell (which starts Ray and the actors) and the later ones; and everything
    (the multirun's wall time outside the rounds, start-up and Ray's shutdown included) per cell.
    Target: <= 3 s per cell.
(b) Round times, side by side in one warm multirun on the same cell: FedProto, FedVTC with its
    defaults and with the VTC budgets of ``--budgets``; the FedVTC / FedProto round ratio (target
    <= 2) and the generator phases (VTC training + synthesis + fine-tuning) over local training
    (target <= 2), per client, steady-state rounds (>= 2).
Writes ``<out>.md`` and ``<out>.json`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# table_cpu's cell (its preset carries a grid of its own, so the cell is spelled out here).
CELL = ["dataset=mnist", "partition.alpha=0.1", "num_clients=10", "train_fraction=0.1", "train.local_epochs=2",
        "eval.global_subset=1000", "eval.reference_model=null", "output.synthetic_grid_clients=[]"]


def multirun(overrides: list[str], sweep_dir: Path) -> tuple[float, float, list[float]]:
    """Run ``run_simulation.py -m`` with ``overrides``. Returns its wall seconds, the seconds from
    the process start to the first cell's start (the once-per-sweep start-up: Python, imports,
    Hydra), and each cell's wall seconds as the sweep's progress lines report them."""
    start = time.time()
    proc = subprocess.run([sys.executable, str(REPO / "run_simulation.py"), "-m", *overrides,
                           f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${hydra.job.num}"],
                          cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    wall = time.time() - start
    if proc.returncode != 0:
        raise SystemExit(f"multirun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    log = proc.stdout + proc.stderr
    first = re.search(r"^\[([\d-]+ [\d:,]+)\]\[fedvtc\]\[INFO\] - sweep: cell 1/\d+ starting", log, re.M)
    if first is None:
        raise SystemExit("the multirun printed no progress line; is fedvtc.sweep.SweepProgress configured?")
    startup = datetime.strptime(first.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - start
    cells = [float(s) for s in re.findall(r"sweep: cell \d+/\d+ done in ([\d.]+) s", log)]
    return wall, startup, cells


def cell_rounds(run_dir: Path) -> list[dict[str, Any]]:
    return json.loads((run_dir / "results.json").read_text())["rounds"]


def fixed_costs(cells: int, rounds: int, keep: bool, root: Path) -> dict[str, Any]:
    """Once per sweep: the start-up before the first cell. Per cell: its wall time outside its
    rounds plus its round 1's excess over its later rounds; the first cell (which starts Ray and
    the actors) apart from the later ones (which, with keep_runtime, find them warm)."""
    sweep = root / f"local_keep_{keep}"
    wall, startup, walls = multirun([*CELL, "algorithm=local", f"num_rounds={rounds}",
                                     f"seed={','.join(map(str, range(cells)))}",
                                     f"simulation.keep_runtime={str(keep).lower()}"], sweep)
    per_cell = []
    for job, cell_wall in enumerate(walls):
        seconds = [r["seconds"] for r in cell_rounds(sweep / str(job))]
        later = statistics.fmean(seconds[1:]) if len(seconds) > 1 else seconds[0]
        excess = seconds[0] - later
        per_cell.append({"wall_s": cell_wall, "rounds_s": sum(seconds), "round1_excess_s": excess,
                         "fixed_s": cell_wall - sum(seconds) + excess})
    later_cells = per_cell[1:] or per_cell
    return {"keep_runtime": keep, "cells": cells, "rounds": rounds, "multirun_wall_s": wall,
            "startup_once_s": startup, "cells_detail": per_cell,
            "first_cell_fixed_s": per_cell[0]["fixed_s"],
            "later_cells_fixed_s": statistics.fmean(c["fixed_s"] for c in later_cells),
            "later_cells_outside_rounds_s": statistics.fmean(c["wall_s"] - c["rounds_s"] for c in later_cells),
            "later_cells_round1_excess_s": statistics.fmean(c["round1_excess_s"] for c in later_cells),
            "fixed_per_cell_amortized_s": (wall - sum(c["rounds_s"] for c in per_cell)
                                           + sum(c["round1_excess_s"] for c in per_cell)) / cells}


def round_ratios(rounds: int, budgets: list[str], root: Path) -> list[dict[str, Any]]:
    variants = [("fedproto", ["algorithm=fedproto"]), ("fedvtc", ["algorithm=fedvtc"])]
    variants += [(f"fedvtc vtc.epochs={b}", ["algorithm=fedvtc", f"algorithm.vtc.epochs={b}"]) for b in budgets]
    rows = []
    for name, overrides in variants:  # one multirun each, so the warm runtime serves the later ones too
        sweep = root / name.replace(" ", "_").replace("=", "")
        multirun([*CELL, *overrides, f"num_rounds={rounds}", "seed=0"], sweep)
        steady = [r for r in cell_rounds(sweep / "0") if r["round"] >= 2]
        phases = {k: statistics.fmean(r["phase_seconds"].get(k, 0.0) for r in steady)
                  for k in ("local_train", "vtc_train", "synthesis", "finetune", "statistics")}
        generator = phases["vtc_train"] + phases["synthesis"] + phases["finetune"]
        rows.append({"method": name, "round_s": statistics.fmean(r["seconds"] for r in steady), **phases,
                     "generator_over_local": generator / phases["local_train"] if generator else None})
    base = rows[0]["round_s"]
    for row in rows:
        row["round_over_fedproto"] = row["round_s"] / base
    return rows


def to_markdown(fixed: list[dict[str, Any]], ratios: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"Machine: {meta['machine']}; {meta['cpus']} CPUs; commit {meta['commit']}", "",
             "| keep_runtime | cells | start-up once (s) | first cell fixed (s) | later cells: outside rounds (s) "
             "| later cells: round-1 excess (s) | later cells fixed (s) | all included, per cell (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for f in fixed:
        lines.append(f"| {f['keep_runtime']} | {f['cells']} | {f['startup_once_s']:.1f} | {f['first_cell_fixed_s']:.1f} | "
                     f"{f['later_cells_outside_rounds_s']:.1f} | {f['later_cells_round1_excess_s']:.1f} | "
                     f"{f['later_cells_fixed_s']:.1f} | {f['fixed_per_cell_amortized_s']:.1f} |")
    lines += ["", "| method | s/round | × FedProto | local train | VTC train | synthesis | fine-tune | generator / local |",
              "|---|---|---|---|---|---|---|---|"]
    for r in ratios:
        g = f"{r['generator_over_local']:.1f}" if r["generator_over_local"] else "–"
        lines.append(f"| {r['method']} | {r['round_s']:.1f} | {r['round_over_fedproto']:.2f} | {r['local_train']:.2f} | "
                     f"{r['vtc_train']:.2f} | {r['synthesis']:.2f} | {r['finetune']:.2f} | {g} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budgets", default="1.0,0.5", help="vtc.epochs values to time beside the default")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_sweep")
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    sys.path.insert(0, str(REPO))
    from fedvtc.apps import host_info

    host = host_info()
    meta = {"machine": f"{host['cpu_model']} ({host['torch_cpu_capability']})", "cpus": os.cpu_count(), "commit": commit}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fixed = [fixed_costs(args.cells, args.rounds, keep, root) for keep in (False, True)]
        ratios = round_ratios(args.rounds, [b for b in args.budgets.split(",") if b], root)
    markdown = to_markdown(fixed, ratios, meta)
    print(markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(markdown + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "fixed": fixed, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
