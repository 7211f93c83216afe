"""Run by tests/test_evaluation.py: on 2 CPU ranks (gloo), fits an AutoencoderKL with frozen weights (its
scaling_factor measured over both ranks' latents), then tests it with ReconstructionMetrics; each rank writes its
scaling factor, the logged metrics and the weights to ``argv[1]``."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_ae import AutoencoderKL, FakeImageDataModule, ReconstructionMetrics


def frozen(parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:  # an optimizer that changes nothing
    return torch.optim.SGD(parameters, lr=0.0)


def main(out: Path, classifier: str) -> None:
    seed_everything(0)
    model = AutoencoderKL(image_shape=(1, 16, 16), network_options={"ch": 32, "ch_mult": [1, 2]}, optimizer=frozen)
    data = FakeImageDataModule(image_shape=(1, 16, 16), num_train=32, val_size=8, num_test=16, batch_size=4)
    callback = ReconstructionMetrics(["psnr", "ssim", "fd"], feature_network=classifier)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, limit_val_batches=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[callback])
    trainer.fit(model, datamodule=data)
    metrics = trainer.test(model, datamodule=data, verbose=False)[0]
    torch.save({"scaling_factor": model.scaling_factor.item(), "metrics": metrics, "state": model.state_dict()},
               out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
