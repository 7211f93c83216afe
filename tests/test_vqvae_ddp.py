"""DDP for real on CPU (2 ranks, gloo): every rank holds the identical codebook after training with EMA, k-means
init and restarts, and the epoch metrics that reduce their own state (the VQ-VAE's codebook usage, the VAE's active
units) count both ranks' data, with no warning from Lightning about unsynchronised epoch logs; residual VQ keeps
every level identical; LFQ's batch entropy and its gradient are those of the union of the ranks' batches."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_ae import LFQ
from lightning_ae.quantizers import perplexity_of_counts
from tests.ddp_lfq_script import batch

UNSYNCED_WARNING = "when logging on epoch level in distributed setting"


def run_script(name: str, tmp_path: Path, *args: str) -> tuple[dict, dict]:
    """Runs a 2-rank script from tests/, checks it succeeded without the unsynchronised-log warning, and returns
    what each rank saved."""
    script = Path(__file__).with_name(name)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), *args], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert UNSYNCED_WARNING not in proc.stderr, proc.stderr[-3000:]
    return tuple(torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))  # type: ignore[return-value]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vq", "rvq"])
def test_ddp_ranks_hold_identical_codebooks(kind: str, tmp_path: Path) -> None:
    """EMA, k-means init and restarts (and, for residual VQ, quantizer dropout) leave every level's codebook and
    statistics bit-identical on both ranks; the epoch's usage counts both ranks' codes, per level."""
    r0, r1 = run_script("ddp_vqvae_script.py", tmp_path, kind)
    levels = 3 if kind == "rvq" else 1
    assert sum(key.endswith("codebook") for key in r0["state"]) == levels
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key  # bit-identical
        if key.endswith("initialized"):
            assert bool(value)
    assert not torch.equal(r0["indices"], r1["indices"])  # the ranks did see different data
    both = torch.cat([r0["indices"], r1["indices"]])
    per_level = both.movedim(1, 0).reshape(levels, -1) if levels > 1 else both.reshape(1, -1)
    counts = torch.stack([torch.bincount(level, minlength=32) for level in per_level])
    for r in (r0, r1):
        assert r["metrics"]["val/codebook_perplexity"] == pytest.approx(
            perplexity_of_counts(counts).mean().item(), rel=1e-5)
        assert r["metrics"]["val/codebook_used_fraction"] == pytest.approx((counts > 0).float().mean().item())


@pytest.mark.slow
def test_ddp_vae_active_units_count_both_ranks(tmp_path: Path) -> None:
    r0, r1 = run_script("ddp_vae_script.py", tmp_path)
    threshold = r0["threshold"]
    assert r1["threshold"] == threshold

    def active(means: torch.Tensor) -> int:
        return int((means.var(0) > threshold).sum())

    expected = active(torch.cat([r0["means"], r1["means"]]))
    assert {active(r0["means"]), active(r1["means"])} != {expected}  # the threshold tells one shard from both
    for r in (r0, r1):
        assert r["metrics"]["val/active_units"] == expected


@pytest.mark.slow
def test_ddp_lfq_batch_entropy_is_that_of_the_union(tmp_path: Path) -> None:
    """LFQ's codebook entropy over 2 ranks equals one process's on both halves together, and so does the gradient
    once DDP averages it over the ranks (the differentiable all-reduce sums the ranks' output gradients)."""
    r0, r1 = run_script("ddp_lfq_script.py", tmp_path)
    z = batch().requires_grad_(True)
    union = LFQ(num_codes=16, temperature=0.5).train()(z, update=False)  # one process: its own batch is the union
    union.loss.backward()
    halves = [LFQ(num_codes=16, temperature=0.5)(half, update=False).terms["codebook_entropy"] for half in z.chunk(2)]
    for r in (r0, r1):
        torch.testing.assert_close(r["terms"]["codebook_entropy"], union.terms["codebook_entropy"])
    assert all(abs(h - union.terms["codebook_entropy"]) > 1e-3 for h in halves)  # a shard alone differs
    torch.testing.assert_close((r0["terms"]["per_sample_entropy"] + r1["terms"]["per_sample_entropy"]) / 2,
                               union.terms["per_sample_entropy"])
    torch.testing.assert_close(torch.cat([r0["grad"], r1["grad"]]) / 2, z.grad)


@pytest.mark.slow
def test_ddp_transformer_prior_caches_codes_once_and_ranks_agree(tmp_path: Path) -> None:
    """A conditional transformer prior on 2 ranks: the code caches are extracted once (by local rank 0; the other
    rank waits and reads them), the ranks end with bit-identical weights (although each drops its own labels) and
    report the same validation NLL."""
    from lightning_ae import VQVAE, VectorQuantizer

    torch.manual_seed(0)
    folder = VQVAE(quantizer=VectorQuantizer(16, code_dim=8), image_shape=(1, 28, 28), latent_dim=8,
                   hidden_channels=16, res_channels=8).save_pretrained(tmp_path / "vqvae")
    r0, r1 = run_script("ddp_prior_script.py", tmp_path, str(folder))
    assert r0["encoded"] == 32 + 32 and r1["encoded"] == 0  # train and val (32 each), once, by rank 0
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "codes").iterdir()) == ["train", "val"]
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key
    assert r0["metrics"]["val/loss"] == pytest.approx(r1["metrics"]["val/loss"], rel=1e-6)
    assert r0["metrics"]["val/bits_per_code"] == pytest.approx(r0["metrics"]["val/loss"] / math.log(2), rel=1e-6)
