"""Run by tests/test_callbacks_ddp.py as a script: 2-process CPU DDP (gloo) fits of a VAE and a VQ-VAE with every
callback enabled and uneven validation shards (33 images, batches of 16: rank 0 has 2 batches, rank 1 has 1).
Each rank writes what it drew and saw to ``<out>/<model>_rank<r>.pt``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Trainer, seed_everything

import lightning_ae.callbacks.logging as image_logging
from lightning_ae import VAE, VQVAE, FakeImageDataModule, VectorQuantizer
from lightning_ae.callbacks import (
    CodebookUsageMonitor,
    LatentInterpolation,
    LatentSpaceVisualizer,
    ReconstructionGrid,
    SampleGrid,
)

SHAPE = (1, 16, 16)
WRITES: list[str] = []
_write_png = image_logging.write_png


def counting_write_png(path: Path, array: np.ndarray) -> Path:
    WRITES.append(str(path))
    return _write_png(path, array)


def main(out_dir: str) -> None:
    image_logging.write_png = counting_write_png
    for name in ("VAE", "VQVAE"):
        seed_everything(0)
        WRITES.clear()
        latent = LatentSpaceVisualizer(num_samples=1000)
        callbacks = [ReconstructionGrid(), LatentInterpolation(num_pairs=2), latent]
        if name == "VAE":
            model = VAE(latent_dim=4, image_shape=SHAPE, num_classes=4)
            callbacks.append(SampleGrid(num_samples=8))
        else:
            model = VQVAE(latent_dim=8, quantizer=VectorQuantizer(16, code_dim=8), hidden_channels=16, res_channels=8,
                          num_res_blocks=1,
                          image_shape=SHAPE, num_classes=4)
            callbacks.append(codebook := CodebookUsageMonitor(min_used_fraction=0.0))
        data = FakeImageDataModule(image_shape=SHAPE, num_classes=4, num_train=97, val_size=33, batch_size=16)
        root = Path(out_dir) / name
        trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, limit_train_batches=2,
                          callbacks=callbacks, logger=False, default_root_dir=root, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(model, datamodule=data)
        result = {"writes": list(WRITES), "val_batches": trainer.num_val_batches,
                  "latent_points": None if latent.last_points is None else latent.last_points.shape[0]}
        if name == "VQVAE":
            result["codebook_counts"] = codebook.last_counts
        torch.save(result, Path(out_dir) / f"{name}_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
