"""The process group as it is *now*: Lightning builds modules before it exists, so nothing caches this."""

from __future__ import annotations

import torch.distributed as dist


def world_size() -> int:
    """The size of the initialised process group, else 1 (checked at call time)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the initialised process group, else 0 (checked at call time)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
