"""Collect the results.json files under one or more directories into a comparison table and plots.

    python benchmarks/compare.py multirun/table_cpu [more dirs] [--out table] [--plots]

Rows are grouped by (method, dataset, partition), where the method is the algorithm's label
(``fedvtc``, ``fedproto``, an ablation such as ``fedvtc_dm``; a DP run adds its ε). Each row gives
mean ± std over seeds of:

- the final-round and the best-round mean global-test accuracy ("best round" picks the round with
  the highest mean over clients, an optimistic figure), the final local-test accuracy, and the
  final global-test accuracy on the classes a client holds and on those it lacks;
- the paired difference per seed (same split and seed) against training alone and against the
  best baseline of the setting (the one of ``BASELINES`` other than the row's own method with the
  highest mean final accuracy), with the per-seed values in brackets: a gap whose spread reaches
  across zero is inside seed noise; FedVTC and its variants also against the real-data control
  (``fedvtc_real_finetune``: the same fine-tuning steps on real data only), which says whether the
  generator adds anything beyond those steps;
- communication to a target: the MB (up + down, all clients) exchanged until the run's mean
  global-test accuracy first reaches the final accuracy of training alone with the same seed, or
  "never" (with how many seeds reached it when only some did); beside it bytes per client per round
  and in total;
- peak resident memory of a client's round (process peak, and what the round's work added above the
  dataset and runtime), seconds per round, and for FedVTC runs the share of synthetic images a
  reference classifier labels with their intended class (overall / for the classes a client lacks);
- the machine its cells ran on (CPU model and torch's CPU capability, with a count of each where a
  table built over several sittings mixes them): a seed gives the same numbers only on the same
  kind of CPU, so a paired difference across kinds carries that noise too.

Writes ``<out>.md`` and ``<out>.csv``; with ``--plots`` also ``<out>_accuracy.png`` (mean global-test
accuracy per round per method, a band of ± one std over seeds, one panel per dataset and partition),
``<out>_missing.png`` (the same for the classes a client lacks) and ``<out>_bytes.png`` (final
accuracy against MB to the target). Prints the markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

Key = tuple[str, str, str]  # (method, dataset, partition)
Run = dict[str, Any]

# The methods FedVTC is compared against; "best baseline" is chosen among them per setting.
BASELINES = ("local", "fedproto", "fedtgp", "fedgen", "ccvr", "fedtype")
# Training alone: the reference of the paired differences and of communication to a target.
REFERENCE = "local"
# The real-data control: FedVTC's fine-tuning steps on real data only. FedVTC and its variants are
# also paired against it, which says whether the generator adds anything beyond the extra steps.
CONTROL = "fedvtc_real_finetune"


def is_fedvtc_variant(method: str) -> bool:
    """FedVTC and its ablations (the control itself excluded): the rows paired against the control."""
    return method.startswith("fedvtc") and not method.startswith(CONTROL)


def method_label(results: Run) -> str:
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


def load_runs(dirs: list[Path], *, by_overrides: bool = False) -> dict[Key, list[Run]]:
    """Every finished run (``final`` present) under ``dirs``, grouped by (method, dataset, partition).

    ``by_overrides``: the method is the run directory's name (its overrides, seed left out) instead
    of the algorithm's label, so readings of one algorithm get a row each.
    """
    groups: dict[Key, list[Run]] = defaultdict(list)
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


def code_identity(run: Run) -> str:
    """What code a run ran: the fingerprint of the package's sources where recorded (equal across
    commits that changed only docs, tests or benchmarks), else the git commit."""
    code = run["meta"].get("code") or {}
    if code.get("source_sha256"):
        return f"sources {code['source_sha256'][:12]}"
    commit = code.get("git_commit") or "unknown"
    return commit + (" (with uncommitted changes)" if code.get("git_dirty") else "")


# A table directory's pin (benchmarks/table.sh): its first line names the commit the cells run
# from; a line "kept <commit> <label>,<label>" keeps the cells of those methods that ran at an
# earlier commit, after a change that was checked not to move their numbers (e.g. a new default
# of FedVTC's, which no baseline reads): only FedVTC's cells then run again.
PIN_FILE = "CODE"


def kept_code(dirs: Iterable[Path]) -> dict[str, set[str]]:
    """The earlier commits whose cells the pins of ``dirs`` keep, with the method labels kept. A
    directory's pin is the nearest ``CODE`` in it or above it (a part of a table, such as
    ``table_cpu/main``, has its table's)."""
    kept: dict[str, set[str]] = defaultdict(set)
    for root in dirs:
        pin = next((d / PIN_FILE for d in (root.resolve(), *root.resolve().parents) if (d / PIN_FILE).is_file()), None)
        if pin is None:
            continue
        for number, line in enumerate(pin.read_text().splitlines(), start=1):
            words = line.split("#", 1)[0].split()
            if not words or words[0] != "kept":
                continue
            if len(words) != 3:
                raise MixedRunsError(f"{pin}:{number}: write a kept line as 'kept <commit> <label>,<label>', got {line!r}")
            kept[words[1]] |= set(words[2].split(","))
    return dict(kept)


