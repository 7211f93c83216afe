"""The training-step timer the speed benchmarks share (imported as ``from timing import StepTimer``; the scripts put
their own folder on ``sys.path``, so they run as ``python benchmarks/<name>.py`` from anywhere)."""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer


class StepTimer(Callback):
    """Wall and CPU time from the end of the first ``warmup`` training batches to the end of the last
    (``wall_s``, ``cpu_s``); CUDA is synchronised at each batch end so the times cover the work queued."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.cpu = warmup, 0.0, 0.0
        self.wall_s = self.cpu_s = 0.0

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        if batch_idx + 1 == self.warmup:
            self.start, self.cpu = time.perf_counter(), time.process_time()
        self.wall_s, self.cpu_s = time.perf_counter() - self.start, time.process_time() - self.cpu
