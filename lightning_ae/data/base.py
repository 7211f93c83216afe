"""The in-memory image datamodule every dataset builds on.

A split lives in memory as one ``uint8`` tensor ``(N, C, H, W)``; a batch is a single indexing of that tensor
(``Dataset.__getitems__``), not ``batch_size`` calls to ``__getitem__`` and a collate. Conversion to float,
binarization and augmentation happen per batch on the device, in :meth:`on_after_batch_transfer`.

Under DDP each rank gets its own shard through :class:`ShardSampler`: training shards are shuffled per epoch
and of equal length (the < world_size tail is dropped, nothing is repeated), evaluation shards cover every
sample exactly once (ranks may differ by one sample; the models log epoch-level metrics so nothing waits
on a per-step collective).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_ae.data.resumable import ResumableDataLoader, ResumableShardSampler
from lightning_ae.distributed import rank, world_size

Batch = tuple[torch.Tensor, torch.Tensor]
PredictSplit = Literal["train", "val", "test", "all"]
SPLITS = ("train", "val", "test")


class InMemoryImageDataset(Dataset[Batch]):
    """Images ``uint8 (N, C, H, W)`` and labels ``int64 (N,)`` held in memory (or memory-mapped); batches come from
    one index.

    Args:
        images: ``uint8 (N, C, H, W)``; may be a view of a memory-mapped file (it is indexed, never copied whole).
        labels: ``(N,)`` class indices, or None for unlabelled images (batches are then the image tensor alone).
        indices: the rows of ``images`` that make this dataset (a split of a larger array), or None for all.
        source_rows: where each sample came from, when ``images`` is already a copy of some rows of a source
            (a split file, an array): its row there; default ``indices`` (or ``0..N-1``). Predictions carry it.
    """

    takes_index_tensors = True  # __getitems__ takes a batch of indices as one int64 tensor (ResumableDataLoader)

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, indices: torch.Tensor | None = None,
                 source_rows: torch.Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels is not None and labels.shape != images.shape[:1]:
            raise ValueError(f"{labels.shape[0]} labels for {images.shape[0]} images")
        self.images = images
        self.labels = None if labels is None else labels.long()
        self.indices = None if indices is None else torch.as_tensor(indices, dtype=torch.long)
        self.source_rows = None if source_rows is None else torch.as_tensor(source_rows, dtype=torch.long).cpu()

    def __len__(self) -> int:
        return self.images.shape[0] if self.indices is None else self.indices.shape[0]

    def __getitem__(self, index: int) -> Any:
        batch = self.__getitems__([index])
        return batch[0] if self.labels is None else (batch[0][0], batch[1][0])

    @property
    def device(self) -> torch.device:
        """Where the images live (and where batches are indexed)."""
        return self.images.device

    def to(self, device: torch.device | str) -> InMemoryImageDataset:
        """This dataset with its images, labels and indices on ``device`` (``self`` if they are already there)."""
        device = torch.device(device)
        if self.images.device == device:
            return self
        moved = (None if t is None else t.to(device) for t in (self.labels, self.indices))
        return InMemoryImageDataset(self.images.to(device), *moved, source_rows=self.rows())

    def rows(self) -> torch.Tensor:
        """The source row of every sample ``(N,)`` (CPU int64): ``source_rows``, else ``indices``, else ``0..N-1``."""
        if self.source_rows is not None:
            return self.source_rows
        return self.indices.cpu() if self.indices is not None else torch.arange(len(self))

    def split_labels(self) -> torch.Tensor | None:
        """The labels of this dataset's samples, in order ``(N,)`` (None when unlabelled)."""
        if self.labels is None or self.indices is None:
            return self.labels
        return self.labels[self.indices]

    def __getitems__(self, indices: Sequence[int] | torch.Tensor) -> Any:
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        if self.indices is not None:
            idx = self.indices[idx]
        # index_select copies whole rows: several times faster than advanced indexing (images[idx]), which moves
        # uint8 images element by element (benchmarks/batch_gather.py)
        images = self.images.index_select(0, idx)
        return images if self.labels is None else (images, self.labels.index_select(0, idx))

    def image_chunks(self, size: int = 4096) -> Iterator[torch.Tensor]:
        """The images, ``size`` at a time (so a memory-mapped dataset is never read into memory whole)."""
        for start in range(0, len(self), size):
            chunk = self.__getitems__(range(start, min(start + size, len(self))))
            yield chunk if self.labels is None else chunk[0]