def is_kept(run: Run, kept: dict[str, set[str]], kept_sources: dict[str, set[str]] | None = None) -> bool:
    """Whether ``run`` ran at a commit its table keeps for its method (``kept_code``), or at another
    commit with that commit's sources (``kept_sources``: a sitting run from a checkout whose
    ``fedvtc/`` was the pin's records its own commit)."""
    label = run["meta"].get("label")
    commit = (run["meta"].get("code") or {}).get("git_commit") or ""
    if any(commit.startswith(c) and label in labels for c, labels in kept.items()):
        return True
    return label in (kept_sources or {}).get(code_identity(run), set())


def sources_of_kept(runs: Iterable[Run], kept: dict[str, set[str]]) -> dict[str, set[str]]:
    """The code identities (``code_identity``) of the runs at a kept commit, with the labels kept."""
    sources: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        code = run["meta"].get("code") or {}
        commit = code.get("git_commit") or ""
        for c, labels in kept.items():
            if commit.startswith(c) and code.get("source_sha256"):
                sources[code_identity(run)] |= labels
    return dict(sources)


def check_consistency(groups: dict[Key, list[Run]], *, allow_mixed_code: bool = False,
                      kept: dict[str, set[str]] | None = None) -> None:
    """Refuse to merge cells that ran with different code (``code_identity``) or with different
    experiment settings (``SHARED_META``) than the rest of their dataset's cells. Cells that
    ``kept`` keeps (``kept_code``) are exempt from the code check, not from the settings'."""
    runs = [run for rs in groups.values() for run in rs]
    problems = []
    if not allow_mixed_code:
        codes: dict[str, list[str]] = defaultdict(list)
        kept_sources = sources_of_kept(runs, kept or {})
        for run in runs:
            if not is_kept(run, kept or {}, kept_sources):
                codes[code_identity(run)].append(run["_path"])
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
            + "\nrerun the odd ones with the others' code and settings, or, if only the code differs and you "
            f"have checked that the change cannot move their numbers, keep them with a line 'kept <commit> "
            f"<label>,...' in the table's {PIN_FILE} (or pass --allow-mixed-code)"
        )


# --- the measures of one run -------------------------------------------------------------------


def machine_of(run: Run) -> str:
    """The kind of machine a run ran on, as its ``meta.host`` records it (older runs: "unknown")."""
    host = run["meta"].get("host") or {}
    if not host.get("cpu_model"):
        return "unknown"
    kind = f"{host['cpu_model']} ({host.get('torch_cpu_capability') or '?'})"
    device = run["meta"].get("device", "cpu")
    return kind if device == "cpu" else f"{kind}, {device}"


def _fmt_machines(runs: list[Run]) -> str:
    kinds = Counter(machine_of(run) for run in runs)
    if len(kinds) == 1:
        return next(iter(kinds))
    return ", ".join(f"{kind} ×{count}" for kind, count in sorted(kinds.items()))


def seed_of(run: Run) -> int:
    return int(run["meta"]["seed"])


def final_accuracy(run: Run) -> float:
    return float(run["final"]["global_accuracy"])


def paired_differences(runs: list[Run], references: list[Run]) -> list[float]:
    """Final global accuracy of each run minus that of the reference run with the same seed, in
    seed order; seeds without a reference run are left out."""
    reference = {seed_of(r): final_accuracy(r) for r in references}
    return [final_accuracy(r) - reference[seed_of(r)] for r in sorted(runs, key=seed_of) if seed_of(r) in reference]


