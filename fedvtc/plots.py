"""PNG figures of a run: accuracy per round, and grids of synthetic images per class."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch


def plot_accuracy(rounds: Sequence[dict[str, Any]], path: str | os.PathLike, *, title: str = "") -> None:
    """Mean global- and local-test accuracy per round, with a ±1 std band over clients."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluated = [r for r in rounds if r.get("global_accuracy") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("global_accuracy", "global test"), ("local_accuracy", "local test")):
        xs = [r["round"] for r in evaluated]
        ys = [r[key] for r in evaluated]
        sd = [r[f"{key}_std"] for r in evaluated]
        ax.plot(xs, ys, marker="o", label=label)
        ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)], alpha=0.2)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy (mean over clients)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_class_grid(pixels: torch.Tensor, labels: torch.Tensor, path: str | os.PathLike, *, per_class: int) -> None:
    """Save up to ``per_class`` images of each class as one row per class.

    Args:
        pixels: (N, C, H, W) images in [0, 1].
        labels: (N,) class ids.
        path: PNG file to write.
        per_class: columns of the grid.
    """
    from fedvtc.tv import torchvision

    rows = []
    for c in labels.unique(sorted=True):
        chosen = pixels[labels == c][:per_class]
        if len(chosen) < per_class:  # pad short rows so the grid stays aligned
            chosen = torch.cat([chosen, chosen.new_zeros(per_class - len(chosen), *chosen.shape[1:])])
        rows.append(chosen)
    grid = torchvision.utils.make_grid(torch.cat(rows), nrow=per_class, padding=2, pad_value=1.0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(grid, str(path))
