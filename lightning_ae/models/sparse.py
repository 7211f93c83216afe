"""Sparse autoencoder: L1 or KL sparsity penalty on the code, or a k-sparse (top-k) bottleneck."""

from __future__ import annotations

from typing import Any, Literal

import torch

from lightning_ae.losses import kl_sparsity, l1_sparsity, topk_sparsify
from lightning_ae.models.autoencoder import Autoencoder
from lightning_ae.models.base import LossOutput, Stage

Sparsity = Literal["l1", "kl", "topk"]
SPARSITIES: tuple[str, ...] = ("l1", "kl", "topk")


class SparseAutoencoder(Autoencoder):
    """Sparse autoencoder: reconstruction plus a sparsity constraint on the code ``h = encode(x)``.

    * ``l1``: ``h = relu(encoder(x))``, loss ``recon + sparsity_weight * mean |h|``.
    * ``kl``: ``h = sigmoid(encoder(x))``, loss ``recon + sparsity_weight * sum_j KL(rho || rho_hat_j)``, ``rho_hat_j``
      the batch-mean activation of unit ``j`` (Ng, *Sparse autoencoder* notes; ``sparsity_weight`` is beta).
    * ``topk``: ``h = topk(encoder(x), k)``: the ``k`` largest activations of each sample kept, the others zeroed
      (Makhzani & Frey 2013); no penalty, the gradient flows through the kept units.

    Logs ``mean_activation`` (mean of ``h``) and ``active_fraction``, the fraction of active units: non-zero for
    ``l1`` and ``topk`` (``k / d`` for ``topk``), above 0.5 for the sigmoid units of ``kl``.

    Args:
        sparsity: ``l1``, ``kl`` or ``topk``.
        sparsity_weight: lambda of ``l1``, beta of ``kl`` (unused by ``topk``); >= 0.
        rho: target mean activation of ``kl``, in (0, 1).
        k: units kept per sample by ``topk``, in [1, latent_dim].
        **kwargs: the arguments of :class:`~lightning_ae.models.Autoencoder` (``recon_loss``) and of
            :class:`~lightning_ae.models.AutoencoderBase`; the encoder gives the pre-activation latents ``(B, d)``.
    """

    def __init__(self, sparsity: Sparsity = "kl", sparsity_weight: float = 0.1, rho: float = 0.05, k: int = 8,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if sparsity not in SPARSITIES:
            raise ValueError(f"sparsity must be one of {SPARSITIES}, got {sparsity!r}")
        if sparsity_weight < 0:
            raise ValueError(f"sparsity_weight must be >= 0, got {sparsity_weight}")
        if not 0.0 < rho < 1.0:
            raise ValueError(f"rho must be in (0, 1), got {rho}")
        if sparsity == "topk" and not 1 <= k <= self.latent_dim:
            raise ValueError(f"k must be in [1, latent_dim={self.latent_dim}], got {k}")
        self.sparsity, self.sparsity_weight, self.rho, self.k = sparsity, sparsity_weight, rho, k

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

    def loss_terms(self, x: torch.Tensor, stage: Stage) -> LossOutput:
        code, out = self.reconstruct_from(x, x)
        penalty = self.sparsity_penalty(code)
        out.loss = out.loss + self.sparsity_weight * penalty
        out.terms.update(sparsity=penalty, mean_activation=code.detach().mean(),
                         active_fraction=self.active_fraction(code.detach()))
        return out
