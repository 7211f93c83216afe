"""What every autoencoder variant shares: the encoder and decoder (given, or the defaults of
:func:`~lightning_ae.nets.default_networks`), ``encode`` / ``decode`` / ``forward``, one step for train, val and
test with its logging and metrics, interpolation, prediction and the optimizers.

A variant adds its loss (:meth:`AutoencoderBase.loss_terms` on the images, or :meth:`AutoencoderBase.batch_loss`
on the whole :class:`~lightning_ae.batch.Batch` for a variant that reads the labels, returning a
:class:`LossOutput`), builds its networks with :meth:`AutoencoderBase.init_networks`, declares the metrics it keeps
per stage once (:meth:`AutoencoderBase.declare_metric`: the base resets, updates, reduces and logs them), and
overrides ``encode`` / ``decode`` where it differs. No variant overrides a step.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanSquaredError, Metric, MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio

from lightning_ae.batch import Batch, check_image_shape
from lightning_ae.distributed import log_global
from lightning_ae.graphs import FunctionModule, Graph, output_shape, random_images
from lightning_ae.nets import Network, check_network, default_networks
from lightning_ae.pretrained import PretrainedMixin, describe_parts
from lightning_ae.resume import restore_rng_states, save_rng_states


def _allow_optimizer_classes_in_checkpoints() -> None:
    """Lets ``weights_only`` loading read hparams naming a torch optimizer or scheduler class (the default
    ``optimizer=torch.optim.Adam`` of a model built from Python).

    Done at import: both of Lightning's loaders (``load_from_checkpoint`` and the Trainer's ``ckpt_path``) unpickle
    before any hook of ours runs.
    """
    classes = [c for c in vars(torch.optim).values() if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)]
    schedulers = vars(torch.optim.lr_scheduler).values()
    classes += [c for c in schedulers if isinstance(c, type) and issubclass(c, torch.optim.lr_scheduler.LRScheduler)]
    torch.serialization.add_safe_globals(classes)


_allow_optimizer_classes_in_checkpoints()


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except (pickle.PicklingError, AttributeError, TypeError):
        return False
    return True


def build_optimization(
    parameters: Iterable[nn.Parameter], optimizer: OptimizerCallable, lr_scheduler: LRSchedulerCallable | None
) -> Any:
    """What ``configure_optimizers`` returns: the optimizer, and the scheduler (monitoring ``val/loss``) if any."""
    built = optimizer(parameters)
    if lr_scheduler is None:
        return built
    return {"optimizer": built, "lr_scheduler": {"scheduler": lr_scheduler(built), "monitor": "val/loss"}}


def logs_this_step(module: LightningModule) -> bool:
    """Whether the current training step is one whose values the loggers write.

    ``self.log`` costs about 0.5 ms per key on a CPU, 10-15% of a small model's step, and loggers only write
    training-step values every ``trainer.log_every_n_steps`` steps; so the terms are logged on exactly those steps,
    on the last batch of an epoch, on the last step, on a requested stop and under ``fast_dev_run``: every logger
    receives the same values as when logging every step. Outside a Trainer, every step logs.
    """
    try:
        trainer = module.trainer
    except RuntimeError:  # not attached to a Trainer
        return True
    step = module.global_step + 1
    return bool(trainer.fast_dev_run or trainer.is_last_batch or trainer.should_stop
                or 0 < trainer.max_steps <= step or step % max(trainer.log_every_n_steps, 1) == 0)


Stage = Literal["train", "val", "test"]
MetricUpdate = Callable[[Metric, Batch, "LossOutput"], None]
"""``update(metric, batch, loss_output)``: how a declared metric reads one step (see ``declare_metric``)."""


class LossOutput:
    """What a variant's :meth:`AutoencoderBase.loss_terms` returns.

    Attributes:
        loss: the scalar that is minimised (logged as ``{stage}/loss``).
        reconstruction: the reconstructed images ``(B, C, H, W)`` in ``pixel_range`` (scored by the val/test
            metrics), detached, so whoever keeps it (a callback, a user's loop) keeps no autograd graph. It may be
            given as a function of no arguments: it is then computed (without gradient) the first time it is read,
            so a training step, which never reads it, does not pay for turning logits into images.
        terms: other scalars logged as ``{stage}/<name>`` (loss components, diagnostics).
        latent: the batch's code as the loss computed it (a VAE's posterior mean), detached, for the metrics that
            need it (active units) without encoding the batch a second time; None if the variant gives none.
        decoded: the decoded images ``(B, C, H, W)`` with their graph, for terms added on top of the variant's
            loss (the adversarial and perceptual terms of VQGAN and AutoencoderKL); None if the variant gives none.
    """

    def __init__(self, loss: torch.Tensor, reconstruction: torch.Tensor | Callable[[], torch.Tensor],
                 terms: dict[str, torch.Tensor] | None = None, latent: torch.Tensor | None = None,
                 decoded: torch.Tensor | None = None) -> None:
        self.loss = loss
        self.decoded = decoded
        self.terms = dict(terms or {})
        self.latent = None if latent is None else latent.detach()
        self._reconstruction = reconstruction if callable(reconstruction) and not isinstance(
            reconstruction, torch.Tensor) else reconstruction.detach()

    @property
    def reconstruction(self) -> torch.Tensor:
        if not isinstance(self._reconstruction, torch.Tensor):
            with torch.no_grad():
                self._reconstruction = self._reconstruction().detach()
        return self._reconstruction

    def as_dict(self) -> dict[str, torch.Tensor]:
        """``{"loss": loss, **terms}``."""
        return {"loss": self.loss, **self.terms}

    def logged(self) -> dict[str, torch.Tensor]:
        """:meth:`as_dict`, detached, without the terms that are the loss tensor itself (the plain autoencoder's
        ``recon``): each logged key costs Lightning's ``self.log`` about half a millisecond on a CPU, and a second
        name for the same value tells nothing."""
        return {k: v.detach() for k, v in self.as_dict().items() if k == "loss" or v is not self.loss}


class AutoencoderBase(PretrainedMixin, LightningModule):
    """Base LightningModule of the autoencoders.

    Args:
        encoder: maps images ``(B, C, H, W)`` to latents; ``None`` builds the variant's default for ``network``.
        decoder: maps latents to images (unbounded: logits or means); ``None`` builds the default.
        latent_dim: size of the latent of the default networks.
        network: default network family: ``mlp``, ``conv`` (residual, strided convolutions), ``sigmoid`` (a
            single sigmoid layer encoder, for the contractive autoencoder's closed-form penalty) or ``ldm`` (the
            latent-diffusion encoder and decoder, :class:`~lightning_ae.nets.LDMEncoder`: a spatial latent of
            ``latent_dim`` channels).
        network_options: the ``ldm`` networks' sizes (``ch``, ``ch_mult``, ``num_res_blocks``,
            ``attn_resolutions``, ``z_channels``, ``dropout``, ``mid_attention``; the rest from
            :data:`~lightning_ae.nets.LDM_DEFAULTS`), for ``network: ldm`` only.
        image_shape: ``(C, H, W)`` of the images (linked from the datamodule by the CLI).
        num_classes: classes of the dataset, if any (linked from the datamodule; used by callbacks and probes).
        pixel_range: ``(low, high)`` of pixel values (linked from the datamodule).
        optimizer: optimizer factory, called with the parameters (default: Adam, lr 1e-3).
        lr_scheduler: optional scheduler factory, called with the optimizer (monitors ``val/loss``).
        compile_networks: compile the encoder and decoder with ``torch.compile`` (in place, ``nn.Module.compile``:
            parameter names and checkpoints are unchanged) when a Trainer sets the model up, or on
            :meth:`compile_now`. The quantizer and the loss stay eager.
        compile_options: keyword arguments of ``torch.compile`` (``{"mode": "max-autotune"}``,
            ``{"backend": "aot_eager"}``, ``{"dynamic": False}``...); only with ``compile_networks``.
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        latent_dim: int = 32,
        network: Network = "mlp",
        network_options: dict[str, Any] | None = None,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int | None = None,
        pixel_range: tuple[float, float] = (0.0, 1.0),
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        compile_networks: bool = False,
        compile_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # a lambda optimizer/scheduler cannot be stored in a checkpoint: a reloaded model gets the default
        factories = (("optimizer", optimizer), ("lr_scheduler", lr_scheduler))
        unpicklable = [name for name, value in factories if not _picklable(value)]
        with warnings.catch_warnings():  # modules given from Python are kept so load_from_checkpoint can rebuild them
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters(ignore=unpicklable)
        describe_parts(self)  # parts given as Python objects: their configs, so checkpoints hold no pickled module
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        if len(pixel_range) != 2 or not pixel_range[0] < pixel_range[1]:
            raise ValueError(f"pixel_range must be (low, high) with low < high, got {pixel_range}")
        self.latent_dim = latent_dim
        self.network = check_network(network)
        self.network_options = dict(network_options or {})
        self.image_shape = check_image_shape(image_shape)
        self.num_classes = num_classes
        self.pixel_range = (float(pixel_range[0]), float(pixel_range[1]))
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        if compile_options and not compile_networks:
            raise ValueError(f"compile_options={compile_options} given without compile_networks=True")
        self.compile_networks = compile_networks
        self.compile_options = dict(compile_options or {})
        self._compiled = False
        self.encoder = encoder  # a None network is built by the variant's init_networks()
        self.decoder = decoder
        data_range = self.pixel_range[1] - self.pixel_range[0]
        self.metrics = nn.ModuleDict({
            stage: MetricCollection({"mse": MeanSquaredError(), "psnr": PeakSignalNoiseRatio(data_range=data_range)},
                                    prefix=f"{stage}/")
            for stage in ("val", "test")
        })
        self.stage_metrics = nn.ModuleDict()  # "<stage>_<name>" -> Metric, filled by declare_metric
        self._metric_updates: dict[str, tuple[MetricUpdate, tuple[Stage, ...]]] = {}

    def init_networks(self, **default_options: Any) -> None:
        """Builds the encoder and decoder that were not given to ``__init__``:
        ``default_networks(network, image_shape, latent_dim, **default_options)`` (each variant calls it once)."""
        if self.encoder is None or self.decoder is None:
            encoder, decoder = default_networks(self.network, self.image_shape, self.latent_dim,
                                                network_options=self.network_options, **default_options)
            self.encoder = encoder if self.encoder is None else self.encoder
            self.decoder = decoder if self.decoder is None else self.decoder

    def compile_now(self) -> None:
        """Compiles the encoder and decoder in place with ``torch.compile(**compile_options)`` (once).

        Called by :meth:`setup` when ``compile_networks`` is set; call it yourself to compile a model used outside a
        Trainer. The first batch of each shape pays the compilation (tens of seconds on a CPU).
        """
        if self._compiled:
            return
        for network in (self.encoder, self.decoder):
            if network is None:
                raise RuntimeError(f"{type(self).__name__}.compile_now() called before init_networks()")
            network.compile(**self.compile_options)
        self._compiled = True

    def setup(self, stage: str) -> None:
        """Compiles the networks when ``compile_networks`` is set (once, for any stage)."""
        if self.compile_networks:
            self.compile_now()

    # ---- encode, decode ------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> latents."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> decoder output (logits or means, in the decoder's space)."""
        return self.decoder(z)

    def output_to_image(self, output: torch.Tensor) -> torch.Tensor:
        """Decoder output -> image in ``pixel_range`` (identity unless a variant's likelihood says otherwise)."""
        return output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstructs images: ``(B, C, H, W)`` -> ``(B, C, H, W)`` in ``pixel_range``."""
        return self.output_to_image(self.decode(self.encode(self.check_images(x))))

    def decode_to_image(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images in ``pixel_range`` (``output_to_image(decode(z))``)."""
        return self.output_to_image(self.decode(z))

    def export_graphs(self) -> list[Graph]:
        """The graphs :func:`lightning_ae.export.export_model` writes: ``encoder`` images -> ``codes``
        (:meth:`encode`) and ``decoder`` codes -> ``images`` (:meth:`decode_to_image`)."""
        images = random_images(self)
        shape = output_shape(self.encode, images(1))
        return [
            Graph("encoder", FunctionModule(self, self.encode), images, ("images",), ("codes",)),
            Graph("decoder", FunctionModule(self, self.decode_to_image),
                  lambda n: (torch.randn(n, *shape, device=self.device),), ("codes",), ("images",)),
        ]

    @torch.no_grad()
    def interpolate(self, x1: torch.Tensor, x2: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Decodes ``steps`` points on the straight line between the latents of ``x1`` and ``x2``.

        Args:
            x1: images ``(B, C, H, W)`` (or ``(C, H, W)`` for one pair): where the lines start.
            x2: images of the same shape: where they end.
            steps: points including both ends (>= 2).

        Returns:
            ``(steps, B, C, H, W)`` images in ``pixel_range`` (``(steps, C, H, W)`` for one pair).
        """
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        single = x1.ndim == 3
        z1, z2 = (self.encode(self.check_images(x.unsqueeze(0) if single else x)) for x in (x1, x2))
        t = torch.linspace(0.0, 1.0, steps, device=z1.device, dtype=z1.dtype).view(-1, *[1] * z1.ndim)
        path = torch.lerp(z1, z2, t)  # (steps, B, *latent)
        images = self.output_to_image(self.decode(path.flatten(0, 1))).unflatten(0, (steps, z1.shape[0]))
        return images[:, 0] if single else images

    # ---- the step ------------------------------------------------------------------------------------------
    def loss_terms(self, x: torch.Tensor, stage: Stage) -> LossOutput:
        """The variant's loss on images ``x`` (a pure function of the batch and the model)."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss_terms")

    def batch_loss(self, batch: Batch, stage: Stage) -> LossOutput:
        """The variant's loss on a :class:`~lightning_ae.batch.Batch` (images and labels): what every step calls.
        By default :meth:`loss_terms` of the images; a variant that reads the labels overrides this instead."""
        return self.loss_terms(batch.images, stage)

    def declare_metric(self, name: str, make: Callable[[], Metric], update: MetricUpdate,
                       stages: tuple[Stage, ...] = ("val",)) -> None:
        """Keeps one ``make()`` metric per stage of ``stages``: each step of the stage calls ``update(metric,
        batch, loss_output)``; each epoch of the stage starts with it reset and ends with its ``compute()`` (summed
        over DDP ranks by the metric's states) logged as ``{stage}/<name>`` (``{stage}/<name>_<key>`` for a dict),
        on every rank."""
        for stage in stages:
            self.stage_metrics[f"{stage}_{name}"] = make()
        self._metric_updates[name] = (update, tuple(stages))

    def stage_metric(self, stage: Stage, name: str) -> Metric:
        """The ``name`` metric of ``stage`` (see :meth:`declare_metric`)."""
        return self.stage_metrics[f"{stage}_{name}"]

    def _metrics_of(self, stage: Stage) -> Iterator[tuple[str, MetricUpdate, Metric]]:
        """``(name, update, metric)`` of every metric declared for ``stage``."""
        for name, (update, stages) in self._metric_updates.items():
            if stage in stages:
                yield name, update, self.stage_metric(stage, name)

    def _update_stage_metrics(self, stage: Stage, batch: Batch, out: LossOutput) -> None:
        for _, update, metric in self._metrics_of(stage):
            update(metric, batch, out)

    def _log_stage_metrics(self, stage: Stage) -> None:
        for name, _, metric in self._metrics_of(stage):
            if metric.update_count:  # compute() reduces the states over the ranks: every rank runs it
                value = metric.compute()
                log_global(self, {f"{stage}/{name}_{k}": v for k, v in value.items()} if isinstance(value, dict)
                           else {f"{stage}/{name}": value})
            metric.reset()

    def _reset_stage_metrics(self, stage: Stage) -> None:
        for _, _, metric in self._metrics_of(stage):
            metric.reset()

    def check_images(self, x: Any) -> torch.Tensor:
        """Raises a clear error when ``x`` is not a float ``(B, *image_shape)`` tensor."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected an image tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"expected floating-point images in {self.pixel_range}, got dtype {x.dtype}; convert them "
                "(our datamodules do so on the device) before the model"
            )
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"expected images of shape (B, {', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}; "
                "image_shape of the model must match the data"
            )
        return x

    def batch_of(self, batch: Any) -> Batch:
        """The :class:`~lightning_ae.batch.Batch` of a raw batch, its images checked (:meth:`check_images`)."""
        batch = Batch.of(batch)
        self.check_images(batch.images)
        return batch

    def _step(self, raw: Any, stage: Stage) -> tuple[torch.Tensor, LossOutput]:
        batch = self.batch_of(raw)
        x = batch.images
        out = self.batch_loss(batch, stage)
        self.log_terms(out, stage, x.shape[0])
        self._update_stage_metrics(stage, batch, out)
        if stage != "train":
            metrics = self.metrics[stage]
            metrics.update(out.reconstruction.detach().clamp(*self.pixel_range).contiguous(), x.contiguous())
            self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return x, out

    def log_terms(self, out: LossOutput, stage: Stage, batch_size: int) -> None:
        """Logs ``out``'s loss and terms as ``{stage}/<name>`` (per step in training, only on the steps that log
        (:func:`logs_this_step`); per epoch, synchronised, otherwise), after checking the loss is finite."""
        if stage != "train" or logs_this_step(self):  # the finiteness check syncs with the host: only when logging
            check_finite(out, stage, self.global_step)
            self.log_dict({f"{stage}/{k}": v for k, v in out.logged().items()}, on_step=stage == "train",
                          on_epoch=stage != "train", sync_dist=stage != "train", batch_size=batch_size)

    def on_validation_epoch_start(self) -> None:
        self.metrics["val"].reset()  # re-created in the loop's grad mode: an earlier trainer.validate() ran
        # under inference mode, and its states could not be updated in place under no_grad
        self._reset_stage_metrics("val")

    def on_test_epoch_start(self) -> None:
        self.metrics["test"].reset()
        self._reset_stage_metrics("test")

    def on_train_epoch_end(self) -> None:
        self._log_stage_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_stage_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_stage_metrics("test")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[1].loss

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")[1].loss

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")[1].loss

    def encode_batch(self, batch: Batch) -> torch.Tensor:
        """The code of a batch's images (a conditional variant also reads its labels): :meth:`encode`."""
        return self.encode(batch.images)

    def decode_batch(self, z: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The decoder output of codes ``z`` of ``batch`` (a conditional variant also reads its labels)."""
        return self.decode(z)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """Returns ``{"latent", "reconstruction"}`` (and ``"label"`` when the batch has labels)."""
        batch = self.batch_of(batch)
        z = self.encode_batch(batch)
        out = {"latent": z, "reconstruction": self.output_to_image(self.decode_batch(z, batch))}
        if batch.labels is not None:
            out["label"] = batch.labels
        return out

    # ---- checkpoints: the random streams, for an exact resume (lightning_ae.resume) ---------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_rng_states(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_rng_states(self, checkpoint)

    # ---- optimization --------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        return build_optimization(self.parameters(), self.optimizer_factory, self.lr_scheduler_factory)


def check_finite(out: LossOutput, stage: str, step: int) -> None:
    """Raises ``FloatingPointError`` with every term's value when the loss is NaN or infinite."""
    if not torch.isfinite(out.loss):
        values = ", ".join(f"{k}={v.float().mean().item():.4g}" for k, v in out.logged().items())
        raise FloatingPointError(
            f"non-finite {stage} loss at global step {step} (checked on the steps that log): {values}. Lower the "
            "learning rate, check the inputs, or use gradient clipping (trainer.gradient_clip_val)."
        )
