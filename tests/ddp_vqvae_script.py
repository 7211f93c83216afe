"""Run by tests/test_vqvae_ddp.py: trains a VQVAE (EMA, k-means init, restarts) on 2 CPU ranks with gloo and writes
each rank's quantizer state, its validation shard's code indices and the logged usage metrics to ``argv[1]``.
``argv[2]`` picks the quantizer: ``vq`` (the default ``VectorQuantizer``) or ``rvq`` (a 3-level ``ResidualVQ``
with quantizer dropout)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_ae import VQVAE, FakeImageDataModule, ResidualVQ, VectorQuantizer


def main(out: Path, kind: str) -> None:
    seed_everything(0)
    common = {"image_shape": (1, 16, 16), "latent_dim": 8, "hidden_channels": 16, "res_channels": 8}
    if kind == "rvq":
        model = VQVAE(quantizer=ResidualVQ(num_quantizers=3, num_codes=32, code_dim=8, kmeans_init=True,
                                           restart_threshold=1.0, quantizer_dropout=True), **common)
    else:
        model = VQVAE(quantizer=VectorQuantizer(32, code_dim=8, kmeans_init=True, restart_threshold=1.0), **common)
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
    state = {key: value.detach().clone() for key, value in model.quantizer.state_dict().items()}
    torch.save({"state": state, "indices": torch.cat(indices), "metrics": metrics}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "vq")
