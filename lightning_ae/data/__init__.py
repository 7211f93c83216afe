"""LightningDataModules holding whole splits in memory as uint8 tensors."""

from lightning_ae.data.base import ImageDataModule, InMemoryImageDataset, ShardSampler
from lightning_ae.data.cifar import CIFAR10DataModule
from lightning_ae.data.download import DownloadError, download_file
from lightning_ae.data.fake import FakeImageDataModule
from lightning_ae.data.formats import DatasetFileError
from lightning_ae.data.mnist import FashionMNISTDataModule, MNISTDataModule

__all__ = [
    "CIFAR10DataModule",
    "DatasetFileError",
    "DownloadError",
    "FakeImageDataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "InMemoryImageDataset",
    "MNISTDataModule",
    "ShardSampler",
    "download_file",
]
