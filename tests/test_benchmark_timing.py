"""The timing helpers of benchmarks/throughput.py: the steady per-step window and the interval of a median."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
throughput = load_script(ROOT / "benchmarks" / "throughput.py", "throughput_benchmark")


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
