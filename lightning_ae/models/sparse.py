"""Sparse autoencoder: L1 or KL sparsity penalty on the code, or a k-sparse (top-k) bottleneck."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_ae.losses import Reconstruction, kl_sparsity, l1_sparsity, topk_sparsify
from lightning_ae.models.autoencoder import Autoencoder
from lightning_ae.models.base import Network, Stage

Sparsity = Literal["l1", "kl", "topk"]
SPARSITIES: tuple[str, ...] = ("l1", "kl", "topk")


class SparseAutoencoder(Autoencoder):
    """Sparse autoencoder: reconstruction plus a sparsity constraint on the code ``h = encode(x)``.

    * ``l1``: ``h = relu(encoder(x))``, loss ``recon + sparsity_weight * mean |h|``.
    * ``kl``: ``h = sigmoid(encoder(x))``, loss ``recon + sparsity_weight * sum_j KL(rho || rho_hat_j)`` with
      ``rho_hat_j`` the batch-mean activation of unit ``j`` (Ng, *Sparse autoencoder* notes; ``sparsity_weight``
      is beta).
    * ``topk``: ``h = topk(encoder(x), k)``: the ``k`` largest activations of each sample kept, the others zeroed
      (Makhzani & Frey 2013); no penalty, the gradient flows through the kept units.

    Logs ``mean_activation`` (mean of ``h``) and ``active_fraction``: the fraction of units that are active,
    i.e. non-zero for ``l1`` and ``topk`` (``k / d`` for ``topk``) and above 0.5 for the sigmoid units of ``kl``.

    Args:
        encoder: maps images to pre-activation codes ``(B, d)``; ``None`` builds the default for ``network``.
        decoder: maps codes to images; ``None`` builds the default.
        latent_dim: size of the code of the default networks.
        network: default network family, ``mlp`` or ``conv``.
        image_shape: ``(C, H, W)`` of the images (linked from the datamodule by the CLI).
        num_classes: classes of the dataset, if any (linked from the datamodule).
        pixel_range: ``(low, high)`` of pixel values (linked from the datamodule).
        optimizer: optimizer factory (default: Adam, lr 1e-3).
        lr_scheduler: optional scheduler factory.
        reconstruction: ``mse`` or ``bce``.
        sparsity: ``l1``, ``kl`` or ``topk``.
        sparsity_weight: lambda of ``l1``, beta of ``kl`` (unused by ``topk``); >= 0.
        rho: target mean activation of ``kl``, in (0, 1).
        k: units kept per sample by ``topk``, in [1, code size].
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
        sparsity: Sparsity = "kl",
        sparsity_weight: float = 0.1,
        rho: float = 0.05,
        k: int = 8,
    ) -> None:
        super().__init__(encoder, decoder, latent_dim, network, image_shape, num_classes, pixel_range, optimizer,
                         lr_scheduler, reconstruction)
        if sparsity not in SPARSITIES:
            raise ValueError(f"sparsity must be one of {SPARSITIES}, got {sparsity!r}")
        if sparsity_weight < 0:
            raise ValueError(f"sparsity_weight must be >= 0, got {sparsity_weight}")
        if not 0.0 < rho < 1.0:
            raise ValueError(f"rho must be in (0, 1), got {rho}")
        if sparsity == "topk" and not 1 <= k <= latent_dim:
            raise ValueError(f"k must be in [1, latent_dim={latent_dim}], got {k}")
        self.sparsity = sparsity
        self.sparsity_weight = sparsity_weight
        self.rho = rho
        self.k = k

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> sparse codes ``(B, d)`` (relu for ``l1``, sigmoid for ``kl``, top-k for ``topk``)."""
        h = self.encoder(x)
        if self.sparsity == "l1":
            return torch.relu(h)
        if self.sparsity == "kl":
            return torch.sigmoid(h)
        return topk_sparsify(h, self.k)

    def sparsity_penalty(self, code: torch.Tensor) -> torch.Tensor:
        """The unweighted sparsity term of the code (0 for ``topk``, whose sparsity is structural)."""
        if self.sparsity == "l1":
            return l1_sparsity(code)
        if self.sparsity == "kl":
            return kl_sparsity(code, self.rho)
        return code.new_zeros(())

    def active_fraction(self, code: torch.Tensor) -> torch.Tensor:
        """Fraction of active units: ``h > 0.5`` for sigmoid (``kl``) codes, ``h != 0`` otherwise."""
        active = code > 0.5 if self.sparsity == "kl" else code != 0
        return active.float().mean()

    def loss_terms(self, x: torch.Tensor, stage: Stage) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        code, recon, x_hat = self.reconstruction_terms(x, x)
        penalty = self.sparsity_penalty(code)
        terms = {
            "loss": recon + self.sparsity_weight * penalty,
            "recon": recon,
            "sparsity": penalty,
            "mean_activation": code.detach().mean(),
            "active_fraction": self.active_fraction(code.detach()),
        }
        return terms, x_hat
