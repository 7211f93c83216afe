"""Contractive autoencoder: reconstruction plus the squared Frobenius norm of the encoder's Jacobian."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from lightning_ae.losses import (
    contractive_penalty_exact,
    contractive_penalty_sigmoid,
    contractive_penalty_stochastic,
)
from lightning_ae.models.autoencoder import Autoencoder
from lightning_ae.models.base import LossOutput, Stage
from lightning_ae.nets import SigmoidEncoder

Penalty = Literal["exact", "sigmoid", "stochastic"]
PENALTIES: tuple[str, ...] = ("exact", "sigmoid", "stochastic")


def sigmoid_layer(encoder: nn.Module) -> nn.Linear:
    """The linear layer of a :class:`SigmoidEncoder` or ``Sequential([Flatten()], Linear, Sigmoid)`` encoder;
    any other encoder is a ``ValueError``."""
    if isinstance(encoder, SigmoidEncoder):
        return encoder.linear
    layers = [m for m in encoder.children() if not isinstance(m, nn.Flatten)]
    if not isinstance(encoder, nn.Sequential):
        layers = []
    if len(layers) == 2 and isinstance(layers[0], nn.Linear) and isinstance(layers[1], nn.Sigmoid):
        return layers[0]
    raise ValueError(
        f"penalty='sigmoid' needs an encoder that is a single sigmoid layer (SigmoidEncoder, or "
        f"Sequential([Flatten()], Linear, Sigmoid)), got {type(encoder).__name__}; set network='sigmoid' for the "
        "default one, or use penalty='exact' or 'stochastic'"
    )


class ContractiveAutoencoder(Autoencoder):
    """Contractive autoencoder (Rifai et al. 2011): loss ``recon + contractive_weight * mean_b ||J_f(x_b)||_F^2``.

    The penalty is part of the training graph (it is differentiated with respect to the encoder), computed by
    ``penalty``:

    * ``exact``: the full Jacobian with ``torch.func`` (any encoder; cost grows with the code size).
    * ``sigmoid``: the closed form of eq. 4 for a single sigmoid layer encoder (``network: sigmoid`` builds a
      :class:`~lightning_ae.nets.SigmoidEncoder`).
    * ``stochastic``: unbiased estimate ``E_v ||J^T v||^2`` from ``num_projections`` Rademacher projections, one
      extra backward pass each (convolutional encoders, large codes).

    Logs ``contractive`` (the mean squared norm, as computed by ``penalty``) and ``jacobian_norm`` (mean of the
    per-sample ``||J_f(x)||_F``; for ``stochastic`` from the estimates) on training and validation data.

    Args:
        penalty: ``exact``, ``sigmoid`` (needs a single sigmoid layer encoder: ``network: sigmoid`` or your own)
            or ``stochastic``.
        contractive_weight: lambda, the weight of the penalty; >= 0.
        num_projections: random projections of ``stochastic`` per sample and step; >= 1.
        **kwargs: the arguments of :class:`~lightning_ae.models.Autoencoder` (``recon_loss``) and of
            :class:`~lightning_ae.models.AutoencoderBase`; the encoder maps images to latents ``(B, d)``.
    """

    def __init__(self, penalty: Penalty = "stochastic", contractive_weight: float = 0.1, num_projections: int = 1,
                 **kwargs: Any) -> None:
        if penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}")
        if contractive_weight < 0:
            raise ValueError(f"contractive_weight must be >= 0, got {contractive_weight}")
        if num_projections < 1:
            raise ValueError(f"num_projections must be >= 1, got {num_projections}")
        super().__init__(**kwargs)
        self.penalty = penalty
        self.contractive_weight = contractive_weight
        self.num_projections = num_projections
        if penalty == "sigmoid":
            sigmoid_layer(self.encoder)  # a clear error for any other encoder (never a silent swap)

    def jacobian_sq_norms(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Per-sample ``||J_f(x)||_F^2`` ``(B,)`` by ``penalty``; ``code = encode(x)`` (``x`` requires grad for
        ``stochastic``).
        """
        if self.penalty == "exact":
            return contractive_penalty_exact(self.encode, x)
        if self.penalty == "sigmoid":
            return contractive_penalty_sigmoid(code, sigmoid_layer(self.encoder).weight)
        return contractive_penalty_stochastic(code, x, self.num_projections)

    def loss_terms(self, x: torch.Tensor, stage: Stage) -> LossOutput:
        # the Jacobian needs autograd also in validation/test, which Lightning runs under inference mode
        with torch.inference_mode(False), torch.enable_grad():
            x = x.clone() if stage != "train" else x  # an inference tensor cannot enter autograd; a clone can
            x_in = x.detach().requires_grad_(self.penalty == "stochastic")
            code, out = self.reconstruct_from(x_in, x)
            sq_norms = self.jacobian_sq_norms(x_in, code)
        penalty = sq_norms.mean()
        out.loss = out.loss + self.contractive_weight * penalty
        out.terms.update(contractive=penalty, jacobian_norm=sq_norms.detach().clamp_min(0).sqrt().mean())
        return out
