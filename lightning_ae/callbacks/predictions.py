"""``PredictionWriter``: what ``predict_step`` returns, written to one file per run, in dataset order.

The file is a ``torch.save`` dictionary of tensors (it loads with ``torch.load(path, weights_only=True)``): every
tensor that ``predict_step`` returns with one row per sample (for the autoencoders ``latent``, ``reconstruction``,
``label`` when the batch has labels; the VQ-VAE's code ``indices``), concatenated over the whole predict set, plus
``index``, the dataset index of each row (``0..N-1``, in order), and, when the datamodule says where its samples
came from (``prediction_origins``, as lightning_ae's image datamodules do), each row's ``split`` and ``row`` in
that split's source (and ``path`` for a folder of images). Under DDP every rank keeps its rows and at the end ONE
gather brings them to rank zero only (the other ranks never hold the whole set), which sorts them by dataset index
and writes the file, so every sample appears once, in dataset order. Written to a temporary name and renamed:
never half a file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from lightning_ae.callbacks.base import Rows, gather_rows

DEFAULT_NAME = "predictions.pt"


class PredictionWriter(BasePredictionWriter):
    """Writes the predictions of a ``trainer.predict`` run to ``output_path`` (see the module docstring).

    ``lightning-ae predict`` adds one by default (to ``<log_dir>/predictions.pt``) unless the config lists a
    prediction writer itself.

    Args:
        output_path: the ``.pt`` file to write; ``None``: ``predictions.pt`` in the trainer's ``log_dir`` (or
            ``default_root_dir`` without a logger). With several predict dataloaders, dataloader ``i > 0`` goes
            to ``<stem>_<i>.pt``.
    """

    def __init__(self, output_path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        if output_path is not None and not str(output_path).strip():
            raise ValueError("output_path must be a file path or None, got an empty string")
        self.output_path = output_path
        self._rows: dict[int, list[Rows]] = {}
        self.written: list[Path] = []
        self.gathered = 0  # rows this rank received at the last epoch end (all of them on rank 0, none elsewhere)

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._rows, self.written = {}, []

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        if batch_indices is None:
            raise RuntimeError("PredictionWriter needs the dataset indices of each batch (a map-style dataset)")
        index = torch.as_tensor(list(batch_indices), dtype=torch.long)
        rows = per_sample_tensors(prediction, len(index))
        self._rows.setdefault(dataloader_idx, []).append({**rows, "index": index})

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for dataloader_idx in range(len(trainer.num_predict_batches)):
            parts = self._rows.get(dataloader_idx, [])
            local = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}
            rows = gather_rows(local, to_rank_zero=True)  # every rank takes part; rank 0 receives
            self.gathered = len(rows.get("index", ()))
            if trainer.is_global_zero and rows:
                rows = with_origins(sort_by_index(rows), trainer, dataloader_idx)
                self.written.append(write_predictions(rows, self.path(trainer, dataloader_idx)))
        self._rows = {}

    def path(self, trainer: Trainer, dataloader_idx: int = 0) -> Path:
        """The file of ``dataloader_idx``'s predictions."""
        base = Path(self.output_path) if self.output_path else Path(
            trainer.log_dir or trainer.default_root_dir) / DEFAULT_NAME
        return base if dataloader_idx == 0 else base.with_name(f"{base.stem}_{dataloader_idx}{base.suffix}")


def per_sample_tensors(prediction: Any, batch_size: int) -> Rows:
    """The tensors of a ``predict_step`` output (a dict, or one tensor as ``prediction``) with ``batch_size``
    rows, detached on the CPU."""
    items = prediction.items() if isinstance(prediction, dict) else [("prediction", prediction)]
    return {str(k): v.detach().cpu() for k, v in items
            if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == batch_size}


def with_origins(rows: Rows, trainer: Trainer, dataloader_idx: int) -> dict[str, Any]:
    """``rows`` plus the datamodule's ``prediction_origins(rows["index"])`` (split, source row, file path), when it
    has that method and this is its (first) predict dataloader."""
    origins = getattr(trainer.datamodule, "prediction_origins", None)
    if origins is None or dataloader_idx != 0:
        return rows
    return {**rows, **origins(rows["index"])}


def sort_by_index(rows: Rows) -> Rows:
    """``rows`` reordered by their ``index`` row (dataset order)."""
    order = torch.argsort(rows["index"])
    return {k: v[order] for k, v in rows.items()}


def write_predictions(rows: dict[str, Any], path: Path) -> Path:
    """``torch.save(rows, path)`` through a temporary file in the same folder and a rename; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(rows, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
