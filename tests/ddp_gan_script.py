"""Run by tests/test_vqgan.py: a VQGAN on 2 CPU ranks (gloo) with ``disc_start`` inside the run; each rank writes
its state dict to ``argv[1]``. ``argv[2]`` is the strategy."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_ae import VQGAN, FakeImageDataModule, VectorQuantizer
from lightning_ae.nets import PatchGANDiscriminator


def main(out: Path, strategy: str) -> None:
    seed_everything(0)
    model = VQGAN(image_shape=(3, 16, 16), latent_dim=8, network_options={"ch": 32, "ch_mult": [1, 2]},
                  quantizer=VectorQuantizer(16, code_dim=8), disc_start=2, lecam_weight=0.1,
                  discriminator=PatchGANDiscriminator(ndf=16, n_layers=2, norm="group"))
    data = FakeImageDataModule(image_shape=(3, 16, 16), num_train=64, val_size=16, batch_size=4)
    trainer = Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=5, limit_val_batches=0,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    torch.save({"state": model.state_dict(), "step": trainer.global_step}, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
