"""The variational autoencoder: a Gaussian encoder q(z|x), a Bernoulli or Gaussian decoder p(x|z), a N(0, I) prior.

Loss = recon NLL + beta * KL (Kingma & Welling 2014, eq. 10, negated), in nats per image. The test step also
reports the importance-weighted estimate of log p(x) (Burda et al. 2015) as ``test/nll`` and ``test/bpd``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import Metric

from lightning_ae.distributions import (
    DiagonalGaussian,
    bernoulli_nll,
    bits_per_dim,
    free_bits_kl,
    gaussian_nll,
    importance_weighted_log_likelihood,
    kl_warmup_weight,
    standard_normal_log_prob,
)
from lightning_ae.models.base import AutoencoderBase, Network, Stage

Likelihood = Literal["bernoulli", "gaussian"]
DECODER_LOGVAR_RANGE = (-10.0, 5.0)  # learned pixel log-variance bounds: sigma in [0.0067, 12]


class ActiveUnits(Metric):
    """Number of active latent units, ``#{i : Cov_x(E_q[z_i | x]) > threshold}`` (Burda et al. 2015, sec. 5.2).

    Accumulates the sum and sum of squares of the posterior means over an epoch (float64); states are summed
    across DDP ranks, so the variance is over the whole evaluation set.

    Args:
        latent_dim: number of latent dimensions.
        threshold: activity threshold on the variance (Burda et al. use 1e-2).
    """

    full_state_update = False

    def __init__(self, latent_dim: int, threshold: float = 1e-2) -> None:
        super().__init__()
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.threshold = threshold
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(latent_dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", torch.zeros(latent_dim, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, means: torch.Tensor) -> None:
        means = means.detach().to(torch.float64)
        self.count += means.shape[0]
        self.total += means.sum(dim=0)
        self.total_sq += means.pow(2).sum(dim=0)

    def variances(self) -> torch.Tensor:
        """Per-dimension variance of the posterior means (unbiased)."""
        mean = self.total / self.count
        return (self.total_sq - self.count * mean.pow(2)) / (self.count - 1).clamp(min=1)

    def compute(self) -> torch.Tensor:
        return (self.variances() > self.threshold).sum()


class VAE(AutoencoderBase):
    """Variational autoencoder (Kingma & Welling 2014) with a diagonal Gaussian posterior.

    The encoder outputs ``2 * latent_dim`` features, the mean and log-variance of ``q(z|x)``. ``encode`` returns
    the posterior mean, so ``forward`` (reconstruction) and ``predict_step`` are deterministic.

    Args:
        encoder: images -> ``(B, 2 * latent_dim)`` (mean, log-variance); ``None`` builds the default.
        decoder: codes -> Bernoulli logits ``(B, C, H, W)``, Gaussian means, or with a learned variance means and
            log-variances ``(B, 2C, H, W)``; ``None`` builds the default.
        latent_dim: size of the latent code.
        network: default network family, ``mlp`` or ``conv``.
        image_shape: ``(C, H, W)`` of the images (linked from the datamodule by the CLI).
        num_classes: classes of the dataset, if any (linked from the datamodule).
        pixel_range: ``(low, high)`` of pixel values; ``(0, 1)`` for ``bernoulli``.
        optimizer: optimizer factory (default: Adam, lr 1e-3).
        lr_scheduler: optional scheduler factory (monitors ``val/loss``).
        likelihood: decoder distribution ``p(x|z)``: ``bernoulli`` (logits; binarized images) or ``gaussian``.
        gaussian_std: fixed standard deviation of the ``gaussian`` likelihood, in pixel units; ``None`` learns a
            per-pixel variance (the decoder outputs 2 channels per image channel). Ignored for ``bernoulli``.
        beta: weight of the KL term after warm-up (1 gives the ELBO; Higgins et al. 2017 for other values).
        kl_warmup_steps: optimizer steps over which the KL weight grows linearly from 0 to ``beta``
            (Bowman et al. 2016); 0 disables warm-up.
        free_bits: floor in nats on the batch-mean KL of each latent dimension (Kingma et al. 2016); 0 disables.
        iw_samples: importance samples ``K`` of the test-time log-likelihood estimate (Burda et al. 2015).
        iw_batch: importance samples decoded at once (bounds memory to ``iw_batch x batch`` images).
        active_threshold: variance threshold of an active unit (Burda et al. 2015 use 1e-2).
    """

    encoder_out_mult = 2

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
        likelihood: Likelihood = "bernoulli",
        gaussian_std: float | None = 0.1,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
        iw_samples: int = 1000,
        iw_batch: int = 100,
        active_threshold: float = 1e-2,
    ) -> None:
        _check_args(likelihood, gaussian_std, beta, kl_warmup_steps, free_bits, iw_samples, iw_batch, pixel_range)
        # read by default_networks() inside the base __init__, so it is set first
        self.decoder_out_mult = 2 if likelihood == "gaussian" and gaussian_std is None else 1
        super().__init__(encoder, decoder, latent_dim, network, image_shape, num_classes, pixel_range, optimizer,
                         lr_scheduler)
        self.likelihood = likelihood
        self.gaussian_std = gaussian_std
        self.beta = beta
        self.kl_warmup_steps = kl_warmup_steps
        self.free_bits = free_bits
        self.iw_samples = iw_samples
        self.iw_batch = iw_batch
        self.active_units = ActiveUnits(latent_dim, active_threshold)

    # ---- the probabilistic parts ---------------------------------------------------------------------------
    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        """``q(z|x)`` of images ``(B, C, H, W)``: a :class:`DiagonalGaussian` over ``(B, latent_dim)``."""
        params = self.encoder(x)
        if params.ndim != 2 or params.shape[1] != 2 * self.latent_dim:
            raise ValueError(f"the encoder must output (B, 2 * latent_dim) = (B, {2 * self.latent_dim}) "
                             f"(mean, log-variance), got {tuple(params.shape)}")
        return DiagonalGaussian.from_params(params)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean ``(B, latent_dim)``: a deterministic code."""
        return self.posterior(x).mode()

    def _split_output(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Decoder output -> (logits or mean, log-variance); image channels are dim -3."""
        if self.likelihood == "bernoulli":
            return output, 0.0
        if self.gaussian_std is not None:
            return output, 2.0 * math.log(self.gaussian_std)
        mean, logvar = output.chunk(2, dim=-3)
        return mean, logvar.clamp(*DECODER_LOGVAR_RANGE)

    def output_to_image(self, output: torch.Tensor) -> torch.Tensor:
        """Decoder output -> the mean of ``p(x|z)`` (``sigmoid(logits)`` for Bernoulli), ``(..., C, H, W)``."""
        loc, _ = self._split_output(output)
        return torch.sigmoid(loc) if self.likelihood == "bernoulli" else loc

    def reconstruction_nll(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``-log p(x|z)`` in nats per image, ``(...)``; ``x`` ``(B, C, H, W)`` broadcasts against ``output``."""
        loc, logvar = self._split_output(output)
        if self.likelihood == "bernoulli":
            return bernoulli_nll(loc, x)
        return gaussian_nll(loc, x, logvar)

    def kl_weight(self) -> float:
        """Current KL weight: ``beta`` times the linear warm-up factor at this global step."""
        return kl_warmup_weight(self.global_step, self.kl_warmup_steps, self.beta)

    # ---- the loss ------------------------------------------------------------------------------------------
    def loss_terms(self, x: torch.Tensor, stage: Stage) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Negative ELBO with one reparameterized sample and the analytic KL (Kingma & Welling 2014, eq. 10).

        Terms (nats per image, batch means): ``loss = recon + w * KL`` (``w`` from beta and warm-up, the KL
        floored per dimension by free bits), ``elbo = -(recon + KL)``, ``recon``, ``kl``; ``kl_weight`` in
        training; ``nll`` and ``bpd`` (importance-weighted, ``iw_samples``) in test.
        """
        q = self.posterior(x)
        output = self.decode(q.rsample())
        recon = self.reconstruction_nll(output, x).mean()
        kl_per_dim = q.kl_per_dim()
        kl = kl_per_dim.sum(dim=1).mean()
        kl_term = free_bits_kl(kl_per_dim, self.free_bits) if self.free_bits > 0 else kl
        weight = self.kl_weight()
        terms = {"loss": recon + weight * kl_term, "elbo": -(recon + kl), "recon": recon, "kl": kl}
        if stage == "train":
            terms["kl_weight"] = torch.tensor(weight, device=x.device)
        elif stage == "val":
            self.active_units.update(q.mean)
        else:
            nll = -self.log_likelihood(x, posterior=q)
            terms["nll"] = nll.mean()
            terms["bpd"] = bits_per_dim(nll, math.prod(self.image_shape), self._bin_width()).mean()
        return terms, self.output_to_image(output)

    def _bin_width(self) -> float | None:
        """Width of an 8-bit pixel bin for a density over continuous pixels; None for the Bernoulli."""
        if self.likelihood == "bernoulli":
            return None
        return (self.pixel_range[1] - self.pixel_range[0]) / 256.0

    def log_likelihood(
        self, x: torch.Tensor, num_samples: int | None = None, posterior: DiagonalGaussian | None = None
    ) -> torch.Tensor:
        """Importance-weighted estimate of ``log p(x)`` in nats per image, ``(B,)`` (Burda et al. 2015, eq. 8).

        ``K = num_samples`` (default ``iw_samples``) samples of ``q(z|x)`` are drawn, ``iw_batch`` at a time;
        ``K = 1`` gives a one-sample ELBO, and the estimate tends to ``log p(x)`` as ``K`` grows.
        """
        k = self.iw_samples if num_samples is None else num_samples
        q = self.posterior(x) if posterior is None else posterior

        def log_weights(n: int) -> torch.Tensor:
            z = q.rsample((n,))  # (n, B, D)
            output = self.decode(z.flatten(0, 1))
            log_px_z = -self.reconstruction_nll(output.unflatten(0, (n, x.shape[0])), x)  # (n, B)
            return log_px_z + standard_normal_log_prob(z) - q.log_prob(z)

        return importance_weighted_log_likelihood(log_weights, k, self.iw_batch)

    # ---- generation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images from the model: ``z ~ N(0, I)``, then the mean of ``p(x|z)``, ``(n, C, H, W)``."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        z = torch.randn(n, self.latent_dim, generator=generator, device=self.device, dtype=self.dtype)
        return self.output_to_image(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of ``p(x|z)`` at the posterior mean ``z``: deterministic, ``(B, C, H, W)`` in pixel space."""
        return self(x)

    @torch.no_grad()
    def interpolate(self, x1: torch.Tensor, x2: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Decodes ``steps`` points on the line between the posterior means of ``x1`` and ``x2``.

        Args:
            x1, x2: images ``(B, C, H, W)`` (or ``(C, H, W)`` for one pair).
            steps: points including both ends (>= 2).

        Returns:
            ``(steps, B, C, H, W)`` images (``(steps, C, H, W)`` for one pair).
        """
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        single = x1.ndim == 3
        z1, z2 = self.encode(self.check_images(_batched(x1))), self.encode(self.check_images(_batched(x2)))
        t = torch.linspace(0.0, 1.0, steps, device=z1.device, dtype=z1.dtype).view(-1, 1, 1)
        images = self.output_to_image(self.decode(torch.lerp(z1, z2, t).flatten(0, 1)))
        images = images.unflatten(0, (steps, z1.shape[0]))
        return images[:, 0] if single else images

    @torch.no_grad()
    def traverse(self, x: torch.Tensor, dim: int, values: torch.Tensor | None = None) -> torch.Tensor:
        """Latent traversal: decodes the posterior mean of one image with dimension ``dim`` set to each value.

        Args:
            x: one image ``(C, H, W)`` or ``(1, C, H, W)``.
            dim: latent dimension to vary, in ``[0, latent_dim)``.
            values: values to set (default: ``linspace(-3, 3, 7)``, prior standard deviations).

        Returns:
            ``(len(values), C, H, W)`` images.
        """
        if not 0 <= dim < self.latent_dim:
            raise ValueError(f"dim must be in [0, {self.latent_dim}), got {dim}")
        values = torch.linspace(-3.0, 3.0, 7) if values is None else values
        z = self.encode(self.check_images(_batched(x)))[:1].repeat(len(values), 1)
        z[:, dim] = values.to(z)
        return self.output_to_image(self.decode(z))

    # ---- epoch hooks -----------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self.active_units.reset()

    def on_validation_epoch_end(self) -> None:
        if self.active_units.update_called:  # compute() syncs the states over DDP ranks: every rank runs it
            # the value is already identical on every rank; sync_dist averages equal values (and tells Lightning
            # the epoch-level value is a global one, so it does not warn)
            self.log("val/active_units", self.active_units.compute().float(), sync_dist=True)
        self.active_units.reset()


def _batched(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(0) if x.ndim == 3 else x


def _check_args(
    likelihood: str,
    gaussian_std: float | None,
    beta: float,
    kl_warmup_steps: int,
    free_bits: float,
    iw_samples: int,
    iw_batch: int,
    pixel_range: tuple[float, float],
) -> None:
    """Raises a ``ValueError`` naming the first bad argument of :class:`VAE`."""
    if likelihood not in ("bernoulli", "gaussian"):
        raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
    if likelihood == "bernoulli" and tuple(float(v) for v in pixel_range) != (0.0, 1.0):
        raise ValueError(f"likelihood='bernoulli' needs pixel_range (0, 1), got {tuple(pixel_range)}")
    if gaussian_std is not None and gaussian_std <= 0:
        raise ValueError(f"gaussian_std must be > 0 or None (learned), got {gaussian_std}")
    for name, value, low in (("beta", beta, 0), ("kl_warmup_steps", kl_warmup_steps, 0), ("free_bits", free_bits, 0),
                             ("iw_samples", iw_samples, 1), ("iw_batch", iw_batch, 1)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
