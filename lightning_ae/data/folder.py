"""A folder of your own images, decoded once into a memory-mapped ``uint8`` cache (see :mod:`.cache`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lightning_ae.data.base import ImageDataModule, InMemoryImageDataset, held_out_count, seeded_split
from lightning_ae.data.cache import FolderScan, ImageCache, build_cache, default_workers, open_cache
from lightning_ae.data.images import DecodeOptions, Resize, class_names_of, scan_folder


class ImageFolderDataModule(ImageDataModule):
    """Images from a folder (PNG, JPEG, BMP, WebP, TIFF), decoded once, then memory-mapped.

    Layouts: ``root/{train,val,test}/<class>/*`` (splits given; a missing ``val``/``test`` is held out of
    ``train``), ``root/<class>/*`` (one pool, seeded ``val_size``/``test_size`` hold-outs) or ``root/*`` (no
    classes: batches are image tensors without labels and ``num_classes`` is None). Class names are the sorted
    class folder names.

    The first :meth:`prepare_data` decodes every image in ``decode_workers`` processes into
    ``<cache_dir>/<key>/images.u8``, ``(N, C, H, W)`` uint8, written under a temporary name and renamed; the key
    covers the file list, sizes, modification times and decode options, so any change rebuilds it and an
    unchanged folder is never decoded twice. :meth:`setup` maps that file: a batch is one index of it. Under DDP,
    ``prepare_data`` runs once per node and the other ranks map the same file.

    Args:
        root: the image folder.
        image_size: ``H`` (square) or ``[H, W]`` of the decoded images.
        resize: ``center_crop`` (scale the short side to fit, crop the centre), ``resize`` (stretch) or ``none``
            (every image must already be ``image_size``; the first that is not is named).
        crop_size: a centre crop (``int`` or ``[H, W]``) taken from the original before resizing, e.g. 148 for
            the usual CelebA 64x64 protocol; None for none.
        channels: 1 (grey), 3 (RGB) or 4 (RGBA); every image is converted (grey, palette, RGBA, 16-bit...).
        val_size: images held out for validation when there is no ``val`` folder (count or fraction).
        test_size: images held out for testing when there is no ``test`` folder (count or fraction).
        cache_dir: where decoded caches live (default ``<data_dir>/image-cache``); delete it to clear them.
        decode_workers: processes that decode on the first run (default: the usable CPUs, at most 16).
        skip_bad_files: skip unreadable or truncated images with a warning instead of stopping at the first.
        **kwargs: other arguments: as :class:`ImageDataModule` (``data_dir`` only places the default cache).
    """

    def __init__(
        self,
        root: str,
        image_size: int | tuple[int, int] = 64,
        resize: Resize = "center_crop",
        crop_size: int | tuple[int, int] | None = None,
        channels: Literal[1, 3, 4] = 3,
        val_size: int | float = 0.05,
        test_size: int | float = 0.05,
        cache_dir: str | None = None,
        decode_workers: int | None = None,
        skip_bad_files: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(val_size=val_size, download=False, **kwargs)
        if test_size < 0 or (isinstance(test_size, float) and test_size >= 1):
            raise ValueError(f"test_size must be a count >= 0 or a fraction in [0, 1), got {test_size}")
        if decode_workers is not None and decode_workers < 1:
            raise ValueError(f"decode_workers must be >= 1, got {decode_workers}")
        self.root = Path(root)
        self.options = DecodeOptions.of(image_size, resize, crop_size, channels)
        self.test_size = test_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path(self.data_dir) / "image-cache"
        self.decode_workers = decode_workers or default_workers()
        self.skip_bad_files = skip_bad_files
        self.image_shape = self.options.shape
        # a missing root is named by prepare_data/setup (as a missing download is), not inside the CLI's parsing
        self.class_names = class_names_of(self.root, skip=self.cache_dir.resolve()) if self.root.is_dir() else []
        self.num_classes = len(self.class_names) or None  # type: ignore[assignment]
        self.cache: ImageCache | None = None

    def build_cache(self) -> Path:
        """Decodes the folder into its cache unless an up-to-date one exists (then only lists and stats files)."""
        files, labels, splits = scan_folder(self.root, skip=self.cache_dir.resolve())
        scan = FolderScan(files, labels, splits, self.class_names)
        return build_cache(self.root, scan, self.options, self.cache_dir, self.skip_bad_files, self.decode_workers)

    def prepare_data(self) -> None:
        self.build_cache()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.cache = open_cache(self.build_cache())
        images = torch.from_numpy(self.cache.images)  # a view of the map: nothing is read yet
        labels = torch.from_numpy(self.cache.labels) if self.class_names else None
        train, val, test = split_rows(self.cache.splits, self.val_size, self.test_size, self.seed)
        self.train_set = InMemoryImageDataset(images, labels, train)
        self.val_set = InMemoryImageDataset(images, labels, val)
        self.test_set = InMemoryImageDataset(images, labels, test)

    def prediction_origins(self, positions: torch.Tensor) -> dict[str, Any]:
        """As :meth:`ImageDataModule.prediction_origins`, plus ``path``: each sample's file, relative to ``root``."""
        origins = super().prediction_origins(positions)
        files = self.cache.files if self.cache is not None else []
        origins["path"] = [files[row] for row in origins["row"].tolist()]
        return origins


def split_rows(splits: np.ndarray, val_size: int | float, test_size: int | float,
               seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train, val and test rows: given splits are kept; a missing val/test is a seeded hold-out of the pool
    (the ``train`` and unsplit rows).

    >>> [t.tolist() for t in split_rows(np.array(["train"] * 4 + ["test"]), 1, 0.5, seed=0)]
    [[1, 2, 3], [0], [4]]
    """
    rows = {s: torch.from_numpy(np.flatnonzero(splits == s)) for s in ("train", "val", "test", "")}
    pool = torch.cat([rows["train"], rows[""]]).sort().values
    missing = [(s, size) for s, size in (("test", test_size), ("val", val_size)) if len(rows[s]) == 0]
    counts = [held_out_count(size, len(pool), f"{s}_size") for s, size in missing]
    if sum(counts) >= len(pool):
        raise ValueError(f"val_size={val_size} and test_size={test_size} leave no training images of {len(pool)}")
    parts = seeded_split(len(pool), counts, seed)
    held = {s: pool[part] for (s, _), part in zip(missing, parts, strict=False)}
    return pool[parts[-1]], held.get("val", rows["val"]), held.get("test", rows["test"])
