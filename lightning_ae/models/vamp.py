"""The VAE with a VampPrior: ``p(z) = 1/K sum_k q(z | u_k)``, the encoder's posteriors at K learned pseudo-inputs.

Reference:
    Tomczak & Welling, *VAE with a VampPrior*, AISTATS 2018 (arXiv:1705.07120): the prior is their eq. 9, the
    objective their eq. 3 with the KL estimated by one Monte-Carlo sample.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lightning_ae.distributions import LOG_2PI, DiagonalGaussian
from lightning_ae.models.base import LossOutput, Stage
from lightning_ae.models.vae import VAE


def gaussian_mixture_log_prob(z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor,
                              chunk_elements: int = 1 << 22) -> torch.Tensor:
    """``log (1/K) sum_k N(z; means_k, diag exp(logvars_k))`` of ``z`` ``(..., D)`` with components ``(K, D)``.

    The squared distances are taken directly, ``sum_d (z_d - m_kd)^2 / v_kd``, in fp32 with autocast off: the
    expanded form ``z^2/v - 2zm/v + m^2/v`` is three large numbers that cancel, off by nats at small variances (and
    by thousands under bf16). ``z - m`` of nearby fp32 numbers is exact, so the direct form stays within 1e-3
    nats of a float64 computation for log-variances in [-12, 2]. Rows of ``z`` are taken ``chunk_elements / (K D)``
    at a time, bounding memory to ``chunk_elements`` floats (the IWAE evaluation's 50,000 samples x 500
    components).

    Returns:
        ``(...)`` fp32 log-densities.
    """
    num_components, dim = means.shape
    with torch.autocast(z.device.type, enabled=False):
        flat = z.float().reshape(-1, dim)  # (N, D)
        means, logvars = means.float(), logvars.float()
        inv_var = torch.exp(-logvars)  # (K, D)
        log_norm = -0.5 * (dim * LOG_2PI + logvars.sum(-1))  # (K,)
        rows = max(1, chunk_elements // (num_components * dim))
        parts = [torch.logsumexp(log_norm - 0.5 * ((part.unsqueeze(1) - means).square() * inv_var).sum(-1), -1)
                 for part in flat.split(rows)]  # each (n,): the (n, K, D) differences live one chunk at a time
        out = torch.cat(parts) if parts else flat.new_zeros(0)
    return (out - math.log(num_components)).reshape(z.shape[:-1])


class VampVAE(VAE):
    """A :class:`VAE` with the VampPrior (Tomczak & Welling 2018, eq. 9).

    The loss is ``recon + w * (log q(z|x) - log p(z))`` at the one reparameterized sample ``z`` of the
    reconstruction (the KL to a mixture has no closed form); ``kl`` is logged as that estimate. ``sample``
    draws a pseudo-input uniformly, then ``z`` from its posterior; ``test/nll`` uses this prior in its weights.

    Args:
        num_pseudo_inputs: K pseudo-inputs ``u_k``, learned images of ``image_shape`` (Tomczak & Welling use
            500 on MNIST), clamped to ``pixel_range`` when encoded (their hard-tanh).
        pseudo_input_std: the pseudo-inputs start at ``low + (high - low) * N(0.05, std^2)`` (their initialization
            for MNIST in [0, 1]: mean 0.05, std 0.01).
        **kwargs: the arguments of :class:`VAE` (``free_bits`` must stay 0: the KL is one sample, not per
            dimension).
    """

    def __init__(self, num_pseudo_inputs: int = 500, pseudo_input_std: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_pseudo_inputs < 1:
            raise ValueError(f"num_pseudo_inputs must be >= 1, got {num_pseudo_inputs}")
        if pseudo_input_std < 0:
            raise ValueError(f"pseudo_input_std must be >= 0, got {pseudo_input_std}")
        if self.free_bits > 0:
            raise ValueError(f"free_bits must be 0 with the VampPrior (its KL is a one-sample estimate, not per "
                             f"dimension), got {self.free_bits}")
        low, high = self.pixel_range
        self.pseudo_inputs = nn.Parameter(low + (high - low) * (0.05 + pseudo_input_std * torch.randn(
            num_pseudo_inputs, *self.image_shape)))

    def prior_components(self) -> DiagonalGaussian:
        """``q(z | u_k)`` of the clamped pseudo-inputs: a :class:`DiagonalGaussian` over ``(K, latent_dim)``."""
        return self.posterior(self.pseudo_inputs.clamp(*self.pixel_range))

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z) = log 1/K sum_k q(z | u_k)`` of ``z`` ``(..., D)``: ``(...)``."""
        components = self.prior_components()
        return gaussian_mixture_log_prob(z, components.mean, components.logvar)

    def loss_terms(self, x: torch.Tensor, stage: Stage) -> LossOutput:
        """``recon + w * (log q(z|x) - log p(z))`` at one ``z ~ q(z|x)`` (Tomczak & Welling 2018, eq. 3; ``w``
        from beta and warm-up); terms ``elbo``, ``recon``, ``kl`` (the one-sample estimate), ``kl_weight``."""
        q = self.posterior(x)
        z = q.rsample()
        output = self.decode(z)
        recon = self.reconstruction_nll(output, x).mean()
        kl = (q.log_prob(z) - self.prior_log_prob(z)).mean()
        return self.elbo_output(output, recon, kl, kl, stage, q.mean)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images: ``k ~ U{1..K}``, ``z ~ q(z | u_k)``, then the mean of ``p(x|z)``, ``(n, C, H, W)``."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        components = self.prior_components()
        k = torch.randint(components.mean.shape[0], (n,), generator=generator, device=self.device)
        eps = torch.randn(n, self.latent_size, generator=generator, device=self.device, dtype=self.dtype)
        return self.output_to_image(self.decode(components.mean[k] + components.std[k] * eps))
