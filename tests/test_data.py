"""Dataset files (IDX, CIFAR pickles) and the in-memory datamodules, on tiny files in the official formats."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_ae.data import (
    CIFAR10DataModule,
    DatasetFileError,
    FakeImageDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    ShardSampler,
)
from lightning_ae.data.cifar import random_flip_crop
from lightning_ae.data.formats import read_idx
from tests.conftest import idx_bytes, write_cifar, write_mnist

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"


def _mnist(root: Path, **kwargs) -> MNISTDataModule:
    return MNISTDataModule(data_dir=str(root), download=False, val_size=16, **kwargs)


# ---- IDX ----------------------------------------------------------------------------------------------------
def test_idx_round_trip(tmp_path: Path) -> None:
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    assert torch.equal(read_idx(tmp_path / "a", 3, (28, 28)), torch.from_numpy(array))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw[:-100], "expected"),
        (lambda raw: raw + b"\0", "expected"),
        (lambda raw: b"\0\0\x09\x03" + raw[4:], "bad IDX magic"),
        (lambda raw: raw[:2], "shorter than an IDX header"),
    ],
    ids=["truncated", "padded", "bad-magic", "header-only"],
)
def test_damaged_idx_is_named(tmp_path: Path, damage, message: str) -> None:
    root = write_mnist(tmp_path)
    path = root / "MNIST" / "raw" / TRAIN_IMAGES
    path.write_bytes(gzip.compress(damage(gzip.decompress(path.read_bytes()))))
    with pytest.raises(DatasetFileError, match=rf"{TRAIN_IMAGES}.*{message}"):
        _mnist(root).setup("fit")


def test_truncated_gzip_is_named(tmp_path: Path) -> None:
    root = write_mnist(tmp_path)
    path = root / "MNIST" / "raw" / TRAIN_IMAGES
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetFileError, match=rf"{TRAIN_IMAGES}.*truncated or corrupt"):
        _mnist(root).setup("fit")


def test_wrong_image_size_is_named(tmp_path: Path) -> None:
    root = write_mnist(tmp_path)
    (root / "MNIST" / "raw" / TRAIN_IMAGES).write_bytes(gzip.compress(idx_bytes(np.zeros((4, 32, 32), np.uint8))))
    with pytest.raises(DatasetFileError, match=r"shape \(32, 32\), expected \(28, 28\)"):
        _mnist(root).setup("fit")


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    root = write_mnist(tmp_path)
    (root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8))))
    with pytest.raises(DatasetFileError, match="96 images but 5 labels"):
        _mnist(root).setup("fit")


def test_extracted_files_are_read_too(tmp_path: Path) -> None:
    root = write_mnist(tmp_path)
    for gz in (root / "MNIST" / "raw").glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    data = _mnist(root)
    data.setup()
    assert len(data.train_set) == 80 and len(data.test_set) == 32


# ---- CIFAR pickles ------------------------------------------------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    root = write_cifar(tmp_path)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil()}))
    data = CIFAR10DataModule(data_dir=str(root), download=False, val_size=10)
    with pytest.raises(DatasetFileError, match=r"data_batch_3: refused pickle.*(posix|os)\.system is not allowed"):
        data.setup("fit")


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"labels": [0]}, r"missing keys \['data'\]"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"shape \(N, 3072\), got \(2, 100\)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "1 labels for 2 images"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [12]}, r"labels outside \[0, 10\)"),
    ],
    ids=["missing-key", "bad-shape", "label-count", "label-range"],
)
def test_bad_cifar_batch_is_named(tmp_path: Path, batch: dict, message: str) -> None:
    root = write_cifar(tmp_path)
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetFileError, match=rf"data_batch_1.*{message}"):
        CIFAR10DataModule(data_dir=str(root), download=False, val_size=10).setup("fit")


def test_truncated_cifar_pickle_is_named(tmp_path: Path) -> None:
    root = write_cifar(tmp_path)
    path = root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DatasetFileError, match="test_batch: truncated or corrupt"):
        CIFAR10DataModule(data_dir=str(root), download=False).setup("test")


def test_missing_cifar_without_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetFileError, match=r"cifar-10-batches-py.*data_batch_1.*cifar-10-python\.tar\.gz"):
        CIFAR10DataModule(data_dir=str(tmp_path), download=False).prepare_data()


def test_cifar_extracts_archive(tmp_path: Path) -> None:
    import tarfile

    src = write_cifar(tmp_path / "src")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    data = CIFAR10DataModule(data_dir=str(tmp_path), val_size=10)
    data.prepare_data()  # the archive is present: extracted, not downloaded
    data.setup()
    assert data.train_set.images.shape == (90, 3, 32, 32) and len(data.test_set) == 20
    assert not list(tmp_path.glob(".extract-*"))


def test_cifar_layout_matches_official(tmp_path: Path) -> None:
    root = write_cifar(tmp_path)
    raw = pickle.loads((root / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    data = CIFAR10DataModule(data_dir=str(root), download=False, val_size=0)
    data.setup("fit")
    # rows are R plane, G plane, B plane of 32x32: image 0 of batch 1 is the first training image
    assert torch.equal(data.train_set.images[0], torch.from_numpy(raw[b"data"][0]).view(3, 32, 32))
    assert data.train_set.labels[0] == raw[b"labels"][0]


# ---- the datamodule -----------------------------------------------------------------------------------------
def test_split_is_seeded_and_disjoint(tiny_data_dir: Path) -> None:
    a, b, c = _mnist(tiny_data_dir, seed=1), _mnist(tiny_data_dir, seed=1), _mnist(tiny_data_dir, seed=2)
    for d in (a, b, c):
        d.setup("fit")

    def ids(images: torch.Tensor) -> set[int]:
        return set((images[:, 0, 0, 0].int() * 256 + images[:, 0, 0, 1].int()).tolist())

    assert ids(a.val_set.images) == ids(b.val_set.images) != ids(c.val_set.images)
    assert ids(a.val_set.images).isdisjoint(ids(a.train_set.images))
    assert len(ids(a.val_set.images) | ids(a.train_set.images)) == 96


def test_batches_are_one_index_of_the_tensor(tiny_data_dir: Path) -> None:
    data = _mnist(tiny_data_dir, batch_size=8)
    data.setup("fit")
    images, labels = next(iter(data.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (8, 1, 28, 28) and labels.shape == (8,)
    batches = list(data.train_dataloader())
    assert sum(len(b[0]) for b in batches) == 80


def test_shuffling_changes_per_epoch(tiny_data_dir: Path) -> None:
    data = _mnist(tiny_data_dir, batch_size=80)
    data.setup("fit")
    loader = data.train_dataloader()
    first = next(iter(loader))[0][:, 0, 0, 1].clone()
    loader.sampler.set_epoch(1)
    second = next(iter(loader))[0][:, 0, 0, 1]
    assert not torch.equal(first, second) and torch.equal(first.sort().values, second.sort().values)


@pytest.mark.parametrize("world", [2, 3])
def test_shards_are_disjoint(world: int) -> None:
    dataset = torch.utils.data.TensorDataset(torch.arange(101))
    train = [list(_sampler(dataset, True, world, r)) for r in range(world)]
    evals = [list(_sampler(dataset, False, world, r)) for r in range(world)]
    flat = [i for shard in train for i in shard]
    assert len(flat) == len(set(flat)) == 101 - 101 % world  # equal shards, nothing repeated
    assert len({len(s) for s in train}) == 1
    assert sorted(i for shard in evals for i in shard) == list(range(101))  # every sample exactly once


def _sampler(dataset, train: bool, world: int, rank: int) -> ShardSampler:
    sampler = ShardSampler(dataset, train=train)
    sampler.num_replicas, sampler.rank = world, rank
    sampler.num_samples = len(dataset) // world  # as DistributedSampler(drop_last=True) computes it
    sampler.total_size = sampler.num_samples * world
    return sampler


def test_transform_range_and_binarization(tiny_data_dir: Path) -> None:
    images = torch.tensor([[[[0, 128, 255]]]], dtype=torch.uint8)
    unit = _mnist(tiny_data_dir).transform(images, training=True)
    torch.testing.assert_close(unit, images.float() / 255)
    sym = _mnist(tiny_data_dir, pixel_range=(-1.0, 1.0)).transform(images, training=True)
    torch.testing.assert_close(sym, images.float() / 127.5 - 1)
    dyn = _mnist(tiny_data_dir, binarize="dynamic")
    draws = torch.stack([dyn.transform(images.expand(1, 1, 1000, 3), training=True) for _ in range(4)])
    assert set(draws.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(draws.mean((0, 1, 2, 3)), torch.tensor([0.0, 128 / 255, 1.0]), atol=0.03, rtol=0)


@pytest.mark.parametrize("pixel_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_pixel_variance_matches_the_scaled_training_images(tiny_data_dir: Path, pixel_range) -> None:
    data = _mnist(tiny_data_dir, pixel_range=pixel_range)
    with pytest.raises(RuntimeError, match="before setup"):
        data.pixel_variance()
    data.setup("fit")
    expected = data.transform(data.train_set.images, training=False).double().var().item()
    assert data.pixel_variance() == pytest.approx(expected, rel=1e-6)  # expected went through float32


def test_dynamic_binarization_evaluates_on_fixed_samples(tiny_data_dir: Path) -> None:
    a, b = _mnist(tiny_data_dir, binarize="dynamic"), _mnist(tiny_data_dir, binarize="dynamic")
    for d in (a, b):
        d.setup()
    assert set(a.val_set.images.unique().tolist()) == set(a.test_set.images.unique().tolist()) == {0, 255}
    assert torch.equal(a.val_set.images, b.val_set.images) and torch.equal(a.test_set.images, b.test_set.images)
    assert len(a.train_set.images.unique()) > 2  # training stays grey: a fresh sample per batch
    a.setup()  # idempotent
    assert torch.equal(a.val_set.images, b.val_set.images)


def test_static_binarization_is_fixed(tiny_data_dir: Path) -> None:
    a, b = _mnist(tiny_data_dir, binarize="static"), _mnist(tiny_data_dir, binarize="static")
    a.setup("fit")
    b.setup("fit")
    assert set(a.train_set.images.unique().tolist()) == {0, 255}
    assert torch.equal(a.train_set.images, b.train_set.images)


def test_cifar_augmentation_train_only(tiny_data_dir: Path) -> None:
    data = CIFAR10DataModule(data_dir=str(tiny_data_dir), download=False, augment=True, val_size=10)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(data.transform(images, training=False), images.float() / 255)
    assert not torch.equal(data.transform(images, training=True), images.float() / 255)


def test_flip_crop_is_a_translation_or_mirror() -> None:
    x = torch.rand(32, 3, 8, 8)
    y = random_flip_crop(x, padding=2)
    for xi, yi in zip(x, y, strict=True):
        candidates = [torch.nn.functional.pad(v, (2,) * 4) for v in (xi, xi.flip(-1))]
        found = any(torch.equal(p[:, dy : dy + 8, dx : dx + 8], yi) for p in candidates
                    for dy in range(5) for dx in range(5))
        assert found


def test_attributes_for_models() -> None:
    assert MNISTDataModule.image_shape == (1, 28, 28) and MNISTDataModule.num_classes == 10
    assert CIFAR10DataModule.image_shape == (3, 32, 32) and CIFAR10DataModule.class_names[3] == "cat"
    assert FashionMNISTDataModule.class_names[-1] == "Ankle boot"
    fake = FakeImageDataModule(image_shape=(2, 8, 8), num_classes=3)
    assert fake.image_shape == (2, 8, 8) and fake.class_names == ["class 0", "class 1", "class 2"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"val_size": -1}, "val_size"),
        ({"val_size": 1.5}, "val_size"),
        ({"pixel_range": (1.0, 0.0)}, "pixel_range"),
        ({"binarize": "sometimes"}, "binarize"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MNISTDataModule(**kwargs)


def test_val_size_too_large(tiny_data_dir: Path) -> None:
    with pytest.raises(ValueError, match="val_size=500 leaves no training images out of 96"):
        MNISTDataModule(data_dir=str(tiny_data_dir), download=False, val_size=500).setup("fit")


# ---- real data ----------------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_real_mnist(real_mnist_dir: Path) -> None:
    data = MNISTDataModule(data_dir=str(real_mnist_dir), download=False, val_size=0)
    data.setup()
    assert data.train_set.images.shape == (60000, 1, 28, 28) and data.test_set.images.shape == (10000, 1, 28, 28)
    assert data.train_set.labels.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert data.test_set.labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.realdata
def test_real_cifar10(real_cifar_dir: Path) -> None:
    data = CIFAR10DataModule(data_dir=str(real_cifar_dir), download=False, val_size=0)
    data.setup()
    assert data.train_set.images.shape == (50000, 3, 32, 32) and data.test_set.images.shape == (10000, 3, 32, 32)
    assert data.train_set.labels.bincount().tolist() == [5000] * 10
    assert data.test_set.labels.bincount().tolist() == [1000] * 10
    assert len(data.class_names) == 10


# ---- paths that nothing else exercises (issue 14) ---------------------------------------------------------------
def test_fashion_mnist_loads_its_own_folder(tiny_data_dir: Path) -> None:
    data = FashionMNISTDataModule(data_dir=str(tiny_data_dir), download=False, val_size=16)
    data.prepare_data()
    data.setup()
    mnist = _mnist(tiny_data_dir)
    mnist.setup()
    assert data.train_set.images.shape == (80, 1, 28, 28) and data.class_names[9] == "Ankle boot"
    assert not torch.equal(data.test_set.images, mnist.test_set.images)  # FashionMNIST/raw, not MNIST/raw


def test_mnist_label_above_nine_is_named(tmp_path: Path) -> None:
    raw = write_mnist(tmp_path) / "MNIST" / "raw"
    labels = np.arange(32) % 10
    labels[5] = 11
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(DatasetFileError, match="labels exceed 9"):
        _mnist(tmp_path).setup("test")


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_corrupt_cifar_archive_is_named(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "cifar-10-python.tar.gz", {"cifar-10-batches-py/data_batch_1": b"x" * 4096})
    archive.write_bytes(archive.read_bytes()[:100])  # truncated
    with pytest.raises(DatasetFileError, match="cannot be extracted"):
        CIFAR10DataModule(data_dir=str(tmp_path), val_size=10).prepare_data()
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_cifar_archive_without_its_folder_is_named(tmp_path: Path) -> None:
    _archive(tmp_path / "cifar-10-python.tar.gz", {"other/data_batch_1": b"x"})
    with pytest.raises(DatasetFileError, match="has no cifar-10-batches-py/ folder"):
        CIFAR10DataModule(data_dir=str(tmp_path), val_size=10).prepare_data()


def test_cifar_meta_with_wrong_number_of_names(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    meta = {b"label_names": [b"a", b"b", b"c"], b"num_cases_per_batch": 20, b"num_vis": 3072}
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    with pytest.raises(DatasetFileError, match="3 class names, expected 10"):
        CIFAR10DataModule(data_dir=str(tmp_path), download=False, val_size=10).setup("test")


def test_worker_processes_deliver_the_same_batches(tiny_data_dir: Path) -> None:
    batches = {}
    for workers in (0, 2):
        data = _mnist(tiny_data_dir, num_workers=workers, batch_size=16)
        data.setup("fit")
        batches[workers] = [images for images, _ in data.val_dataloader()]
    assert len(batches[0]) == len(batches[2]) == 1
    assert all(torch.equal(a, b) for a, b in zip(batches[0], batches[2], strict=True))
