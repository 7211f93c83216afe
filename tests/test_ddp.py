"""Real multi-process DDP on CPU (gloo): two ranks, disjoint data, identical weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import write_mnist

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_ddp_autoencoder_mnist_two_ranks(tmp_path: Path) -> None:
    data_dir = write_mnist(tmp_path / "data", n_train=440, n_test=40)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    worker = ROOT / "tests" / "ddp_autoencoder_worker.py"
    subprocess.run([sys.executable, str(worker), str(data_dir), str(tmp_path), "2"],
                   check=True, env=env, cwd=tmp_path, timeout=300)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    for epoch in range(2):  # 400 training images, batch 16, 2 ranks: 13 batches per rank per epoch (200 images)
        seen = [torch.cat(r["ids"][epoch * 13 : (epoch + 1) * 13]) for r in ranks]
        assert len(seen[0]) == len(seen[1]) == 200
        assert set(seen[0].tolist()).isdisjoint(seen[1].tolist())
        assert len(set(seen[0].tolist()) | set(seen[1].tolist())) == 400
    assert len(ranks[0]["ids"]) == 26
    torch.testing.assert_close(ranks[0]["weights"], ranks[1]["weights"], rtol=0, atol=0)
    assert ranks[0]["val_loss"] == ranks[1]["val_loss"]  # synced over both ranks' validation shards
