"""What the callbacks share: when to run, and how validation images are collected under DDP.

Validation shards may differ in length across ranks, so nothing here runs a collective per batch: each rank
keeps a bounded number of rows during validation, and at the end of the epoch every rank takes part in ONE
gather (``all_gather_object``); only rank zero draws and writes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn

from lightning_ae.batch import extract_images, extract_labels
from lightning_ae.distributed import world_size

Rows = dict[str, torch.Tensor]


def gather_rows(local: Rows, limit: int | None = None, to_rank_zero: bool = False) -> Rows:
    """Concatenates every rank's rows (rank 0's first), keeping the first ``limit``; one collective in total.

    Every rank must call it, also a rank that holds no rows (``local == {}``). Tensors travel as CPU objects, so
    ranks may hold different numbers of rows. With ``to_rank_zero`` only rank 0 receives them (``gather_object``;
    the other ranks get ``{}``), so no rank but the writing one ever holds the whole set.
    """
    parts: list[Rows] = [local]
    if world_size() > 1:
        parts = [{} for _ in range(world_size())]
        cpu = {k: v.cpu() for k, v in local.items()}
        if to_rank_zero:
            dist.gather_object(cpu, parts if dist.get_rank() == 0 else None, dst=0)
            parts = parts if dist.get_rank() == 0 else []
        else:
            dist.all_gather_object(parts, cpu)
    parts = [p for p in parts if p]
    if not parts:
        return {}
    keys = [k for k in parts[0] if all(k in p for p in parts)]
    return {k: torch.cat([p[k] for p in parts])[:limit] for k in keys}


def check_every_n_epochs(every_n_epochs: int) -> int:
    """Raises ``ValueError`` unless ``every_n_epochs >= 1``."""
    if every_n_epochs < 1:
        raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
    return every_n_epochs


def require_methods(callback: Callback, pl_module: LightningModule, names: tuple[str, ...]) -> None:
    """Raises ``TypeError`` naming the callback and the missing methods when the model lacks them."""
    missing = [n for n in names if not callable(getattr(pl_module, n, None))]
    if missing:
        raise TypeError(f"{type(callback).__name__} needs a model with {', '.join(missing)}(); "
                        f"{type(pl_module).__name__} has none")


def pixel_range_of(pl_module: LightningModule) -> tuple[float, float]:
    """The model's ``pixel_range`` attribute or hyperparameter, else ``(0, 1)``."""
    value = getattr(pl_module, "pixel_range", None) or pl_module.hparams.get("pixel_range", (0.0, 1.0))
    return float(value[0]), float(value[1])


def is_last_epoch(trainer: Trainer) -> bool:
    """Whether the current epoch of ``fit`` is the last: ``max_epochs`` or ``max_steps`` reached, or a stop
    requested (early stopping)."""
    if trainer.should_stop:
        return True
    if trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch + 1:
        return True
    return trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step


def epoch_label(trainer: Trainer) -> str:
    """``", epoch N"`` while fitting, else ``""`` (a figure drawn by ``trainer.validate`` has no epoch)."""
    return f", epoch {trainer.current_epoch}" if trainer.state.fn == TrainerFn.FITTING else ""


class EpochCallback(Callback):
    """Runs on the validation epochs ``every_n_epochs`` apart (the n-th, 2n-th... and the last one).

    Outside ``fit`` (``trainer.validate``) it runs every time; never during the sanity check.

    Args:
        every_n_epochs: run on every n-th epoch (and on the last epoch of ``max_epochs``).
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        self.every_n_epochs = check_every_n_epochs(every_n_epochs)
        self._active = False

    def should_run(self, trainer: Trainer) -> bool:
        """Whether this validation epoch is one to draw (the same answer on every rank)."""
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != TrainerFn.FITTING:
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0 or is_last_epoch(trainer)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._active = self.should_run(trainer)


class ValidationCollector(EpochCallback):
    """Keeps up to ``max_rows`` rows (over all ranks) from the validation batches of an active epoch, then
    calls :meth:`render` on every rank with all ranks' rows.

    Subclasses implement :meth:`collect` (what to keep of a batch: the forward passes run here, on every rank)
    and :meth:`render` (forward passes on every rank, drawing on rank zero).

    Args:
        every_n_epochs: run on every n-th epoch (and on the last one).
        max_rows: rows kept over all ranks; each rank keeps ``ceil(max_rows / world_size)``.
    """

    def __init__(self, every_n_epochs: int = 1, max_rows: int = 8) -> None:
        super().__init__(every_n_epochs)
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.max_rows = max_rows
        self._rows: list[Rows] = []
        self._count = 0

    def collect(self, pl_module: LightningModule, images: torch.Tensor, labels: torch.Tensor | None) -> Rows:
        """The rows to keep of ``images`` (already cut to what is still needed); default: images and labels."""
        rows = {"image": images}
        if labels is not None:
            rows["label"] = labels
        return rows

    def render(self, trainer: Trainer, pl_module: LightningModule, rows: Rows) -> None:
        """Turns all ranks' rows into images and logs them (runs on every rank)."""
        raise NotImplementedError

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        self._rows, self._count = [], 0

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        per_rank = math.ceil(self.max_rows / max(trainer.world_size, 1))
        if not self._active or dataloader_idx != 0 or self._count >= per_rank:
            return
        images = extract_images(batch)[: per_rank - self._count]
        labels = extract_labels(batch)
        labels = None if labels is None else labels[: images.shape[0]]
        rows = self.collect(pl_module, images, labels)
        self._rows.append({k: v.detach().cpu() for k, v in rows.items()})
        self._count += images.shape[0]

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active:
            return
        local = {k: torch.cat([r[k] for r in self._rows]) for k in self._rows[0]} if self._rows else {}
        self._rows = []
        rows = gather_rows(local, self.max_rows)
        if rows:
            self.render(trainer, pl_module, rows)
