"""The variational autoencoder: a Gaussian encoder q(z|x), a Bernoulli or Gaussian decoder p(x|z), a N(0, I) prior.
Loss = recon NLL + beta * KL (Kingma & Welling 2014, eq. 10, negated), in nats per image."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from lightning_ae.batch import Batch
from lightning_ae.distributions import (
    DiagonalGaussian,
    Likelihood,
    PixelLikelihood,
    bits_per_dim,
    free_bits_kl,
    importance_weighted_log_likelihood,
    kl_warmup_weight,
    standard_normal_log_prob,
)
from lightning_ae.graphs import FunctionModule, Graph
from lightning_ae.metrics import ActiveUnits
from lightning_ae.models.base import AutoencoderBase, LossOutput, Stage


class VAE(AutoencoderBase):
    """Variational autoencoder (Kingma & Welling 2014) with a diagonal Gaussian posterior.

    The encoder outputs ``2 * latent_dim`` features, the mean and log-variance of ``q(z|x)``. ``encode`` returns
    the posterior mean, so ``forward`` and ``predict_step`` are deterministic. With a spatial encoder
    (``network: ldm``, or any encoder with a ``latent_shape(image_shape)`` method) the latent is a
    ``latent_shape = (latent_dim, h, w)`` grid: the encoder outputs ``(B, 2 * latent_dim, h, w)``, ``encode``
    returns ``(B, latent_dim, h, w)`` and the posterior is a diagonal Gaussian over its ``latent_size`` values.
    Evaluation: ``val/active_units`` (a
    declared stage metric, fed the posterior means the loss computed) and the importance-weighted ``test/nll`` and
    ``test/bpd`` (Burda et al. 2015), terms of the test step's loss (:meth:`batch_loss`).

    Args:
        likelihood: ``p(x|z)``: ``bernoulli`` (logits; binarized images, ``pixel_range`` (0, 1)), ``gaussian`` or
            ``logistic`` (discretized logistic mixture of 8-bit pixels, Salimans et al. 2017; honest bits/dim).
        gaussian_std: fixed std of the ``gaussian`` likelihood, in pixel units; ``None`` learns a per-pixel variance.
        logistic_mixtures: mixture components of the ``logistic`` likelihood (1: one discretized logistic).
        beta: weight of the KL term after warm-up (1 gives the ELBO; Higgins et al. 2017 for other values).
        kl_warmup_steps: optimizer steps over which the KL weight grows linearly from 0 to ``beta``
            (Bowman et al. 2016); 0 disables warm-up.
        free_bits: floor in nats on the batch-mean KL of each latent dimension (Kingma et al. 2016); 0 disables.
        iw_samples: importance samples ``K`` of ``test/nll`` (100: about 2 minutes on the MNIST test set on a 2-core
            CPU; published figures use 1000 or 5000, ``--model.init_args.iw_samples 1000``).
        iw_batch: importance samples decoded at once (bounds memory to ``iw_batch x batch`` images).
        active_threshold: variance threshold of an active unit (Burda et al. 2015 use 1e-2).
        **kwargs: the arguments of :class:`~lightning_ae.models.AutoencoderBase`; the encoder maps images to
            ``(B, 2 * latent_dim)``, the decoder latents to logits, means, or means and log-variances ``(B, 2C, H, W)``.
    """

    def __init__(
        self,
        likelihood: Likelihood = "bernoulli",
        gaussian_std: float | None = 0.1,
        logistic_mixtures: int = 1,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
        iw_samples: int = 100,
        iw_batch: int = 100,
        active_threshold: float = 1e-2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pixel_likelihood = PixelLikelihood(likelihood, gaussian_std, logistic_mixtures, self.pixel_range)
        if likelihood == "bernoulli" and self.pixel_range != (0.0, 1.0):
            raise ValueError(f"likelihood='bernoulli' needs pixel_range (0, 1), got {self.pixel_range}")
        for name, value, low in (("beta", beta, 0), ("kl_warmup_steps", kl_warmup_steps, 0),
                                 ("free_bits", free_bits, 0), ("iw_samples", iw_samples, 1), ("iw_batch", iw_batch, 1)):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        self.beta, self.kl_warmup_steps, self.free_bits, self.iw_samples = beta, kl_warmup_steps, free_bits, iw_samples
        self.iw_batch = iw_batch
        self.init_networks(encoder_out_mult=2, decoder_out_mult=self.pixel_likelihood.channels_per_pixel)
        self.latent_shape = self._latent_shape()
        self.latent_size = math.prod(self.latent_shape)
        self.active_threshold = active_threshold
        self.declare_metric("active_units", self._new_active_units, self._update_active_units, stages=("val",))

    def _latent_shape(self) -> tuple[int, ...]:
        """``(latent_dim,)``, or ``(latent_dim, h, w)`` for an encoder with a ``latent_shape`` method."""
        grid = getattr(self.encoder, "latent_shape", None)
        if not callable(grid):
            return (self.latent_dim,)
        channels, h, w = grid(self.image_shape)
        if channels != 2 * self.latent_dim:
            raise ValueError(f"the encoder outputs {channels} channels; a Gaussian posterior over latent_dim="
                             f"{self.latent_dim} channels needs 2 * latent_dim = {2 * self.latent_dim}")
        return (self.latent_dim, h, w)

    def _new_active_units(self) -> ActiveUnits:
        return ActiveUnits(self.latent_size, self.active_threshold)

    def _update_active_units(self, metric: ActiveUnits, batch: Batch, out: LossOutput) -> None:
        metric.update(out.latent if out.latent is not None else self.posterior(batch.images).mean)

    @property
    def active_units(self) -> ActiveUnits:
        """The validation :class:`ActiveUnits` metric of the current epoch."""
        return self.stage_metric("val", "active_units")  # type: ignore[return-value]

    def posterior_params(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output for images ``(B, C, H, W)``, checked: ``(B, 2 * latent_dim, *latent_shape[1:])``,
        the means then the log-variances."""
        params = self.encoder(x)
        expected = (2 * self.latent_dim, *self.latent_shape[1:])
        if tuple(params.shape[1:]) != expected:
            raise ValueError(f"the encoder must output (B, {', '.join(map(str, expected))}) (mean, log-variance "
                             f"of latent_dim={self.latent_dim}), got {tuple(params.shape)}")
        return params

    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        """``q(z|x)`` of images ``(B, C, H, W)``: a :class:`DiagonalGaussian` over ``(B, latent_size)`` (a spatial
        latent flattened; :meth:`latent_grid` gives it its shape back)."""
        return DiagonalGaussian.from_params(self.posterior_params(x))

    def latent_grid(self, z: torch.Tensor) -> torch.Tensor:
        """Flat latents ``(..., latent_size)`` -> ``(..., *latent_shape)``."""
        return z.unflatten(-1, self.latent_shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean: ``(B, latent_dim)``, or ``(B, *latent_shape)`` for a spatial latent."""
        return self.latent_grid(self.posterior(x).mode())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents, flat ``(B, latent_size)`` or shaped ``(B, *latent_shape)``, -> decoder output."""
        return self.decoder(self.latent_grid(z) if z.ndim == 2 and len(self.latent_shape) > 1 else z)

    def export_graphs(self) -> list[Graph]:
        """As :meth:`AutoencoderBase.export_graphs`, the encoder giving ``q(z|x)``'s ``mean`` and ``logvar``."""
        def encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            q = self.posterior(x)
            return self.latent_grid(q.mean), self.latent_grid(q.logvar)

        encoder, decoder = super().export_graphs()
        return [Graph("encoder", FunctionModule(self, encode), encoder.make_inputs, ("images",), ("mean", "logvar")),
                decoder]

    def output_to_image(self, output: torch.Tensor) -> torch.Tensor:
        """Decoder output -> the mean of ``p(x|z)`` (``sigmoid(logits)`` for Bernoulli), ``(..., C, H, W)``."""
        return self.pixel_likelihood.mean(output)

    def reconstruction_nll(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``-log p(x|z)`` in nats per image, ``(...)``; ``x`` ``(B, C, H, W)`` broadcasts against ``output``."""
        return self.pixel_likelihood.nll(output, x)

    def loss_terms(self, x: torch.Tensor, stage: Stage) -> LossOutput:
        """Negative ELBO with one reparameterized sample and the analytic KL (Kingma & Welling 2014, eq. 10).

        Terms (nats per image, batch means): ``loss = recon + w * KL`` (``w`` from beta and warm-up, the KL
        floored per dimension by free bits), ``elbo = -(recon + KL)``, ``recon``, ``kl``; ``kl_weight`` in training.
        """
        return self.gaussian_elbo(x, self.posterior(x), self.decode, stage)

    def gaussian_elbo(self, x: torch.Tensor, q: DiagonalGaussian, decode: Callable[[torch.Tensor], torch.Tensor],
                      stage: Stage) -> LossOutput:
        """The negative ELBO of images ``x`` with posterior ``q`` and decoder ``decode`` (a conditional VAE passes
        its label-conditioned ones): one reparameterized sample, the analytic KL (eq. 10)."""
        output = decode(q.rsample())
        recon = self.reconstruction_nll(output, x).mean()
        kl_per_dim = q.kl_per_dim()
        kl = kl_per_dim.sum(dim=1).mean()
        kl_in_loss = free_bits_kl(kl_per_dim, self.free_bits) if self.free_bits > 0 else kl
        return self.elbo_output(output, recon, kl, kl_in_loss, stage, q.mean)

    def elbo_output(self, output: torch.Tensor, recon: torch.Tensor, kl: torch.Tensor, kl_in_loss: torch.Tensor,
                    stage: Stage, latent: torch.Tensor | None = None) -> LossOutput:
        """``LossOutput(recon + w * kl_in_loss, mean image of output, {elbo, recon, kl[, kl_weight]}, latent)``,
        ``w`` being ``beta`` times the warm-up (:func:`kl_warmup_weight`) at the current optimizer step."""
        weight = kl_warmup_weight(self.global_step, self.kl_warmup_steps, self.beta)
        terms = {"elbo": -(recon + kl), "recon": recon, "kl": kl}
        if stage == "train":
            terms["kl_weight"] = torch.tensor(weight, device=recon.device)
        return LossOutput(recon + weight * kl_in_loss, lambda: self.output_to_image(output), terms, latent)

    def batch_loss(self, batch: Batch, stage: Stage) -> LossOutput:
        """The variant's loss; in a test step also ``nll`` and ``bpd``, the importance-weighted estimate of
        ``-log p(x)`` (:meth:`likelihood_terms`)."""
        out = super().batch_loss(batch, stage)
        if stage == "test":
            out.terms.update(self.likelihood_terms(batch))
        return out

    def likelihood_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        """``{"nll", "bpd"}``: batch means of the importance-weighted ``-log p(x)`` with ``iw_samples`` samples,
        in nats per image and bits per dimension."""
        nll = -self.log_likelihood(batch.images)
        return self.nll_terms(nll)

    def nll_terms(self, nll: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"nll", "bpd"}`` of per-image NLLs ``(B,)`` in nats."""
        bpd = bits_per_dim(nll, math.prod(self.image_shape), self.pixel_likelihood.bin_width(self.pixel_range))
        return {"nll": nll.mean(), "bpd": bpd.mean()}

    def log_likelihood(self, x: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
        """Importance-weighted estimate of ``log p(x)`` in nats per image, ``(B,)`` (Burda et al. 2015, eq. 8).

        ``K = num_samples`` (default ``iw_samples``) samples of ``q(z|x)`` are drawn, ``iw_batch`` at a time;
        ``K = 1`` gives a one-sample ELBO, and the estimate tends to ``log p(x)`` as ``K`` grows.
        """
        q = self.posterior(x)
        return importance_weighted_log_likelihood(lambda n: self.log_weights(x, q, q.rsample((n,))),
                                                  num_samples or self.iw_samples, self.iw_batch)

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)`` summed over the last dimension: ``N(0, I)`` here (the VampPrior overrides it)."""
        return standard_normal_log_prob(z)

    def log_weights(self, x: torch.Tensor, q: DiagonalGaussian, z: torch.Tensor,
                    decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Log importance weights ``log p(x|z) + log p(z) - log q(z|x)`` of samples ``z`` ``(n, B, D)`` of ``q``
        for images ``x`` ``(B, C, H, W)``: ``(n, B)`` nats (``decode``: default :meth:`decode`)."""
        output = (decode or self.decode)(z.flatten(0, 1)).unflatten(0, z.shape[:2])
        return -self.reconstruction_nll(output, x) + self.prior_log_prob(z) - q.log_prob(z)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images from the model: ``z ~ N(0, I)``, then the mean of ``p(x|z)``, ``(n, C, H, W)``."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        return self.output_to_image(self.decode(torch.randn(n, self.latent_size, generator=generator,
                                                            device=self.device, dtype=self.dtype)))

    @torch.no_grad()
    def traverse(self, x: torch.Tensor, dim: int, values: torch.Tensor | None = None) -> torch.Tensor:
        """Decodes the posterior mean of one image ``(C, H, W)`` with latent ``dim`` (of the flat
        ``latent_size`` values) set to each of ``values`` (default ``linspace(-3, 3, 7)``, prior standard
        deviations): ``(len(values), C, H, W)`` images."""
        if not 0 <= dim < self.latent_size:
            raise ValueError(f"dim must be in [0, {self.latent_size}), got {dim}")
        values = torch.linspace(-3.0, 3.0, 7) if values is None else values
        z = self.posterior(self.check_images(x.reshape(1, *self.image_shape))).mode().repeat(len(values), 1)
        z[:, dim] = values.to(z)
        return self.output_to_image(self.decode(z))
