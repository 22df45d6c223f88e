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

- how much of an image beyond its class the pipeline keeps, on 4,000 training images (3,000 to
  fit, 1,000 held out), as the within-class R^2 (share of the pixel variance left after removing
  each class's mean image that a reconstruction explains): a ridge map from the client's features
  (what the features carry), the run's VTC on those features (what its decoder keeps), and, with
  ``--fresh-decoder-steps N``, a fresh VTC of the same shape trained N steps on this one client's
  frozen features, with the paper's training noise v = z + sigma_y * eps and without it.

A decoder whose within-class std is far below the real images' draws about one image per class
(the class's template). If the features carry much more than the decoder keeps, the loss is in the
decoder's training, not in the features.
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
PROBE_FIT, PROBE_HELD = 3000, 1000
RIDGE = 1.0


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


def within_class(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``values`` minus the mean of its class, row by row."""
    out = values.clone()
    for c in labels.unique():
        out[labels == c] -= values[labels == c].mean(dim=0)
    return out


def r_squared(target: torch.Tensor, estimate: torch.Tensor) -> float:
    return float(1 - ((target - estimate) ** 2).sum() / (target ** 2).sum())


def fresh_decoder_r2(settings, features: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                     stds: torch.Tensor, *, steps: int, noise: float) -> float:
    """Held-out within-class R^2 of a fresh VTC trained ``steps`` Adam steps (lr as the run's,
    batch 32) to reconstruct ``images[:PROBE_FIT]`` from ``features + noise * stds[y] * eps``."""
    torch.manual_seed(0)
    vtc = build_vtc(settings)
    optimizer = torch.optim.Adam(vtc.parameters(), lr=settings.algorithm.vtc.lr)
    generator = torch.Generator().manual_seed(1)
    vtc.train()
    for _ in range(steps):
        batch = torch.randint(0, PROBE_FIT, (32,), generator=generator)
        latents = features[batch] + noise * torch.randn(features[batch].shape, generator=generator) * stds[labels[batch]]
        loss = torch.nn.functional.mse_loss(vtc(latents), images[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    vtc.eval()
    return reconstruction_r2(vtc, features, images, labels)


def reconstruction_r2(vtc, features: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                      *, with_style: bool = False) -> float:
    """Held-out within-class R^2 of the VTC's reconstructions from the features; with ``with_style``
    (a VTC with a style code), also from each image's own code, the mean of q(u | x)."""
    held = slice(PROBE_FIT, PROBE_FIT + PROBE_HELD)
    with torch.no_grad():
        style = vtc.encode_style(images[held])[0] if with_style else None
        rec = vtc.to_pixels(vtc(features[held], style)).flatten(1)
    real = vtc.to_pixels(images[held]).flatten(1)
    return r_squared(within_class(real, labels[held]), within_class(rec, labels[held]))


def diagnose(run: Path, client: int, fresh_decoder_steps: int = 0) -> dict:
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
    with torch.no_grad():
        spreads = {}
        for scale in SCALES:
            images = synthesize(vtc, target, per_class=PER_CLASS, generator=torch.Generator().manual_seed(0),
                                noise_scale=scale)
            spreads[scale] = spread(vtc.to_pixels(images.x).view(len(target.classes), PER_CLASS, -1))
            row[f"synthetic within-class std, noise x{scale:g}"] = spreads[scale][0]
        row["synthetic between-class std"] = spreads[1.0][1]  # as the run synthesizes
        real = real_images(settings)
        reconstructed = vtc(model.extractor(real.flatten(0, 1)))
        row["psi(g(x)) within-class std"] = spread(vtc.to_pixels(reconstructed).view(*real.shape[:2], -1))[0]
        within, across = spread(to_unit_pixels(real.flatten(0, 1), d.mean, d.std).view(*real.shape[:2], -1))
        row["real within-class std"], row["real between-class std"] = within, across

        # What of an image beyond its class survives: features, the run's decoder, a fresh one.
        train, _ = load_dataset(d, None, download=False)
        pick = torch.randperm(len(train.y), generator=torch.Generator().manual_seed(0))[:PROBE_FIT + PROBE_HELD]
        images, labels = train.x[pick], train.y[pick]
        features = model.extractor(images)
        pixels = within_class(to_unit_pixels(images, d.mean, d.std).flatten(1).double(), labels)
        centred = within_class(features.double(), labels)
        fit, held = slice(0, PROBE_FIT), slice(PROBE_FIT, PROBE_FIT + PROBE_HELD)
        gram = centred[fit].T @ centred[fit] + RIDGE * torch.eye(centred.shape[1], dtype=torch.float64)
        ridge = torch.linalg.solve(gram, centred[fit].T @ pixels[fit])
        held_pixels = within_class(to_unit_pixels(images[held], d.mean, d.std).flatten(1).double(), labels[held])
        held_features = within_class(features[held].double(), labels[held])
        row["R2 features (ridge)"] = r_squared(held_pixels, held_features @ ridge)
        row["R2 run's VTC"] = reconstruction_r2(vtc, features, images, labels)
        if vtc.style_dim:  # algorithm.vtc.style_dim: what the image's own style code adds
            row["R2 run's VTC, with the image's style code"] = reconstruction_r2(
                vtc, features, images, labels, with_style=True)
    if fresh_decoder_steps:
        stds = target.variances.sqrt().float()
        for noise in (1.0, 0.0):
            row[f"R2 fresh VTC, {fresh_decoder_steps} steps, noise x{noise:g}"] = fresh_decoder_r2(
                settings, features, images, labels, stds, steps=fresh_decoder_steps, noise=noise)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--client", type=int, default=0)
    parser.add_argument("--fresh-decoder-steps", type=int, default=0,
                        help="also train a fresh VTC this many steps on the client's features (slow: minutes)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    args = parser.parse_args()
    rows = [diagnose(run, args.client, args.fresh_decoder_steps) for run in args.runs]
    columns = list(dict.fromkeys(key for row in rows for key in row))  # runs with a style code add one
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [row.get(c, "–") for c in columns]
        lines.append("| " + " | ".join(v if isinstance(v, str) else f"{v:.3f}" for v in cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
