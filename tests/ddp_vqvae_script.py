"""Run by tests/test_vqvae_ddp.py: trains a VQVAE (EMA, k-means init, restarts) on 2 CPU ranks with gloo and writes
each rank's codebook state, its validation shard's code indices and the logged usage metrics to ``argv[1]``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_ae import VQVAE, FakeImageDataModule


def main(out: Path) -> None:
    seed_everything(0)
    model = VQVAE(image_shape=(1, 16, 16), latent_dim=8, num_codes=32, hidden_channels=16, res_channels=8,
                  kmeans_init=True, restart_threshold=1.0)
    data = FakeImageDataModule(image_shape=(1, 16, 16), num_train=128, val_size=40, batch_size=8)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=6, num_sanity_val_steps=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    metrics = trainer.validate(model, datamodule=data, verbose=False)[0]
    rank = trainer.global_rank
    model.eval()
    with torch.no_grad():
        indices = [model.encode_indices(data.transform(images, training=False))
                   for images, _ in data.val_dataloader()]
    q = model.quantizer
    torch.save({"codebook": q.codebook.detach(), "cluster_size": q.cluster_size, "embed_sum": q.embed_sum,
                "initialized": q.initialized, "indices": torch.cat(indices).reshape(-1), "metrics": metrics},
               out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
