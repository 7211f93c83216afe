"""Denoising autoencoder: reconstructs the clean input from a corrupted copy."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_ae.corruptions import CORRUPTIONS, Corruption, corrupt
from lightning_ae.models.autoencoder import Autoencoder
from lightning_ae.models.base import LossOutput, Stage


class DenoisingAutoencoder(Autoencoder):
    """Denoising autoencoder (Vincent et al. 2008, 2010): loss ``recon(decode(encode(corrupt(x))), x)``.

    Inputs are corrupted per batch, on their device, in training only. Validation and test score the clean
    reconstruction (``loss``, ``recon``, ``mse``, ``psnr``) and, beside it, the reconstruction of a corrupted
    copy against the clean image (``recon_corrupted``, ``mse_corrupted``: the denoising figures).

    Args:
        corruption: ``gaussian`` (additive noise of std ``noise_std``), ``masking`` (a fraction ``noise_fraction``
            of the elements set to 0) or ``salt_and_pepper`` (a fraction ``noise_fraction`` set to the low or high
            end of ``pixel_range`` by a coin flip).
        noise_std: standard deviation of ``gaussian`` noise, in pixel units; >= 0.
        noise_fraction: fraction of elements corrupted by ``masking`` and ``salt_and_pepper``, in [0, 1].
        **kwargs: the arguments of :class:`~lightning_ae.models.Autoencoder` (``recon_loss``) and of
            :class:`~lightning_ae.models.AutoencoderBase`.
    """

    def __init__(self, corruption: Corruption = "masking", noise_std: float = 0.1, noise_fraction: float = 0.25,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if corruption not in CORRUPTIONS:
            raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {corruption!r}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if not 0.0 <= noise_fraction <= 1.0:
            raise ValueError(f"noise_fraction must be in [0, 1], got {noise_fraction}")
        self.corruption = corruption
        self.noise_std = noise_std
        self.noise_fraction = noise_fraction

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """A corrupted copy of the images ``x`` (on their device)."""
        level = self.noise_std if self.corruption == "gaussian" else self.noise_fraction
        return corrupt(x, self.corruption, level, self.pixel_range)

    def loss_terms(self, x: torch.Tensor, stage: Stage) -> LossOutput:
        if stage == "train":
            return self.reconstruct_from(self.corrupt(x), x)[1]
        clean = self.reconstruct_from(x, x)[1]
        noisy = self.reconstruct_from(self.corrupt(x), x)[1]
        mse_corrupted = nn.functional.mse_loss(noisy.reconstruction.clamp(*self.pixel_range), x)
        clean.terms.update(recon_corrupted=noisy.loss, mse_corrupted=mse_corrupted)
        return clean
