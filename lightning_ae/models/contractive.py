"""Contractive autoencoder: reconstruction plus the squared Frobenius norm of the encoder's Jacobian."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_ae.losses import (
    Reconstruction,
    contractive_penalty_exact,
    contractive_penalty_sigmoid,
    contractive_penalty_stochastic,
)
from lightning_ae.models.autoencoder import Autoencoder
from lightning_ae.models.base import Network, Stage
from lightning_ae.nets import SigmoidEncoder

Penalty = Literal["exact", "sigmoid", "stochastic"]
PENALTIES: tuple[str, ...] = ("exact", "sigmoid", "stochastic")


def sigmoid_layer(encoder: nn.Module) -> nn.Linear:
    """The linear layer of a single-sigmoid-layer encoder: a :class:`SigmoidEncoder` or a
    ``Sequential([Flatten()], Linear, Sigmoid)``; any other encoder is a ``ValueError``.
    """
    if isinstance(encoder, SigmoidEncoder):
        return encoder.linear
    layers = [m for m in encoder.children() if not isinstance(m, nn.Flatten)]
    if not isinstance(encoder, nn.Sequential):
        layers = []
    if len(layers) == 2 and isinstance(layers[0], nn.Linear) and isinstance(layers[1], nn.Sigmoid):
        return layers[0]
    raise ValueError(
        f"penalty='sigmoid' needs an encoder that is a single sigmoid layer (SigmoidEncoder, or "
        f"Sequential([Flatten()], Linear, Sigmoid)), got {type(encoder).__name__}; use penalty='exact' or "
        "'stochastic' for other encoders"
    )


class ContractiveAutoencoder(Autoencoder):
    """Contractive autoencoder (Rifai et al. 2011): loss ``recon + contractive_weight * mean_b ||J_f(x_b)||_F^2``.

    The penalty is part of the training graph (it is differentiated with respect to the encoder), computed by
    ``penalty``:

    * ``exact``: the full Jacobian with ``torch.func`` (any encoder; cost grows with the code size).
    * ``sigmoid``: the closed form of eq. 4 for a single sigmoid layer encoder (the default encoder is then a
      :class:`~lightning_ae.nets.SigmoidEncoder`).
    * ``stochastic``: unbiased estimate ``E_v ||J^T v||^2`` from ``num_projections`` Rademacher projections, one
      extra backward pass each (convolutional encoders, large codes).

    Logs ``contractive`` (the mean squared norm, as computed by ``penalty``) and ``jacobian_norm`` (mean of the
    per-sample ``||J_f(x)||_F``; for ``stochastic`` from the estimates) on training and validation data.

    Args:
        encoder: maps images to codes ``(B, d)``; ``None`` builds the default for ``network`` (or a
            :class:`SigmoidEncoder` for ``penalty: sigmoid``).
        decoder: maps codes to images; ``None`` builds the default.
        latent_dim: size of the code of the default networks.
        network: default network family, ``mlp`` or ``conv``.
        image_shape: ``(C, H, W)`` of the images (linked from the datamodule by the CLI).
        num_classes: classes of the dataset, if any (linked from the datamodule).
        pixel_range: ``(low, high)`` of pixel values (linked from the datamodule).
        optimizer: optimizer factory (default: Adam, lr 1e-3).
        lr_scheduler: optional scheduler factory.
        reconstruction: ``mse`` or ``bce``.
        penalty: ``exact``, ``sigmoid`` or ``stochastic``.
        contractive_weight: lambda, the weight of the penalty; >= 0.
        num_projections: random projections of ``stochastic`` per sample and step; >= 1.
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
        penalty: Penalty = "stochastic",
        contractive_weight: float = 0.1,
        num_projections: int = 1,
    ) -> None:
        if penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}")
        if contractive_weight < 0:
            raise ValueError(f"contractive_weight must be >= 0, got {contractive_weight}")
        if num_projections < 1:
            raise ValueError(f"num_projections must be >= 1, got {num_projections}")
        super().__init__(encoder, decoder, latent_dim, network, image_shape, num_classes, pixel_range, optimizer,
                         lr_scheduler, reconstruction)
        self.penalty = penalty
        self.contractive_weight = contractive_weight
        self.num_projections = num_projections
        if penalty == "sigmoid":
            sigmoid_layer(self.encoder)

    def default_networks(self) -> tuple[nn.Module, nn.Module]:
        encoder, decoder = super().default_networks()
        if self.hparams["penalty"] == "sigmoid":  # called from the base __init__: hparams are already saved
            encoder = SigmoidEncoder(self.image_shape, self.latent_dim)
        return encoder, decoder

    def jacobian_sq_norms(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Per-sample ``||J_f(x)||_F^2`` ``(B,)`` by ``penalty``; ``code = encode(x)`` (``x`` requires grad for
        ``stochastic``).
        """
        if self.penalty == "exact":
            return contractive_penalty_exact(self.encode, x)
        if self.penalty == "sigmoid":
            return contractive_penalty_sigmoid(code, sigmoid_layer(self.encoder).weight)
        return contractive_penalty_stochastic(code, x, self.num_projections)

    def loss_terms(self, x: torch.Tensor, stage: Stage) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        # the Jacobian needs autograd also in validation/test, which Lightning runs under inference mode
        with torch.inference_mode(False), torch.enable_grad():
            x = x.clone() if stage != "train" else x  # an inference tensor cannot enter autograd; a clone can
            x_in = x.detach().requires_grad_(self.penalty == "stochastic")
            code, recon, x_hat = self.reconstruction_terms(x_in, x)
            sq_norms = self.jacobian_sq_norms(x_in, code)
        penalty = sq_norms.mean()
        terms = {
            "loss": recon + self.contractive_weight * penalty,
            "recon": recon,
            "contractive": penalty,
            "jacobian_norm": sq_norms.detach().clamp_min(0).sqrt().mean(),
        }
        return terms, x_hat
