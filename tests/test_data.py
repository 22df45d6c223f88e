"""Tests for fedvtc.data (dataset specs, tensor loading, image folders, config files)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from fedvtc.data import (
    DatasetNotFoundError,
    DatasetSpec,
    ImageSet,
    class_mean_images,
    sample_class_images,
    clear_dataset_cache,
    load_dataset,
    to_unit_pixels,
)
from fedvtc.tv import torchvision

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    # Each test loads its own variants; dropping them afterwards keeps the pytest process from
    # holding a few GB of tensors for the rest of the session.
    clear_dataset_cache()
    yield
    clear_dataset_cache()


def _spec(name: str, **overrides: object) -> DatasetSpec:
    """The spec from conf/dataset/<name>.yaml, with field overrides."""
    return DatasetSpec.from_dict({**yaml.safe_load((CONF / f"{name}.yaml").read_text()), **overrides})


def _require(data_dir: Path, folder: str) -> None:
    if not (data_dir / folder).exists():
        pytest.skip(f"{data_dir} has no {folder}/")


def test_mnist_shapes_normalization_and_memoization(data_dir: Path) -> None:
    _require(data_dir, "MNIST")
    spec = _spec("mnist")
    train, test = load_dataset(spec, data_dir, download=False)
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert train.y.shape == (60000,) and set(train.y.unique().tolist()) == set(range(10))
    assert abs(float(train.x.mean())) < 0.01 and abs(float(train.x.std()) - 1.0) < 0.01

    start = time.perf_counter()
    again = load_dataset(_spec("mnist"), str(data_dir), download=False)  # equal spec, str path
    assert time.perf_counter() - start < 0.05
    assert again[0] is train and again[1] is test


def test_mnist_resized_to_rgb(data_dir: Path) -> None:
    _require(data_dir, "MNIST")
    spec = _spec("mnist", image_size=32, channels=3, mean=[0.1307], std=[0.3081])
    train, test = load_dataset(spec, data_dir, download=False)
    assert train.x.shape == (60000, 3, 32, 32) and test.x.shape == (10000, 3, 32, 32)
    assert torch.equal(train.x[:, 0], train.x[:, 2])  # gray replicated into all channels


def test_cifar10_with_skip_md5(data_dir: Path) -> None:
    _require(data_dir, "cifar-10-batches-py")
    train, test = load_dataset(_spec("cifar10", skip_md5=True), data_dir, download=False)
    assert train.x.shape == (50000, 3, 32, 32) and test.x.shape == (10000, 3, 32, 32)
    assert torch.equal(train.y.bincount(), torch.full((10,), 5000))
    channel_mean = train.x.mean(dim=(0, 2, 3))
    assert torch.allclose(channel_mean, torch.zeros(3), atol=0.02)


def test_cifar10_md5_failure_suggests_skip_md5(data_dir: Path) -> None:
    _require(data_dir, "cifar-10-batches-py")
    # Official files pass the md5 check, so only repacked copies can show the hint.
    if torchvision.datasets.utils.check_integrity(data_dir / "cifar-10-batches-py" / "data_batch_1", "c99cafc152244af753f735de768cd75f"):
        pytest.skip("official CIFAR-10 files pass the md5 check")
    with pytest.raises(DatasetNotFoundError, match=r"skip_md5=true"):
        load_dataset(_spec("cifar10", skip_md5=False), data_dir, download=False)


def test_missing_files_name_the_directory(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(_spec("mnist"), tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path.resolve()) in message
    assert "MNIST/raw/train-images-idx3-ubyte.gz" in message and "materialize.py" in message
    assert isinstance(info.value, FileNotFoundError)

    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py/"):
        load_dataset(_spec("cifar10"), tmp_path, download=False)


def _write_image_folder(root: Path, classes: list[str], per_class: int, size: int = 64) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                # Class c's images are brightest in channel c, so labels can be checked via pixels.
                pixels = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
                pixels[..., c] += 180
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_imagefolder(tmp_path: Path) -> None:
    classes = ["cat", "ant", "bee"]  # on purpose not in sorted order
    _write_image_folder(tmp_path / "tiny", classes, per_class=4)
    spec = DatasetSpec(
        name="tiny",
        source="imagefolder",
        image_size=32,
        channels=3,
        num_classes=3,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        train_kwargs={},
        test_kwargs={},
        subdir="tiny",
    )
    train, test = load_dataset(spec, tmp_path)
    assert train.x.shape == (12, 3, 32, 32) and test.x.shape == (12, 3, 32, 32)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    # Sorted class names: ant=0, bee=1, cat=2; "cat" images were written brightest in channel 0.
    assert train.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    brightest = train.x.mean(dim=(2, 3)).argmax(dim=1)
    assert brightest.tolist() == [1] * 4 + [2] * 4 + [0] * 4

    gray = load_dataset(
        DatasetSpec("tiny", "imagefolder", 64, 1, 3, (0.5,), (0.25,), train_kwargs={}, test_kwargs={}, subdir="tiny"),
        tmp_path,
    )[0]
    assert gray.x.shape == (12, 1, 64, 64)

    with pytest.raises(DatasetNotFoundError, match="val"):
        load_dataset(_spec("tinyimagenet", subdir="tiny", num_classes=3), tmp_path)  # expects val/


def test_imagefolder_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path.resolve())):
        load_dataset(_spec("tinyimagenet"), tmp_path)


def test_image_set_subset() -> None:
    data = ImageSet(torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1), torch.arange(5))
    part = data.subset(np.array([4, 1], dtype=np.int64))
    assert len(part) == 2 and part.y.tolist() == [4, 1] and part.x.flatten().tolist() == [4.0, 1.0]
    assert len(data.subset(np.array([], dtype=np.int64))) == 0
    with pytest.raises(ValueError):
        ImageSet(torch.zeros(3, 1, 2, 2), torch.zeros(2, dtype=torch.int64))


def _labelled_pool() -> ImageSet:
    """Six 1x2x2 images: three of class 0 (values 0, 1, 2), two of class 2 (10, 20), one of class 5."""
    values = torch.tensor([0.0, 10.0, 1.0, 7.0, 20.0, 2.0])
    return ImageSet(values.view(6, 1, 1, 1).expand(6, 1, 2, 2).clone(), torch.tensor([0, 2, 0, 5, 2, 0]))


def test_class_mean_images_are_each_class_mean_repeated() -> None:
    images = class_mean_images(_labelled_pool(), torch.tensor([2, 0]), per_class=3)
    assert images.y.tolist() == [2, 2, 2, 0, 0, 0]
    assert images.x[:, 0, 0, 0].tolist() == [15.0] * 3 + [1.0] * 3
    with pytest.raises(ValueError, match="class 4"):
        class_mean_images(_labelled_pool(), torch.tensor([4]), per_class=1)


def test_sample_class_images_draws_members_of_each_class() -> None:
    pool = _labelled_pool()
    members = {0: {0.0, 1.0, 2.0}, 2: {10.0, 20.0}, 5: {7.0}}
    images = sample_class_images(pool, torch.tensor([0, 2, 5]), per_class=2, generator=torch.Generator().manual_seed(3))
    assert images.y.tolist() == [0, 0, 2, 2, 5, 5]
    values = images.x[:, 0, 0, 0].tolist()
    for label, value in zip(images.y.tolist(), values):
        assert value in members[label]
    assert len(set(values[:2])) == 2 and set(values[2:4]) == {10.0, 20.0}  # without replacement when it can
    again = sample_class_images(pool, torch.tensor([0, 2, 5]), per_class=2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(images.x, again.x)  # the generator decides the draw
    with pytest.raises(ValueError, match="class 1"):
        sample_class_images(pool, torch.tensor([1]), per_class=1, generator=torch.Generator())


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100", "tinyimagenet"])
def test_config_files_parse(name: str) -> None:
    spec = _spec(name)
    assert spec.name == name and len(spec.mean) == spec.channels == len(spec.std)


def test_spec_validation_messages() -> None:
    base = yaml.safe_load((CONF / "mnist.yaml").read_text())
    with pytest.raises(ValueError, match="unknown dataset config key"):
        DatasetSpec.from_dict({**base, "skipmd5": True})
    with pytest.raises(ValueError, match="missing key"):
        DatasetSpec.from_dict({k: v for k, v in base.items() if k != "num_classes"})
    with pytest.raises(ValueError, match="torchvision.datasets"):
        DatasetSpec.from_dict({**base, "source": "Mnist"})
    with pytest.raises(ValueError, match="channels"):
        DatasetSpec.from_dict({**base, "mean": [0.1, 0.2]})
    with pytest.raises(ValueError, match="std"):
        DatasetSpec.from_dict({**base, "std": [0.0]})
    assert hash(_spec("mnist")) == hash(_spec("mnist")) and _spec("mnist") == _spec("mnist")


def test_bad_split_kwargs_and_num_classes(data_dir: Path) -> None:
    _require(data_dir, "MNIST")
    with pytest.raises(ValueError, match="train_kwargs"):
        load_dataset(_spec("mnist", train_kwargs={"split": "train"}), data_dir, download=False)
    with pytest.raises(ValueError, match="num_classes"):
        load_dataset(_spec("mnist", num_classes=5), data_dir, download=False)


def test_sample_by_sample_fallback() -> None:
    # FakeData has no .data/.targets arrays, so the loader must decode it through __getitem__.
    from fedvtc.data import _arrays_from_dataset, _normalize

    fake = torchvision.datasets.FakeData(size=6, image_size=(3, 20, 24), num_classes=4, random_offset=1)
    spec = DatasetSpec("fake", "FakeData", 16, 1, 4, (0.5,), (0.25,))
    images, labels = _arrays_from_dataset(fake, spec)
    assert images.shape == (6, 1, 16, 16) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.tolist() == [int(fake[i][1]) for i in range(6)]
    assert _normalize(images, spec).shape == (6, 1, 16, 16)


def test_to_unit_pixels_undoes_the_normalization() -> None:
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    pixels = torch.rand((4, 3, 8, 8), generator=torch.Generator().manual_seed(7))
    normalized = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(to_unit_pixels(normalized, mean, std), pixels)


def test_decoded_arrays_are_kept_for_later_processes(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A dataset decoded once is loaded by later processes from the cache directory, without
    importing torchvision (about 2 s of CPU each), to the same tensors bit for bit."""
    import hashlib
    import subprocess
    import sys
    import textwrap

    _require(data_dir, "MNIST")
    monkeypatch.setenv("FEDVTC_CACHE_DIR", str(tmp_path / "cache"))
    train, test = load_dataset(_spec("mnist", image_size=32, channels=3), data_dir, download=False)
    assert sorted(p.name.split("-")[2] for p in (tmp_path / "cache").glob("dataset-MNIST-*.pt")) == ["test", "train"]

    def digest(images: ImageSet) -> str:
        return hashlib.sha256(images.x.numpy().tobytes() + images.y.numpy().tobytes()).hexdigest()

    script = textwrap.dedent(f"""
        import hashlib, sys, yaml
        from fedvtc.data import DatasetSpec, load_dataset
        spec = DatasetSpec.from_dict({{**yaml.safe_load(open({str(CONF / "mnist.yaml")!r})), "image_size": 32, "channels": 3}})
        for s in load_dataset(spec, {str(data_dir)!r}, download=False):
            print(hashlib.sha256(s.x.numpy().tobytes() + s.y.numpy().tobytes()).hexdigest())
        print("torchvision imported:", "torchvision" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [digest(train), digest(test), "torchvision", "imported:", "False"]


def test_the_kept_arrays_follow_the_files_and_the_md5_setting(tmp_path: Path, monkeypatch) -> None:
    from fedvtc.data import _arrays_path, _cache_arrays

    monkeypatch.setenv("FEDVTC_CACHE_DIR", str(tmp_path / "cache"))
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(b"0" * 16)
    spec = _spec("mnist")
    kept = _arrays_path(spec, tmp_path / "data", "train")
    assert kept is not None and kept.parent == tmp_path / "cache"
    assert _arrays_path(spec, tmp_path / "data", "train") == kept
    assert _arrays_path(spec, tmp_path / "data", "test") != kept
    assert _arrays_path(_spec("mnist", skip_md5=not spec.skip_md5), tmp_path / "data", "train") != kept
    (raw / "train-images-idx3-ubyte").write_bytes(b"1" * 17)  # new contents: read again
    assert _arrays_path(spec, tmp_path / "data", "train") != kept
    # Keeping the new arrays removes those of the old files (and nothing else).
    kept.parent.mkdir()
    kept.write_bytes(b"old")
    other = _arrays_path(spec, tmp_path / "data", "test")
    other.write_bytes(b"other split")
    arrays = (torch.zeros(1, 1, 2, 2, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64))
    _cache_arrays(spec, tmp_path / "data", "train", arrays)
    assert sorted((tmp_path / "cache").iterdir()) == sorted([_arrays_path(spec, tmp_path / "data", "train"), other])
    monkeypatch.setenv("FEDVTC_CACHE_DIR", "off")
    assert _arrays_path(spec, tmp_path / "data", "train") is None
