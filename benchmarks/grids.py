"""Put the synthetic-image grids of several runs side by side, with the classes the client lacks marked.

    python benchmarks/grids.py RUN_DIR[::TITLE] [RUN_DIR[::TITLE] ...] --client 0 --out docs/images/readings.png

Each run's ``synthetic_client<id>.png`` (one row per class, written after the last round) becomes a
panel; rows of classes the client holds no training image of are marked "missing" on the left.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories, each optionally ::TITLE")
    parser.add_argument("--client", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.runs), figsize=(3.2 * len(args.runs), 4.2), squeeze=False)
    for ax, spec in zip(axes[0], args.runs):
        path, _, title = spec.partition("::")
        run = Path(path)
        image = mpimg.imread(run / f"synthetic_client{args.client}.png")
        results = json.loads((run / "results.json").read_text())
        counts = results["clients"][args.client]["class_counts"]
        ax.imshow(image, cmap="gray")
        ax.set_title(title or run.name, fontsize=8)
        rows = len(counts)
        ax.set_yticks([(i + 0.5) * image.shape[0] / rows for i in range(rows)])
        ax.set_yticklabels([f"{c} {'missing' if n == 0 else n}" for c, n in enumerate(counts)], fontsize=6)
        ax.set_xticks([])
        final = results["final"]
        if final.get("synthetic_accuracy_missing") is not None:
            ax.set_xlabel(f"missing classes recognised: {100 * final['synthetic_accuracy_missing']:.0f} % "
                          f"(mean over clients)", fontsize=7)
    fig.suptitle(f"client {args.client}: synthetic images after the last round (row = class; label = its training images)",
                 fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=130)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
