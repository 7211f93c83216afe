"""Run by tests/test_vqvae_ddp.py: trains a class-conditional TransformerPrior on cached codes (CodeDataModule) on
2 CPU ranks with gloo, over the VQ-VAE model folder ``argv[2]``, and writes each rank's transformer weights, how
many images that rank's frozen encoder saw, and the validation metrics to ``argv[1]``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_ae import VQVAE, CodeDataModule, FakeImageDataModule, TransformerPrior


def main(out: Path, vqvae: str) -> None:
    seed_everything(0)
    prior = TransformerPrior(vqvae, dim=16, num_layers=1, num_heads=2, num_classes=10, class_dropout=0.2)
    encoded = []  # images encoded from here on (building the prior probes the code grid once)
    original = VQVAE.encode_indices
    VQVAE.encode_indices = lambda self, x: encoded.append(len(x)) or original(self, x)  # type: ignore[method-assign]
    images = FakeImageDataModule(image_shape=(1, 28, 28), num_train=64, val_size=32, batch_size=8)
    data = CodeDataModule(images, cache_dir=str(out / "codes"), batch_size=8)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=4, num_sanity_val_steps=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(prior, datamodule=data)
    metrics = trainer.validate(prior, datamodule=data, verbose=False)[0]
    state = {key: value.detach().clone() for key, value in prior.transformer.state_dict().items()}
    torch.save({"state": state, "encoded": sum(encoded), "metrics": metrics}, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
