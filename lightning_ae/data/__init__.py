"""LightningDataModules holding whole splits in memory (or memory-mapped) as uint8 tensors, and LitData streaming."""

from lightning_ae.data.arrays import ArrayDataModule
from lightning_ae.data.base import ImageDataModule, InMemoryImageDataset, ShardSampler
from lightning_ae.data.cifar import CIFAR10DataModule
from lightning_ae.data.codes import CodeDataModule
from lightning_ae.data.download import DownloadError, download_file
from lightning_ae.data.fake import FakeImageDataModule
from lightning_ae.data.folder import ImageFolderDataModule
from lightning_ae.data.formats import DatasetFileError
from lightning_ae.data.images import ImageDecodeError
from lightning_ae.data.mnist import FashionMNISTDataModule, MNISTDataModule
from lightning_ae.data.streaming import StreamingImageDataModule, prepare_streaming

__all__ = [
    "ArrayDataModule",
    "CIFAR10DataModule",
    "CodeDataModule",
    "DatasetFileError",
    "DownloadError",
    "FakeImageDataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageDecodeError",
    "ImageFolderDataModule",
    "InMemoryImageDataset",
    "MNISTDataModule",
    "ShardSampler",
    "StreamingImageDataModule",
    "download_file",
    "prepare_streaming",
]