class ConcatImageDataset(Dataset[Batch]):
    """Several :class:`InMemoryImageDataset` one after the other, still batched by one index per part (``predict``
    over ``all`` splits). All parts are labelled, or none."""

    def __init__(self, parts: Sequence[InMemoryImageDataset]) -> None:
        if len({p.labels is None for p in parts}) > 1:
            raise ValueError("ConcatImageDataset needs every part labelled or none")
        self.parts = list(parts)
        self.ends = torch.tensor([len(p) for p in parts]).cumsum(0)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitems__(self, indices: Sequence[int]) -> Any:
        idx = torch.as_tensor(indices, dtype=torch.long)
        which = torch.bucketize(idx, self.ends, right=True)  # (B,) the part of each index
        starts = torch.cat([torch.zeros(1, dtype=torch.long), self.ends[:-1]])
        pieces = [(which == k).nonzero().flatten() for k in range(len(self.parts))]
        batches = [self.parts[k].__getitems__((idx[at] - starts[k]).tolist()) for k, at in enumerate(pieces) if len(at)]
        order = torch.argsort(torch.cat([at for at in pieces if len(at)]))  # back to the order of ``indices``
        if self.parts[0].labels is None:
            return torch.cat(batches)[order.to(batches[0].device)]
        order = order.to(batches[0][0].device)
        return torch.cat([b[0] for b in batches])[order], torch.cat([b[1] for b in batches])[order]

    def __getitem__(self, index: int) -> Any:
        batch = self.__getitems__([index])
        return batch[0] if self.parts[0].labels is None else (batch[0][0], batch[1][0])

    def to(self, device: torch.device | str) -> ConcatImageDataset:
        """The parts on ``device``."""
        return ConcatImageDataset([p.to(device) for p in self.parts])


def _collate_batch(batch: Batch) -> Batch:
    """The dataset already returns a whole batch: nothing to collate."""
    return batch


