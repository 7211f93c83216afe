"""Shared fixtures: tiny dataset files written in the exact official formats, and real-data locations."""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

REAL_MNIST_ENV = "LIGHTNING_AE_DATA"  # folder holding MNIST/raw/ (the official IDX .gz files)
REAL_CIFAR_ENV = "LIGHTNING_AE_CIFAR10"  # folder holding cifar-10-batches-py/
REAL_CIFAR_JPEG_ENV = "LIGHTNING_AE_CIFAR10_JPEG"  # the extracted cifar10-jpeg.tar.gz: {train,test}/<class>/*.jpg


def load_script(path: Path, name: str) -> ModuleType:
    """The Python file at ``path`` (a benchmark or example script, not a package module) imported as ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 00 00 08 ndim, big-endian int32 dims, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(root: Path, n_train: int = 96, n_test: int = 32, folder: str = "MNIST", seed: int = 0) -> Path:
    """Writes gzip IDX files under ``root/<folder>/raw``; image i of the training split carries i in pixels 0-1."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, 0, 0], images[:, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
        labels = np.arange(n) % 10
        (raw / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (raw / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return root


def cifar_batch_dict(n: int, rng: np.random.Generator) -> dict:
    return {
        b"batch_label": b"synthetic",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_cifar(root: Path, n_per_batch: int = 20, seed: int = 0) -> Path:
    """Writes ``root/cifar-10-batches-py`` with five data batches, a test batch and the meta file."""
    rng = np.random.default_rng(seed)
    out = root / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (out / name).write_bytes(pickle.dumps(cifar_batch_dict(n_per_batch, rng), protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {b"label_names": [n.encode() for n in names], b"num_cases_per_batch": n_per_batch, b"num_vis": 3072}
    (out / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def write_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), n: int = 6,
                       size: tuple[int, int] = (8, 8), mode: str = "RGB", ext: str = "png",
                       seed: int = 0) -> dict[Path, np.ndarray]:
    """Writes ``n`` random images of ``size`` (H, W) per class folder (``root/*`` when ``classes`` is empty);
    returns each file's pixels ``(C, H, W)`` as written (lossless formats)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    written = {}
    for folder in [root / c for c in classes] or [root]:
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (*size, channels), dtype=np.uint8)
            path = folder / f"{i:03d}.{ext}"
            Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(path)
            written[path] = pixels.transpose(2, 0, 1)
    return written


def write_id_folder(root: Path, n: int, classes: tuple[str, ...] = ("a", "b")) -> dict[int, int]:
    """``n`` 8x8 RGB PNGs spread over ``classes``; image i carries i in channel 0, row 0, columns 0 and 1. Returns
    {id: label}."""
    from PIL import Image

    rng = np.random.default_rng(0)
    labels = {}
    for i in range(n):
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        pixels[0, 0, 0], pixels[0, 1, 0] = i // 256, i % 256  # channel 0, row 0, columns 0 and 1
        folder = root / classes[i % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
        labels[i] = i % len(classes)
    return labels


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/<class>/*.png``: three classes of 16 RGB 32x32 images (the folder configs decode it to 32x32)."""
    root = tmp_path_factory.mktemp("tiny_folder")
    write_image_folder(root, ("a", "b", "c"), n=16, size=(32, 32))
    return root


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir holding tiny MNIST, Fashion-MNIST and CIFAR-10 files in the official formats."""
    root = tmp_path_factory.mktemp("tiny_data")
    write_mnist(root)
    write_mnist(root, folder="FashionMNIST", seed=1)
    write_cifar(root)
    return root


def _real_dir(env: str, marker: str) -> Path:
    value = os.environ.get(env)
    if not value:
        pytest.skip(f"set {env} to run tests on the real data")
    path = Path(value)
    if not (path / marker).exists():
        pytest.fail(f"{env}={value} does not contain {marker}")
    return path


@pytest.fixture
def real_mnist_dir() -> Path:
    return _real_dir(REAL_MNIST_ENV, "MNIST/raw")


@pytest.fixture
def real_cifar_dir() -> Path:
    return _real_dir(REAL_CIFAR_ENV, "cifar-10-batches-py")


@pytest.fixture
def real_cifar_jpeg_dir() -> Path:
    return _real_dir(REAL_CIFAR_JPEG_ENV, "train/airplane")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow (real data, DDP)")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n 2``, as ``.ci/run`` runs) each worker's torch uses one thread: two workers on two
    cores, no oversubscription."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--runslow"):
        skip = pytest.mark.skip(reason="slow: run with --runslow")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)
        return
    for item in items:  # with --dist loadgroup the slow tests (several processes each) run one at a time
        if "slow" in item.keywords:
            item.add_marker(pytest.mark.xdist_group("slow"))
