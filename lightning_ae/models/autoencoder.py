"""The plain autoencoder: reconstruction only."""

from __future__ import annotations

from typing import Any

import torch

from lightning_ae.losses import ReconLoss, reconstruction_loss
from lightning_ae.models.base import AutoencoderBase, LossOutput, Stage


class Autoencoder(AutoencoderBase):
    """Deterministic autoencoder trained to reconstruct its input (Hinton & Salakhutdinov 2006).

    Args:
        recon_loss: ``mse`` or ``bce`` (binary cross-entropy on logits; the output is ``sigmoid(logits)``, and
            ``pixel_range`` must be ``(0, 1)``).
        **kwargs: the arguments of :class:`~lightning_ae.models.AutoencoderBase` (``encoder``, ``decoder``,
            ``latent_dim``, ``network``, ``image_shape``, ``num_classes``, ``pixel_range``, ``optimizer``,
            ``lr_scheduler``).
    """

    def __init__(self, recon_loss: ReconLoss = "mse", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if recon_loss not in ("mse", "bce"):
            raise ValueError(f"recon_loss must be 'mse' or 'bce', got {recon_loss!r}")
        if recon_loss == "bce" and self.pixel_range != (0.0, 1.0):
            raise ValueError(f"recon_loss='bce' needs pixel_range (0, 1), got {self.pixel_range}")
        self.recon_loss = recon_loss
        self.init_networks()

    def output_to_image(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output) if self.recon_loss == "bce" else output

    def reconstruct_from(self, x_in: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, LossOutput]:
        """Encodes ``x_in`` and scores its reconstruction against ``target``: ``(latent, output)`` where
        ``output.loss`` is the reconstruction loss (also logged as ``recon``)."""
        z = self.encode(x_in)
        decoded = self.decode(z)
        recon = reconstruction_loss(decoded, target, self.recon_loss)
        return z, LossOutput(recon, lambda: self.output_to_image(decoded), {"recon": recon})

    def loss_terms(self, x: torch.Tensor, stage: Stage) -> LossOutput:
        return self.reconstruct_from(x, x)[1]
