"""Images you already hold as arrays: numpy arrays or tensors from Python, or ``.npy`` / ``.npz`` files from YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_ae.data.base import ImageDataModule, InMemoryImageDataset
from lightning_ae.data.folder import split_rows
from lightning_ae.data.formats import DatasetFileError

ArrayLike = str | np.ndarray | torch.Tensor


def load_array(source: ArrayLike, default_key: str) -> torch.Tensor:
    """A tensor from an array, a tensor, ``file.npy`` (memory-mapped) or ``file.npz[:key]`` (key ``default_key``)."""
    if isinstance(source, torch.Tensor):
        return source
    if isinstance(source, np.ndarray):
        return torch.from_numpy(source)
    path, _, key = str(source).partition(".npz:")
    path, key = (path + ".npz", key) if key else (str(source), default_key)
    if not Path(path).is_file():
        raise DatasetFileError(f"array file {path} does not exist")
    if path.endswith(".npy"):
        return torch.from_numpy(np.load(path, mmap_mode="c", allow_pickle=False))
    if not path.endswith(".npz"):
        raise DatasetFileError(f"{path}: expected a .npy or .npz file")
    with np.load(path, allow_pickle=False) as npz:
        if key not in npz.files:
            raise DatasetFileError(f"{path}: no array {key!r} (it holds {npz.files}); name one as {path}:<key>")
        return torch.from_numpy(npz[key])


def to_uint8_images(array: torch.Tensor, channels_last: bool, name: str) -> torch.Tensor:
    """``(N, C, H, W)`` / ``(N, H, W, C)`` / ``(N, H, W)`` uint8, or float in [0, 1] -> uint8 ``(N, C, H, W)``."""
    if array.ndim == 3:
        array = array.unsqueeze(-1 if channels_last else 1)
    if array.ndim != 4:
        raise ValueError(f"{name} must be (N, C, H, W), (N, H, W, C) or (N, H, W), got shape {tuple(array.shape)}")
    if channels_last:
        array = array.permute(0, 3, 1, 2)
    if array.shape[1] not in (1, 3, 4):
        hint = "; are they channels-last (channels_last=True)?" if not channels_last and array.shape[3] <= 4 else ""
        raise ValueError(f"{name} have {array.shape[1]} channels, expected 1, 3 or 4 "
                         f"(shape {tuple(array.shape)}){hint}")
    if array.dtype == torch.uint8:
        return array
    if not array.is_floating_point():
        raise ValueError(f"{name} must be uint8 or float in [0, 1], got {array.dtype}")
    finite = torch.isfinite(array)
    if not bool(finite.all()):
        bad = (~finite).reshape(array.shape[0], -1).any(1)
        raise ValueError(f"{name} hold {int((~finite).sum())} non-finite values (NaN or inf) in {int(bad.sum())} "
                         f"image(s), the first at index {int(bad.nonzero()[0, 0])}: clean or drop them")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        raise ValueError(f"{name} are float with values in [{low:g}, {high:g}], expected [0, 1] (or uint8)")
    return array.mul(255).round_().to(torch.uint8)


def to_labels(array: torch.Tensor, n: int, name: str) -> torch.Tensor:
    """Integer class indices ``(n,)``, non-negative."""
    if array.ndim != 1 or array.shape[0] != n or array.is_floating_point() or array.dtype == torch.bool:
        raise ValueError(f"{name} must be {n} integer class indices, got {array.dtype} {tuple(array.shape)}")
    if n and int(array.min()) < 0:
        raise ValueError(f"{name} must be >= 0, got {int(array.min())}")
    return array.long()


class ArrayDataModule(ImageDataModule):
    """Images from arrays, tensors or ``.npy``/``.npz`` files; the same split, sharding and device-side conversion
    as the other datamodules.

    A ``.npy`` file is memory-mapped (channels-first uint8 is then never read whole); other inputs are held in
    memory, float ones converted to uint8 once.

    Args:
        images: ``(N, C, H, W)`` (or ``(N, H, W, C)`` with ``channels_last``, or ``(N, H, W)`` grey), uint8 or float
            in [0, 1]: an array, a tensor, a ``.npy`` path, or a ``.npz`` path (key ``images``; ``file.npz:key``
            names another).
        labels: ``(N,)`` class indices as the same kinds (``.npz`` key ``labels``), or None (unlabelled batches).
        test_images: a separate test split; None holds ``test_size`` images out of ``images`` instead.
        test_labels: its labels (needed when ``labels`` is given).
        channels_last: the arrays are ``(N, H, W, C)``.
        class_names: names of the classes (default: their indices); sets ``num_classes``.
        test_size: images held out for testing when ``test_images`` is None (count or fraction).
        val_size: images held out of the training images for validation (count or fraction).
        **kwargs: other arguments: as :class:`ImageDataModule` (no ``data_dir`` or ``download``).
    """

    def __init__(
        self,
        images: ArrayLike,
        labels: ArrayLike | None = None,
        test_images: ArrayLike | None = None,
        test_labels: ArrayLike | None = None,
        channels_last: bool = False,
        class_names: list[str] | None = None,
        test_size: int | float = 0.1,
        val_size: int | float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir="", val_size=val_size, download=False, **kwargs)
        self.images = to_uint8_images(load_array(images, "images"), channels_last, "images")
        self.labels = None if labels is None else to_labels(load_array(labels, "labels"), len(self.images), "labels")
        self.test_images = None if test_images is None else to_uint8_images(
            load_array(test_images, "images"), channels_last, "test_images")
        self.test_labels = self._test_labels(test_labels)
        if self.test_images is not None and self.test_images.shape[1:] != self.images.shape[1:]:
            raise ValueError(f"test_images are {tuple(self.test_images.shape[1:])}, images "
                             f"{tuple(self.images.shape[1:])}")
        self.test_size = 0 if test_images is not None else test_size
        self.image_shape = tuple(self.images.shape[1:])  # type: ignore[assignment]
        self.class_names, self.num_classes = self._classes(class_names)  # type: ignore[assignment]

    def _test_labels(self, test_labels: ArrayLike | None) -> torch.Tensor | None:
        if self.test_images is None or self.labels is None:
            if test_labels is not None and self.test_images is None:
                raise ValueError("test_labels given without test_images")
            return None
        if test_labels is None:
            raise ValueError("labels are given, so test_images need test_labels too")
        return to_labels(load_array(test_labels, "labels"), len(self.test_images), "test_labels")

    def _classes(self, class_names: list[str] | None) -> tuple[list[str], int | None]:
        if self.labels is None:
            return [], None
        seen = [self.labels] + ([self.test_labels] if self.test_labels is not None else [])
        top = max((int(t.max()) for t in seen if t.numel()), default=-1) + 1
        if class_names is not None and len(class_names) < top:
            raise ValueError(f"{len(class_names)} class_names for labels up to {top - 1}")
        names = list(class_names) if class_names is not None else [str(i) for i in range(top)]
        return names, len(names)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        splits = np.full(len(self.images), "train")
        train, val, test = split_rows(splits, self.val_size, self.test_size, self.seed)
        self.train_set = InMemoryImageDataset(self.images, self.labels, train)
        self.val_set = InMemoryImageDataset(self.images, self.labels, val)
        if self.test_images is not None:
            self.test_set = InMemoryImageDataset(self.test_images, self.test_labels)
        else:
            self.test_set = InMemoryImageDataset(self.images, self.labels, test)
