"""VQGAN (Esser et al. 2021, *Taming Transformers for High-Resolution Image Synthesis*, arXiv 2012.09841): a VQ
autoencoder with the latent-diffusion networks trained with an L1 reconstruction, a perceptual distance, the
quantizer's own loss and a PatchGAN discriminator's adversarial term weighted adaptively (eq. 7), as
taming-transformers' ``VQLPIPSWithDiscriminator``, for every quantizer."""

from __future__ import annotations

from typing import Any, Literal

import torch

from lightning_ae.models.adversarial import AdversarialMixin
from lightning_ae.models.base import LossOutput, Stage
from lightning_ae.models.vqvae import VQVAE


class VQGAN(AdversarialMixin, VQVAE):
    """VQGAN: ``loss = rec + perceptual_weight * LPIPS + codebook_weight * L_Q + lambda * disc_factor * L_G``
    (taming's ``VQLPIPSWithDiscriminator``), ``L_Q`` the quantizer's loss (VQ's codebook + ``beta`` commitment;
    FSQ's none; LFQ's entropy terms; residual VQ's per level), the adversarial part after ``disc_start``.

    Args:
        network: ``ldm`` (the VQGAN networks, sized by ``network_options``; the default) or ``conv``.
        reconstruction: ``l1`` (taming) or ``l2``, the mean over pixels.
        codebook_weight: weight of the quantizer's loss (taming: 1.0).
        **kwargs: the adversarial options (:class:`~lightning_ae.models.adversarial.AdversarialMixin`:
            ``discriminator``, ``disc_start``, ``disc_weight`` (taming: 0.8), ``perceptual``...) and the VQ-VAE's
            (``latent_dim``, ``quantizer``...).
    """

    def __init__(self, network: Literal["conv", "ldm"] = "ldm", reconstruction: Literal["l1", "l2"] = "l1",
                 codebook_weight: float = 1.0, **kwargs: Any) -> None:
        if reconstruction not in ("l1", "l2"):
            raise ValueError(f"reconstruction must be 'l1' or 'l2', got {reconstruction!r}")
        if codebook_weight < 0:
            raise ValueError(f"codebook_weight must be >= 0, got {codebook_weight}")
        super().__init__(network=network, **kwargs)
        self.reconstruction, self.codebook_weight = reconstruction, codebook_weight

    def loss_terms(self, x: torch.Tensor, stage: Stage) -> LossOutput:
        q = self.quantize(self.encode(x), update=stage == "train")
        x_hat = self.decoder(q.quantized)
        diff = x.float() - x_hat.float()
        rec = diff.abs().mean() if self.reconstruction == "l1" else diff.pow(2).mean()
        return LossOutput(rec + self.codebook_weight * q.loss, x_hat, {
            "recon": rec, "codebook": q.codebook_loss, "commitment": q.commitment_loss, "perplexity": q.perplexity,
            **q.terms}, latent=q.indices, decoded=x_hat)

    def adversarial_reconstruction(self, out: LossOutput, x: torch.Tensor, perceptual: torch.Tensor | None
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """taming's: ``perceptual_weight * p`` joins the mean reconstruction error; the adaptive weight balances
        that sum."""
        rec = out.terms["recon"]
        if perceptual is None:
            return out.loss, rec
        extra = self.perceptual_weight * perceptual.mean()
        return out.loss + extra, rec + extra
