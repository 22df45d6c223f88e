"""How diverse are a FedVTC client's synthetic images, and why (RESULTS.md §1, "why").

    python benchmarks/synthetic_diversity.py RUN_DIR [RUN_DIR ...] [--client 0] [--out table.md]

For each finished FedVTC run (its ``config.yaml`` and ``client_state/client_<id>.pt``), from the
client's last VTC and the pooled class Gaussians it last received:

- latent geometry: the median distance between two classes' pooled means against the median
  radius of a class's Gaussian (sqrt of its summed variances), i.e. how much room the latents of
  one class have compared to what separates the classes;
- decoded diversity: the within-class pixel standard deviation of the decoded images (16 per
  class, pixels in [0, 1]) at latent noise scales 0, 1 (what the run synthesizes), 3 and 10,
  next to the between-class spread of the class-mean images;
- the same two figures for real training images of the run's dataset (16 per class), for scale,
  and for their reconstructions through the client's own extractor and the VTC, psi(g(x)): does
  the feature of an image carry more than its class?

A decoder whose within-class std is far below the real images' draws about one image per class
(the class's template): what a reconstruction loss learns when the latents it decodes carry little
more than the class.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from omegaconf import OmegaConf  # noqa: E402

from fedvtc.algorithms.fedvtc import build_vtc  # noqa: E402
from fedvtc.config import build_settings  # noqa: E402
from fedvtc.data import load_dataset, to_unit_pixels  # noqa: E402
from fedvtc.state import load_state  # noqa: E402
from fedvtc.training import GlobalGaussians, synthesize  # noqa: E402
from fedvtc.zoo import create_model  # noqa: E402

SCALES = (0.0, 1.0, 3.0, 10.0)
PER_CLASS = 16


def spread(pixels: torch.Tensor) -> tuple[float, float]:
    """(mean within-class pixel std, mean between-class std of the class-mean images) of
    (classes, per_class, ...) pixels in [0, 1]."""
    flat = pixels.flatten(2)
    return float(flat.std(dim=1).mean()), float(flat.mean(dim=1).std(dim=0).mean())


def real_images(settings) -> torch.Tensor:
    """(classes, PER_CLASS, C, H, W) normalized training images, the same ones for every run."""
    train, _ = load_dataset(settings.dataset, None, download=False)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for c in range(settings.dataset.num_classes):
        idx = (train.y == c).nonzero().flatten()
        rows.append(train.x[idx[torch.randperm(len(idx), generator=generator)[:PER_CLASS]]])
    return torch.stack(rows)


def diagnose(run: Path, client: int) -> dict:
    settings = build_settings(OmegaConf.load(run / "config.yaml"), output_dir=run)
    state = load_state(run / "client_state" / f"client_{client}.pt")
    if state is None or "vtc" not in state.get("extra", {}):
        raise SystemExit(f"error: {run} has no VTC state for client {client}; is it a finished FedVTC run?")
    d = settings.dataset
    vtc = build_vtc(settings)
    vtc.load_state_dict(state["extra"]["vtc"])
    vtc.eval()
    model = create_model(state["arch"], num_classes=d.num_classes, feature_dim=settings.feature_dim,
                         in_channels=d.channels, image_size=d.image_size)
    model.load_state_dict(state["model"])
    model.eval()
    target = GlobalGaussians.from_stats(state["extra"]["global_stats"], d.num_classes,
                                        variance_floor=settings.algorithm.variance_floor, device=torch.device("cpu"))
    means = target.means[target.classes].float()
    between = torch.cdist(means, means)[~torch.eye(len(means), dtype=torch.bool)]
    radius = target.variances[target.classes].float().sum(dim=1).sqrt()
    row: dict = {"run": f"{run.parent.name}/{run.name}", "class distance / class radius": float(between.median() / radius.median())}
    synthetic_between = 0.0
    with torch.no_grad():
        for scale in SCALES:
            images = synthesize(vtc, target, per_class=PER_CLASS, generator=torch.Generator().manual_seed(0),
                                noise_scale=scale)
            within, across = spread(vtc.to_pixels(images.x).view(len(target.classes), PER_CLASS, -1))
            row[f"synthetic within-class std, noise x{scale:g}"] = within
            synthetic_between = across if scale == 1.0 else synthetic_between
        row["synthetic between-class std"] = synthetic_between
        real = real_images(settings)
        reconstructed = vtc(model.extractor(real.flatten(0, 1)))
        row["psi(g(x)) within-class std"] = spread(vtc.to_pixels(reconstructed).view(*real.shape[:2], -1))[0]
        within, across = spread(to_unit_pixels(real.flatten(0, 1), d.mean, d.std).view(*real.shape[:2], -1))
        row["real within-class std"], row["real between-class std"] = within, across
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--client", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    args = parser.parse_args()
    rows = [diagnose(run, args.client) for run in args.runs]
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(v if isinstance(v, str) else f"{v:.3f}" for v in row.values()) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
