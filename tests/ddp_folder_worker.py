"""Run by tests/test_folder.py as a script: 2-process DDP (CPU, gloo) fit of the Autoencoder from an
ImageFolderDataModule; each rank writes the cache folder it mapped and the ids of the training images it saw, and
appends its rank to decodes.txt whenever it decodes the folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_ae import Autoencoder, ImageFolderDataModule
from lightning_ae.data import cache
from tests.ddp_autoencoder_worker import RecordIds


def count_decodes(log: Path) -> None:
    """Appends this process's rank to ``log`` each time the folder is decoded."""
    decode = cache._decode_all

    def counted(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{os.environ.get('LOCAL_RANK', '0')}\n")
        return decode(*args, **kwargs)

    cache._decode_all = counted


def main(root: str, out_dir: str) -> None:
    count_decodes(Path(out_dir) / "decodes.txt")
    seed_everything(0)
    record = RecordIds()
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, callbacks=[record], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    data = ImageFolderDataModule(root=root, image_size=8, resize="none", val_size=4, test_size=0, batch_size=4,
                                 decode_workers=1, cache_dir=str(Path(out_dir) / "cache"))
    trainer.fit(Autoencoder(image_shape=data.image_shape, num_classes=data.num_classes, latent_dim=4), datamodule=data)
    torch.save({"cache": str(data.cache.path), "ids": [i.cpu() for i in record.ids]},
               Path(out_dir) / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
