"""Run by tests/test_vqvae_ddp.py: an LFQ training step on 2 CPU ranks (gloo, no Lightning), each rank on its half
of a fixed batch; writes each rank's loss terms and the gradient of its loss with respect to its half to ``argv[1]``.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_ae import LFQ


def batch() -> torch.Tensor:
    """The fixed batch ``(8, 4, 3, 3)``; rank r holds rows ``4r .. 4r + 3``."""
    return torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0))


def run(rank: int, out: Path, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    lfq = LFQ(num_codes=16, temperature=0.5).train()
    z = batch()[4 * rank: 4 * rank + 4].requires_grad_(True)
    result = lfq(z)
    result.loss.backward()
    terms = {key: value.detach() for key, value in result.terms.items()}
    torch.save({"terms": terms, "loss": result.loss.detach(), "grad": z.grad}, out / f"rank{rank}.pt")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    mp.spawn(run, args=(Path(sys.argv[1]), free_port()), nprocs=2)
