"""DDP for real on CPU (2 ranks, gloo): every rank holds the identical codebook after training with EMA, k-means
init and restarts, and the codebook-usage metric counts both ranks' data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_ae.quantizers import perplexity_of_counts


@pytest.mark.slow
def test_ddp_ranks_hold_identical_codebooks(tmp_path: Path) -> None:
    script = Path(__file__).with_name("ddp_vqvae_script.py")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert bool(r0["initialized"]) and bool(r1["initialized"])
    for key in ("codebook", "cluster_size", "embed_sum"):
        assert torch.equal(r0[key], r1[key]), key  # bit-identical
    assert not torch.equal(r0["indices"], r1["indices"])  # the ranks did see different data
    counts = torch.bincount(torch.cat([r0["indices"], r1["indices"]]), minlength=32)
    for r in (r0, r1):
        assert r["metrics"]["val/usage_perplexity"] == pytest.approx(perplexity_of_counts(counts).item(), rel=1e-5)
        assert r["metrics"]["val/usage_used_fraction"] == pytest.approx((counts > 0).float().mean().item())
