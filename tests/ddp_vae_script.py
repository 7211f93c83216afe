"""Run by tests/test_vqvae_ddp.py: trains a VAE on 2 CPU ranks with gloo, then validates with an active-units
threshold chosen so that counting over one rank's shard and over both shards disagree, and writes each rank's
posterior means, the threshold and the logged metrics to ``argv[1]``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.pytorch import Trainer, seed_everything

from lightning_ae import VAE, FakeImageDataModule


def discriminating_threshold(local: torch.Tensor, world: torch.Tensor) -> float:
    """A threshold between one dimension's variance over this rank's shard and over all shards, for the dimension
    where they differ most (so a count over one shard would be wrong); taken from rank 0 and broadcast."""
    v_local, v_world = local.var(0), world.var(0)
    dim = int((v_local.log() - v_world.log()).abs().argmax())
    threshold = torch.tensor(float((v_local[dim] * v_world[dim]).sqrt()), dtype=torch.float64)
    dist.broadcast(threshold, src=0)
    return float(threshold)


def main(out: Path) -> None:
    seed_everything(0)
    model = VAE(image_shape=(1, 16, 16), latent_dim=8)
    data = FakeImageDataModule(image_shape=(1, 16, 16), num_train=128, val_size=40, batch_size=8)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=4, num_sanity_val_steps=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    model.eval()
    with torch.no_grad():
        means = torch.cat([model.encode(data.transform(images, training=False))
                           for images, _ in data.val_dataloader()]).double()
    gathered = [torch.empty_like(means) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, means)
    model.active_units.threshold = discriminating_threshold(means, torch.cat(gathered))
    metrics = trainer.validate(model, datamodule=data, verbose=False)[0]
    torch.save({"means": means, "threshold": model.active_units.threshold, "metrics": metrics},
               out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
