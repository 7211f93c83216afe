"""Regenerates the README pictures from real MNIST with the project's own callbacks (a few CPU minutes):

    LIGHTNING_AE_DATA=/path/with/MNIST/raw python docs/make_figures.py

Trains a small MLP VAE (latent scatter by t-SNE, reconstructions, samples), a small VQ-VAE (codebook usage)
and a PixelCNN prior over its codes (VQ-VAE samples), then runs ``trainer.validate`` with the callbacks and no
logger, so the callbacks write their PNG files, which are copied to ``docs/figures/``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from lightning_ae import VAE, VQVAE, MNISTDataModule, PixelCNNPrior, VectorQuantizer
from lightning_ae.callbacks import (
    CodebookUsageMonitor,
    LatentInterpolation,
    LatentSpaceVisualizer,
    ReconstructionGrid,
    SampleGrid,
)

OUT = Path(__file__).parent / "figures"


def fit(model: LightningModule, data: MNISTDataModule, root: Path, epochs: int, batches: int) -> Trainer:
    trainer = Trainer(accelerator="cpu", max_epochs=epochs, limit_train_batches=batches, limit_val_batches=0,
                      logger=False, default_root_dir=root, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    return trainer


def draw(model: LightningModule, data: MNISTDataModule, root: Path, callbacks: list[Callback],
         names: dict[str, str]) -> None:
    """Validates with ``callbacks`` (no logger: PNG files under ``root``) and copies ``val_<key>`` to OUT."""
    Trainer(accelerator="cpu", logger=False, default_root_dir=root, callbacks=callbacks, limit_val_batches=8,
            enable_progress_bar=False, enable_model_summary=False).validate(model, datamodule=data, verbose=False)
    for key, name in names.items():
        (png,) = sorted((root / "images" / f"val_{key}").glob("*.png"))[-1:]
        shutil.copyfile(png, OUT / name)
        print(f"wrote {OUT / name}")


def main() -> None:
    data_dir = os.environ.get("LIGHTNING_AE_DATA")
    if not data_dir:
        sys.exit("set LIGHTNING_AE_DATA to the folder holding MNIST/raw")
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lightning_ae_figures_"))
    seed_everything(0)

    binary = MNISTDataModule(data_dir=data_dir, batch_size=128, eval_batch_size=250, download=False, binarize="dynamic")
    vae = VAE(latent_dim=16, num_classes=10)
    fit(vae, binary, work / "vae", epochs=4, batches=200)
    draw(vae, binary, work / "vae", [
        LatentSpaceVisualizer(num_samples=2000, projection="tsne"), ReconstructionGrid(num_images=16),
        SampleGrid(num_samples=64), LatentInterpolation(num_pairs=4, steps=8, traversal_dims=0),
    ], {"latent_space": "vae_latent_tsne.png", "reconstructions": "vae_reconstructions.png",
        "samples": "vae_samples.png", "interpolations": "vae_interpolations.png"})

    grey = MNISTDataModule(data_dir=data_dir, batch_size=128, eval_batch_size=250, download=False)
    vqvae = VQVAE(latent_dim=16, quantizer=VectorQuantizer(64, 16, kmeans_init=True), hidden_channels=64,
                  res_channels=32, num_res_blocks=1, num_classes=10)
    trainer = fit(vqvae, grey, work / "vqvae", epochs=2, batches=200)
    draw(vqvae, grey, work / "vqvae", [CodebookUsageMonitor(), ReconstructionGrid(num_images=16)],
         {"codebook_usage": "vqvae_codebook_usage.png", "reconstructions": "vqvae_reconstructions.png"})

    checkpoint = work / "vqvae.ckpt"
    trainer.save_checkpoint(checkpoint)
    prior = PixelCNNPrior(str(checkpoint), channels=64, num_layers=8, kernel_size=5)
    fit(prior, grey, work / "prior", epochs=3, batches=200)
    draw(prior, grey, work / "prior", [SampleGrid(num_samples=64)], {"samples": "vqvae_prior_samples.png"})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
