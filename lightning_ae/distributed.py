"""The process group as it is *now* (Lightning builds modules before it exists, so nothing caches this), and
logging of values that are already global."""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule


def world_size() -> int:
    """The size of the initialised process group, else 1 (checked at call time)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the initialised process group, else 0 (checked at call time)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def log_global(module: LightningModule, values: dict[str, torch.Tensor]) -> None:
    """Logs epoch-level ``values`` that are already the same on every rank (a metric whose states were reduced
    over all ranks): ``sync_dist`` then averages equal values, and tells Lightning the value is a global one, so
    it does not warn about epoch-level logging without sync."""
    module.log_dict({k: v.float() for k, v in values.items()}, on_step=False, on_epoch=True, sync_dist=True)
