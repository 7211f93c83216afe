"""lightning-ae: autoencoders as PyTorch Lightning plug-in modules."""

from lightning_ae.callbacks import (
    CodebookUsageMonitor,
    LatentInterpolation,
    LatentSpaceVisualizer,
    LinearProbe,
    PredictionWriter,
    ReconstructionGrid,
    SampleGrid,
    linear_probe,
)
from lightning_ae.data import (
    ArrayDataModule,
    CIFAR10DataModule,
    FakeImageDataModule,
    FashionMNISTDataModule,
    ImageDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    StreamingImageDataModule,
)
from lightning_ae.metrics import CodebookUsage
from lightning_ae.models import (
    IWAE,
    VAE,
    VQVAE,
    Autoencoder,
    AutoencoderBase,
    AutoencoderKL,
    ConditionalVAE,
    ContractiveAutoencoder,
    DenoisingAutoencoder,
    PixelCNNPrior,
    SparseAutoencoder,
    VampVAE,
)
from lightning_ae.quantizers import FSQ, LFQ, Quantizer, QuantizerOutput, ResidualVQ, VectorQuantizer

__version__ = "0.1.0"

__all__ = [
    "FSQ",
    "IWAE",
    "LFQ",
    "VAE",
    "VQVAE",
    "ArrayDataModule",
    "Autoencoder",
    "AutoencoderBase",
    "AutoencoderKL",
    "CIFAR10DataModule",
    "CodebookUsage",
    "CodebookUsageMonitor",
    "ConditionalVAE",
    "ContractiveAutoencoder",
    "DenoisingAutoencoder",
    "FakeImageDataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "LatentInterpolation",
    "LatentSpaceVisualizer",
    "LinearProbe",
    "MNISTDataModule",
    "PixelCNNPrior",
    "PredictionWriter",
    "Quantizer",
    "QuantizerOutput",
    "ReconstructionGrid",
    "ResidualVQ",
    "SampleGrid",
    "SparseAutoencoder",
    "StreamingImageDataModule",
    "VampVAE",
    "VectorQuantizer",
    "__version__",
    "linear_probe",
]
