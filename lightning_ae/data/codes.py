"""The code indices of a frozen discrete autoencoder over an image datamodule's splits, extracted once and cached,
so that a prior over them (``PixelCNNPrior``, ``TransformerPrior``) trains on codes and never runs the encoder.

A cache is a folder ``<cache_dir>/<key>/`` per split holding ``codes.npy`` (``(N, h, w)`` or ``(N, Q, h, w)``,
int16 when the vocabulary allows, else int32; memory-mapped when read), ``labels.npy`` when the data has labels,
and ``meta.json``. The key hashes the frozen model (its class and every weight: the model's
``codes_fingerprint()``) and the split (the datamodule's class, pixel range, the split's source rows, labels and
images: all of them up to 1 GiB of images, else 4,096 evenly spaced ones), so another model, another split or
changed data name another cache. It is written in a temporary folder and renamed into place when complete, by
one process per machine (local rank 0) while the others wait: a cache from an interrupted extraction is never
found.

The model is the Trainer's: it must offer ``encode_codes(images) -> indices`` and ``codes_fingerprint() -> str``
(the priors do). Codes are extracted on the model's device, in evaluation mode (no augmentation, a fixed seed for
any random transform of the datamodule), in chunks of ``extract_batch_size`` images.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from lightning_ae.data.base import ImageDataModule, InMemoryImageDataset, ShardSampler, _collate_batch
from lightning_ae.data.formats import DatasetFileError
from lightning_ae.data.resumable import ResumableDataLoader, ResumableShardSampler

CACHE_VERSION = 1
FULL_HASH_BYTES = 1 << 30  # splits up to this many image bytes are hashed whole
SAMPLED_IMAGES = 4096  # else this many evenly spaced images are


class CodeDataset(Dataset[Any]):
    """Code grids ``(N, ...)`` (any integer dtype, e.g. memory-mapped) and labels ``(N,)``; a batch is one index,
    ``codes`` int64 (and ``labels``)."""

    def __init__(self, codes: torch.Tensor, labels: torch.Tensor | None) -> None:
        if labels is not None and labels.shape != codes.shape[:1]:
            raise ValueError(f"{labels.shape[0]} labels for {codes.shape[0]} code grids")
        self.codes, self.labels = codes, labels

    def __len__(self) -> int:
        return self.codes.shape[0]

    def __getitems__(self, indices: Sequence[int]) -> Any:
        idx = torch.as_tensor(indices, dtype=torch.long)
        codes = self.codes.index_select(0, idx).long()  # whole rows at once (see InMemoryImageDataset)
        return codes if self.labels is None else (codes, self.labels.index_select(0, idx))

    def __getitem__(self, index: int) -> Any:
        batch = self.__getitems__([index])
        return batch[0] if self.labels is None else (batch[0][0], batch[1][0])


def split_fingerprint(datamodule: ImageDataModule, name: str, dataset: InMemoryImageDataset) -> str:
    """sha256 of what makes a split's codes: the datamodule's class and pixel range, the split's source rows,
    labels and images (all of them up to :data:`FULL_HASH_BYTES`, else :data:`SAMPLED_IMAGES` evenly spaced)."""
    cls = type(datamodule)
    digest = hashlib.sha256(f"{cls.__module__}.{cls.__qualname__}|{name}|{datamodule.pixel_range}|"
                            f"{len(dataset)}|{tuple(dataset.images.shape[1:])}".encode())
    digest.update(dataset.rows().numpy().tobytes())
    labels = dataset.split_labels()
    if labels is not None:
        digest.update(labels.cpu().numpy().tobytes())
    n = len(dataset)
    if n * dataset.images[0].numel() <= FULL_HASH_BYTES:
        for chunk in dataset.image_chunks():
            digest.update(chunk.cpu().numpy().tobytes())
    else:
        picks = torch.linspace(0, n - 1, SAMPLED_IMAGES).long().tolist()
        images = dataset.__getitems__(picks)
        digest.update((images if dataset.labels is None else images[0]).cpu().numpy().tobytes())
    return digest.hexdigest()


class CodeDataModule(LightningDataModule):
    """Batches of cached code indices (and labels) of the splits of ``images`` (see the module docstring).

    Its ``image_shape``, ``num_classes`` and ``pixel_range`` are those of ``images`` (the CLI links them into the
    prior). Training batches are shuffled per epoch and resume mid-epoch like the image datamodules'.

    Args:
        images: the image datamodule whose splits are encoded (MNIST, CIFAR-10, a folder, arrays...).
        cache_dir: where the code caches live; delete it to clear them.
        batch_size: code grids per batch on each device.
        eval_batch_size: batch size for validation and test (default ``batch_size``).
        extract_batch_size: images per forward pass of the frozen encoder while extracting.
        seed: seed of the per-epoch shuffling.
    """

    def __init__(self, images: ImageDataModule, cache_dir: str = ".cache/codes", batch_size: int = 128,
                 eval_batch_size: int | None = None, extract_batch_size: int = 256, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(images, ImageDataModule):
            raise ValueError(f"images must be an in-memory image datamodule (MNIST, CIFAR-10, a folder, arrays), got "
                             f"{type(images).__name__}: streaming data has no split to cache codes of")
        for name, value in (("batch_size", batch_size), ("extract_batch_size", extract_batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
        self.images, self.cache_dir = images, Path(cache_dir)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.extract_batch_size, self.seed = extract_batch_size, seed
        self.sets: dict[str, CodeDataset] = {}

    # ---- what the CLI links into the model -----------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.images.image_shape

    @property
    def num_classes(self) -> int | None:
        return self.images.num_classes

    @property
    def pixel_range(self) -> tuple[float, float]:
        return self.images.pixel_range

    # ---- the caches ----------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.images.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.images.trainer = self.trainer
        self.images.setup(stage)

    def codes(self, split: str, model: Any) -> CodeDataset:
        """The cached codes of ``split`` (``train``, ``val``, ``test``) under ``model``, extracted first when no
        cache has them (by local rank 0; the other ranks wait at a barrier)."""
        dataset = getattr(self.images, f"{split}_set", None)
        if dataset is None:
            raise RuntimeError(f"CodeDataModule.{split}_dataloader() called before setup()")
        for method in ("encode_codes", "codes_fingerprint"):
            if not callable(getattr(model, method, None)):
                raise ValueError(f"CodeDataModule needs a model with {method}() (PixelCNNPrior, TransformerPrior), "
                                 f"got {type(model).__name__}")
        key = hashlib.sha256(f"{CACHE_VERSION}|{model.codes_fingerprint()}|"
                             f"{split_fingerprint(self.images, split, dataset)}".encode()).hexdigest()[:20]
        folder = self.cache_dir / f"{split}-{key}"
        trainer = self.trainer
        if not folder.is_dir() and (trainer is None or trainer.local_rank == 0):
            self._extract(dataset, model, folder)
        if trainer is not None:
            trainer.strategy.barrier("code-cache")
        return open_codes(folder)

    def _extract(self, dataset: InMemoryImageDataset, model: Any, folder: Path) -> None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-partial-"))
        try:
            out = None
            device = torch.device(getattr(model, "device", "cpu"))
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(self.seed)
                start = 0
                for chunk in dataset.image_chunks(self.extract_batch_size):
                    codes = model.encode_codes(self.images.transform(chunk.to(device), training=False)).cpu()
                    if out is None:
                        dtype = np.int16 if _vocabulary(model) <= 2**15 else np.int32
                        out = np.lib.format.open_memmap(tmp / "codes.npy", "w+", dtype,
                                                        (len(dataset), *codes.shape[1:]))
                    out[start:start + codes.shape[0]] = codes.numpy()
                    start += codes.shape[0]
            if out is None:
                raise DatasetFileError(f"no images in the split to encode into {folder}")
            out.flush()
            del out
            labels = dataset.split_labels()
            if labels is not None:
                np.save(tmp / "labels.npy", labels.cpu().numpy())
            meta = {"version": CACHE_VERSION, "count": len(dataset), "model": type(model).__name__}
            (tmp / "meta.json").write_text(json.dumps(meta))
            tmp.chmod(0o755)
            try:
                tmp.rename(folder)
            except OSError:  # another machine sharing the folder finished first: use its cache
                if not folder.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # ---- loaders -------------------------------------------------------------------------------------------------
    def _dataset(self, split: str) -> CodeDataset:
        if split not in self.sets:
            if self.trainer is None:
                raise RuntimeError("CodeDataModule's loaders need a Trainer (whose model encodes the images)")
            self.sets[split] = self.codes(split, self.trainer.lightning_module)
        return self.sets[split]

    def train_dataloader(self) -> DataLoader[Any]:
        dataset = self._dataset("train")
        return ResumableDataLoader(dataset, self.batch_size, ResumableShardSampler(dataset, self.seed), self.seed,
                                   collate_fn=_collate_batch)

    def _eval_loader(self, split: str) -> DataLoader[Any]:
        dataset = self._dataset(split)
        return DataLoader(dataset, batch_size=self.eval_batch_size, collate_fn=_collate_batch,
                          sampler=ShardSampler(dataset, train=False, seed=self.seed))

    def val_dataloader(self) -> DataLoader[Any]:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader[Any]:
        return self._eval_loader("test")


def _vocabulary(model: Any) -> int:
    return int(getattr(model, "codebook_size", 2**31 - 1))


def open_codes(folder: Path) -> CodeDataset:
    """Maps a code cache (no copy of the codes).

    Raises:
        DatasetFileError: naming the folder, for a missing, truncated or inconsistent cache.
    """
    try:
        meta = json.loads((folder / "meta.json").read_text())
        codes = np.load(folder / "codes.npy", mmap_mode="c")
        labels = np.load(folder / "labels.npy") if (folder / "labels.npy").is_file() else None
    except (OSError, ValueError) as err:
        raise DatasetFileError(f"code cache {folder} is unreadable ({str(err).splitlines()[0]}): delete it to "
                               "extract the codes again") from None
    if codes.shape[0] != meta.get("count"):
        raise DatasetFileError(f"code cache {folder} holds {codes.shape[0]} code grids, its meta.json says "
                               f"{meta.get('count')}: delete it to extract the codes again")
    if labels is not None and tuple(labels.shape) != tuple(codes.shape[:1]):
        raise DatasetFileError(f"code cache {folder} holds {codes.shape[0]} code grids and labels of shape "
                               f"{tuple(labels.shape)}: delete it to extract the codes again")
    return CodeDataset(torch.from_numpy(codes), None if labels is None else torch.from_numpy(labels).long())
