"""How long a FedVTC round takes, where the time goes, and what Flower adds.

    python benchmarks/bench_round.py                        # MNIST and CIFAR-10, the full grid
    python benchmarks/bench_round.py --quick                # a few minutes: fewer cells

For each dataset, with the CPU zoo:
(a) Flower overhead: the same rounds run through the Flower simulation (Ray, clients in parallel)
    and through a plain in-process loop (``fedvtc.inprocess``: same client and strategy code, no
    Flower runtime, one client at a time). Reported per steady-state round (round >= 2): wall
    seconds, total client compute (fit + evaluate, summed over clients), and the overhead ratio
    wall / (client compute / cores used), whose target is <= 1.15.
(b) Scaling with the number of clients (total data fixed, so each client has less) and with the
    feature size p.
(c) Memory and bytes, FedVTC against FedProto with the same models and data (in-process, one
    client's work at a time, each algorithm in a fresh process): peak resident memory of a client's round (process peak during the
    round's phases) and what the round added above the RSS it started from (the dataset and the
    runtime are already resident), per phase; and the bytes each client uploads per round on the
    wire against the analytic size of its arrays (floats x 4), whose target is within 5 %.
Writes ``<out>.md``, ``<out>.csv``, ``<out>_memory.{md,csv}`` and ``<out>.png`` and prints the tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir

from fedvtc.apps import set_quiet_env
from fedvtc.config import build_settings
from fedvtc.federated_data import federated_split
from fedvtc.inprocess import run_in_process
from fedvtc.runner import simulate

CONF = Path(__file__).resolve().parents[1] / "conf"


def settings_for(overrides: list[str], out: Path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    settings = build_settings(cfg, output_dir=out)
    federated_split(settings)
    return settings


def steady_rounds(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    later = [r for r in rounds if r["round"] >= 2]
    return later or rounds


def measure(settings, *, flower: bool) -> dict[str, float]:
    """Run the rounds; return mean steady-state wall seconds per round and client compute per round."""
    start = time.perf_counter()
    if flower:
        simulate(settings)
        rounds = json.loads((Path(settings.output_dir) / "results.json").read_text())["rounds"]
    else:
        rounds = run_in_process(settings)
    total = time.perf_counter() - start
    steady = steady_rounds(rounds)
    wall = sum(r["seconds"] for r in steady) / len(steady)
    compute = sum(r["client_seconds_total"] + (r.get("client_eval_seconds_total") or 0.0) for r in steady) / len(steady)
    return {"wall_s_per_round": wall, "client_compute_s_per_round": compute, "total_s": total,
            "round1_s": rounds[0]["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "cifar10"])
    parser.add_argument("--clients", nargs="+", type=int, default=[10, 20, 50, 100])
    parser.add_argument("--feature-dims", nargs="+", type=int, default=[32, 64, 128])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-fraction", type=float, default=0.2)
    parser.add_argument("--quick", action="store_true", help="10 and 20 clients, p = 64 only, 2 rounds")
    parser.add_argument("--skip-scaling", action="store_true", help="only (c), memory and bytes")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every cell, e.g. algorithm.vtc.steps=20 "
                        "(algorithm.* ones apply to FedVTC only)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_round"))
    args = parser.parse_args()
    if args.quick:
        args.clients, args.feature_dims, args.rounds = [10, 20], [64], 2
    set_quiet_env()
    cores = os.cpu_count() or 1
    workdir = Path(tempfile.mkdtemp(prefix="bench_round_"))
    rows: list[dict[str, Any]] = []

    def cell(dataset: str, clients: int, p: int, flower: bool) -> dict[str, Any]:
        out = workdir / f"{dataset}_{clients}_{p}_{'flower' if flower else 'loop'}"
        overrides = [
            f"dataset={dataset}", f"num_clients={clients}", f"num_rounds={args.rounds}",
            f"train_fraction={args.train_fraction}", f"zoo.feature_dim={p}", "partition.min_size=5",
            *args.overrides,
        ]
        settings = settings_for(overrides, out)
        result = measure(settings, flower=flower)
        used = min(clients, int(cores / settings.simulation.num_cpus_per_client)) if flower else 1
        row = {
            "dataset": dataset, "clients": clients, "p": p, "runtime": "flower" if flower else "plain loop",
            "cores used": used, **{k: round(v, 2) for k, v in result.items()},
            "overhead ratio": round(result["wall_s_per_round"] / (result["client_compute_s_per_round"] / used), 3),
        }
        print(row, flush=True)
        return row

    # Each memory cell in a fresh process: in one process a later run reuses memory the allocator
    # kept from an earlier one and would look cheaper than it is.
    spawn = multiprocessing.get_context("spawn")
    memory_rows = []
    for dataset in args.datasets:
        for algorithm in ("fedvtc", "fedproto"):
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                memory_rows.append(pool.submit(memory_cell, dataset, algorithm, args.clients[0], workdir, args).result())
    write_table(memory_rows, args.out.with_name(args.out.name + "_memory"), cores)
    if not args.skip_scaling:
        for dataset in args.datasets:
            base = args.clients[0]
            rows.append(cell(dataset, base, 64, flower=False))
            for clients in args.clients:
                rows.append(cell(dataset, clients, 64, flower=True))
            for p in args.feature_dims:
                if p != 64:
                    rows.append(cell(dataset, base, p, flower=True))
        write(rows, args.out, cores)
    shutil.rmtree(workdir, ignore_errors=True)


def memory_cell(dataset: str, algorithm: str, clients: int, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory per phase and bytes per client of ``algorithm``, in-process, 2 rounds."""
    out = workdir / f"{dataset}_{algorithm}_memory"
    overrides = [
        f"dataset={dataset}", f"algorithm={algorithm}", f"num_clients={clients}", "num_rounds=2",
        f"train_fraction={args.train_fraction}", "partition.min_size=5", "eval.reference_model=null",
        # FedVTC's own options (algorithm.vtc.steps=...) do not exist in FedProto's config.
        *(o for o in args.overrides if algorithm == "fedvtc" or not o.startswith("algorithm.")),
    ]
    rounds = run_in_process(settings_for(overrides, out))
    last = rounds[-1]  # round 2: FedVTC's full round (VTC, synthesis, fine-tuning)
    fits = last["client_fit"]
    row = {
        "dataset": dataset, "algorithm": algorithm,
        "peak RSS MB (max client)": max(f["peak_rss_mb"] for f in fits),
        "work RSS MB (max client)": max(f.get("work_rss_mb", 0.0) for f in fits),
        "added by phase MB": " ".join(f"{k}={v:.0f}" for k, v in last["phase_added_rss_mb"].items()),
        "up B/client (wire)": round(last["bytes_up_per_client"]),
        "up B/client (analytic)": round(last["array_bytes_up"] / max(last["accepted"], 1)),
    }
    row["wire / analytic"] = round(row["up B/client (wire)"] / max(row["up B/client (analytic)"], 1), 3)
    print(row, flush=True)
    return row


