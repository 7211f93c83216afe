"""The autoencoder variants, each a LightningModule on :class:`AutoencoderBase`, and the learned priors
over a VQ-VAE's codes (:class:`PixelCNNPrior`, :class:`TransformerPrior`, LightningModules of their own)."""

from lightning_ae.models.autoencoder import Autoencoder
from lightning_ae.models.autoencoder_kl import AutoencoderKL
from lightning_ae.models.base import AutoencoderBase
from lightning_ae.models.classifier import ImageClassifier
from lightning_ae.models.contractive import ContractiveAutoencoder
from lightning_ae.models.cvae import ConditionalVAE
from lightning_ae.models.denoising import DenoisingAutoencoder
from lightning_ae.models.iwae import IWAE
from lightning_ae.models.prior import CodePrior, PixelCNNPrior
from lightning_ae.models.sparse import SparseAutoencoder
from lightning_ae.models.transformer_prior import TransformerPrior
from lightning_ae.models.vae import VAE
from lightning_ae.models.vamp import VampVAE
from lightning_ae.models.vqgan import VQGAN
from lightning_ae.models.vqvae import VQVAE

__all__ = [
    "IWAE",
    "VAE",
    "VQGAN",
    "VQVAE",
    "Autoencoder",
    "AutoencoderBase",
    "AutoencoderKL",
    "CodePrior",
    "ConditionalVAE",
    "ContractiveAutoencoder",
    "DenoisingAutoencoder",
    "ImageClassifier",
    "PixelCNNPrior",
    "SparseAutoencoder",
    "TransformerPrior",
    "VampVAE",
]
