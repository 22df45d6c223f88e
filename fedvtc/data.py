"""Image datasets as normalized in-memory tensors.

Federated clients index into the same dataset every round, so each split is decoded once per
process into a single ``float32`` tensor (N, C, H, W), already resized and normalized, and then
memoized: the second :func:`load_dataset` call in a process (e.g. another client running in the same
Ray worker) returns the very same :class:`ImageSet` objects at no cost. Training loops then only
slice tensors; no PIL or per-sample transform work happens after loading.

Two kinds of sources are supported (``DatasetSpec.source``):

* the name of a ``torchvision.datasets`` class ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100",
  "SVHN", ...), constructed as ``cls(root, download=..., **train_kwargs)`` / ``**test_kwargs``;
* ``"imagefolder"``, a Tiny-ImageNet-like tree of class subfolders::

      <data_dir>/<subdir>/train/<class_name>/**/*.png|jpg|jpeg
      <data_dir>/<subdir>/test/<class_name>/**/*.png|jpg|jpeg   (or val/, see below)

  Class indices follow the sorted class-folder names of the train split. The folder of each split
  can be set with ``train_kwargs={"folder": ...}`` / ``test_kwargs={"folder": ...}``; without it
  the train split is ``train/`` and the test split is ``test/``, or ``val/`` when there is no
  ``test/``. Images are found recursively below each class folder, so the official Tiny-ImageNet
  ``train/<wnid>/images/*.JPEG`` layout works as is, but its ``val/images/`` + ``val_annotations.txt``
  layout must first be rearranged into ``val/<wnid>/`` class subfolders.

The data directory comes from the caller (the Hydra config), else from the ``FEDVTC_DATA_DIR``
environment variable, else ``./data`` (see :func:`resolve_data_dir`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedvtc.cache import cache_dir
from fedvtc.state import save_state


def _torchvision():
    """torchvision, imported on first use: a process that never loads a dataset from its files (a
    deployed ClientApp with its share cached, fedvtc.federated_data.client_share) is spared its
    import, about a second of every message's start."""
    from fedvtc.tv import torchvision

    return torchvision


# The torchvision dataset classes of this project's dataset configs, checked without importing
# torchvision (any other class name is looked up in torchvision.datasets).
KNOWN_SOURCES = frozenset({"MNIST", "FashionMNIST", "CIFAR10", "CIFAR100", "SVHN", "KMNIST", "EMNIST", "STL10"})

__all__ = [
    "DATA_DIR_ENV",
    "DatasetNotFoundError",
    "DatasetSpec",
    "IMAGEFOLDER",
    "ImageSet",
    "clear_dataset_cache",
    "load_dataset",
    "resolve_data_dir",
]

log = logging.getLogger(__name__)

#: Environment variable consulted when no data directory is given.
DATA_DIR_ENV = "FEDVTC_DATA_DIR"
#: The ``DatasetSpec.source`` value that selects the class-subfolder loader.
IMAGEFOLDER = "imagefolder"

