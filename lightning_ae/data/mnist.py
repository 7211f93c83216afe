"""MNIST and Fashion-MNIST from the official IDX files (torchvision's folder layout, so its downloads are reused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from lightning_ae.data.base import Batch, ImageDataModule
from lightning_ae.data.download import download_file
from lightning_ae.data.formats import DatasetFileError, read_idx

Binarize = Literal["none", "dynamic", "static"]


class MNISTDataModule(ImageDataModule):
    """MNIST digits (LeCun et al.), 60,000 training and 10,000 test images of 1x28x28.

    Files are looked for in ``<data_dir>/MNIST/raw/`` as ``.gz`` or extracted (torchvision's layout).

    Args:
        binarize: ``none`` (grey levels), ``dynamic`` (a fresh Bernoulli sample of every training batch,
            Salakhutdinov & Murray 2008; validation and test images are sampled once with a fixed seed, so
            evaluation figures are repeatable, as in Burda et al. 2015), ``static`` (one seeded Bernoulli sample of
            the whole dataset, made once).
        mirrors: base URLs tried in order.
        **kwargs: other arguments: as :class:`ImageDataModule` (``data_dir`` holds ``MNIST/raw``; ``seed`` also
            seeds the static binarization).
    """

    folder: ClassVar[str] = "MNIST"
    default_mirrors: ClassVar[tuple[str, ...]] = (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    )
    files: ClassVar[dict[str, str]] = {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    image_shape = (1, 28, 28)
    num_classes = 10
    class_names = [str(i) for i in range(10)]

    def __init__(self, binarize: Binarize = "none", mirrors: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if binarize not in ("none", "dynamic", "static"):
            raise ValueError(f"binarize must be 'none', 'dynamic' or 'static', got {binarize!r}")
        self.binarize = binarize
        self.mirrors = list(mirrors) if mirrors is not None else list(self.default_mirrors)

    @property
    def raw_dir(self) -> Path:
        return Path(self.data_dir) / self.folder / "raw"

    def _find(self, gz_name: str) -> Path | None:
        for candidate in (self.raw_dir / gz_name, self.raw_dir / gz_name.removesuffix(".gz")):
            if candidate.is_file():
                return candidate
        return None

    def prepare_data(self) -> None:
        missing = [name for name in self.files if self._find(name) is None]
        if missing and not self.download:
            raise DatasetFileError(
                f"{self.folder} files missing in {self.raw_dir}: {', '.join(missing)}. Set download=True, or copy "
                f"the official files (.gz or extracted) from one of {self.mirrors} into that folder."
            )
        for name in missing:
            download_file(name, self.mirrors, self.raw_dir, self.files[name])

    def _read(self, gz_name: str) -> torch.Tensor:
        path = self._find(gz_name)
        if path is None:
            raise DatasetFileError(
                f"{self.raw_dir / gz_name} is missing; run prepare_data() with download=True or copy the file there."
            )
        if "images" in gz_name:
            return read_idx(path, ndim=3, item_shape=self.image_shape[1:])
        return read_idx(path, ndim=1)

    def _load_split(self, train: bool) -> Batch:
        prefix = "train" if train else "t10k"
        images = self._read(f"{prefix}-images-idx3-ubyte.gz")
        labels = self._read(f"{prefix}-labels-idx1-ubyte.gz").long()
        if images.shape[0] != labels.shape[0]:
            raise DatasetFileError(
                f"{self.raw_dir}: {prefix} has {images.shape[0]} images but {labels.shape[0]} labels; "
                "one of the two files is from another dataset or truncated."
            )
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise DatasetFileError(f"{self.raw_dir}: {prefix} labels exceed {self.num_classes - 1}")
        images = images.unsqueeze(1)  # (N, 28, 28) -> (N, 1, 28, 28)
        if self.binarize == "static" or (self.binarize == "dynamic" and not train):
            images = binarize_once(images, self.seed + (0 if train else 1))
        return images, labels

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.binarize == "dynamic" and self.val_set is not None:
            # validation sees one fixed sample too (binarizing binary images again changes nothing)
            self.val_set.images = binarize_once(self.val_set.images, self.seed + 2)

    def _transform_unit(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if self.binarize == "dynamic":
            return torch.bernoulli(x)
        return x


def binarize_once(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One seeded Bernoulli sample of uint8 grey images: pixel ``p`` becomes 255 with probability ``p / 255``."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(images.shape, generator=gen) * 255 < images).to(torch.uint8) * 255


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (Xiao et al. 2017): 60,000/10,000 grey 28x28 images of 10 clothing classes, MNIST's format.

    Files are looked for in ``<data_dir>/FashionMNIST/raw/``. Arguments as :class:`MNISTDataModule`.
    """

    folder = "FashionMNIST"
    default_mirrors = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
    files = {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    class_names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
