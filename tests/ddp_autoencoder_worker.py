"""Run by tests/test_ddp.py as a script: trains the Autoencoder with MNISTDataModule under real 2-process DDP
(CPU, gloo) and writes, per rank, the ids of the training images it saw and a digest of its final weights."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_ae import Autoencoder, MNISTDataModule


class RecordIds(Callback):
    """Collects the id written into pixels (0, 0) and (0, 1) of every training image (tests/conftest.py)."""

    def __init__(self) -> None:
        self.ids: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        images = (batch[0] * 255).round().long()  # the batch is already on the device, as floats in [0, 1]
        self.ids.append(images[:, 0, 0, 0] * 256 + images[:, 0, 0, 1])


def main(data_dir: str, out_dir: str, epochs: int) -> None:
    seed_everything(0)
    record = RecordIds()
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=epochs, callbacks=[record],
                      logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    model = Autoencoder(recon_loss="bce")
    data = MNISTDataModule(data_dir=data_dir, download=False, batch_size=16, val_size=40)
    trainer.fit(model, datamodule=data)
    trainer.validate(model, datamodule=data, verbose=False)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.save({"ids": [i.cpu() for i in record.ids], "weights": weights, "world_size": trainer.world_size,
                "val_loss": trainer.callback_metrics["val/loss"]}, Path(out_dir) / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
