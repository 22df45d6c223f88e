"""Where a finished run's clients err on the validation images of the classes they hold.

    python benchmarks/held_class_errors.py <run dir> [<run dir> ...]

For each run (a directory with config.yaml and client_state/, e.g. of experiment=readings), the
clients' final models on the validation split, mean over clients:
- accuracy on the classes each holds, and the share of those images it calls a class it lacks;
- accuracy on the held classes with fewer than ``RARE`` local training images (a FedVTC client's
  default synthetic images per class) and on the others, per client-class pair;
- for a FedVTC run, the share of synthetic images of the held classes (the client's final VTC,
  20 per class) that the client calls a class it lacks: the "synthetic = a class I lack" shortcut.
RESULTS.md §1 reads the synthesis.classes reading with it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from fedvtc.algorithms.fedvtc import build_vtc
from fedvtc.config import build_settings
from fedvtc.data import load_dataset
from fedvtc.federated_data import federated_split
from fedvtc.state import load_state
from fedvtc.training import GlobalGaussians, synthesize
from fedvtc.zoo import create_model

RARE = 50
SYNTHETIC_PER_CLASS = 20


def _predict(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(images[i:i + 500]).argmax(1) for i in range(0, len(images), 500)]).numpy()


def diagnose(run: Path) -> str:
    s = build_settings(OmegaConf.load(run / "config.yaml"), output_dir=run)
    d = s.dataset
    train, _ = load_dataset(d, s.data_dir, download=False)
    split = federated_split(s)
    val_x, val_y = train.x[split.validation], train.y[split.validation].numpy()
    to_missing, held_acc, rare, common, synthetic_to_missing = [], [], [], [], []
    for cid in range(s.num_clients):
        state = load_state(run / "client_state" / f"client_{cid}.pt")
        model = create_model(state["arch"], num_classes=d.num_classes, feature_dim=s.feature_dim,
                             in_channels=d.channels, image_size=d.image_size)
        model.load_state_dict(state["model"])
        model.eval()
        held = np.unique(train.y[split.train[cid]].numpy())
        pred = _predict(model, val_x)
        is_held = np.isin(val_y, held)
        to_missing.append(np.mean(~np.isin(pred[is_held], held)))
        held_acc.append(np.mean(pred[is_held] == val_y[is_held]))
        counts = np.bincount(train.y[split.train[cid]].numpy(), minlength=d.num_classes)
        for c in held:
            (rare if counts[c] < RARE else common).append(np.mean(pred[val_y == c] == c))
        extra = state.get("extra", {})
        if "vtc" in extra and extra.get("global_stats") is not None:
            vtc = build_vtc(s)
            vtc.load_state_dict(extra["vtc"])
            target = GlobalGaussians.from_stats(extra["global_stats"], d.num_classes,
                                                variance_floor=s.algorithm.variance_floor, device=torch.device("cpu"))
            classes = torch.as_tensor(held)
            with torch.no_grad():
                images = synthesize(vtc, target, per_class=SYNTHETIC_PER_CLASS, classes=classes[target.present[classes]],
                                    generator=torch.Generator().manual_seed(0))
            synthetic_to_missing.append(np.mean(~np.isin(_predict(model, images.x), held)))
    line = (f"{run.name}: held-class val acc {100 * np.mean(held_acc):.1f}%, held-class images predicted as a "
            f"missing class {100 * np.mean(to_missing):.1f}%; held classes with < {RARE} local images: "
            f"{100 * np.mean(rare):.1f}% ({len(rare)} client-classes), >= {RARE}: {100 * np.mean(common):.1f}% "
            f"({len(common)})")
    if synthetic_to_missing:
        line += f"; synthetic images of held classes called a missing class: {100 * np.mean(synthetic_to_missing):.1f}%"
    return line


def main() -> None:
    torch.set_num_threads(1)
    for run in map(Path, sys.argv[1:]):
        if not (run / "config.yaml").is_file() or not (run / "client_state").is_dir():
            print(f"skipped {run}: not a finished run directory (config.yaml and client_state/)", file=sys.stderr)
            continue
        print(diagnose(run))


if __name__ == "__main__":
    main()
