"""lightning-ae as a drop-in: somebody else's plain Lightning project, with its own datamodule (dict batches), its
own logger and its own training script, no part of our CLI. It trains two of our variants (``Autoencoder`` and
``VAE``) with one of our callbacks (``LinearProbe``).

    python examples/dropin_project.py --epochs 3

The data are 16x16 grey images of two classes (a bright horizontal bar or a vertical one, at a random position,
with noise), made in memory; batches are ``{"image": float (B, 1, 16, 16), "label": long (B,)}``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, Trainer, seed_everything
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, Dataset

from lightning_ae import VAE, Autoencoder, LinearProbe

SIZE = 16


def bars(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 1, SIZE, SIZE)`` in [0, 1] and their labels: 0 = a horizontal bar, 1 = a vertical one."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=gen)
    where = torch.randint(2, SIZE - 2, (n,), generator=gen)
    images = 0.1 * torch.rand(n, 1, SIZE, SIZE, generator=gen)
    for i in range(n):
        bar = slice(int(where[i]) - 1, int(where[i]) + 1)
        if labels[i] == 0:
            images[i, 0, bar, :] = 1.0
        else:
            images[i, 0, :, bar] = 1.0
    return images, labels


class DictDataset(Dataset[dict[str, torch.Tensor]]):
    """Samples as ``{"image", "label"}`` dicts (the default collate stacks them into dict batches)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "label": self.labels[i]}


class BarsDataModule(LightningDataModule):
    """The user's own datamodule: nothing of lightning-ae in it."""

    num_classes = 2

    def __init__(self, num_train: int = 512, num_test: int = 128, batch_size: int = 64) -> None:
        super().__init__()
        self.num_train, self.num_test, self.batch_size = num_train, num_test, batch_size
        self.splits: dict[str, DictDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            for name, (n, seed) in {"train": (self.num_train, 0), "val": (self.num_test, 1),
                                    "test": (self.num_test, 2)}.items():
                self.splits[name] = DictDataset(*bars(n, seed))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["train"], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], batch_size=self.batch_size)


class MemoryLogger(Logger):
    """The user's own logger: keeps every logged scalar in a list of ``(step, {key: value})``."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[tuple[int, dict[str, float]]] = []
        self.hparams: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.hparams.update(vars(params) if isinstance(params, argparse.Namespace) else dict(params))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.history.append((step or 0, dict(metrics)))

    def last(self, key: str) -> float:
        """The last value logged under ``key``."""
        return [m[key] for _, m in self.history if key in m][-1]

    def first(self, key: str) -> float:
        """The first value logged under ``key``."""
        return next(m[key] for _, m in self.history if key in m)


def train(model: torch.nn.Module, epochs: int, data: BarsDataModule) -> dict[str, float]:
    """Fits ``model`` with the user's Trainer setup; returns first/last validation loss and the probe accuracy."""
    logger, probe = MemoryLogger(), LinearProbe()
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=logger, callbacks=[probe],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      log_every_n_steps=1)
    trainer.fit(model, datamodule=data)
    return {"first_val_loss": logger.first("val/loss"), "last_val_loss": logger.last("val/loss"),
            "probe_accuracy": logger.last("probe/accuracy"), "logged_latent_dim": logger.hparams["latent_dim"]}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=512)
    args = parser.parse_args(argv)
    seed_everything(0, verbose=False)
    data = BarsDataModule(num_train=args.num_train)
    shape = (1, SIZE, SIZE)
    results = {
        "Autoencoder": train(Autoencoder(image_shape=shape, latent_dim=8, recon_loss="bce", num_classes=2),
                             args.epochs, data),
        "VAE": train(VAE(image_shape=shape, latent_dim=8, num_classes=2), args.epochs, data),
    }
    for name, result in results.items():
        print(f"{name}: val/loss {result['first_val_loss']:.4f} -> {result['last_val_loss']:.4f}, "
              f"linear probe accuracy {result['probe_accuracy']:.3f}")
    return results


if __name__ == "__main__":
    main()
