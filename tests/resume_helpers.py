"""Callbacks that end a training run abruptly at a given step, for the resume tests."""

from __future__ import annotations

import os
import signal
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class KillAtStep(Callback):
    """Sends SIGKILL to its own process after optimizer step ``step`` (no cleanup, no checkpoint, no flush)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class CrashError(Exception):
    """Raised by :class:`CrashAtStep`."""


class CrashAtStep(KillAtStep):
    """Raises :class:`CrashError` after optimizer step ``step`` (an in-process stand-in for a kill)."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            raise CrashError(f"stopped at step {trainer.global_step}")