def bytes_to_target(run: Run, target: float) -> float | None:
    """Bytes (up + down, all clients) exchanged up to and including the first evaluated round whose
    mean global accuracy reaches ``target``; None when no round does."""
    exchanged = 0.0
    for r in run["rounds"]:
        exchanged += (r.get("bytes_up") or 0) + (r.get("bytes_down") or 0)
        accuracy = r.get("global_accuracy")
        if accuracy is not None and accuracy >= target:
            return exchanged
    return None


def best_baseline(groups: dict[Key, list[Run]], dataset: str, partition: str, *, excluding: str) -> str | None:
    """The baseline with the highest mean final accuracy in one setting, other than ``excluding``,
    among those with the most seeds there (in a table still being built, a baseline with one lucky
    seed must not pass for the best)."""
    runs = {m: groups[(m, dataset, partition)] for m in BASELINES
            if m != excluding and groups.get((m, dataset, partition))}
    if not runs:
        return None
    most = max(len({seed_of(r) for r in rs}) for rs in runs.values())
    means = {m: statistics.fmean(final_accuracy(r) for r in rs) for m, rs in runs.items()
             if len({seed_of(r) for r in rs}) == most}
    return max(means, key=means.__getitem__)


# --- formatting --------------------------------------------------------------------------------


def _fmt(values: Iterable[float | None], scale: float = 1.0, digits: int = 1) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def _fmt_paired(differences: list[float], versus: str | None = None) -> str:
    """``+6.1 ± 0.2 (+6.0, +6.2)`` in percentage points, with what it is against when named."""
    if not differences:
        return "–"
    points = [100 * d for d in differences]
    text = f"{statistics.fmean(points):+.1f}"
    if len(points) > 1:
        text += f" ± {statistics.stdev(points):.1f} (" + ", ".join(f"{p:+.1f}" for p in points) + ")"
    return f"{text} vs {versus}" if versus else text


def _fmt_to_target(values: list[float | None]) -> str:
    """Mean MB over the seeds that reached the target; "never", or "(k/n seeds)" when only some did."""
    if not values:
        return "–"
    reached = [v / 2**20 for v in values if v is not None]
    if not reached:
        return "never"
    text = f"{statistics.fmean(reached):.2f}"
    return text if len(reached) == len(values) else f"{text} ({len(reached)}/{len(values)} seeds)"


def _rounds(run: Run) -> int:
    return len(run["rounds"])


def _peak(run: Run, field: str) -> float | None:
    values = [r[field] for r in run["rounds"] if r.get(field) is not None]
    return max(values) if values else None


# --- the table ---------------------------------------------------------------------------------


def targets(groups: dict[Key, list[Run]], dataset: str, partition: str) -> dict[int, float]:
    """Per seed, the final accuracy of training alone in one setting: the target of "MB to target"."""
    return {seed_of(r): final_accuracy(r) for r in groups.get((REFERENCE, dataset, partition), [])}


