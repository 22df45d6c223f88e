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
from torch.nn import functional as F

from fedvtc.cache import cache_dir
from fedvtc.data import ImageSet
from fedvtc.seeding import derive_seed, torch_generator
from fedvtc.state import save_state
from fedvtc.training import evaluate, train_local
from fedvtc.zoo import HeteroModel, create_model

REFERENCE_FILE = "reference_classifier.pt"
MIN_STEPS = 300  # a tiny training pool still gets enough SGD steps to make a usable judge
_REFERENCE_SEED_TAG = 1_000_003  # keeps the reference's randomness apart from every client's


# Blur strengths of the degraded copies (Gaussian sigma in pixels; 0 = sharp) and the range of the
# contrast factor: a decoder's images are smoother and dimmer than real ones, and a judge trained on
# sharp images alone labels such images by their sharpness rather than their class (measured:
# RESULTS.md "Readings", the same synthetic digits 10 % recognised by a plain judge, 64 % by this one).
BLUR_SIGMAS = (0.0, 0.75, 1.25, 1.75)
CONTRAST_RANGE = (0.3, 1.0)


def _gaussian_kernel(sigma: float, size: int = 7) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float32) - size // 2
    k = torch.exp(-(ax**2) / (2 * sigma**2))
    k = k / k.sum()
    return torch.outer(k, k)


