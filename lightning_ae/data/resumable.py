"""A training DataLoader that Lightning can stop and resume mid-epoch.

:class:`ResumableDataLoader` follows Lightning's public stateful-dataloader protocol: a train loader with
``state_dict()`` / ``load_state_dict()`` has its state saved in the checkpoint's fit-loop state and given back
when fitting resumes from that checkpoint. The state is the epoch and the number of batches handed out in it;
the resumed loader starts that epoch's permutation at the next batch, skipping the ones already trained on by
index (no image is loaded to skip it). Its sampler, :class:`ResumableShardSampler`, is the training shard of a
``DistributedSampler`` (shuffled with ``seed + epoch``, equal shards, the remainder dropped) that can begin an
epoch part-way. The loader has its own seeded generator, so creating an iterator draws nothing from the global
torch generator (whose state the models restore from the checkpoint, :mod:`lightning_ae.resume`).

A dataset that says it takes whole batches of indices as one tensor (``takes_index_tensors = True``, as
:class:`~lightning_ae.data.InMemoryImageDataset` does) is read without workers by slicing the epoch's shard
(:meth:`ResumableShardSampler.index_batches`): one ``__getitems__`` of a tensor per batch, with none of the
per-index Python work of a ``BatchSampler`` (a list of ints per batch, then a tensor made of it) and none of the
per-batch bookkeeping of torch's single-process iterator. The batches are the same, in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_ae.distributed import rank, world_size


class ResumableShardSampler(DistributedSampler):
    """This rank's shuffled training shard (``seed + epoch``, equal lengths, remainder dropped) that can start an
    epoch at any position: :meth:`start_at` drops the first indices of the next iteration only.

    Args:
        dataset: the training set.
        seed: seed of the per-epoch shuffling (Lightning calls :meth:`set_epoch`).
    """

    def __init__(self, dataset: Dataset[Any], seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed, drop_last=True)
        self._start = 0

    def start_at(self, position: int) -> None:
        """Makes the next iteration begin at index ``position`` of the epoch's shard (then back to 0)."""
        if not 0 <= position <= self.num_samples:
            raise ValueError(f"position must be in [0, {self.num_samples}], got {position}")
        self._start = position

    def shard(self) -> torch.Tensor:
        """This epoch's indices of this rank ``(num_samples,)`` int64: ``DistributedSampler``'s order (the same seeded
        permutation, cut to equal shards and strided by rank), as one tensor."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        permutation = torch.randperm(len(self.dataset), generator=generator)  # type: ignore[arg-type]
        return permutation[: self.total_size][self.rank :: self.num_replicas].contiguous()

    def _next_iteration(self) -> torch.Tensor:
        """:meth:`shard` from the :meth:`start_at` position, which applies to this iteration only."""
        start, self._start = self._start, 0
        return self.shard()[start:]

    def __iter__(self) -> Iterator[int]:
        return iter(self._next_iteration().tolist())

    def index_batches(self, batch_size: int, drop_last: bool = False) -> Iterator[torch.Tensor]:
        """The next iteration as index tensors of ``batch_size`` (the last one shorter unless ``drop_last``): the
        batches a ``BatchSampler`` would make of :meth:`__iter__`."""
        batches = list(self._next_iteration().split(batch_size))
        if drop_last and batches and len(batches[-1]) < batch_size:
            batches.pop()
        return iter(batches)


class ResumableDataLoader(DataLoader):
    """Training loader that remembers how far into its epoch it is (Lightning's stateful-dataloader protocol).

    ``len()`` stays the whole epoch (Lightning counts the batches already done itself); after
    :meth:`load_state_dict` the next iteration of the saved epoch yields only the batches not yet handed out. A
    state of another epoch than the sampler's current one (a checkpoint at an epoch's end) resumes nothing.

    Args:
        dataset: the training set.
        batch_size: images per batch.
        sampler: a :class:`ResumableShardSampler` of ``dataset``.
        seed: seed of the loader's own generator (the workers' base seeds).
        **kwargs: other ``DataLoader`` arguments (``collate_fn``, ``num_workers``...).
    """

    def __init__(self, dataset: Dataset[Any], batch_size: int, sampler: ResumableShardSampler, seed: int = 0,
                 **kwargs: Any) -> None:
        kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self.seed = seed
        self._position = {"epoch": 0, "batches": 0}  # mutated in place: DataLoader.__setattr__ runs Python checks
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # a generator: the epoch is read at the first batch, after Lightning's set_epoch (it calls iter() earlier)
        epoch = self.sampler.epoch  # type: ignore[attr-defined]
        skip = self._take_resume(epoch)
        self.sampler.start_at(min(skip * self.batch_size, len(self.sampler)))  # type: ignore[attr-defined, operator, arg-type]
        position = self._position = {"epoch": epoch, "batches": skip}
        for batch in self._batches():
            position["batches"] += 1
            yield batch

    def _batches(self) -> Iterator[Any]:
        """The batches of one iteration: sliced from the shard (a dataset that takes index tensors, no workers,
        no pinning), else through torch's iterator."""
        if self.num_workers or self.pin_memory or not getattr(self.dataset, "takes_index_tensors", False):
            yield from super().__iter__()
            return
        fetch, collate = self.dataset.__getitems__, self.collate_fn  # type: ignore[attr-defined]
        for indices in self.sampler.index_batches(self.batch_size, self.drop_last):  # type: ignore[attr-defined, arg-type]
            yield collate(fetch(indices))

    def _take_resume(self, epoch: int) -> int:
        resume, self._resume = self._resume, None
        if resume is None or resume["epoch"] != epoch:
            return 0
        return min(resume["batches"], len(self))

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches"}``: the epoch being iterated and how many of its batches were handed out."""
        return dict(self._position)

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Makes the next iteration of epoch ``state_dict["epoch"]`` skip its first ``state_dict["batches"]``."""
        missing = {"epoch", "batches"} - state_dict.keys()
        if missing:
            raise KeyError(f"a ResumableDataLoader state needs the keys epoch and batches; missing {sorted(missing)}")
        self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}