def summarize(key: Key, groups: dict[Key, list[Run]]) -> dict[str, Any]:
    """One table row: mean ± std over the seeds of ``groups[key]``, paired columns against the
    setting's training alone and best baseline."""
    method, dataset, partition = key
    runs = groups[key]
    finals = [r["final"] for r in runs]

    def per_client_round(total: str) -> list[float]:
        return [r["final"][total] / (r["meta"]["num_clients"] * _rounds(r)) for r in runs]

    def synthetic(field: str) -> list[float | None]:
        values = [[x[field] for x in r["rounds"] if x.get(field) is not None] for r in runs]
        return [v[-1] if v else None for v in values]  # the last round that scored images

    reference_runs = groups.get((REFERENCE, dataset, partition), []) if method != REFERENCE else []
    best = best_baseline(groups, dataset, partition, excluding=method)
    control_runs = groups.get((CONTROL, dataset, partition), []) if is_fedvtc_variant(method) else []
    target = targets(groups, dataset, partition)
    return {
        "method": method,
        "dataset": dataset,
        "partition": partition,
        "seeds": len(runs),
        "final global acc (%)": _fmt([f["global_accuracy"] for f in finals], 100),
        "best-round global acc (%)": _fmt([f["best_round"]["global_accuracy"] for f in finals], 100),
        "final local acc (%)": _fmt([f["local_accuracy"] for f in finals], 100),
        "held-class acc (%)": _fmt([f.get("global_accuracy_held") for f in finals], 100),
        "missing-class acc (%)": _fmt([f.get("global_accuracy_missing") for f in finals], 100),
        f"Δ vs {REFERENCE} (pp, per seed)": _fmt_paired(paired_differences(runs, reference_runs)),
        "Δ vs best baseline (pp, per seed)": _fmt_paired(
            paired_differences(runs, groups[(best, dataset, partition)]) if best else [], best),
        "Δ vs control (pp, per seed)": _fmt_paired(paired_differences(runs, control_runs)),
        f"MB to {REFERENCE}'s final acc": _fmt_to_target(
            [bytes_to_target(r, target[seed_of(r)]) for r in runs if seed_of(r) in target]),
        "up KB/client/round": _fmt(per_client_round("total_bytes_up"), 1 / 1024),
        "down KB/client/round": _fmt(per_client_round("total_bytes_down"), 1 / 1024),
        "total MB": _fmt([f["total_bytes_up"] + f["total_bytes_down"] for f in finals], 1 / 2**20, 2),
        "peak RSS MB": _fmt([_peak(r, "peak_rss_mb") for r in runs], digits=0),
        "work RSS MB": _fmt([_peak(r, "work_rss_mb") for r in runs], digits=0),
        "s/round": _fmt([f["total_seconds"] / _rounds(r) for f, r in zip(finals, runs)]),
        "synthetic recognised (%)": _fmt(synthetic("synthetic_accuracy"), 100),
        "… of missing classes (%)": _fmt(synthetic("synthetic_accuracy_missing"), 100),
        "validation acc (%)": _fmt([f.get("validation_accuracy") for f in finals], 100),
        "validation missing-class acc (%)": _fmt([f.get("validation_accuracy_missing") for f in finals], 100),
        "machine": _fmt_machines(runs),
    }


def collect(dirs: list[Path], *, by_overrides: bool = False, allow_mixed_code: bool = False) -> list[dict[str, Any]]:
    """The table rows, sorted by dataset, partition and method (``MixedRunsError`` for cells that
    do not belong together)."""
    groups = load_runs(dirs, by_overrides=by_overrides)
    check_consistency(groups, allow_mixed_code=allow_mixed_code, kept=kept_code(dirs))
    keys = sorted(groups, key=lambda k: (k[1], k[2], k[0]))
    return [summarize(k, groups) for k in keys]


# The columns that judge the paper's claims (``--brief``): the setting, accuracy, per group, against
# training alone, the best baseline and (FedVTC's variants) the real-data control per seed, and
# communication to the target.
BRIEF = ("method", "dataset", "partition", "seeds", "final global acc (%)", "held-class acc (%)", "missing-class acc (%)",
         f"Δ vs {REFERENCE} (pp, per seed)", "Δ vs best baseline (pp, per seed)", "Δ vs control (pp, per seed)",
         f"MB to {REFERENCE}'s final acc", "total MB", "… of missing classes (%)")


