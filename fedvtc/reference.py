"""A reference classifier that judges synthetic images: are they recognisable as their class?

Trained centrally, once per run, on the run's whole real training pool (what no client has alone),
it labels each client's synthetic images. ``synthetic_accuracy`` is the fraction it labels with the
class they were generated for, overall and for the classes the client lacks: a generator that only
reproduces its own classes scores near chance on the latter. It measures the generator; it takes no
part in training.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from fedvtc.data import ImageSet
from fedvtc.seeding import derive_seed, torch_generator
from fedvtc.state import save_state
from fedvtc.training import evaluate, train_local
from fedvtc.zoo import HeteroModel, create_model

REFERENCE_FILE = "reference_classifier.pt"
MIN_STEPS = 300  # a tiny training pool still gets enough SGD steps to make a usable judge
_REFERENCE_SEED_TAG = 1_000_003  # keeps the reference's randomness apart from every client's


def train_reference(
    data: ImageSet,
    *,
    arch: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    epochs: int,
    seed: int,
    test: ImageSet | None = None,
) -> tuple[HeteroModel, float | None]:
    """Train ``arch`` on ``data`` with SGD (lr 0.01, momentum 0.9, batch 64); return it and its test accuracy.

    Runs ``epochs`` epochs, or more when that is fewer than ``MIN_STEPS`` steps.
    """
    epochs = max(epochs, math.ceil(MIN_STEPS * 64 / max(len(data), 1)))
    torch.manual_seed(derive_seed(seed, _REFERENCE_SEED_TAG))
    model = create_model(arch, num_classes=num_classes, feature_dim=64, in_channels=in_channels, image_size=image_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train_local(model, data, optimizer, epochs=epochs, batch_size=64,
                generator=torch_generator(seed, _REFERENCE_SEED_TAG), grad_clip=10.0)
    accuracy = evaluate(model, test)[1] if test is not None else None
    return model, accuracy


def save_reference(model: HeteroModel, directory: str | os.PathLike, *, test_accuracy: float | None) -> Path:
    path = Path(directory) / REFERENCE_FILE
    save_state(path, {"arch": model.arch, "model": model.state_dict(), "test_accuracy": test_accuracy,
                      "sizes": (model.num_classes, model.in_channels, model.image_size)})
    return path


def load_reference(directory: str | os.PathLike) -> HeteroModel | None:
    """The run's reference classifier, or None when the run has none (e.g. on a remote SuperNode)."""
    path = Path(directory) / REFERENCE_FILE
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    num_classes, in_channels, image_size = state["sizes"]
    model = create_model(state["arch"], num_classes=num_classes, feature_dim=64, in_channels=in_channels,
                         image_size=image_size)
    model.load_state_dict(state["model"])
    return model.eval()


@torch.no_grad()
def synthetic_accuracy(
    reference: HeteroModel, images: torch.Tensor, labels: torch.Tensor, local_classes: np.ndarray
) -> dict[str, float]:
    """Fraction of synthetic images the reference labels with their intended class.

    Returns ``synthetic_accuracy`` over all images, ``synthetic_accuracy_held`` over the classes in
    ``local_classes`` and ``synthetic_accuracy_missing`` over the others (NaN-free: a group with no
    image is omitted, e.g. ``missing`` when the client holds every class).
    """
    predicted = torch.cat([reference(b).argmax(1) for b in images.split(512)])
    correct = (predicted == labels.to(predicted.device)).cpu()
    out = {"synthetic_accuracy": float(correct.float().mean())}
    missing = ~torch.isin(labels.cpu(), torch.as_tensor(local_classes))
    for name, mask in (("held", ~missing), ("missing", missing)):
        if bool(mask.any()):
            out[f"synthetic_accuracy_{name}"] = float(correct[mask].float().mean())
    return out
