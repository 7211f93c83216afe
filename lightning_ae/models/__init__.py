"""The autoencoder variants, each a LightningModule on :class:`AutoencoderBase`."""

from lightning_ae.models.autoencoder import Autoencoder
from lightning_ae.models.base import AutoencoderBase, extract_images, extract_labels

__all__ = ["Autoencoder", "AutoencoderBase", "extract_images", "extract_labels"]