def degraded(data: ImageSet, mean, std, *, generator: torch.Generator) -> ImageSet:
    """A copy of ``data`` with every image blurred (a random one of ``BLUR_SIGMAS``) and its contrast
    scaled by a random factor in ``CONTRAST_RANGE``, in [0, 1] pixel space; labels unchanged."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = data.x * s + m
    n, channels = pixels.shape[:2]
    level = torch.randint(len(BLUR_SIGMAS), (n,), generator=generator)
    out = pixels.clone()
    for i, sigma in enumerate(BLUR_SIGMAS):
        idx = (level == i).nonzero().flatten()
        if sigma == 0 or len(idx) == 0:
            continue
        kernel = _gaussian_kernel(sigma).expand(channels, 1, 7, 7)
        out[idx] = F.conv2d(F.pad(pixels[idx], (3, 3, 3, 3), mode="replicate"), kernel, groups=channels)
    low, high = CONTRAST_RANGE
    out = out * (torch.rand(n, 1, 1, 1, generator=generator) * (high - low) + low)
    return ImageSet((out - m) / s, data.y.clone())


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
    robust_to: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> tuple[HeteroModel, float | None]:
    """Train ``arch`` on ``data`` with SGD (lr 0.01, momentum 0.9, batch 64); return it and its test accuracy.

    Runs ``epochs`` epochs, or more when that is fewer than ``MIN_STEPS`` steps. With ``robust_to``
    (the dataset's normalization ``(mean, std)``) it trains on ``data`` plus a ``degraded`` copy of
    it, so that it judges the class of an image, not how sharp it is.
    """
    threads = torch.get_num_threads()
    # One thread, whatever the caller runs with: CPU kernels sum in a thread-dependent order, and the
    # judge must come out the same in a run and in its resume (which may run with other threads).
    torch.set_num_threads(1)
    try:
        return _train_reference(data, arch=arch, num_classes=num_classes, in_channels=in_channels,
                                image_size=image_size, epochs=epochs, seed=seed, test=test, robust_to=robust_to)
    finally:
        torch.set_num_threads(threads)


def _train_reference(data, *, arch, num_classes, in_channels, image_size, epochs, seed, test, robust_to):
    if robust_to is not None:
        copy = degraded(data, *robust_to, generator=torch_generator(seed, _REFERENCE_SEED_TAG, 1))
        data = ImageSet(torch.cat([data.x, copy.x]), torch.cat([data.y, copy.y]))
    epochs = max(epochs, math.ceil(MIN_STEPS * 64 / max(len(data), 1)))
    torch.manual_seed(derive_seed(seed, _REFERENCE_SEED_TAG))
    model = create_model(arch, num_classes=num_classes, feature_dim=64, in_channels=in_channels, image_size=image_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train_local(model, data, optimizer, epochs=epochs, batch_size=64,
                generator=torch_generator(seed, _REFERENCE_SEED_TAG), grad_clip=10.0)
    accuracy = evaluate(model, test)[1] if test is not None else None
    return model, accuracy


def save_reference(model: HeteroModel, directory: str | os.PathLike, *, test_accuracy: float | None,
                   file: str = REFERENCE_FILE) -> Path:
    path = Path(directory) / file
    save_state(path, {"arch": model.arch, "model": model.state_dict(), "test_accuracy": test_accuracy,
                      "sizes": (model.num_classes, model.in_channels, model.image_size)})
    return path


# The last reference loaded in this process, by file identity: a client scores its images with the
# same judge every round, and a Ray actor serves many clients of one run.
_LOADED: dict[str, tuple[tuple[int, int], HeteroModel]] = {}


def load_reference(directory: str | os.PathLike) -> HeteroModel | None:
    """The run's reference classifier, or None when the run has none (e.g. on a remote SuperNode)."""
    path = Path(directory) / REFERENCE_FILE
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    identity = (stat.st_mtime_ns, stat.st_size)
    cached = _LOADED.get(str(path))
    if cached is not None and cached[0] == identity:
        return cached[1]
    state = torch.load(path, map_location="cpu", weights_only=False)
    num_classes, in_channels, image_size = state["sizes"]
    model = create_model(state["arch"], num_classes=num_classes, feature_dim=64, in_channels=in_channels,
                         image_size=image_size)
    model.load_state_dict(state["model"])
    model.eval()
    _LOADED.clear()  # one judge at a time: a sweep's cells each have their own
    _LOADED[str(path)] = (identity, model)
    return model


# --- the cache of trained judges -------------------------------------------------------------------
# A judge is a pure function of its training pool, its settings and the code (it trains on one
# thread, so the same inputs give the same weights bit for bit). The cells of a sweep that share a
# pool (every FedVTC variant of one dataset, seed and training fraction, whatever the partition)
# share one judge instead of each training its own: the cache keeps trained judges by a key of all
# of that (``reference_key``), in $FEDVTC_CACHE_DIR (default ~/.cache/fedvtc; "off" disables it).


def reference_key(**inputs: object) -> str:
    """A digest of everything a judge depends on, as the caller names it: the pool's indices, the
    settings, the test subset, and the code (``fedvtc.apps.source_fingerprint``)."""
    import hashlib
    import json

    def plain(value: object) -> object:
        if isinstance(value, np.ndarray):
            return hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
        return value

    text = json.dumps({k: plain(v) for k, v in sorted(inputs.items())}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def reference_from_cache(key: str, output_dir: str | os.PathLike) -> float | None | bool:
    """Copy the cached judge of ``key`` into ``output_dir``; its test accuracy, or False on a miss."""
    directory = cache_dir()
    name = f"reference-{key[:32]}.pt"
    if directory is None or not (directory / name).exists():
        return False
    try:
        state = torch.load(directory / name, map_location="cpu", weights_only=False)
        accuracy = state["test_accuracy"]
    except Exception:  # a damaged entry is a miss; it is rewritten after training
        return False
    save_state(Path(output_dir) / REFERENCE_FILE, state)  # the same file save_reference writes
    return accuracy


def reference_to_cache(key: str, model: HeteroModel, test_accuracy: float | None) -> None:
    """Keep a trained judge for later runs (best effort: an unwritable cache only costs time)."""
    directory = cache_dir()
    if directory is None:
        return
    try:
        save_reference(model, directory, test_accuracy=test_accuracy, file=f"reference-{key[:32]}.pt")
    except OSError:
        pass


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