def write_table(rows: list[dict[str, Any]], out: Path, cores: int) -> None:
    """Markdown + CSV of ``rows`` (with the machine on top), printed too."""
    out.parent.mkdir(parents=True, exist_ok=True)
    header = list(rows[0])
    lines = [
        f"Machine: {platform.machine()}, {cores} cores, {platform.processor() or 'cpu'}.", "",
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    markdown = "\n".join(lines)
    print(markdown)
    out.with_suffix(".md").write_text(markdown + "\n")
    with out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def add_growth(rows: list[dict[str, Any]]) -> None:
    """Add "time / linear": wall time per round over the fewest-clients Flower run's, divided by
    the ratio of clients (p = 64). Above 1, round time grows faster than linearly in clients."""
    scaling = [r for r in rows if r["runtime"] == "flower" and r["p"] == 64]
    base: dict[str, dict[str, Any]] = {}  # per dataset, its fewest-clients run
    for r in sorted(scaling, key=lambda r: -r["clients"]):
        base[r["dataset"]] = r
    for row in rows:
        b = base.get(row["dataset"])
        row["time / linear"] = (
            round(row["wall_s_per_round"] / b["wall_s_per_round"] / (row["clients"] / b["clients"]), 3)
            if row in scaling and b is not None else ""
        )


def write(rows: list[dict[str, Any]], out: Path, cores: int) -> None:
    """The overhead and scaling table (steady-state rounds, round >= 2) and its plot."""
    add_growth(rows)
    write_table(rows, out, cores)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for dataset in sorted({r["dataset"] for r in rows}):
        pts = [(r["clients"], r["wall_s_per_round"]) for r in rows
               if r["dataset"] == dataset and r["runtime"] == "flower" and r["p"] == 64]
        if pts:
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, marker="o", label=dataset)
    ax.set_xlabel("clients")
    ax.set_ylabel("wall seconds per round (Flower simulation)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
