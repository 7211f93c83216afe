"""Every callback under real 2-process DDP on CPU (gloo) with uneven validation shards: no deadlock, the images
are drawn once (by rank zero) from both ranks' data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_ddp_fit_with_every_callback_and_uneven_validation(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    worker = ROOT / "tests" / "ddp_callbacks_worker.py"
    subprocess.run([sys.executable, str(worker), str(tmp_path)], check=True, env=env, cwd=tmp_path, timeout=420)
    for name, keys in (("VAE", {"reconstructions", "interpolations", "latent_traversals", "latent_space", "samples"}),
                       ("VQVAE", {"reconstructions", "interpolations", "latent_space", "codebook_usage"})):
        rank0, rank1 = (torch.load(tmp_path / f"{name}_rank{r}.pt", weights_only=False) for r in range(2))
        assert rank0["val_batches"] == [2] and rank1["val_batches"] == [1]  # 17 and 16 of the 33 images
        assert rank1["writes"] == [] and rank1["latent_points"] is None  # only rank zero draws and writes
        files = sorted(Path(p).relative_to(tmp_path / name).as_posix() for p in rank0["writes"])
        # two epochs of two training steps: one image per key at steps 2 and 4, each written once
        assert files == sorted(f"images/val_{k}/step_{s:07d}.png" for k in keys for s in (2, 4))
        assert all((tmp_path / name / f).is_file() for f in files)
        assert rank0["latent_points"] == 33  # both ranks' validation images
    vq0, vq1 = (torch.load(tmp_path / f"VQVAE_rank{r}.pt", weights_only=False) for r in range(2))
    assert int(vq0["codebook_counts"].sum()) == 33 * 4 * 4  # every code of both ranks' images, 4 x 4 a grid
    torch.testing.assert_close(vq0["codebook_counts"], vq1["codebook_counts"])
