"""Callbacks the multi-process tests name by class path. ``DumpWeights``: at the end of fit, every rank writes its
model's weights and its place in the world to ``<out_dir>/rank<global_rank>.pt``."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class DumpWeights(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        weights = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        info = {"weights": weights, "global_rank": trainer.global_rank, "node_rank": trainer.node_rank,
                "world_size": trainer.world_size, "global_step": trainer.global_step}
        torch.save(info, Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


class RecordGathered(Callback):
    """At the end of predict, every rank writes how many rows its PredictionWriter received from the gather."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from lightning_ae import PredictionWriter

        (writer,) = [c for c in trainer.callbacks if isinstance(c, PredictionWriter)]
        torch.save({"gathered": writer.gathered}, Path(self.out_dir) / f"gathered_rank{trainer.global_rank}.pt")