def to_markdown(rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> str:
    if not rows:
        return "(no finished runs found)"
    header = [c for c in (columns or rows[0]) if c in rows[0]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines)


# --- the plots ---------------------------------------------------------------------------------


def per_round(runs: list[Run], field: str) -> tuple[list[int], list[float], list[float]]:
    """Rounds, mean and std over seeds (in %) of a per-round field, over the rounds that have it."""
    values: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for r in run["rounds"]:
            if r.get(field) is not None:
                values[r["round"]].append(100 * r[field])
    rounds = sorted(values)
    means = [statistics.fmean(values[x]) for x in rounds]
    stds = [statistics.stdev(values[x]) if len(values[x]) > 1 else 0.0 for x in rounds]
    return rounds, means, stds


def plot(groups: dict[Key, list[Run]], out: Path) -> list[Path]:
    """Accuracy and missing-class accuracy per round per method (band over seeds), and final
    accuracy against MB to the target, one panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    settings = sorted({(d, p) for _, d, p in groups})
    methods = sorted({m for m, _, _ in groups})
    # Ten clearly different colours first (tab20's neighbours are pairs of one hue).
    palette = [plt.cm.tab10(i) for i in range(10)] + [plt.cm.tab20(2 * i + 1) for i in range(10)]
    colours = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    n = len(settings)

    def style(method: str) -> str:
        return ":" if "DP" in method else "--" if "_" in method else "-"  # ablations dashed, DP dotted

    def figure(ylabel: str, xlabel: str) -> tuple[Any, list[tuple[Any, str, str, str]]]:
        """A figure with one panel per setting, and (panel, method, dataset, partition) per cell."""
        fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
        for ax, (dataset, partition) in zip(axes[0], settings):
            ax.set_title(f"{dataset}, {partition}")
            ax.grid(alpha=0.3)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
        cells = [(ax, m, d, p) for ax, (d, p) in zip(axes[0], settings) for m in methods if groups.get((m, d, p))]
        return fig, cells

    def save(fig: Any, suffix: str) -> Path:
        legend: dict[str, Any] = {}  # every method once, whichever panel it appears in
        for ax in fig.axes:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(label, handle)
        fig.axes[-1].legend(legend.values(), legend.keys(), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        path = out.with_name(f"{out.name}_{suffix}.png")
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        return path

    paths = []
    for field, suffix, what in (("global_accuracy", "accuracy", "global-test accuracy"),
                                ("global_accuracy_missing", "missing", "accuracy on classes a client lacks")):
        fig, cells = figure(f"{what} (%)", "round")
        fig.suptitle("mean over clients; band: ± 1 std over seeds", fontsize=8)
        for ax, method, dataset, partition in cells:
            rounds, means, stds = per_round(groups[(method, dataset, partition)], field)
            if not rounds:
                continue
            ax.plot(rounds, means, style(method), marker="o", ms=2, color=colours[method], label=method)
            ax.fill_between(rounds, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=colours[method], alpha=0.15, linewidth=0)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
        paths.append(save(fig, suffix))

    fig, cells = figure("final global-test accuracy (%)", f"MB exchanged until {REFERENCE}'s final accuracy (symlog)")
    never: dict[Any, list[str]] = defaultdict(list)  # per panel, the methods that never got there
    for ax, method, dataset, partition in cells:
        runs = groups[(method, dataset, partition)]
        target = targets(groups, dataset, partition)
        reached = [s / 2**20 for r in runs if seed_of(r) in target
                   if (s := bytes_to_target(r, target[seed_of(r)])) is not None]
        accuracy = statistics.fmean(100 * final_accuracy(r) for r in runs)
        if not target:
            continue  # no training alone in this setting: no target
        if not reached:
            never[ax].append(f"{method} ({accuracy:.1f} %)")
            continue
        x = statistics.fmean(reached)
        ax.scatter(x, accuracy, color=colours[method], label=method)
        ax.annotate(method, (x, accuracy), fontsize=6, xytext=(3, 3), textcoords="offset points")
    for ax in fig.axes:
        ax.set_xscale("symlog", linthresh=0.01)
        if never[ax]:
            ax.text(0.98, 0.02, "never reached:\n" + "\n".join(never[ax]), transform=ax.transAxes,
                    ha="right", va="bottom", fontsize=6)
    paths.append(save(fig, "bytes"))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="directories searched for results.json")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.md and <out>.csv")
    parser.add_argument("--plots", action="store_true",
                        help="also write <out>_accuracy.png, <out>_missing.png and <out>_bytes.png")
    parser.add_argument("--by-overrides", action="store_true",
                        help="one row per run directory name (its overrides, seed pooled), e.g. for experiment=readings")
    parser.add_argument("--allow-mixed-code", action="store_true",
                        help="merge cells run with different code (settings must still agree)")
    parser.add_argument("--brief", action="store_true",
                        help="print only the columns that judge the claims (the files keep every column)")
    args = parser.parse_args()
    try:
        rows = collect(args.dirs, by_overrides=args.by_overrides, allow_mixed_code=args.allow_mixed_code)
    except MixedRunsError as error:
        raise SystemExit(f"error: {error}") from None
    markdown = to_markdown(rows)
    print(to_markdown(rows, BRIEF) if args.brief else markdown)
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
