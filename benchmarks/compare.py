"""Collect the results.json files under one or more directories into a comparison table and plots.

    python benchmarks/compare.py multirun/table_cpu_<time> [more dirs] [--out table] [--plots]

Rows are grouped by (method, dataset, partition), where the method is the algorithm's label
(``fedvtc``, ``fedproto``, an ablation such as ``fedvtc_no_dm``; a DP run adds its ε). Each row gives
mean ± std over seeds of: the final-round and the best-round mean global-test accuracy (labelled as
such; "best round" picks the round with the highest mean over clients, an optimistic figure), the
final local-test accuracy, bytes up and down per client per round and in total, peak resident memory
of a client's round (process peak, and what the round's work added above the dataset and runtime),
seconds per round, and for FedVTC runs the share of synthetic images a reference classifier labels
with their intended class (overall / for classes the client lacks).

Writes ``<out>.md`` and ``<out>.csv``; with ``--plots`` also ``<out>_accuracy.png`` (mean global-test
accuracy per round per method, one panel per dataset and partition) and ``<out>_bytes.png`` (final
accuracy against total bytes exchanged). Prints the markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

Key = tuple[str, str, str]  # (method, dataset, partition)


def method_label(results: dict[str, Any]) -> str:
    """The algorithm's label (an ablation's own name), plus the DP budget of a private run."""
    meta = results["meta"]
    label = meta.get("label") or meta["algorithm"]
    dp = meta.get("dp") or {}
    if dp.get("enabled"):
        eps = (results.get("final") or {}).get("dp_epsilon")
        label += f" (DP, ε={eps:.1f})" if eps is not None else " (DP)"
    return label


def cell_label(path: Path) -> str:
    """A run's directory name without its seed: the overrides that name a cell of
    ``experiment=readings`` (``algorithm.shared_vtc=True,algorithm=fedvtc``), seeds pooled."""
    parts = [p for p in path.parent.name.split(",") if not p.startswith("seed=")]
    return ",".join(parts) or "defaults"


def load_runs(dirs: list[Path], *, by_overrides: bool = False) -> dict[Key, list[dict[str, Any]]]:
    """Every finished run (``final`` present) under ``dirs``, grouped by (method, dataset, partition).

    ``by_overrides``: the method is the run directory's name (its overrides, seed left out) instead
    of the algorithm's label, so readings of one algorithm get a row each.
    """
    groups: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for root in dirs:
        for path in sorted(root.rglob("results.json")):
            results = json.loads(path.read_text())
            if not results.get("final"):
                continue  # an unfinished run
            results["_path"] = str(path.parent)
            meta = results["meta"]
            method = cell_label(path) if by_overrides else method_label(results)
            groups[(method, meta["dataset"], meta["partition_label"])].append(results)
    return groups


# What every cell of one table must share, per dataset: the scale of the experiment. The grid's
# own axes (algorithm and its options, partition, seed, DP) may differ.
SHARED_META = ("num_clients", "num_rounds", "train_fraction", "zoo", "feature_dim", "global_test_set", "eval_every")


class MixedRunsError(ValueError):
    """Cells of one table ran with different code or settings; the message names them."""


def check_consistency(groups: dict[Key, list[dict[str, Any]]], *, allow_mixed_code: bool = False) -> None:
    """Refuse to merge cells that ran with different code (git commit, uncommitted changes) or
    with different experiment settings (``SHARED_META``) than the rest of their dataset's cells."""
    runs = [run for rs in groups.values() for run in rs]
    problems = []
    if not allow_mixed_code:
        codes: dict[str, list[str]] = defaultdict(list)
        for run in runs:
            code = run["meta"].get("code") or {}
            commit = code.get("git_commit") or "unknown"
            codes[commit + (" (with uncommitted changes)" if code.get("git_dirty") else "")].append(run["_path"])
        if len(codes) > 1:
            problems += [f"code {c}: {len(p)} cell(s), e.g. {p[0]}" for c, p in sorted(codes.items())]
    by_dataset: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        meta = run["meta"]
        shared = json.dumps({k: meta.get(k) for k in SHARED_META}, sort_keys=True)
        by_dataset[meta["dataset"]][shared].append(run["_path"])
    for dataset, variants in sorted(by_dataset.items()):
        if len(variants) > 1:
            problems += [f"{dataset} settings {v}: {len(p)} cell(s), e.g. {p[0]}" for v, p in sorted(variants.items())]
    if problems:
        raise MixedRunsError(
            "these cells do not belong in one table:\n  " + "\n  ".join(problems)
            + "\nrerun the odd ones with the others' code and settings, or pass --allow-mixed-code "
            "if only the code differs and you have checked that the change cannot move the numbers"
        )


def _fmt(values: list[float | None], scale: float = 1.0, digits: int = 1) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def _rounds(run: dict[str, Any]) -> int:
    return len(run["rounds"])


