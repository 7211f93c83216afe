"""Run by tests/test_streaming.py as a script: trains the Autoencoder from a LitData dataset with
StreamingImageDataModule under real 2-process DDP (CPU, gloo) and writes, per rank, the ids of the training images
it saw (pixels (0, 0, 0) and (0, 0, 1), see tests/test_streaming.py) and a digest of its final weights."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_ae import Autoencoder
from lightning_ae.data.streaming import StreamingImageDataModule
from tests.ddp_autoencoder_worker import RecordIds


def main(input_dir: str, out_dir: str, epochs: int) -> None:
    seed_everything(0)
    record = RecordIds()
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=epochs, callbacks=[record],
                      logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    data = StreamingImageDataModule(input_dir=input_dir, batch_size=4, cache_dir=str(Path(out_dir) / "chunks"))
    model = Autoencoder(image_shape=data.image_shape, num_classes=data.num_classes, latent_dim=4)
    trainer.fit(model, datamodule=data)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.save({"ids": [i.cpu() for i in record.ids], "weights": weights, "world_size": trainer.world_size},
               Path(out_dir) / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
