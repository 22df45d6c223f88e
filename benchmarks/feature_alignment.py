"""How far apart the clients' feature spaces are at the end of a FedVTC run (RESULTS.md "Readings").

    python benchmarks/feature_alignment.py multirun/readings/mnist_a0.1/algorithm=fedvtc [more run dirs]

A shared decoder can only turn the pooled class Gaussian N(c^y, sigma_y^2) into images of class y
if every client holding y puts its features of y near c^y. From each client's last uploaded
statistics (``client_state/client_<i>.pt``), per class held by at least two clients with at least
``--min-count`` images each: the root-mean-square distance of each client's class mean from the
count-weighted mean of the others, over the typical within-class standard deviation (RMS over
dimensions of the clients' own stds). Near 0: the clients agree; about 1.4 or more: their class
means lie as far apart as two independent draws from a class, so no decoder can serve them all.
Also the distance between the means of different classes, in the same unit, for scale.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fedvtc.state import load_state  # noqa: E402


def client_stats(run: Path):
    states = sorted((run / "client_state").glob("client_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return [(load_state(p) or {}).get("extra", {}).get("local_stats") for p in states]


def alignment(run: Path, min_count: int) -> dict[str, float]:
    stats = [s for s in client_stats(run) if s is not None]
    between, across = [], []
    classes = sorted({int(c) for s in stats for c in s.classes})
    centres = {}
    for y in classes:
        holders = []
        for s in stats:
            idx = np.flatnonzero(s.classes == y)
            if len(idx) and s.counts[idx[0]] >= min_count:
                holders.append((s.counts[idx[0]], s.means[idx[0]], np.sqrt(s.second[idx[0]])))
        if not holders:
            continue
        weights = np.array([h[0] for h in holders])
        centres[y] = (np.average([h[1] for h in holders], axis=0, weights=weights),
                      float(np.sqrt(np.mean([np.mean(h[2] ** 2) for h in holders]))))
        for i, (_, mean, _) in enumerate(holders):
            others = [h for j, h in enumerate(holders) if j != i]
            if not others:
                continue
            rest = np.average([h[1] for h in others], axis=0, weights=[h[0] for h in others])
            between.append(float(np.sqrt(np.mean((mean - rest) ** 2))) / centres[y][1])
    ys = sorted(centres)
    for a in ys:
        for b in ys:
            if a < b:
                scale = (centres[a][1] + centres[b][1]) / 2
                across.append(float(np.sqrt(np.mean((centres[a][0] - centres[b][0]) ** 2))) / scale)
    return {"same class, client vs the others": statistics.fmean(between) if between else float("nan"),
            "different classes": statistics.fmean(across) if across else float("nan"),
            "pairs": len(between)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--min-count", type=int, default=10, help="a client's images of a class to count it as held")
    args = parser.parse_args()
    print("| run | same class, client vs others (in within-class stds) | different classes | client-class pairs |")
    print("|---|---|---|---|")
    for run in args.runs:
        a = alignment(run, args.min_count)
        print(f"| {run.name} | {a['same class, client vs the others']:.2f} | {a['different classes']:.2f} | {a['pairs']} |")


if __name__ == "__main__":
    main()