def summarize(key: Key, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row: mean ± std over the seeds in ``runs``."""
    method, dataset, partition = key
    finals = [r["final"] for r in runs]

    def per_client_round(total: str) -> list[float]:
        return [r["final"][total] / (r["meta"]["num_clients"] * _rounds(r)) for r in runs]

    def synthetic(field: str) -> list[float | None]:
        values = [[x[field] for x in r["rounds"] if x.get(field) is not None] for r in runs]
        return [v[-1] if v else None for v in values]  # the last round that scored images

    return {
        "method": method,
        "dataset": dataset,
        "partition": partition,
        "seeds": len(runs),
        "final global acc (%)": _fmt([f["global_accuracy"] for f in finals], 100),
        "best-round global acc (%)": _fmt([f["best_round"]["global_accuracy"] for f in finals], 100),
        "final local acc (%)": _fmt([f["local_accuracy"] for f in finals], 100),
        "up KB/client/round": _fmt(per_client_round("total_bytes_up"), 1 / 1024),
        "down KB/client/round": _fmt(per_client_round("total_bytes_down"), 1 / 1024),
        "total MB": _fmt([f["total_bytes_up"] + f["total_bytes_down"] for f in finals], 1 / 2**20, 2),
        "peak RSS MB": _fmt([_peak(r, "peak_rss_mb") for r in runs], digits=0),
        "work RSS MB": _fmt([_peak(r, "work_rss_mb") for r in runs], digits=0),
        "s/round": _fmt([f["total_seconds"] / _rounds(r) for f, r in zip(finals, runs)]),
        "synthetic recognised (%)": _fmt(synthetic("synthetic_accuracy"), 100),
        "… of missing classes (%)": _fmt(synthetic("synthetic_accuracy_missing"), 100),
        "held-class acc (%)": _fmt([f.get("global_accuracy_held") for f in finals], 100),
        "missing-class acc (%)": _fmt([f.get("global_accuracy_missing") for f in finals], 100),
        "validation acc (%)": _fmt([f.get("validation_accuracy") for f in finals], 100),
        "validation missing-class acc (%)": _fmt([f.get("validation_accuracy_missing") for f in finals], 100),
    }


def _peak(run: dict[str, Any], field: str) -> float | None:
    values = [r[field] for r in run["rounds"] if r.get(field) is not None]
    return max(values) if values else None


def collect(dirs: list[Path], *, by_overrides: bool = False, allow_mixed_code: bool = False) -> list[dict[str, Any]]:
    """The table rows, sorted by dataset, partition and method (``MixedRunsError`` for cells that
    do not belong together)."""
    groups = load_runs(dirs, by_overrides=by_overrides)
    check_consistency(groups, allow_mixed_code=allow_mixed_code)
    keys = sorted(groups, key=lambda k: (k[1], k[2], k[0]))
    return [summarize(k, groups[k]) for k in keys]


def to_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no finished runs found)"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines)


def plot(groups: dict[Key, list[dict[str, Any]]], out: Path) -> list[Path]:
    """Accuracy per round per method, and final accuracy against total bytes, per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    settings = sorted({(d, p) for _, d, p in groups})
    methods = sorted({m for m, _, _ in groups})
    colours = {m: plt.cm.tab20(i % 20) for i, m in enumerate(methods)}
    n = len(settings)
    paths = []

    def panels() -> tuple[Any, Any, list[tuple[Any, str, list[dict[str, Any]]]]]:
        """A new figure with one panel per setting, and (panel, method, runs) for every cell."""
        fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
        for ax, (dataset, partition) in zip(axes[0], settings):
            ax.set_title(f"{dataset}, {partition}")
            ax.grid(alpha=0.3)
        cells = [
            (ax, method, groups[(method, d, p)])
            for ax, (d, p) in zip(axes[0], settings) for method in methods if groups.get((method, d, p))
        ]
        return fig, axes, cells

    fig, axes, cells = panels()
    for ax, method, runs in cells:
        per_round: dict[int, list[float]] = defaultdict(list)
        for run in runs:
            for r in run["rounds"]:
                if r.get("global_accuracy") is not None:
                    per_round[r["round"]].append(100 * r["global_accuracy"])
        xs = sorted(per_round)
        style = ":" if "DP" in method else "--" if "_" in method else "-"  # ablations dashed, DP dotted
        ax.plot(xs, [statistics.fmean(per_round[x]) for x in xs], style, marker="o", ms=3,
                color=colours[method], label=method)
    for ax in axes[0]:
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
        ax.set_ylabel("global-test accuracy (%), mean over clients and seeds")
    legend: dict[str, Any] = {}  # every method once, whichever panel it appears in
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    axes[0][-1].legend(legend.values(), legend.keys(), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    paths.append(out.with_name(out.name + "_accuracy.png"))
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, axes, cells = panels()
    for ax, method, runs in cells:
        mb = statistics.fmean((r["final"]["total_bytes_up"] + r["final"]["total_bytes_down"]) / 2**20 for r in runs)
        acc = statistics.fmean(100 * r["final"]["global_accuracy"] for r in runs)
        ax.scatter(max(mb, 1e-3), acc, color=colours[method], label=method)
        ax.annotate(method, (max(mb, 1e-3), acc), fontsize=6, xytext=(3, 3), textcoords="offset points")
    for ax in axes[0]:
        ax.set_xscale("log")
        ax.set_xlabel("total MB exchanged (all clients, all rounds; log)")
        ax.set_ylabel("final global-test accuracy (%)")
    fig.tight_layout()
    paths.append(out.with_name(out.name + "_bytes.png"))
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="directories searched for results.json")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.md and <out>.csv")
    parser.add_argument("--plots", action="store_true", help="also write <out>_accuracy.png and <out>_bytes.png")
    parser.add_argument("--by-overrides", action="store_true",
                        help="one row per run directory name (its overrides, seed pooled), e.g. for experiment=readings")
    parser.add_argument("--allow-mixed-code", action="store_true",
                        help="merge cells run at different git commits (settings must still agree)")
    args = parser.parse_args()
    try:
        rows = collect(args.dirs, by_overrides=args.by_overrides, allow_mixed_code=args.allow_mixed_code)
    except MixedRunsError as error:
        raise SystemExit(f"error: {error}") from None
    markdown = to_markdown(rows)
    print(markdown)
    if args.out is None or not rows:
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(markdown + "\n")
    with args.out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if args.plots:
        for path in plot(load_runs(args.dirs, by_overrides=args.by_overrides), args.out):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
