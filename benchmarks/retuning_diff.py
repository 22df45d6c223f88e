"""The same table cells before and after the baselines were retuned: final test accuracy (mean ± std
over seeds) and the paired difference per seed (RESULTS.md §1, "What retuning the baselines changed").

    python benchmarks/retuning_diff.py multirun/table_cpu/main multirun/table_cpu_before_tuning/main mnist 0.1
"""
import json
import statistics
import sys
from pathlib import Path

BASELINES = ("ccvr", "fedgen", "fedproto", "fedtgp", "fedtype")


def final_accuracy(root: Path, name: str) -> float | None:
    path = root / name / "results.json"
    final = json.loads(path.read_text()).get("final") if path.exists() else None
    return None if not final else 100 * final["global_accuracy"]


def main(after: Path, before: Path, dataset: str, alpha: str, seeds=(0, 1, 2)) -> None:
    print("| baseline | before | after | after − before (pp, per seed) |\n|---|---|---|---|")
    for baseline in BASELINES:
        names = [f"algorithm={baseline},dataset={dataset},partition.alpha={alpha},seed={s}" for s in seeds]
        old, new = [final_accuracy(before, n) for n in names], [final_accuracy(after, n) for n in names]
        if None in old + new:
            print(f"| {baseline} | – | – | not every seed has both runs |")
            continue
        spread = lambda xs: f"{statistics.fmean(xs):.1f} ± {statistics.stdev(xs):.1f}"
        diffs = ", ".join(f"{b - a:+.1f}" for a, b in zip(old, new))
        print(f"| {baseline} | {spread(old)} | {spread(new)} | {diffs} |")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4])
