"""The plain autoencoder: reconstruction only."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_ae.losses import Reconstruction, reconstruction_loss
from lightning_ae.models.base import AutoencoderBase, Network, Stage


class Autoencoder(AutoencoderBase):
    """Deterministic autoencoder trained to reconstruct its input (Hinton & Salakhutdinov 2006).

    Args:
        encoder: maps images to codes; ``None`` builds the default for ``network``.
        decoder: maps codes to images (means for ``mse``, logits for ``bce``); ``None`` builds the default.
        latent_dim: size of the code of the default networks.
        network: default network family, ``mlp`` or ``conv``.
        image_shape: ``(C, H, W)`` of the images (linked from the datamodule by the CLI).
        num_classes: classes of the dataset, if any (linked from the datamodule).
        pixel_range: ``(low, high)`` of pixel values (linked from the datamodule); ``(0, 1)`` for ``bce``.
        optimizer: optimizer factory (default: Adam, lr 1e-3).
        lr_scheduler: optional scheduler factory.
        reconstruction: ``mse`` or ``bce`` (binary cross-entropy on logits; the output is ``sigmoid(logits)``).
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
    ) -> None:
        super().__init__(encoder, decoder, latent_dim, network, image_shape, num_classes, pixel_range, optimizer,
                         lr_scheduler)
        if reconstruction not in ("mse", "bce"):
            raise ValueError(f"reconstruction must be 'mse' or 'bce', got {reconstruction!r}")
        if reconstruction == "bce" and tuple(self.pixel_range) != (0.0, 1.0):
            raise ValueError(f"reconstruction='bce' needs pixel_range (0, 1), got {self.pixel_range}")
        self.reconstruction = reconstruction

    def output_to_image(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output) if self.reconstruction == "bce" else output

    def reconstruction_terms(
        self, x_in: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encodes ``x_in`` and scores its reconstruction against ``target``: ``(code, recon loss, image)``."""
        z = self.encode(x_in)
        output = self.decode(z)
        return z, reconstruction_loss(output, target, self.reconstruction), self.output_to_image(output)

    def loss_terms(self, x: torch.Tensor, stage: Stage) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        _, recon, x_hat = self.reconstruction_terms(x, x)
        return {"loss": recon, "recon": recon}, x_hat
