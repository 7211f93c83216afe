"""Perceptual and adversarial training on top of a variant's own loss: the recipe of VQGAN (Esser et al. 2021,
taming-transformers' ``VQLPIPSWithDiscriminator``) and of latent diffusion's autoencoders (Rombach et al. 2022,
``LPIPSWithDiscriminator``), as Lightning 2 manual optimization of a generator and a discriminator.

Per training batch (after ``disc_start`` generator steps for the adversarial parts; taming's ``adopt_weight``):

1. generator: the variant's loss (its reconstruction term with the perceptual distance added,
   ``perceptual_weight * LPIPS``, plus its codebook or KL term) plus ``lambda * disc_factor * L_G``, ``L_G`` the
   generator's adversarial loss on the discriminator's logits for the reconstruction and ``lambda`` VQGAN's
   adaptive weight (eq. 7) on the decoder's last layer, times ``disc_weight``;
2. discriminator: ``disc_factor * L_D`` on the real images and the detached reconstructions, plus optional LeCam
   (Tseng et al. 2021) and R1 (Mescheder et al. 2018) terms.

Each optimizer has its own scheduler and gradient clipping; ``accumulate_grad_batches`` accumulates both (the
Trainer's own option does not apply to manual optimization, and Lightning refuses it). Only the generator's
optimizer steps through Lightning, so ``global_step`` (and ``max_steps``, ``disc_start``, logging) counts
generator steps, as with one optimizer; the discriminator's optimizer is stepped directly (fp32 and
``bf16-mixed``; ``16-mixed`` is refused, its loss scaler would not see that step). Under DDP the discriminator has
no gradient before ``disc_start`` and the generator none in the discriminator's pass: use
``strategy: ddp_find_unused_parameters_true`` (a plain ``ddp`` is refused in one line).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lightning_ae.distributed import world_size
from lightning_ae.losses import (
    AdversarialLoss,
    adaptive_weight,
    adopt_weight,
    discriminator_loss,
    generator_loss,
    lecam_regularization,
    r1_penalty,
)
from lightning_ae.models.base import LossOutput, build_optimization
from lightning_ae.quantizers.functional import all_reduce_sum


def _last_layer(decoder: nn.Module) -> torch.Tensor:
    decoder = getattr(decoder, "_orig_mod", decoder)
    layer = getattr(decoder, "last_layer", None)
    if isinstance(layer, torch.Tensor):
        return layer
    convs = [m for m in decoder.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear)]
    if not convs:
        raise ValueError(f"the adaptive weight needs the decoder's last layer; {type(decoder).__name__} has none "
                         "(give it a last_layer property, or adaptive_weight=False)")
    return convs[-1].weight


class AdversarialMixin:
    """The adversarial recipe for a variant (see the module docstring); ``discriminator=None`` leaves the variant
    as it is (automatic optimization).

    Args:
        discriminator: an ``nn.Module`` from images to real/fake logits
            (:class:`~lightning_ae.nets.PatchGANDiscriminator`), like the encoder and decoder; ``None``: no
            adversarial term.
        disc_loss: ``hinge`` (VQGAN, latent diffusion), ``vanilla`` (non-saturating) or ``lsgan``.
        disc_start: generator steps before which neither the generator's adversarial term nor the discriminator
            trains (latent diffusion's KL-f8: 50001).
        disc_weight: multiplies the adaptive weight (taming: 0.8; latent diffusion: 0.5).
        disc_factor: multiplies both adversarial losses once started (1.0).
        adaptive: VQGAN's adaptive weight (Esser et al. 2021, eq. 7); ``False``: ``disc_weight`` alone.
        perceptual: a module giving a per-image distance ``(B,)`` of two ``[0, 1]`` image batches
            (:class:`~lightning_ae.perceptual.LPIPS`, or any feature network); ``None`` turns it off.
        perceptual_weight: its weight (taming and latent diffusion: 1.0).
        lecam_weight: weight of the LeCam regularisation of the discriminator (0: off; Tseng et al. use 0.3).
        lecam_decay: decay of its moving averages of the logits.
        r1_weight: weight ``gamma / 2`` of the R1 penalty of the discriminator (0: off).
        disc_optimizer: the discriminator's optimizer factory (default: the generator's ``optimizer``).
        disc_lr_scheduler: the discriminator's scheduler factory (stepped per epoch, like the generator's).
        gradient_clip_norm: clip the generator's gradient norm (the Trainer's ``gradient_clip_val`` does not apply
            to manual optimization).
        disc_gradient_clip_norm: clip the discriminator's gradient norm.
        accumulate_grad_batches: batches whose gradients each optimizer step accumulates (both optimizers).
    """

    def __init__(
        self,
        discriminator: nn.Module | None = None,
        disc_loss: AdversarialLoss = "hinge",
        disc_start: int = 0,
        disc_weight: float = 0.8,
        disc_factor: float = 1.0,
        adaptive: bool = True,
        perceptual: nn.Module | None = None,
        perceptual_weight: float = 1.0,
        lecam_weight: float = 0.0,
        lecam_decay: float = 0.999,
        r1_weight: float = 0.0,
        disc_optimizer: OptimizerCallable | None = None,
        disc_lr_scheduler: LRSchedulerCallable | None = None,
        gradient_clip_norm: float | None = None,
        disc_gradient_clip_norm: float | None = None,
        accumulate_grad_batches: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        checks = [("disc_start", disc_start, 0), ("disc_weight", disc_weight, 0), ("disc_factor", disc_factor, 0),
                  ("perceptual_weight", perceptual_weight, 0), ("lecam_weight", lecam_weight, 0),
                  ("r1_weight", r1_weight, 0), ("accumulate_grad_batches", accumulate_grad_batches, 1)]
        for name, value, low in checks:
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if discriminator is None and (gradient_clip_norm or disc_gradient_clip_norm or accumulate_grad_batches > 1):
            raise ValueError("gradient_clip_norm, disc_gradient_clip_norm and accumulate_grad_batches are for training "
                             "with a discriminator; without one use the Trainer's gradient_clip_val and "
                             "accumulate_grad_batches")
        if disc_loss not in ("hinge", "vanilla", "lsgan"):
            raise ValueError(f"disc_loss must be 'hinge', 'vanilla' or 'lsgan', got {disc_loss!r}")
        self.discriminator = discriminator
        # kept out of the module tree: its (fixed, standard) weights stay out of checkpoints and model folders,
        # which rebuild it from its config; it follows the model's device when used
        self._perceptual = [perceptual.eval().requires_grad_(False)] if perceptual is not None else []
        self.disc_loss, self.disc_start, self.disc_weight, self.disc_factor = disc_loss, disc_start, disc_weight, \
            disc_factor
        self.adaptive, self.perceptual_weight = adaptive, perceptual_weight
        self.lecam_weight, self.lecam_decay, self.r1_weight = lecam_weight, lecam_decay, r1_weight
        self.disc_optimizer_factory, self.disc_lr_scheduler_factory = disc_optimizer, disc_lr_scheduler
        self.gradient_clip_norm, self.disc_gradient_clip_norm = gradient_clip_norm, disc_gradient_clip_norm
        self.accumulate = accumulate_grad_batches
        self.automatic_optimization = discriminator is None
        self.register_buffer("lecam_ema", torch.zeros(2))  # moving averages of the real and fake logits

    # ---- the generator's terms -------------------------------------------------------------------------------
    @property
    def perceptual(self) -> nn.Module | None:
        """The perceptual network, or ``None``."""
        return self._perceptual[0] if self._perceptual else None

    def perceptual_term(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """``perceptual(x_hat, x)`` per image ``(B,)`` on ``[0, 1]`` images, or ``None`` when off."""
        network = self.perceptual
        if network is None or self.perceptual_weight == 0:
            return None
        network.to(x.device)
        low, high = self.pixel_range
        return network(((x_hat - low) / (high - low)).clamp(0, 1), ((x - low) / (high - low)).clamp(0, 1))

    def adversarial_reconstruction(self, out: LossOutput, x: torch.Tensor, perceptual: torch.Tensor | None
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, rec)``: the variant's loss with the perceptual distance added to its reconstruction term, and
        that reconstruction term (what the adaptive weight balances). Each variant says how (VQGAN: added to the
        mean L1; AutoencoderKL: to each pixel's error before its NLL)."""
        raise NotImplementedError(f"{type(self).__name__} must implement adversarial_reconstruction")

    def started(self) -> bool:
        """Whether the adversarial terms are on at the current generator step (``disc_start``)."""
        return adopt_weight(self.disc_factor, self.global_step, self.disc_start) > 0

    def generator_terms(self, out: LossOutput, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The generator's total loss and the terms to log."""
        x_hat = out.decoded
        if x_hat is None:
            raise ValueError(f"{type(self).__name__}.loss_terms gives no decoded images (LossOutput.decoded)")
        perceptual = self.perceptual_term(x_hat, x)
        loss, rec = self.adversarial_reconstruction(out, x, perceptual)
        terms = dict(out.terms)
        if perceptual is not None:
            terms["perceptual"] = perceptual.mean().detach()
        if not self.started():
            return loss, terms
        logits_fake = self.discriminator(x_hat)
        g_adv = generator_loss(logits_fake, self.disc_loss)
        weight = (adaptive_weight(rec, g_adv, _last_layer(self.decoder)) if self.adaptive
                  else torch.ones((), device=x.device)) * self.disc_weight
        terms.update({"g_adv": g_adv.detach(), "adaptive_weight": weight})
        return loss + weight * self.disc_factor * g_adv, terms

    # ---- the discriminator's -------------------------------------------------------------------------------------
    def discriminator_terms(self, x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The discriminator's loss on real images and detached reconstructions, and its terms."""
        real = x.detach().requires_grad_(self.r1_weight > 0)
        logits_real, logits_fake = self.discriminator(real).float(), self.discriminator(x_hat.detach()).float()
        d_loss = self.disc_factor * discriminator_loss(logits_real, logits_fake, self.disc_loss)
        terms = {"logits_real": logits_real.mean().detach(), "logits_fake": logits_fake.mean().detach()}
        if self.lecam_weight > 0:
            lecam = lecam_regularization(logits_real, logits_fake, self.lecam_ema[0], self.lecam_ema[1])
            d_loss = d_loss + self.lecam_weight * lecam
            terms["lecam"] = lecam.detach()
            with torch.no_grad():  # the mean logits of all ranks, so every rank keeps the same averages
                means = all_reduce_sum(torch.stack([terms["logits_real"], terms["logits_fake"]])) / world_size()
                self.lecam_ema.lerp_(means.to(self.lecam_ema), 1 - self.lecam_decay)
        if self.r1_weight > 0:
            r1 = r1_penalty(logits_real, real)
            d_loss = d_loss + self.r1_weight * r1
            terms["r1"] = r1.detach()
        terms["d_loss"] = d_loss.detach()
        return d_loss, terms

    # ---- Lightning -----------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        """Refuses, before any step, a precision or a DDP setting the two optimizers cannot work with."""
        super().on_fit_start()
        if self.discriminator is None:
            return
        trainer = self.trainer
        if "16" in str(trainer.precision) and "bf16" not in str(trainer.precision):
            raise ValueError(f"precision {trainer.precision!r} is not supported with a discriminator (its loss scaler "
                             "would miss the discriminator's step): use bf16-mixed or 32")
        wrapped = trainer.strategy.model
        if isinstance(wrapped, DistributedDataParallel) and not wrapped.find_unused_parameters:
            raise ValueError("adversarial training under DDP leaves the discriminator without gradients before "
                             "disc_start: use --trainer.strategy ddp_find_unused_parameters_true")

    def _generator_parameters(self) -> list[nn.Parameter]:
        skip = {id(p) for p in self.discriminator.parameters()}
        return [p for p in self.parameters() if id(p) not in skip]

    def configure_optimizers(self) -> Any:
        if self.discriminator is None:
            return super().configure_optimizers()
        generator = build_optimization(self._generator_parameters(), self.optimizer_factory, self.lr_scheduler_factory)
        disc = build_optimization(self.discriminator.parameters(),
                                  self.disc_optimizer_factory or self.optimizer_factory, self.disc_lr_scheduler_factory)
        return [generator, disc]

    def _step_optimizer(self, optimizer: Any, clip: float | None, through_lightning: bool) -> None:
        if clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        if through_lightning:
            optimizer.step()
        else:  # the discriminator: stepped directly, so global_step counts generator steps only
            optimizer.optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if self.discriminator is None:
            return super().training_step(batch, batch_idx)
        opt_g, opt_d = self.optimizers()
        batch = self.batch_of(batch)
        x = batch.images
        boundary = (batch_idx + 1) % self.accumulate == 0 or self.trainer.is_last_batch
        started = self.started()
        self.toggle_optimizer(opt_g)
        out = self.batch_loss(batch, "train")
        g_loss, terms = self.generator_terms(out, x)
        self.manual_backward(g_loss / self.accumulate)
        if boundary:
            self._step_optimizer(opt_g, self.gradient_clip_norm, through_lightning=True)
        self.untoggle_optimizer(opt_g)
        self._update_stage_metrics("train", batch, out)
        if started:
            self.toggle_optimizer(opt_d)
            d_loss, d_terms = self.discriminator_terms(x, out.decoded)
            self.manual_backward(d_loss / self.accumulate)
            if boundary:
                self._step_optimizer(opt_d, self.disc_gradient_clip_norm, through_lightning=False)
            self.untoggle_optimizer(opt_d)
            terms.update(d_terms)
        self.log_terms(LossOutput(g_loss, out.decoded.detach(), terms), "train", x.shape[0])
        return None

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self.discriminator is None:
            return
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                value = self.trainer.callback_metrics.get("val/loss")
                if value is not None:
                    scheduler.step(value)
            else:
                scheduler.step()
