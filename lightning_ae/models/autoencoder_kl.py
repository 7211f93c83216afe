"""Latent diffusion's KL autoencoder (Rombach et al. 2022, arXiv 2112.10752, sec. 3.1 and appendix G), the
"Stable Diffusion VAE": the LDM encoder and decoder around a spatial diagonal-Gaussian latent, trained with a
reconstruction NLL of learned scale and a KL term of very small weight, and a latent ``scaling_factor`` measured
from the training data so that a diffusion model sees latents of unit variance. Loads from and exports to
``diffusers.AutoencoderKL`` (:mod:`lightning_ae.interop.diffusers`)."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Literal

import torch

from lightning_ae.batch import Batch
from lightning_ae.distributions import DiagonalGaussian
from lightning_ae.metrics import LatentStd
from lightning_ae.models.adversarial import AdversarialMixin
from lightning_ae.models.base import AutoencoderBase, LossOutput, Stage
from lightning_ae.models.vae import VAE

Reconstruction = Literal["l1", "l2"]
_FIXED = {"likelihood": "gaussian", "gaussian_std": 1.0, "logistic_mixtures": 1, "free_bits": 0.0, "iw_samples": 1,
          "iw_batch": 1}  # the VAE options that AutoencoderKL sets (its own loss); a checkpoint's hparams repeat them


def ldm_nll(output: torch.Tensor, target: torch.Tensor, logvar: torch.Tensor, reconstruction: Reconstruction
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent diffusion's reconstruction NLL (``LPIPSWithDiscriminator`` without its perceptual term):
    ``rec = |x - x_hat|`` (``l1``) or ``(x - x_hat)^2`` (``l2``) per pixel, ``nll = rec / exp(logvar) + logvar``
    summed over the pixels of each image (a Laplace / Gaussian NLL with one learned scale, up to constants).

    Args:
        output: decoded images ``(B, C, H, W)``.
        target: the images ``(B, C, H, W)``.
        logvar: the scalar log-variance.
        reconstruction: ``l1`` or ``l2``.

    Returns:
        ``(nll, rec)``: the per-image NLL ``(B,)`` and the per-pixel reconstruction error ``(B, C, H, W)``.
    """
    diff = target.float() - output.float()  # fp32 under bf16 autocast: the sum runs over every pixel
    rec = diff.abs() if reconstruction == "l1" else diff.pow(2)
    return (rec * torch.exp(-logvar) + logvar).sum(dim=(1, 2, 3)), rec


