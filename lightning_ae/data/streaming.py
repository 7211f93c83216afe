"""Data that outgrows one machine: an image folder as a LitData optimized dataset, streamed in training.

:func:`prepare_streaming` (also ``lightning-ae-prepare``) decodes a folder with the same options as
:class:`ImageFolderDataModule` into ``<output_dir>/{train,val,test}`` (LitData chunks of ``uint8 (C, H, W)``
images and labels) and ``<output_dir>/meta`` (one item: shape, class names, counts). A pool layout is split
there, once, with seeded ``val_size``/``test_size`` hold-outs. :class:`StreamingImageDataModule` trains from it
with ``litdata.StreamingDataset``/``StreamingDataLoader`` (local path or ``s3://``, ``gs://``... as LitData
reads them; sharded over DDP ranks, nodes and workers; resumable), with the same device-side conversion.

Needs the ``streaming`` extra (LitData); see the README for an install that keeps a CPU-only torch.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jsonargparse import CLI

from lightning_ae.data.base import ImageDataModule
from lightning_ae.data.cache import default_workers
from lightning_ae.data.folder import split_rows
from lightning_ae.data.images import DecodeOptions, ImageDecodeError, Resize, class_names_of, decode_image
from lightning_ae.data.images import scan_folder as scan

META = "meta"
SPLITS = ("train", "val", "test")
MIN_CHUNKS = 64


def _litdata() -> Any:
    try:
        import litdata
    except ImportError as err:
        raise ImportError("streaming needs LitData: install the 'streaming' extra (README, 'Streaming')") from err
    return litdata


def _sample(item: tuple[str, int], options: DecodeOptions, skip_bad: bool) -> Iterator[dict[str, Any]]:
    """One LitData sample per readable file (a generator, so a skipped file yields nothing)."""
    path, label = item
    try:
        image = decode_image(path, options)
    except ImageDecodeError as err:
        if not skip_bad:
            raise
        warnings.warn(f"skipped unreadable image {err}", stacklevel=2)
        return
    yield {"image": image, "label": label}


def chunk_items(n: int, item_bytes: int, chunk_bytes: int) -> int:
    """Items per LitData chunk: at most ``chunk_bytes`` of them, and at least ``MIN_CHUNKS`` chunks per split.

    LitData hands whole chunks of an evaluation stream to ranks, so a split in one chunk would leave every rank
    but one without validation batches (an error in Lightning).

    >>> chunk_items(10_000, 12_288, 64 * 2**20), chunk_items(100, 12_288, 64 * 2**20)
    (157, 2)
    """
    return max(1, min(chunk_bytes // item_bytes, -(-n // MIN_CHUNKS)))


def _optimize(items: list[Any], output_dir: str, fn: Any, workers: int, chunk_size: int) -> None:
    """``litdata.optimize``, with a decode error in a worker raised here as the :class:`ImageDecodeError` it was."""
    try:
        _litdata().optimize(fn=fn, inputs=items, output_dir=output_dir, num_workers=min(workers, len(items)),
                            chunk_size=chunk_size, mode="overwrite", verbose=False)
    except RuntimeError as err:
        found = re.search(r"ImageDecodeError: (.*)", str(err))
        if found is None:
            raise
        raise ImageDecodeError(f"{found.group(1)} (skip_bad_files=True skips unreadable images)") from None


def _meta_item(item: str) -> Iterator[dict[str, str]]:
    yield {"meta": item}


def prepare_streaming(
    root: str,
    output_dir: str,
    image_size: int | tuple[int, int] = 64,
    resize: Resize = "center_crop",
    crop_size: int | tuple[int, int] | None = None,
    channels: Literal[1, 3, 4] = 3,
    val_size: int | float = 0.05,
    test_size: int | float = 0.05,
    seed: int = 0,
    workers: int | None = None,
    chunk_bytes: int = 64 * 2**20,
    skip_bad_files: bool = False,
) -> dict[str, Any]:
    """Converts an image folder into a LitData optimized dataset for :class:`StreamingImageDataModule`.

    Args:
        root: the image folder (layouts as :class:`ImageFolderDataModule`).
        output_dir: where the dataset goes: a local folder, or a LitData remote (``s3://bucket/path``).
        image_size: ``H`` or ``[H, W]`` of the stored images.
        resize: ``center_crop``, ``resize`` or ``none`` (as :class:`ImageFolderDataModule`).
        crop_size: a centre crop of the original before resizing (CelebA: 148), or None.
        channels: 1, 3 or 4.
        val_size: images held out for validation when the folder has no ``val`` split (count or fraction).
        test_size: images held out for testing when the folder has no ``test`` split (count or fraction).
        seed: seed of those hold-outs.
        workers: decoding processes (default: the usable CPUs, at most 16).
        chunk_bytes: largest size of LitData's chunk files (each split is cut in at least 64 chunks when it has 64
            images, so that every rank gets a part of the evaluation streams).
        skip_bad_files: skip unreadable images (each named in a warning) instead of stopping at the first.

    Returns:
        The metadata stored beside the splits: ``image_shape``, ``class_names``, ``num_classes`` and ``sizes``.
    """
    options = DecodeOptions.of(image_size, resize, crop_size, channels)
    class_names = class_names_of(Path(root))
    files, labels, splits = scan(root)
    rows = split_rows(np.asarray(splits), val_size, test_size, seed)
    fn = functools.partial(_sample, options=options, skip_bad=skip_bad_files)
    sizes = {}
    for split, idx in zip(SPLITS, rows, strict=True):
        items = [(str(files[i]), labels[i]) for i in idx.tolist()]
        if items:
            chunk = chunk_items(len(items), int(np.prod(options.shape)) + 64, chunk_bytes)
            _optimize(items, f"{output_dir.rstrip('/')}/{split}", fn, workers or default_workers(), chunk)
        sizes[split] = len(items)
    meta = {"image_shape": list(options.shape), "class_names": class_names,
            "num_classes": len(class_names) or None, "sizes": sizes}
    _optimize([json.dumps(meta)], f"{output_dir.rstrip('/')}/{META}", _meta_item, 1, 1)
    return meta


def read_meta(input_dir: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata :func:`prepare_streaming` stored in ``<input_dir>/meta`` (read through LitData)."""
    dataset = _litdata().StreamingDataset(f"{input_dir.rstrip('/')}/{META}", storage_options=storage_options or {})
    return json.loads(dataset[0]["meta"])


