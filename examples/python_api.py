"""lightning-ae without the CLI: our modules inside a plain Lightning script.

    python examples/python_api.py --data-dir ../shared/data

Trains a convolutional Autoencoder on MNIST with a custom decoder, tests it, and reloads the checkpoint.
"""

from __future__ import annotations

import argparse

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_ae import Autoencoder, MNISTDataModule
from lightning_ae.nets import ConvDecoder, ConvEncoder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    seed_everything(0)

    data = MNISTDataModule(data_dir=args.data_dir, batch_size=128)
    model = Autoencoder(
        encoder=ConvEncoder(image_shape=(1, 28, 28), out_dim=16, hidden_channels=32),
        decoder=ConvDecoder(image_shape=(1, 28, 28), latent_dim=16, hidden_channels=32),
        image_shape=data.image_shape,
        recon_loss="bce",
        optimizer=lambda params: torch.optim.AdamW(params, lr=2e-3),
    )
    checkpoint = ModelCheckpoint(monitor="val/loss")
    trainer = Trainer(max_epochs=args.epochs, callbacks=[checkpoint])
    trainer.fit(model, datamodule=data)
    print(trainer.test(model, datamodule=data))

    # modules passed from Python are pickled into the checkpoint: trusted files only, hence weights_only=False
    restored = Autoencoder.load_from_checkpoint(checkpoint.best_model_path, weights_only=False)
    x = next(iter(data.test_dataloader()))[0][:8].float() / 255
    print("reconstruction error of the restored model:", torch.mean((restored.eval()(x) - x) ** 2).item())


if __name__ == "__main__":
    main()