class ShardSampler(DistributedSampler):
    """Per-rank shard of a dataset, read from the process group when the loader is built (not at import).

    Training (``train=True``): shuffled with ``seed + epoch`` (Lightning calls :meth:`set_epoch`), equal-size
    shards, the remainder dropped so no sample is seen twice in an epoch. Evaluation: every sample exactly once
    over all ranks, in order, ``rank::world_size``. Being a ``DistributedSampler``, Lightning leaves it in place.
    """

    def __init__(self, dataset: Dataset[Any], train: bool, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=world_size(), rank=rank(), shuffle=train, seed=seed, drop_last=train)
        self.train = train

    def __iter__(self):  # type: ignore[override]
        if self.train:
            return super().__iter__()
        return iter(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore[arg-type]

    def __len__(self) -> int:
        if self.train:
            return super().__len__()
        return len(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore[arg-type]


class ImageDataModule(LightningDataModule):
    """Base of the image datamodules: in-memory splits, seeded train/val split, per-batch device transforms.

    Subclasses set ``image_shape``, ``num_classes`` and ``class_names`` and implement :meth:`_load_split`
    (and :meth:`prepare_data` when there is something to download).

    Args:
        data_dir: root folder of the dataset files.
        batch_size: images per batch on each device.
        eval_batch_size: batch size for validation/test/predict (default: ``batch_size``).
        val_size: images held out from the training split for validation: a count, or a fraction in (0, 1).
        seed: seed of the train/val split and of the per-epoch shuffling.
        num_workers: DataLoader workers (0 is fastest for in-memory data).
        pixel_range: ``(low, high)`` that pixel values are scaled to (``(0, 1)`` or ``(-1, 1)``...).
        download: download missing files in :meth:`prepare_data`; with ``False`` missing files are an error.
        predict_split: the split ``predict`` runs over: ``test`` (the default: images no model was fitted to, so
            the reconstruction errors of a prediction are honest), ``train``, ``val`` or ``all`` (every image, e.g.
            to embed a whole collection). Predictions carry each sample's origin (:meth:`prediction_origins`).
        on_device: hold the splits on the Trainer's device (``strategy.root_device``): batches are indexed there
            and never cross the bus (MNIST takes 55 MB, CIFAR-10 184 MB of uint8). Needs ``num_workers=0``;
            outside a Trainer, or on a CPU, the data stays where it is.
    """

    image_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10
    class_names: list[str] = []

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int | float = 5000,
        seed: int = 0,
        num_workers: int = 0,
        pixel_range: tuple[float, float] = (0.0, 1.0),
        download: bool = True,
        on_device: bool = False,
        predict_split: PredictSplit = "test",
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
        if val_size < 0 or (isinstance(val_size, float) and val_size >= 1):
            raise ValueError(f"val_size must be a count >= 0 or a fraction in [0, 1), got {val_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if on_device and num_workers:
            raise ValueError(f"on_device=True indexes the data on the device: num_workers must be 0, got {num_workers}")
        if len(pixel_range) != 2 or not pixel_range[0] < pixel_range[1]:
            raise ValueError(f"pixel_range must be (low, high) with low < high, got {pixel_range}")
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size = val_size
        self.seed = seed
        self.num_workers = num_workers
        self.pixel_range = (float(pixel_range[0]), float(pixel_range[1]))
        self.download = download
        self.on_device = on_device
        if predict_split not in (*SPLITS, "all"):
            raise ValueError(f"predict_split must be one of {(*SPLITS, 'all')}, got {predict_split!r}")
        self.predict_split = predict_split
        self._placed: dict[int, tuple[InMemoryImageDataset, InMemoryImageDataset]] = {}
        self.train_set: InMemoryImageDataset | None = None
        self.val_set: InMemoryImageDataset | None = None
        self.test_set: InMemoryImageDataset | None = None

    # ---- loading -------------------------------------------------------------------------------------------
    def _load_split(self, train: bool) -> Batch:
        """Returns ``(images uint8 (N, C, H, W), labels int64 (N,))`` of the training or test split."""
        raise NotImplementedError(f"{type(self).__name__} must implement _load_split")

    def _num_val(self, n: int) -> int:
        return held_out_count(self.val_size, n, "val_size")

    def setup(self, stage: str | None = None) -> None:
        train_needed = stage in (None, "fit", "validate") or (stage == "predict" and self.predict_split != "test")
        if train_needed and self.train_set is None:
            images, labels = self._load_split(train=True)
            val_idx, train_idx = seeded_split(images.shape[0], [self._num_val(images.shape[0])], self.seed)
            self.train_set = InMemoryImageDataset(images[train_idx], labels[train_idx], source_rows=train_idx)
            self.val_set = InMemoryImageDataset(images[val_idx], labels[val_idx], source_rows=val_idx)
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = InMemoryImageDataset(*self._load_split(train=False))

    def pixel_variance(self) -> float:
        """Variance of the training images' pixels in ``pixel_range`` (after :meth:`setup`; of the stored images,
        before binarization or augmentation), as sonnet's VQ-VAE example computes it to normalise its
        reconstruction error (``VQVAE(data_variance=...)``). Exact: from a histogram of the uint8 values."""
        low, high = self.pixel_range
        chunks = self.train_image_chunks()
        counts = sum(torch.bincount(c.flatten(), minlength=256).double() for c in chunks)  # no float copy
        values = torch.arange(256, dtype=torch.float64) / 255.0
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean) ** 2).sum() / (n - 1)  # unbiased, as torch.var
        return var.item() * (high - low) ** 2

    def train_image_chunks(self) -> Iterator[torch.Tensor]:
        """The uint8 training images, a chunk at a time (never the whole split in memory at once)."""
        if self.train_set is None:
            raise RuntimeError(f"{type(self).__name__}.pixel_variance() called before setup('fit')")
        return self.train_set.image_chunks()

    # ---- loaders -------------------------------------------------------------------------------------------
    def _place(self, dataset: InMemoryImageDataset) -> InMemoryImageDataset:
        """``dataset`` on the Trainer's device when ``on_device`` is set (moved once, then reused)."""
        if not self.on_device or self.trainer is None:
            return dataset
        original, placed = self._placed.get(id(dataset), (None, None))
        if original is not dataset or placed is None:
            placed = dataset.to(self.trainer.strategy.root_device)
            self._placed[id(dataset)] = (dataset, placed)
        return placed

    def _loader(self, dataset: InMemoryImageDataset | None, train: bool, name: str) -> DataLoader[Batch]:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.{name}_dataloader() called before setup()")
        dataset = self._place(dataset)
        common = {"collate_fn": _collate_batch, "num_workers": self.num_workers,
                  "persistent_workers": self.num_workers > 0}
        if train:  # resumes mid-epoch from a checkpoint (Lightning's stateful-dataloader protocol)
            return ResumableDataLoader(dataset, self.batch_size, ResumableShardSampler(dataset, self.seed), self.seed,
                                       **common)
        return DataLoader(dataset, batch_size=self.eval_batch_size,
                          sampler=ShardSampler(dataset, train=False, seed=self.seed), **common)

    def train_dataloader(self) -> DataLoader[Batch]:
        return self._loader(self.train_set, True, "train")

    def val_dataloader(self) -> DataLoader[Batch]:
        return self._loader(self.val_set, False, "val")

    def test_dataloader(self) -> DataLoader[Batch]:
        return self._loader(self.test_set, False, "test")

    def predict_dataloader(self) -> DataLoader[Batch]:
        """The ``predict_split`` split (``all``: train, val and test, in that order)."""
        return self._loader(self.predict_dataset(), False, "predict")

    def predict_parts(self) -> list[tuple[str, InMemoryImageDataset]]:
        """``(split name, dataset)`` of each split ``predict`` covers, in order (after :meth:`setup`)."""
        names = SPLITS if self.predict_split == "all" else (self.predict_split,)
        parts = [(name, getattr(self, f"{name}_set")) for name in names]
        if any(dataset is None for _, dataset in parts):
            raise RuntimeError(f"{type(self).__name__}.predict_dataloader() called before setup('predict')")
        return parts

    def predict_dataset(self) -> InMemoryImageDataset | ConcatImageDataset | None:
        """The dataset ``predict`` runs over (``None`` before :meth:`setup`)."""
        if all(getattr(self, f"{name}_set") is None for name in SPLITS):
            return None
        parts = [dataset for _, dataset in self.predict_parts()]
        return parts[0] if len(parts) == 1 else ConcatImageDataset(parts)

    def prediction_origins(self, positions: torch.Tensor) -> dict[str, Any]:
        """Where the samples at ``positions`` of :meth:`predict_dataset` came from: ``split`` (a list of split
        names) and ``row`` ``(N,)``, the row in that split's source (the split's file for MNIST and CIFAR-10, the
        array for arrays, the folder's file list for folders, which add ``path``)."""
        parts = self.predict_parts()
        sizes = torch.tensor([len(dataset) for _, dataset in parts])
        part = torch.bucketize(positions, sizes.cumsum(0), right=True)  # (N,) the split of each position
        rows = torch.cat([dataset.rows() for _, dataset in parts])
        return {"split": [parts[p][0] for p in part.tolist()], "row": rows[positions]}

    # ---- per-batch transforms on the device ----------------------------------------------------------------
    def transform(self, images: torch.Tensor, training: bool) -> torch.Tensor:
        """``uint8 (B, C, H, W)`` on the device -> float in ``pixel_range``; dataset-specific steps in between."""
        x = images.float().div_(255.0)
        x = self._transform_unit(x, training)
        low, high = self.pixel_range
        if (low, high) != (0.0, 1.0):
            x = x.mul_(high - low).add_(low)
        return x

    def _transform_unit(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """Hook for subclasses: binarization, augmentation... on float images in [0, 1]."""
        return x

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """``uint8`` images (a tensor batch, or the first item of a tuple/list) become float in ``pixel_range``."""
        images = batch if isinstance(batch, torch.Tensor) else batch[0]
        if images.dtype != torch.uint8:  # already converted (a user's own loader)
            return batch
        training = self.trainer is not None and self.trainer.training
        images = self.transform(images, training)
        return images if isinstance(batch, torch.Tensor) else (images, *batch[1:])


def held_out_count(size: int | float, n: int, name: str) -> int:
    """Images held out of ``n`` for a count or a fraction ``size``; a ``ValueError`` if none would be left."""
    k = round(size * n) if isinstance(size, float) else int(size)
    if k >= n:
        raise ValueError(f"{name}={size} leaves no training images out of {n}")
    return k


def seeded_split(n: int, counts: Sequence[int], seed: int) -> list[torch.Tensor]:
    """Sorted disjoint index sets of ``range(n)`` of the given ``counts`` from one seeded permutation, then the rest.

    >>> [t.tolist() for t in seeded_split(5, [2], seed=0)]
    [[0, 4], [1, 2, 3]]
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    bounds = [0, *torch.tensor(list(counts), dtype=torch.long).cumsum(0).tolist(), n]
    return [perm[a:b].sort().values for a, b in itertools.pairwise(bounds)]

