"""Denoising autoencoder: reconstructs the clean input from a corrupted copy."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_ae.corruptions import CORRUPTIONS, Corruption, corrupt
from lightning_ae.losses import Reconstruction
from lightning_ae.models.autoencoder import Autoencoder
from lightning_ae.models.base import Network, Stage


class DenoisingAutoencoder(Autoencoder):
    """Denoising autoencoder (Vincent et al. 2008, 2010): loss ``recon(decode(encode(corrupt(x))), x)``.

    Inputs are corrupted per batch, on their device, in training only. Validation and test score the clean
    reconstruction (``loss``, ``recon``, ``mse``, ``psnr``) and, beside it, the reconstruction of a corrupted
    copy against the clean image (``mse_corrupted``), the denoising figure.

    Args:
        encoder: maps images to codes; ``None`` builds the default for ``network``.
        decoder: maps codes to images; ``None`` builds the default.
        latent_dim: size of the code of the default networks.
        network: default network family, ``mlp`` or ``conv``.
        image_shape: ``(C, H, W)`` of the images (linked from the datamodule by the CLI).
        num_classes: classes of the dataset, if any (linked from the datamodule).
        pixel_range: ``(low, high)`` of pixel values (linked from the datamodule); the salt-and-pepper values.
        optimizer: optimizer factory (default: Adam, lr 1e-3).
        lr_scheduler: optional scheduler factory.
        reconstruction: ``mse`` or ``bce``.
        corruption: ``gaussian`` (additive noise of std ``noise_level``), ``masking`` (a fraction
            ``noise_level`` of the elements set to 0) or ``salt_and_pepper`` (a fraction ``noise_level`` set to
            the low or high end of ``pixel_range`` by a coin flip).
        noise_level: sigma for ``gaussian``, the corrupted fraction (in [0, 1]) otherwise.
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        latent_dim: int = 32,
        network: Network = "mlp",
        image_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int | None = None,
        pixel_range: tuple[float, float] = (0.0, 1.0),
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        reconstruction: Reconstruction = "mse",
        corruption: Corruption = "masking",
        noise_level: float = 0.25,
    ) -> None:
        super().__init__(encoder, decoder, latent_dim, network, image_shape, num_classes, pixel_range, optimizer,
                         lr_scheduler, reconstruction)
        if corruption not in CORRUPTIONS:
            raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {corruption!r}")
        if noise_level < 0 or (corruption != "gaussian" and noise_level > 1):
            raise ValueError(f"noise_level must be >= 0 (and <= 1 for {corruption!r}), got {noise_level}")
        self.corruption = corruption
        self.noise_level = noise_level

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """A corrupted copy of the images ``x`` (on their device)."""
        return corrupt(x, self.corruption, self.noise_level, self.pixel_range)

    def loss_terms(self, x: torch.Tensor, stage: Stage) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if stage == "train":
            _, recon, x_hat = self.reconstruction_terms(self.corrupt(x), x)
            return {"loss": recon, "recon": recon}, x_hat
        _, recon, x_hat = self.reconstruction_terms(x, x)
        _, recon_corrupted, x_hat_corrupted = self.reconstruction_terms(self.corrupt(x), x)
        mse_corrupted = nn.functional.mse_loss(x_hat_corrupted.clamp(*self.pixel_range), x)
        return {"loss": recon, "recon": recon, "recon_corrupted": recon_corrupted,
                "mse_corrupted": mse_corrupted}, x_hat