class AutoencoderKL(AdversarialMixin, VAE):
    """The latent-diffusion KL autoencoder: ``loss = NLL + kl_weight * KL``, both summed per image and averaged
    over the batch (latent diffusion's ``LPIPSWithDiscriminator``), with its perceptual and adversarial terms when
    a ``discriminator`` / ``perceptual`` network is given
    (:class:`~lightning_ae.models.adversarial.AdversarialMixin`: the perceptual distance is added to each pixel's
    error before the NLL, as there).

    The NLL is :func:`ldm_nll` with the scalar ``logvar`` parameter; the KL is that of the spatial Gaussian
    posterior to N(0, I) (Kingma & Welling 2014, eq. 10). ``scaling_factor`` (a buffer, so it is in checkpoints,
    model folders and the diffusers export) is ``1 / std`` of the posterior means of the last training epoch
    (summed over DDP ranks; :class:`~lightning_ae.metrics.LatentStd`, logged as ``train/latent_std``) unless
    given. Logged: ``{stage}/loss``, ``nll``, ``rec`` (mean per-pixel error), ``kl``, ``logvar``; val/test
    PSNR and MSE as every variant.

    Args:
        latent_dim: latent channels (Stable Diffusion: 4).
        network: ``ldm`` (the default) or any spatial family; the sizes are ``network_options`` (``ch``,
            ``ch_mult``, ``num_res_blocks``, ``attn_resolutions``, ``dropout``...; see
            :class:`~lightning_ae.nets.LDMEncoder`).
        kl_weight: weight of the KL term (latent diffusion's KL-f8: 1e-6).
        reconstruction: ``l1`` (latent diffusion) or ``l2``.
        logvar_init: initial value of ``logvar`` (latent diffusion: 0).
        learn_logvar: train ``logvar`` with the networks. Latent diffusion declares it a parameter but leaves it
            out of its optimizer, so there it stays at ``logvar_init``; ``False`` reproduces that.
        scaling_factor: the latent scale; ``None`` measures it from the training data each epoch (Stable
            Diffusion's VAE ships 0.18215; keep that when fine-tuning it for an existing diffusion model).
        init_from_diffusers: a ``diffusers.AutoencoderKL`` folder (``config.json`` and
            ``diffusion_pytorch_model.safetensors``) whose weights initialise the networks when fitting starts
            (``setup("fit")``; a resumed run's checkpoint then replaces them); its layout must match this model's.
            From Python, :meth:`from_diffusers` builds the matching model and loads at once.
        **kwargs: the adversarial options (``discriminator``, ``disc_start``, ``disc_weight``, ``perceptual``...:
            :class:`~lightning_ae.models.adversarial.AdversarialMixin`), the other arguments of
            :class:`~lightning_ae.models.AutoencoderBase` (``pixel_range``: diffusers' VAEs work on ``(-1, 1)``) and
            the VAE's ``kl_warmup_steps`` and ``active_threshold``.
    """

    def __init__(
        self,
        latent_dim: int = 4,
        network: Literal["ldm"] = "ldm",
        kl_weight: float = 1e-6,
        reconstruction: Reconstruction = "l1",
        logvar_init: float = 0.0,
        learn_logvar: bool = True,
        scaling_factor: float | None = None,
        init_from_diffusers: str | None = None,
        **kwargs: Any,
    ) -> None:
        fixed = {**_FIXED, "beta": kl_weight}
        vae_defaults = {k: p.default for k, p in inspect.signature(VAE.__init__).parameters.items() if k in fixed}
        # a checkpoint's hparams repeat the fixed values, and a config parser may fill in the VAE's defaults: both
        # are ignored; any other value of these VAE options is an error
        given = sorted(k for k in set(kwargs) & set(fixed) if kwargs.pop(k) not in (fixed[k], vae_defaults[k]))
        if given:
            raise ValueError(f"AutoencoderKL has its own loss (kl_weight, reconstruction, logvar_init); {given} are "
                             "options of the VAE")
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        if reconstruction not in ("l1", "l2"):
            raise ValueError(f"reconstruction must be 'l1' or 'l2', got {reconstruction!r}")
        if scaling_factor is not None and not scaling_factor > 0:
            raise ValueError(f"scaling_factor must be > 0 (or null to measure it), got {scaling_factor}")
        super().__init__(latent_dim=latent_dim, network=network, likelihood="gaussian", gaussian_std=1.0,
                         logistic_mixtures=1, beta=kl_weight, free_bits=0.0, iw_samples=1, iw_batch=1, **kwargs)
        if len(self.latent_shape) != 3:
            raise ValueError(f"AutoencoderKL needs a spatial latent (network='ldm', or an encoder with a latent_shape"
                             f" method); network={self.network!r} gives {self.latent_shape}")
        self.kl_weight, self.reconstruction = kl_weight, reconstruction
        self.logvar = torch.nn.Parameter(torch.tensor(float(logvar_init)), requires_grad=learn_logvar)
        self.register_buffer("scaling_factor", torch.tensor(1.0 if scaling_factor is None else float(scaling_factor)))
        self.measures_scaling_factor = scaling_factor is None
        self.init_from_diffusers = init_from_diffusers
        self._diffusers_loaded = False
        if self.measures_scaling_factor:
            self.declare_metric("latent_std", LatentStd, self._update_latent_std, stages=("train",))

    @staticmethod
    def _update_latent_std(metric: LatentStd, batch: Batch, out: LossOutput) -> None:
        metric.update(out.latent)

    @classmethod
    def from_diffusers(cls, folder: str | Path, **kwargs: Any) -> AutoencoderKL:
        """A model with the layout of the ``diffusers.AutoencoderKL`` saved in ``folder`` (its ``config.json``) and
        its weights (``diffusion_pytorch_model.safetensors``); ``scaling_factor`` is the folder's unless given.

        Raises:
            ValueError: one line naming the file or the config entry that does not fit.
        """
        from lightning_ae.interop.diffusers import autoencoder_kl_arguments, load_diffusers_weights

        model = cls(**{**autoencoder_kl_arguments(folder), **kwargs})
        load_diffusers_weights(model, folder)
        return model

    def setup(self, stage: str) -> None:
        """Loads ``init_from_diffusers`` when fitting starts (once), then as :meth:`AutoencoderBase.setup`."""
        if stage == "fit" and self.init_from_diffusers and not self._diffusers_loaded:
            from lightning_ae.interop.diffusers import load_diffusers_weights

            load_diffusers_weights(self, self.init_from_diffusers)
            self._diffusers_loaded = True
        super().setup(stage)

    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        """As :meth:`VAE.posterior`, in fp32 under mixed precision (the KL sums over every latent value)."""
        return DiagonalGaussian.from_params(self.posterior_params(x).float())

    def reconstruction_nll(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """:func:`ldm_nll` per image ``(B,)``."""
        return ldm_nll(output, x, self.logvar, self.reconstruction)[0]

    def loss_terms(self, x: torch.Tensor, stage: Stage) -> LossOutput:
        """``NLL + w * KL`` with one reparameterized sample (``w``: ``kl_weight`` after the optional warm-up)."""
        q = self.posterior(x)
        output = self.decode(q.rsample())
        nll, rec = ldm_nll(output, x, self.logvar, self.reconstruction)
        kl = q.kl().mean()
        out = self.elbo_output(output, nll.mean(), kl, kl, stage, q.mean)
        terms = {"nll": out.terms.pop("recon"), "kl": out.terms.pop("kl"), "rec": rec.mean().detach(),
                 "logvar": self.logvar.detach()}
        out.terms.pop("elbo")  # not an ELBO: the NLL has a learned scale and no normalising constant
        out.terms.update(terms)
        out.decoded = output
        return out

    def adversarial_reconstruction(self, out: LossOutput, x: torch.Tensor, perceptual: torch.Tensor | None
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent diffusion's: ``perceptual_weight * p`` joins every pixel's error before the NLL, so the NLL
        grows by ``perceptual_weight * p * C * H * W / exp(logvar)`` per image; the adaptive weight balances the
        NLL."""
        nll = out.terms["nll"]
        if perceptual is None:
            return out.loss, nll
        extra = (self.perceptual_weight * perceptual * math.prod(self.image_shape) * torch.exp(-self.logvar)).mean()
        return out.loss + extra, nll + extra

    def batch_loss(self, batch: Batch, stage: Stage) -> LossOutput:
        """The loss; no importance-weighted likelihood in test (:func:`ldm_nll` is not normalised)."""
        return AutoencoderBase.batch_loss(self, batch, stage)

    def on_train_epoch_end(self) -> None:
        """Sets ``scaling_factor`` to ``1 / std`` of the epoch's posterior means (when measured), then logs."""
        if self.measures_scaling_factor:
            metric = self.stage_metric("train", "latent_std")
            if metric.update_count:
                self.scaling_factor.fill_(1.0 / metric.compute().clamp(min=1e-12).item())
        super().on_train_epoch_end()

    def scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Latents as a latent-diffusion model sees them: ``z * scaling_factor``."""
        return z * self.scaling_factor