_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
# Images per chunk when converting uint8 -> normalized float32: bounds the temporary float copies
# (resize, channel conversion) to a few hundred MB even when upsampling large datasets.
_CHUNK = 4096
# Per-socket-operation timeout while torchvision downloads. torchvision calls urlopen without a
# timeout, so behind a firewall that silently drops packets an offline download would hang forever.
_DOWNLOAD_SOCKET_TIMEOUT_S = 15.0
_SHARED_MATERIALIZE = "../shared/datasets/materialize.py"


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not under the data directory and could not be downloaded."""


# --------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------


def _default_train_kwargs() -> dict[str, Any]:
    return {"train": True}


def _default_test_kwargs() -> dict[str, Any]:
    return {"train": False}


@dataclass(frozen=True)
class DatasetSpec:
    """What to load and how to present it; mirrors the ``conf/dataset/*.yaml`` files.

    Args:
        name: Short identifier used in logs and results (e.g. "cifar10").
        source: A ``torchvision.datasets`` class name ("MNIST", "CIFAR10", "SVHN", ...) or
            ``"imagefolder"`` for a tree of class subfolders (see the module docstring).
        image_size: Side length in pixels of the square images handed to models; stored images of
            another size are resized once at load time (bilinear, antialiased).
        channels: 1 (grayscale) or 3 (RGB); stored images are converted once if they differ.
        num_classes: Number of labels; loaded labels must lie in ``0..num_classes-1``.
        mean: Per-channel mean used for normalization (length ``channels``, or 1 to broadcast).
        std: Per-channel standard deviation (same length rules as ``mean``; all > 0).
        skip_md5: Load torchvision files that are present without verifying their md5 sums
            (needed for repacked copies such as the shared CIFAR files on this project's machines).
        train_kwargs: Constructor keyword arguments selecting the train split, e.g.
            ``{"train": True}`` or for SVHN ``{"split": "train"}``. For ``imagefolder`` an optional
            ``{"folder": "train"}`` naming the split's folder.
        test_kwargs: Likewise for the test split (``{"train": False}``, ``{"split": "test"}``,
            ``{"folder": "val"}``).
        subdir: Folder under the data directory that serves as the dataset root (torchvision
            sources: the ``root`` argument; imagefolder: the folder holding ``train/`` and
            ``test/``). ``None`` uses the data directory itself.
    """

    name: str
    source: str
    image_size: int
    channels: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skip_md5: bool = False
    # hash=False: dicts are unhashable; equality still compares them, so equal specs hash equally.
    train_kwargs: dict[str, Any] = field(default_factory=_default_train_kwargs, hash=False)
    test_kwargs: dict[str, Any] = field(default_factory=_default_test_kwargs, hash=False)
    subdir: str | None = None

    def __post_init__(self) -> None:
        # Normalize container types (YAML gives lists, callers may share their dicts) so the spec
        # cannot change behind the loader's cache.
        object.__setattr__(self, "mean", _float_tuple("mean", self.mean))
        object.__setattr__(self, "std", _float_tuple("std", self.std))
        object.__setattr__(self, "train_kwargs", _plain_dict("train_kwargs", self.train_kwargs))
        object.__setattr__(self, "test_kwargs", _plain_dict("test_kwargs", self.test_kwargs))
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"dataset.name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"dataset.source must be a non-empty string, got {self.source!r}")
        if self.source != IMAGEFOLDER and self.source not in KNOWN_SOURCES:
            cls = getattr(_torchvision().datasets, self.source, None)
            if not isinstance(cls, type):
                raise ValueError(
                    f"dataset.source={self.source!r} is neither {IMAGEFOLDER!r} nor a class in "
                    "torchvision.datasets (names are case-sensitive, e.g. 'MNIST', 'FashionMNIST', "
                    "'CIFAR10', 'CIFAR100', 'SVHN')"
                )
        for key in ("image_size", "num_classes"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"dataset.{key} must be a positive integer, got {value!r}")
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise ValueError(f"dataset.channels must be 1 or 3, got {self.channels!r}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if len(value) not in (1, self.channels):
                raise ValueError(
                    f"dataset.{key} must have 1 or channels={self.channels} entries, got {list(value)}"
                )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"dataset.std entries must be > 0, got {list(self.std)}")
        if not isinstance(self.skip_md5, bool):
            raise ValueError(f"dataset.skip_md5 must be true or false, got {self.skip_md5!r}")
        if self.subdir is not None and (not isinstance(self.subdir, str) or not self.subdir):
            raise ValueError(f"dataset.subdir must be a non-empty string or null, got {self.subdir!r}")
        if self.source == IMAGEFOLDER:
            for key in ("train_kwargs", "test_kwargs"):
                extra = set(getattr(self, key)) - {"folder"}
                if extra:
                    raise ValueError(
                        f"dataset.{key} for source={IMAGEFOLDER!r} accepts only 'folder', got {sorted(extra)}"
                    )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetSpec:
        """Build a spec from a mapping such as a Hydra/OmegaConf ``cfg.dataset`` node.

        Args:
            d: Mapping with the field names of :class:`DatasetSpec`; ``name`` through ``std`` are
                required, the rest optional. Lists (``mean``/``std``) become tuples. Unknown keys
                are rejected so that typos in configs or overrides do not pass silently.

        Raises:
            ValueError: on missing or unknown keys, or on invalid values.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"dataset config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        given = set(d.keys())
        unknown = sorted(str(k) for k in given - known)
        if unknown:
            raise ValueError(f"unknown dataset config key(s) {unknown}; valid keys: {sorted(known)}")
        required = ("name", "source", "image_size", "channels", "num_classes", "mean", "std")
        missing = [k for k in required if k not in given]
        if missing:
            raise ValueError(f"dataset config is missing key(s) {missing}")
        kwargs = {k: d[k] for k in given}
        # YAML null for a kwargs entry means "use the default split selector".
        for key in ("train_kwargs", "test_kwargs"):
            if key in kwargs and kwargs[key] is None:
                del kwargs[key]
        return cls(**kwargs)

    def cache_key(self) -> tuple[Any, ...]:
        """A hashable value identifying everything that affects the loaded tensors."""
        return (
            self.source,
            self.image_size,
            self.channels,
            self.num_classes,
            self.mean,
            self.std,
            self.skip_md5,
            repr(sorted(self.train_kwargs.items())),
            repr(sorted(self.test_kwargs.items())),
            self.subdir,
        )


def _float_tuple(key: str, value: Any) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"dataset.{key} must be a number or a list of numbers, got {value!r}")
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"dataset.{key} must be a list of numbers, got {list(value)!r}") from None


def _plain_dict(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"dataset.{key} must be a mapping, got {value!r}")
    return {str(k): v for k, v in value.items()}


# --------------------------------------------------------------------------------------------
# ImageSet
# --------------------------------------------------------------------------------------------


@dataclass
class ImageSet:
    """Images and labels held as tensors.

    Args:
        x: (N, C, H, W) float32 images, normalized with the dataset's mean/std.
        y: (N,) int64 labels.

    Sets returned by :func:`load_dataset` are shared by every caller in the process: treat their
    tensors as read-only (use :meth:`subset` or ``.clone()`` before any in-place change).
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dim() != 4:
            raise ValueError(f"ImageSet.x must be (N, C, H, W), got shape {tuple(self.x.shape)}")
        if self.y.dim() != 1 or self.y.shape[0] != self.x.shape[0]:
            raise ValueError(
                f"ImageSet.y must be (N,) with N={self.x.shape[0]}, got shape {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: np.ndarray | torch.Tensor | Sequence[int]) -> ImageSet:
        """Return a new set with the samples at positions ``idx`` (a copy, in that order).

        Args:
            idx: Integer positions into this set (numpy array, tensor or sequence), e.g. one
                client's partition from :mod:`fedvtc.partition`.
        """
        index = torch.as_tensor(np.asarray(idx) if not isinstance(idx, torch.Tensor) else idx)
        if index.numel() == 0:
            index = index.reshape(0).long()
        if index.dtype == torch.bool or index.is_floating_point():
            raise TypeError(f"ImageSet.subset expects integer positions, got dtype {index.dtype}")
        index = index.long()
        return ImageSet(self.x[index], self.y[index])


def class_mean_images(pool: ImageSet, classes: torch.Tensor, *, per_class: int) -> ImageSet:
    """``per_class`` copies of each class's mean image in ``pool`` (labelled), for ``classes`` in order.

    The best one template per class can be (in the mean-squared sense): what an averaged decoder
    that keeps only the class means would draw at most. Raises ValueError for a class ``pool`` lacks.
    """
    means = []
    for c in classes.tolist():
        members = pool.x[pool.y == c]
        if len(members) == 0:
            raise ValueError(f"class {c} has no image in the pool to average")
        means.append(members.mean(dim=0, keepdim=True).expand(per_class, *members.shape[1:]))
    labels = classes.cpu().long().repeat_interleave(per_class)
    return ImageSet(torch.cat(means).contiguous(), labels)


def sample_class_images(pool: ImageSet, classes: torch.Tensor, *, per_class: int, generator: torch.Generator) -> ImageSet:
    """``per_class`` images of each of ``classes`` drawn from ``pool`` (without replacement where the
    class has enough), labelled, in the order of ``classes``: what a perfect generator of the pooled
    class distributions would give. Raises ValueError for a class ``pool`` lacks."""
    chosen = []
    for c in classes.tolist():
        members = torch.nonzero(pool.y == c).flatten()
        if len(members) == 0:
            raise ValueError(f"class {c} has no image in the pool to draw from")
        if len(members) >= per_class:
            pick = torch.randperm(len(members), generator=generator)[:per_class]
        else:
            pick = torch.randint(len(members), (per_class,), generator=generator)
        chosen.append(members[pick])
    return pool.subset(torch.cat(chosen))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_CACHE: dict[tuple[Any, ...], tuple[ImageSet, ImageSet]] = {}
_CACHE_LOCK = threading.Lock()


def to_unit_pixels(images: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Undo the dataset normalization: (N, C, H, W) normalized images -> pixels in [0, 1].

    Args:
        images: images normalized as ``(pixels - mean) / std`` (real data and VTC output alike).
        mean: the dataset's per-channel mean (1 or C entries).
        std: the dataset's per-channel standard deviation (same length rules).

    Clamped to [0, 1]: the round trip leaves float errors of ~1e-7 outside the range.
    """
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * s + m).clamp(0.0, 1.0)


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """Absolute data directory: ``data_dir`` if given, else ``$FEDVTC_DATA_DIR``, else ``./data``.

    Args:
        data_dir: Directory given by the caller (``~`` is expanded); ``None`` or ``""`` to fall
            back to the environment variable / default.
    """
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or "data"
    return Path(chosen).expanduser().resolve()


def clear_dataset_cache() -> None:
    """Forget every memoized dataset in this process (mainly for tests and memory pressure)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def load_dataset(
    spec: DatasetSpec, data_dir: str | Path | None, *, download: bool = True
) -> tuple[ImageSet, ImageSet]:
    """Load the train and test splits of ``spec`` as normalized tensors, once per process.

    Args:
        spec: What to load (source, size, channels, normalization, split selectors).
        data_dir: Directory holding the datasets (torchvision's ``root``); relative paths are
            resolved against the current directory, ``None`` means :func:`resolve_data_dir`'s
            fallbacks. Results are memoized on ``(spec, resolved data_dir)``.
        download: Let torchvision fetch missing files from the internet. Unpacking archives that
            are already present (e.g. ``MNIST/raw/*.gz``) needs no network and happens even when
            this is ``False``.

    Returns:
        ``(train, test)`` image sets. They are shared with later callers: do not modify in place.

    Raises:
        DatasetNotFoundError: files missing (or failing their md5 check) and not downloadable.
        ValueError: the spec does not fit the data (bad split kwargs, labels >= num_classes, ...).
    """
    root = resolve_data_dir(data_dir)
    key = (spec.cache_key(), str(root))
    # One lock for the whole load: two threads asking for the same data should not both decode it.
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        start = time.perf_counter()
        if spec.source == IMAGEFOLDER:
            result = _load_imagefolder(spec, root)
        else:
            result = _load_torchvision(spec, root, download=download)
        for split, imgs in zip(("train", "test"), result):
            _check_labels(spec, split, imgs.y)
        _CACHE[key] = result
        log.info(
            "loaded dataset %s from %s: train %s, test %s in %.1f s",
            spec.name,
            root,
            tuple(result[0].x.shape),
            tuple(result[1].x.shape),
            time.perf_counter() - start,
        )
        return result


def _check_labels(spec: DatasetSpec, split: str, y: torch.Tensor) -> None:
    if y.numel() == 0:
        raise ValueError(f"dataset {spec.name}: the {split} split is empty")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= spec.num_classes:
        raise ValueError(
            f"dataset {spec.name}: {split} labels span {lo}..{hi}, outside 0..{spec.num_classes - 1}; "
            "check dataset.num_classes"
        )


# ---- torchvision sources ---------------------------------------------------------------------


def _dataset_class(spec: DatasetSpec) -> type:
    """The torchvision class for ``spec``, made to skip md5 verification if ``spec.skip_md5``."""
    base: type = getattr(_torchvision().datasets, spec.source)
    if not spec.skip_md5:
        return base
    attrs: dict[str, Any] = {"__module__": __name__, "__qualname__": base.__name__}
    if hasattr(base, "train_list") and hasattr(base, "test_list"):
        # CIFAR family: keep torchvision's own existence checks but drop the md5 sums, so missing
        # files are still reported as missing rather than as a pickle error.
        attrs["train_list"] = [[entry[0], None] for entry in base.train_list]
        attrs["test_list"] = [[entry[0], None] for entry in base.test_list]
        meta = getattr(base, "meta", None)
        if isinstance(meta, dict) and "md5" in meta:
            attrs["meta"] = {**meta, "md5": None}
    elif hasattr(base, "_check_integrity"):
        # Other datasets with an md5 check (e.g. SVHN): accept what is there; a missing file then
        # surfaces as an OSError while reading, which load_dataset reports like a missing dataset.
        attrs["_check_integrity"] = lambda self: True
    else:
        return base  # nothing to skip (MNIST family checks existence only)
    # Same class name on purpose: MNIST-style datasets derive their folder from the class name.
    return type(base.__name__, (base,), attrs)


def _archives_present(cls: type, root: Path) -> bool:
    """True if an MNIST-style dataset's archives are all on disk (so "download" is offline)."""
    resources = getattr(cls, "resources", None)
    if not isinstance(resources, (list, tuple)) or not resources:
        return False
    raw = root / cls.__name__ / "raw"
    try:
        names = [os.path.basename(str(entry[0])) for entry in resources]
    except (TypeError, IndexError):
        return False
    return all((raw / name).is_file() for name in names)


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _construct(spec: DatasetSpec, cls: type, root: Path, split: str, download: bool) -> Any:
    kwargs = spec.train_kwargs if split == "train" else spec.test_kwargs
    try:
        # Try the files on disk first: it is the common case and never touches the network.
        return cls(str(root), download=False, **kwargs)
    except TypeError as error:
        raise ValueError(
            f"torchvision.datasets.{spec.source} rejected dataset.{split}_kwargs={kwargs}: {error}"
        ) from error
    except (RuntimeError, OSError) as error:
        first_error: Exception = error
    if not (download or _archives_present(cls, root)):
        raise DatasetNotFoundError(_not_found_message(spec, cls, root, first_error, download=False))
    try:
        with _socket_timeout(_DOWNLOAD_SOCKET_TIMEOUT_S):
            return cls(str(root), download=True, **kwargs)
    except Exception as error:  # noqa: BLE001 - URLError, HTTPError, RuntimeError, timeouts, ...
        raise DatasetNotFoundError(
            _not_found_message(spec, cls, root, error, download=True)
        ) from error


def _expected_files(cls: type) -> list[str]:
    """Human-readable list of what torchvision looks for under ``root``."""
    if hasattr(cls, "resources") and isinstance(getattr(cls, "resources"), (list, tuple)):
        return [f"{cls.__name__}/raw/{os.path.basename(str(e[0]))}" for e in cls.resources]
    if hasattr(cls, "base_folder") and hasattr(cls, "train_list"):
        names = [e[0] for e in list(cls.train_list) + list(cls.test_list)]
        meta = getattr(cls, "meta", None)
        if isinstance(meta, dict) and "filename" in meta:
            names.append(meta["filename"])
        return [f"{cls.base_folder}/ ({', '.join(names)})"]
    if hasattr(cls, "split_list") and isinstance(cls.split_list, dict):
        return [str(entry[1]) for entry in cls.split_list.values()]
    return [f"the files described in the torchvision.datasets.{cls.__name__} documentation"]


def _md5_mismatch_likely(cls: type, root: Path) -> bool:
    base_folder = getattr(cls, "base_folder", None)
    if base_folder and hasattr(cls, "train_list"):
        return all((root / base_folder / e[0]).is_file() for e in cls.train_list)
    if hasattr(cls, "split_list") and isinstance(cls.split_list, dict):
        return any((root / str(e[1])).is_file() for e in cls.split_list.values())
    return False


def _not_found_message(
    spec: DatasetSpec, cls: type, root: Path, error: BaseException, *, download: bool
) -> str:
    expected = ", ".join(_expected_files(cls))
    what = f"dataset {spec.name!r} (torchvision.datasets.{spec.source})"
    if not spec.skip_md5 and _md5_mismatch_likely(cls, root):
        lines = [
            f"{what}: the files in {root} failed torchvision's md5 check. Repacked copies (such as "
            "the shared CIFAR files on this project's machines) load with dataset.skip_md5=true."
        ]
    else:
        lines = [f"{what} not found in {root}."]
    lines.append(f"Expected there: {expected}.")
    if download:
        lines.append(f"Downloading failed ({type(error).__name__}: {_one_line(error)}).")
    else:
        lines.append(f"Downloading is disabled ({type(error).__name__}: {_one_line(error)}).")
    lines.append(
        f"Fix: point data_dir (or ${DATA_DIR_ENV}) at a directory holding the files; on this "
        f"project's offline machines run `python {_SHARED_MATERIALIZE} DIR` and use DIR; or run "
        "once with internet access and download enabled."
    )
    return " ".join(lines)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _load_torchvision(spec: DatasetSpec, data_dir: Path, *, download: bool) -> tuple[ImageSet, ImageSet]:
    root = data_dir / spec.subdir if spec.subdir else data_dir
    cls = None
    out = []
    for split in ("train", "test"):
        arrays = _cached_arrays(spec, root, split)
        if arrays is None:
            cls = cls or _dataset_class(spec)
            arrays = _arrays_from_dataset(_construct(spec, cls, root, split, download), spec)
            _cache_arrays(spec, root, split, arrays)
        images, labels = arrays
        out.append(ImageSet(_normalize(images, spec), labels))
    return out[0], out[1]


# ---- the decoded arrays, kept between processes ----------------------------------------------
# Importing torchvision takes about 2 s of CPU (it imports torch._dynamo), and every process that
# loads a dataset would pay it: each Ray actor, each run's driver, a deployed node's first
# ClientApp. So the arrays torchvision decodes (uint8 images, int64 labels, before resizing and
# normalization) are kept in the cache directory (fedvtc.cache), keyed by the dataset, the split,
# whether md5 sums are checked, and the name, size and modification time of every file in the
# dataset's folder: changed files are read (and checked) again. Only the datasets whose folder is
# known here are kept.
_SOURCE_FOLDERS = {
    "MNIST": "MNIST", "FashionMNIST": "FashionMNIST", "KMNIST": "KMNIST", "EMNIST": "EMNIST",
    "CIFAR10": "cifar-10-batches-py", "CIFAR100": "cifar-100-python", "STL10": "stl10_binary",
}


def _arrays_path(spec: DatasetSpec, root: Path, split: str) -> Path | None:
    """Where the decoded ``split`` of ``spec`` under ``root`` is kept; None when it is not kept."""
    directory = cache_dir()
    folder = _SOURCE_FOLDERS.get(spec.source)
    if directory is None or folder is None or not (root / folder).is_dir():
        return None
    files = []
    for path in sorted((root / folder).rglob("*")):
        if path.is_file():
            stat = path.stat()
            files.append((str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns))
    kwargs = spec.train_kwargs if split == "train" else spec.test_kwargs
    where = {"kwargs": kwargs, "skip_md5": spec.skip_md5, "root": str(root.resolve())}
    return directory / f"dataset-{spec.source}-{split}-{_digest(where)[:16]}-{_digest(files)[:16]}.pt"


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _cached_arrays(spec: DatasetSpec, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    path = _arrays_path(spec, root, split)
    if path is None or not path.is_file():
        return None
    try:
        kept = torch.load(path, map_location="cpu", weights_only=True)
        return kept["images"], kept["labels"]
    except Exception:  # a damaged file: decode again (and rewrite it)
        return None


def _cache_arrays(spec: DatasetSpec, root: Path, split: str, arrays: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Keep the decoded arrays (best effort: an unwritable cache only costs time)."""
    path = _arrays_path(spec, root, split)
    if path is None:
        return
    try:
        # As decoded (CIFAR's images a channels-first view of torchvision's array: torch.save keeps
        # the strides), so that what is normalized from the cache is the same, bit for bit.
        save_state(path, {"images": arrays[0], "labels": arrays[1]})
        # One entry per dataset, split and place: the arrays of files since changed go.
        stale_files = path.name.rsplit("-", 1)[0] + "-*.pt"
        for stale in path.parent.glob(stale_files):
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError:
        pass


def _arrays_from_dataset(ds: Any, spec: DatasetSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) uint8 images and (N,) int64 labels from a constructed torchvision dataset."""
    data = getattr(ds, "data", None)
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = getattr(ds, "labels", None)
    images = _uint8_nchw(data) if data is not None and targets is not None else None
    if images is not None:
        labels = torch.as_tensor(np.asarray(targets)).long().reshape(-1)
        if labels.shape[0] == images.shape[0]:
            return images, labels
    # Datasets that keep file paths or odd layouts: decode once through the dataset itself.
    log.info("dataset %s: no usable .data/.targets arrays, decoding sample by sample", spec.name)
    return _decode_dataset(ds, spec)


def _uint8_nchw(data: Any) -> torch.Tensor | None:
    """View ``data`` as (N, C, H, W) uint8 if its layout is recognizable, else ``None``."""
    if isinstance(data, np.ndarray):
        tensor = torch.from_numpy(data)
    elif isinstance(data, torch.Tensor):
        tensor = data
    else:
        return None
    if tensor.dtype != torch.uint8:
        return None
    if tensor.dim() == 3:  # NHW, e.g. MNIST
        return tensor.unsqueeze(1)
    if tensor.dim() == 4:
        if tensor.shape[-1] in (1, 3) and tensor.shape[1] not in (1, 3):  # NHWC, e.g. CIFAR
            return tensor.permute(0, 3, 1, 2)
        if tensor.shape[1] in (1, 3):  # NCHW, e.g. SVHN
            return tensor
    return None


def _decode_dataset(ds: Any, spec: DatasetSpec) -> tuple[torch.Tensor, torch.Tensor]:
    mode = "L" if spec.channels == 1 else "RGB"
    to_tensor = _torchvision().transforms.PILToTensor()
    # The dataset was built without transforms, so samples come back as PIL images.
    images, labels = [], []
    for i in range(len(ds)):
        img, target = ds[i]
        if not hasattr(img, "convert"):
            raise ValueError(
                f"dataset {spec.name}: torchvision.datasets.{spec.source} returns "
                f"{type(img).__name__} samples, not PIL images; it is not supported"
            )
        images.append(_fit_size(to_tensor(img.convert(mode)), spec.image_size))
        labels.append(int(target))
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def _fit_size(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize one (C, H, W) uint8 image to (C, size, size) uint8 if needed."""
    if img.shape[-2:] == (size, size):
        return img
    resized = _resize(img.unsqueeze(0).float(), size).squeeze(0)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    # antialias only matters (and is only allowed to blur) when shrinking.
    shrinking = x.shape[-1] > size or x.shape[-2] > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)


def _normalize(images: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (N, channels, size, size), resized and normalized, in chunks."""
    n, c = images.shape[0], images.shape[1]
    if c not in (1, 3):
        raise ValueError(f"dataset {spec.name}: stored images have {c} channels; only 1 or 3 are supported")
    size = spec.image_size
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    inv_std = 1.0 / torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    # (x / 255 - mean) / std folded into one multiply-subtract done in place on the output: the
    # straightforward out-of-place expression is ~4x slower here. Channel conversion and resizing
    # are linear, so applying them to 0..255 values before the scaling gives the same result.
    scale, shift = inv_std / 255.0, mean * inv_std
    # ITU-R BT.601 luma, the same weights PIL's convert("L") uses.
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(1, 3, 1, 1)
    out = torch.empty((n, spec.channels, size, size), dtype=torch.float32)
    for lo in range(0, n, _CHUNK):
        chunk = images[lo : lo + _CHUNK]
        dest = out[lo : lo + _CHUNK]
        if c != spec.channels or chunk.shape[-2:] != (size, size):
            x = chunk.to(torch.float32)
            if c == 3 and spec.channels == 1:
                x = (x * luma).sum(dim=1, keepdim=True)
            if x.shape[-2:] != (size, size):
                x = _resize(x, size)  # on one channel when gray, before any replication
            dest.copy_(x)  # broadcasts a gray (n, 1, ...) chunk into all three RGB channels
        else:
            dest.copy_(chunk)  # uint8 -> float32 conversion happens in the copy
        dest.mul_(scale).sub_(shift)
    return out


# ---- imagefolder -----------------------------------------------------------------------------


def _load_imagefolder(spec: DatasetSpec, data_dir: Path) -> tuple[ImageSet, ImageSet]:
    root = data_dir / spec.subdir if spec.subdir else data_dir
    train_dir = _split_folder(spec, root, "train")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if len(classes) != spec.num_classes:
        raise ValueError(
            f"dataset {spec.name}: found {len(classes)} class folders in {train_dir}, "
            f"but dataset.num_classes={spec.num_classes}"
        )
    class_index = {name: i for i, name in enumerate(classes)}
    out = []
    for split in ("train", "test"):
        folder = train_dir if split == "train" else _split_folder(spec, root, "test")
        paths, labels = _list_images(spec, folder, class_index)
        images = _decode_files(paths, spec)
        out.append(ImageSet(_normalize(images, spec), torch.tensor(labels, dtype=torch.int64)))
    return out[0], out[1]


def _imagefolder_layout(root: Path) -> str:
    return (
        f"{root}/train/<class_name>/*.png|jpg|jpeg and {root}/test/<class_name>/... "
        "(or val/ instead of test/; class folder names must match between splits)"
    )


def _split_folder(spec: DatasetSpec, root: Path, split: str) -> Path:
    kwargs = spec.train_kwargs if split == "train" else spec.test_kwargs
    if "folder" in kwargs:
        candidates = [str(kwargs["folder"])]
    else:
        candidates = ["train"] if split == "train" else ["test", "val"]
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    tried = " or ".join(str(root / name) for name in candidates)
    raise DatasetNotFoundError(
        f"dataset {spec.name!r} (imagefolder) not found: no {split} folder {tried}. "
        f"Expected layout: {_imagefolder_layout(root)}. Fix: point data_dir (or ${DATA_DIR_ENV}) "
        f"and dataset.subdir at that folder; image folders cannot be downloaded automatically."
    )


def _list_images(spec: DatasetSpec, folder: Path, class_index: dict[str, int]) -> tuple[list[Path], list[int]]:
    paths: list[Path] = []
    labels: list[int] = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if class_dir.name not in class_index:
            raise ValueError(
                f"dataset {spec.name}: class folder {class_dir} has no counterpart in the train split"
            )
        files = sorted(
            p for p in class_dir.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file()
        )
        paths.extend(files)
        labels.extend([class_index[class_dir.name]] * len(files))
    if not paths:
        raise DatasetNotFoundError(
            f"dataset {spec.name!r} (imagefolder): no .png/.jpg/.jpeg images in class folders under "
            f"{folder}. Expected layout: {_imagefolder_layout(folder.parent)}."
        )
    return paths, labels


def _decode_files(paths: list[Path], spec: DatasetSpec) -> torch.Tensor:
    from PIL import Image  # Pillow comes with torchvision

    mode = "L" if spec.channels == 1 else "RGB"
    size = spec.image_size
    out = torch.empty((len(paths), spec.channels, size, size), dtype=torch.uint8)

    def decode(i: int) -> None:
        with Image.open(paths[i]) as img:
            arr = np.array(img.convert(mode), dtype=np.uint8)  # a writable copy for torch
        tensor = torch.from_numpy(arr.reshape(arr.shape[0], arr.shape[1], -1)).permute(2, 0, 1)
        out[i] = _fit_size(tensor, size)

    # Decoding releases the GIL in Pillow, so threads speed up the one-off load of ~10^5 files.
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(decode, range(len(paths))))
    return out
