"""CIFAR-10 from the official python batches, read with a restricted unpickler."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import torch

from lightning_ae.data.base import Batch, ImageDataModule
from lightning_ae.data.download import download_file
from lightning_ae.data.formats import DatasetFileError, read_cifar_batch, read_cifar_meta


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (Krizhevsky 2009): 50,000 training and 10,000 test colour images of 3x32x32 in 10 classes.

    Files are looked for in ``<data_dir>/cifar-10-batches-py/`` (torchvision's layout). The download is the
    official ``cifar-10-python.tar.gz`` (md5 checked), extracted with tarfile's ``data`` filter.

    Args:
        augment: random horizontal flip and random crop with ``crop_padding`` zero padding, training only.
        crop_padding: padding of the random crop, in pixels.
        mirrors: base URLs tried in order.
        **kwargs: other arguments: as :class:`ImageDataModule` (``data_dir`` holds ``cifar-10-batches-py``).
    """

    folder: ClassVar[str] = "cifar-10-batches-py"
    archive: ClassVar[str] = "cifar-10-python.tar.gz"
    archive_md5: ClassVar[str] = "c58f30108f718f92721af3b95e74349a"
    default_mirrors: ClassVar[tuple[str, ...]] = (
        "https://www.cs.toronto.edu/~kriz/",
        "https://www.cs.utoronto.ca/~kriz/",
    )
    train_files: ClassVar[tuple[str, ...]] = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files: ClassVar[tuple[str, ...]] = ("test_batch",)
    image_shape = (3, 32, 32)
    num_classes = 10
    class_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def __init__(
        self, augment: bool = False, crop_padding: int = 4, mirrors: list[str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        self.augment = augment
        self.crop_padding = crop_padding
        self.mirrors = list(mirrors) if mirrors is not None else list(self.default_mirrors)

    @property
    def batches_dir(self) -> Path:
        return Path(self.data_dir) / self.folder

    def _missing(self) -> list[str]:
        names = (*self.train_files, *self.test_files, "batches.meta")
        return [n for n in names if not (self.batches_dir / n).is_file()]

    def prepare_data(self) -> None:
        missing = self._missing()
        if not missing:
            return
        if not self.download:
            raise DatasetFileError(
                f"CIFAR-10 files missing in {self.batches_dir}: {', '.join(missing)}. Set download=True, or "
                f"download {self.archive} from one of {self.mirrors} and extract it in {self.data_dir}."
            )
        root = Path(self.data_dir)
        archive = root / self.archive
        if not archive.is_file():
            download_file(self.archive, self.mirrors, root, self.archive_md5)
        self._extract(archive)

    def _extract(self, archive: Path) -> None:
        """Extracts into a temporary folder, then moves the batch folder into place."""
        root = Path(self.data_dir)
        with tempfile.TemporaryDirectory(dir=root, prefix=".extract-") as tmp:
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, filter="data")
            except (tarfile.TarError, EOFError, OSError) as err:
                raise DatasetFileError(f"{archive}: cannot be extracted ({err}); delete it and download again") from err
            extracted = Path(tmp) / self.folder
            if not extracted.is_dir():
                raise DatasetFileError(f"{archive}: has no {self.folder}/ folder; not the CIFAR-10 python archive")
            if self.batches_dir.exists():
                shutil.rmtree(self.batches_dir)
            extracted.rename(self.batches_dir)

    def _load_split(self, train: bool) -> Batch:
        missing = self._missing()
        if missing:
            raise DatasetFileError(
                f"CIFAR-10 files missing in {self.batches_dir}: {', '.join(missing)}; run prepare_data() with "
                "download=True or extract the official archive there."
            )
        names = read_cifar_meta(self.batches_dir / "batches.meta")
        if len(names) != self.num_classes:
            raise DatasetFileError(f"{self.batches_dir / 'batches.meta'}: {len(names)} class names, expected 10")
        parts = [read_cifar_batch(self.batches_dir / n) for n in (self.train_files if train else self.test_files)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _transform_unit(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if training and self.augment:
            x = random_flip_crop(x, self.crop_padding)
        return x


def random_flip_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Random horizontal flip and random ``padding``-pixel translation (zero-padded crop), per sample, vectorized."""
    b, _, h, w = x.shape
    flip = torch.rand(b, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if padding == 0:
        return x
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
