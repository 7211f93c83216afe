"""The timing helpers of benchmarks/throughput.py and step_overhead.py: the steady per-step window, the interval of a
median, the turns of the interleaved runs and their blocks."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
throughput = load_script(ROOT / "benchmarks" / "throughput.py", "throughput_benchmark")
step_overhead = load_script(ROOT / "benchmarks" / "step_overhead.py", "step_overhead_benchmark")


class _Linear(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(x).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(("steady", "images"), [(False, 20), (True, 16)])
def test_epoch_timer_steady_window_leaves_out_the_first_batch(steady: bool, images: int) -> None:
    timer = throughput.EpochTimer(steady)
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(_Linear(), train_dataloaders=DataLoader(torch.randn(20, 3), batch_size=4))
    assert timer.images == images  # 5 batches of 4; the steady window starts at the end of the first
    assert timer.seconds[0] > 0 and timer.seconds[1] >= 0


def test_median_ci_brackets_the_median_and_shrinks_to_a_point_for_equal_values() -> None:
    values = [float(v) for v in range(1, 42)]
    low, high = throughput.median_ci(values)
    assert low < 21.0 < high and low >= 1.0 and high <= 41.0
    assert high - low < 20  # far narrower than the range of the values
    assert throughput.median_ci(values) == [low, high]  # seeded: the same interval every time
    assert throughput.median_ci([7.0] * 11) == [7.0, 7.0]


def test_baton_runs_one_thread_at_a_time_in_rotated_rounds() -> None:
    names, rounds = ["a", "b", "c"], 4
    baton, turns = step_overhead.Baton(names, rounds), []

    def worker(name: str) -> None:
        while baton.wait(name):
            turns.append(name)
            baton.pass_on()

    threads = [threading.Thread(target=worker, args=(name,)) for name in reversed(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    assert "".join(turns) == "abc" "bca" "cab" "abc"  # the order rotates by one name each round


def test_blocks_time_steady_steps_and_leave_out_the_rounds_that_cross_an_epoch() -> None:
    baton = step_overhead.Baton(["only"], rounds=6)
    blocks = step_overhead.Blocks("only", baton, threading.Barrier(1), block_steps=2)
    trainer = Trainer(max_epochs=-1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[step_overhead.BlockCallback(blocks)])
    trainer.fit(_Linear(), train_dataloaders=DataLoader(torch.randn(20, 3), batch_size=4))  # 5 steps an epoch
    # step 1 is warm-up; then blocks of 2: steps 2-3, 4-5 | 6-7 (epoch 2 starts) | 8-9, 10-11 (epoch 3) | 12-13
    assert [r for r, t in blocks.times.items() if t is None] == [2, 4]
    assert sorted(blocks.times) == list(range(6))
    assert all(t[0] > 0 for t in blocks.times.values() if t is not None)
    assert trainer.global_step == 13  # stopped at the end of the last block


def test_replica_mean_averages_the_copies_that_did_not_cross_an_epoch() -> None:
    assert step_overhead.replica_mean([(1.0, 2.0, 0), None, (3.0, 4.0, 6)]) == (2.0, 3.0, 3.0)
    assert step_overhead.replica_mean([None, None]) is None


def test_combine_launches_takes_the_median_over_launches_with_its_interval() -> None:
    def launch(ours: float) -> dict:
        return {"overhead_us_bare_loop": 500.0, "overhead_us_step_bare": ours / 2, "overhead_us_ours_bare": ours,
                "step_us_wall_clock": {"loop": 1.0}}

    values = [60.0, 201.0, 125.0, 142.0, 90.0]
    combined = step_overhead.combine_launches([launch(v) for v in values])
    assert combined["launches"] == 5
    assert combined["per_launch"]["ours - bare"] == values  # every launch's own median, in launch order
    assert combined["overhead_us_ours_bare"] == 125.0 and combined["overhead_us_step_bare"] == 62.5
    assert combined["overhead_us_ours_bare_range"] == [60.0, 201.0]
    low, high = combined["overhead_us_ours_bare_ci90"]
    assert 60.0 <= low <= 125.0 <= high <= 201.0 and high > low  # the launches' spread widens the interval
    assert combined["overhead_us_bare_loop_ci90"] == [500.0, 500.0]


def test_launch_argv_makes_one_launch_that_writes_where_it_is_told(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--batch-size", "16", "--launches", "3", "--json=out.json", "--rounds", "5", "--data-dir", "d"]
    monkeypatch.setattr("sys.argv", ["step_overhead.py", *step_overhead.launch_argv(argv, 2, Path("x.json"))])
    args = step_overhead.parse_args()
    assert (args.launches, args.launch, args.json) == (1, 2, "x.json")  # the launcher's options overridden
    assert (args.batch_size, args.rounds, args.data_dir) == (16, 5, "d")  # the user's kept
