"""What every autoencoder variant shares: networks, encode/decode, one step for train/val/test, logging,
optimizers. A variant implements :meth:`AutoencoderBase.loss_terms` (and, if its networks differ from the
defaults, :meth:`AutoencoderBase.default_networks`), nothing else.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Iterable
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanSquaredError, MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio

from lightning_ae.batch import check_image_shape, extract_images, extract_labels
from lightning_ae.nets import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from lightning_ae.resume import restore_rng_states, save_rng_states


def _allow_optimizer_classes_in_checkpoints() -> None:
    """Lets ``load_from_checkpoint`` (``weights_only`` loading) read hparams naming a torch optimizer or scheduler
    class, e.g. the default ``optimizer=torch.optim.Adam`` of a model built from Python."""
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


Network = Literal["mlp", "conv"]
Stage = Literal["train", "val", "test"]


class AutoencoderBase(LightningModule):
    """Base LightningModule of the autoencoders.

    Args:
        encoder: maps images ``(B, C, H, W)`` to codes; ``None`` builds the default for ``network``.
        decoder: maps codes to images (unbounded: logits or means); ``None`` builds the default.
        latent_dim: size of the code of the default networks.
        network: default network family, ``mlp`` or ``conv`` (residual, strided convolutions).
        image_shape: ``(C, H, W)`` of the images (linked from the datamodule by the CLI).
        num_classes: classes of the dataset, if any (linked from the datamodule; used by callbacks and probes).
        pixel_range: ``(low, high)`` of pixel values (linked from the datamodule).
        optimizer: optimizer factory, called with the parameters (default: Adam, lr 1e-3).
        lr_scheduler: optional scheduler factory, called with the optimizer (monitors ``val/loss``).
    """

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
    ) -> None:
        super().__init__()
        # a lambda optimizer/scheduler cannot be stored in a checkpoint: a reloaded model gets the default
        factories = (("optimizer", optimizer), ("lr_scheduler", lr_scheduler))
        unpicklable = [name for name, value in factories if not _picklable(value)]
        with warnings.catch_warnings():  # modules given from Python are kept so load_from_checkpoint can rebuild them
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters(ignore=unpicklable)
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        if network not in ("mlp", "conv"):
            raise ValueError(f"network must be 'mlp' or 'conv', got {network!r}")
        if len(pixel_range) != 2 or not pixel_range[0] < pixel_range[1]:
            raise ValueError(f"pixel_range must be (low, high) with low < high, got {pixel_range}")
        self.latent_dim = latent_dim
        self.network = network
        self.image_shape = check_image_shape(image_shape)
        self.num_classes = num_classes
        self.pixel_range = (float(pixel_range[0]), float(pixel_range[1]))
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        if encoder is None or decoder is None:
            default_encoder, default_decoder = self.default_networks()
            encoder = default_encoder if encoder is None else encoder
            decoder = default_decoder if decoder is None else decoder
        self.encoder = encoder
        self.decoder = decoder
        data_range = self.pixel_range[1] - self.pixel_range[0]
        self.metrics = nn.ModuleDict(
            {
                stage: MetricCollection(
                    {"mse": MeanSquaredError(), "psnr": PeakSignalNoiseRatio(data_range=data_range)},
                    prefix=f"{stage}/",
                )
                for stage in ("val", "test")
            }
        )

    # ---- networks ------------------------------------------------------------------------------------------
    encoder_out_mult: int = 1
    """Encoder outputs per latent dimension (2 for a Gaussian encoder's mean and log-variance)."""
    decoder_out_mult: int = 1
    """Decoder output channels per image channel (2 for a Gaussian likelihood with learned variance)."""

    def default_networks(self) -> tuple[nn.Module, nn.Module]:
        """The default encoder and decoder for ``network``, ``image_shape`` and ``latent_dim``."""
        out_dim = self.latent_dim * self.encoder_out_mult
        if self.network == "mlp":
            return (
                MLPEncoder(self.image_shape, out_dim),
                MLPDecoder(self.image_shape, self.latent_dim, out_channels_mult=self.decoder_out_mult),
            )
        return (
            ConvEncoder(self.image_shape, out_dim),
            ConvDecoder(self.image_shape, self.latent_dim, out_channels_mult=self.decoder_out_mult),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> codes."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> decoder output (logits or means, in the decoder's space)."""
        return self.decoder(z)

    def output_to_image(self, output: torch.Tensor) -> torch.Tensor:
        """Decoder output -> image in ``pixel_range`` (identity unless a variant's likelihood says otherwise)."""
        return output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstructs images: ``(B, C, H, W)`` -> ``(B, C, H, W)`` in ``pixel_range``."""
        return self.output_to_image(self.decode(self.encode(self.check_images(x))))

    # ---- the step ------------------------------------------------------------------------------------------
    def loss_terms(self, x: torch.Tensor, stage: Stage) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The variant's loss: ``({"loss": total, other logged terms...}, reconstruction in pixel_range)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss_terms")

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

    def _step(self, batch: Any, stage: Stage) -> torch.Tensor:
        x = self.check_images(extract_images(batch))
        terms, reconstruction = self.loss_terms(x, stage)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            values = ", ".join(f"{k}={v.detach().float().mean().item():.4g}" for k, v in terms.items())
            raise FloatingPointError(
                f"non-finite {stage} loss at global step {self.global_step}: {values}. Lower the learning rate, "
                "check the inputs, or use gradient clipping (trainer.gradient_clip_val)."
            )
        on_step = stage == "train"
        if not on_step or self._logs_train_step():
            self.log_dict(
                {f"{stage}/{k}": v.detach() for k, v in terms.items()},
                on_step=on_step,
                on_epoch=not on_step,
                sync_dist=not on_step,
                batch_size=x.shape[0],
                prog_bar=False,
            )
        if stage != "train":
            metrics = self.metrics[stage]
            metrics.update(reconstruction.detach().clamp(*self.pixel_range).contiguous(), x.contiguous())
            self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return loss

    def _logs_train_step(self) -> bool:
        """Whether this training step logs its terms.

        ``self.log`` costs about 0.5 ms per key on a CPU (Lightning moves its result state on every call), which
        is 10-15% of a small model's step. Loggers only write training-step values every
        ``trainer.log_every_n_steps`` steps, so the terms are logged on exactly those steps (the logger
        connector's own test), on the last batch of an epoch, on the last step and under ``fast_dev_run``: every
        logger receives the same values as when logging every step; only ``trainer.callback_metrics`` holds the
        latest logged step between two of them.
        """
        trainer = self._trainer
        if trainer is None or trainer.fast_dev_run:
            return True
        if trainer.is_last_batch or trainer.should_stop or 0 < trainer.max_steps <= self.global_step + 1:
            return True
        return bool(getattr(trainer._logger_connector, "should_update_logs", True))

    def on_validation_epoch_start(self) -> None:
        self.metrics["val"].reset()  # re-created in the loop's grad mode: an earlier trainer.validate() ran
        # under inference mode, and its states could not be updated in place under no_grad

    def on_test_epoch_start(self) -> None:
        self.metrics["test"].reset()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """Returns ``{"latent", "reconstruction"}`` (and ``"label"`` when the batch has labels)."""
        x = self.check_images(extract_images(batch))
        z = self.encode(x)
        out = {"latent": z, "reconstruction": self.output_to_image(self.decode(z))}
        labels = extract_labels(batch)
        if labels is not None:
            out["label"] = labels
        return out

    # ---- checkpoints: the random streams, for an exact resume (lightning_ae.resume) ---------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_rng_states(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_rng_states(self, checkpoint)

    # ---- optimization --------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        return build_optimization(self.parameters(), self.optimizer_factory, self.lr_scheduler_factory)
