"""Each DDP rank's random stream survives a resume: the checkpoint holds every rank's generator states and each
rank sets back its own; a checkpoint of another world size re-seeds per rank with a warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_ae.resume import all_rank_states, restore_rank_states, rng_states

ROOT = Path(__file__).parents[1]


def _run(out: Path, mode: str) -> list[dict[int, torch.Tensor]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_rng_script.py"), str(out), mode], check=True, env=env,
                   cwd=out, timeout=300)
    return [torch.load(out / f"{mode}_rank{r}.pt") for r in range(2)]


@pytest.mark.slow
def test_every_rank_continues_its_own_stream_after_resume(tmp_path: Path) -> None:
    full = _run(tmp_path, "full")
    assert not torch.equal(full[0][0], full[1][0]), "the ranks must draw from different streams"
    assert (tmp_path / "ckpt" / "step2.ckpt").is_file()
    resumed = _run(tmp_path, "resume")
    for rank in range(2):
        assert sorted(resumed[rank]) == [2, 3]
        for step in (2, 3):  # the resumed rank draws exactly what it drew in the uninterrupted run
            assert torch.equal(resumed[rank][step], full[rank][step]), f"rank {rank} step {step}"


def test_another_world_size_reseeds_each_rank_with_a_warning() -> None:
    torch.manual_seed(5)
    saved = {"world_size": 2, "ranks": [rng_states(), rng_states()]}
    draws = []
    for rank in (0, 1, 1):
        with pytest.warns(UserWarning, match="random streams of 2 rank"):
            restore_rank_states(saved, rank, world_size=3)
        draws.append(torch.rand(3))
    assert not torch.equal(draws[0], draws[1]) and torch.equal(draws[1], draws[2])  # per rank, repeatable


def test_the_same_world_size_restores_the_rank_and_old_checkpoints_still_load() -> None:
    torch.manual_seed(1)
    one = rng_states()
    expected = torch.rand(2)
    saved = all_rank_states()
    assert saved["world_size"] == 1
    restore_rank_states({"world_size": 1, "ranks": [one]}, 0, 1)
    assert torch.equal(torch.rand(2), expected)
    restore_rank_states(one, 0, 1)  # a checkpoint written before per-rank states: rank 0's dict
    assert torch.equal(torch.rand(2), expected)