def collate_images(samples: list[dict[str, Any]]) -> Any:
    """LitData samples -> ``(uint8 (B, C, H, W), int64 (B,))``, or the image tensor alone for unlabelled data."""
    images = torch.from_numpy(np.stack([s["image"] for s in samples]))
    labels = torch.tensor([s["label"] for s in samples], dtype=torch.long)
    return images if bool((labels < 0).all()) else (images, labels)


class StreamingImageDataModule(ImageDataModule):
    """Trains from a dataset written by :func:`prepare_streaming`, streamed by LitData (local or object storage).

    ``image_shape``, ``num_classes`` and ``class_names`` are read from the dataset. Training streams are shuffled
    (seeded, per epoch) and each sample goes to one rank and worker; in training LitData drops the tail that does
    not fill a batch on every rank (so all ranks run the same number of steps), evaluation streams are complete.
    LitData hands out whole batches, so under DDP a validation or test split needs at least ``world_size x
    eval_batch_size`` images (otherwise a rank has none and Lightning stops).

    Args:
        input_dir: the dataset: a local folder or a LitData remote such as ``s3://bucket/path``.
        cache_dir: where LitData keeps downloaded chunks of a remote dataset (default: LitData's).
        max_cache_size: bound of that chunk cache, e.g. ``"50GB"``.
        storage_options: passed to LitData for the object store (credentials, endpoint...).
        **kwargs: other arguments: as :class:`ImageDataModule` (no ``data_dir``, ``val_size`` or ``download``: the
            splits were made by :func:`prepare_streaming`).
    """

    def __init__(
        self,
        input_dir: str,
        cache_dir: str | None = None,
        max_cache_size: str = "100GB",
        storage_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir="", val_size=0, download=False, **kwargs)
        if self.on_device:
            raise ValueError("on_device=True is for in-memory datasets; LitData streams batches from its own loader")
        self.input_dir = input_dir.rstrip("/")
        self.cache_dir = cache_dir
        self.max_cache_size = max_cache_size
        self.storage_options = dict(storage_options or {})
        self.meta = read_meta(self.input_dir, self.storage_options)
        self.image_shape = tuple(self.meta["image_shape"])  # type: ignore[assignment]
        self.class_names = list(self.meta["class_names"])
        self.num_classes = self.meta["num_classes"]
        self.streams: dict[str, Any] = {}

    def _dataset(self, split: str, train: bool) -> Any:
        return _litdata().StreamingDataset(
            f"{self.input_dir}/{split}", cache_dir=self.cache_dir, max_cache_size=self.max_cache_size,
            storage_options=self.storage_options, shuffle=train, drop_last=train, seed=self.seed)

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            if split not in self.streams and self.meta["sizes"].get(split, 0) > 0:
                self.streams[split] = self._dataset(split, train=split == "train")

    def _stream_loader(self, split: str, name: str) -> Any:
        if split not in self.streams:
            if self.meta["sizes"].get(split, 0) == 0:
                raise RuntimeError(f"{self.input_dir} has no {split} split (prepare_streaming made it empty)")
            raise RuntimeError(f"{type(self).__name__}.{name}_dataloader() called before setup()")
        return _litdata().StreamingDataLoader(
            self.streams[split], batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            num_workers=self.num_workers, collate_fn=collate_images)

    def train_dataloader(self) -> Any:
        return self._stream_loader("train", "train")

    def val_dataloader(self) -> Any:
        return self._stream_loader("val", "val")

    def test_dataloader(self) -> Any:
        return self._stream_loader("test", "test")

    def predict_dataloader(self) -> Any:
        return self._stream_loader("test", "predict")

    def train_image_chunks(self) -> Iterator[torch.Tensor]:
        """The training images, a batch at a time, streamed once (for :meth:`pixel_variance`)."""
        for batch in self._stream_loader("train", "train"):
            yield batch if isinstance(batch, torch.Tensor) else batch[0]


def main(args: list[str] | None = None) -> None:
    """``lightning-ae-prepare ROOT OUTPUT_DIR [--image_size 64 ...]``: :func:`prepare_streaming` from the shell."""
    meta = CLI(prepare_streaming, args=args, prog="lightning-ae-prepare")
    print(json.dumps(meta))
