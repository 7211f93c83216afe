"""lightning-ae: autoencoders as PyTorch Lightning plug-in modules."""

from lightning_ae.data import (
    CIFAR10DataModule,
    FakeImageDataModule,
    FashionMNISTDataModule,
    ImageDataModule,
    MNISTDataModule,
)
from lightning_ae.models import Autoencoder, AutoencoderBase

__version__ = "0.1.0"

__all__ = [
    "Autoencoder",
    "AutoencoderBase",
    "CIFAR10DataModule",
    "FakeImageDataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "MNISTDataModule",
    "__version__",
]
