"""Worker of ``test_resume_ddp.py``: a 2-rank DDP run whose ranks draw from their own random streams.

``python ddp_rng_script.py OUT full`` trains 4 steps of a denoising autoencoder (gaussian corruption drawn from the
global generator), saving a checkpoint after step 2; ``... OUT resume`` resumes from that checkpoint to step 4.
Each rank seeds its generator with ``100 + rank`` in ``setup`` (so the ranks' streams differ) and writes, per
step, a fingerprint of the generator state at the start of the step to ``OUT/<mode>_rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_ae import DenoisingAutoencoder, FakeImageDataModule


class SeedPerRank(Callback):
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        torch.manual_seed(100 + trainer.global_rank)  # a checkpoint restored after setup overrides this


class Fingerprints(Callback):
    def __init__(self) -> None:
        self.steps: dict[int, torch.Tensor] = {}

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        self.steps[trainer.global_step] = torch.get_rng_state().clone()


def main(out: Path, mode: str) -> None:
    seed_everything(0)
    model = DenoisingAutoencoder(latent_dim=4, image_shape=(1, 8, 8), corruption="gaussian", noise_std=0.3)
    data = FakeImageDataModule(image_shape=(1, 8, 8), num_train=64, val_size=8, batch_size=4)
    prints = Fingerprints()
    checkpoint = ModelCheckpoint(dirpath=out / "ckpt", filename="step{step}", auto_insert_metric_name=False,
                                 every_n_train_steps=2, save_top_k=-1)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=4, logger=False, limit_val_batches=0,
                      enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[SeedPerRank(), prints, checkpoint])
    trainer.fit(model, datamodule=data, ckpt_path=str(out / "ckpt" / "step2.ckpt") if mode == "resume" else None)
    torch.save(prints.steps, out / f"{mode}_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
