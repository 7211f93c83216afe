"""The learned categorical prior of the VQ-VAE (van den Oord et al. 2017, section 3.2): an autoregressive gated
PixelCNN over the grid of code indices of a frozen, trained :class:`VQVAE`, so that the VQ-VAE can generate."""

from __future__ import annotations

import math
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Any

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.cloud_io import _load as load_checkpoint
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.core.saving import _load_state

from lightning_ae.batch import extract_images
from lightning_ae.models.base import Stage, build_optimization
from lightning_ae.models.vqvae import VQVAE
from lightning_ae.nets.pixelcnn import GatedPixelCNN
from lightning_ae.resume import restore_rng_states, save_rng_states

# the VQ-VAE rebuilt from a prior checkpoint, set while PixelCNNPrior.load_from_checkpoint runs
_EMBEDDED_VQVAE: ContextVar[VQVAE | None] = ContextVar("_EMBEDDED_VQVAE", default=None)


def _embedded_vqvae(checkpoint: dict[str, Any]) -> VQVAE | None:
    """The VQ-VAE a prior checkpoint holds (Lightning rebuilds it as ``VQVAE.load_from_checkpoint`` would, with
    the same instantiator and class checks), or ``None`` for a checkpoint without one."""
    hparams = checkpoint.get("vqvae_hyper_parameters")
    if hparams is None:
        return None
    state = {k.removeprefix("vqvae."): v for k, v in checkpoint["state_dict"].items() if k.startswith("vqvae.")}
    return _load_state(VQVAE, {"hyper_parameters": dict(hparams), "state_dict": state}, strict=True)


class PixelCNNPrior(LightningModule):
    """Stage two of the VQ-VAE: a gated PixelCNN trained on the codes of a frozen VQ-VAE, computed on the fly.

    Logs ``{stage}/loss`` (the NLL in nats per code) and ``{stage}/bits_per_dim`` (the NLL of a whole code grid
    in bits, divided by the number of image dimensions ``C*H*W``). ``sample_indices(n)`` draws code grids and
    ``sample(n)`` decodes them through the VQ-VAE into images.

    The prior's checkpoint holds the whole VQ-VAE (its weights in the state dict, its hyperparameters under
    ``vqvae_hyper_parameters``), so :meth:`load_from_checkpoint` restores exactly the VQ-VAE the prior was trained
    on, without reading ``vqvae_checkpoint`` (which may since have moved, or been overwritten by a new run).

    Args:
        vqvae_checkpoint: path of a trained :class:`VQVAE` checkpoint (``lightning-ae fit`` writes one).
        channels: feature channels of the PixelCNN.
        num_layers: gated layers of the PixelCNN.
        kernel_size: odd kernel size of the gated layers.
        image_shape: ``(C, H, W)`` of the images (linked from the datamodule; must match the VQ-VAE's).
        num_classes: classes of the dataset (linked from the datamodule; unused).
        pixel_range: pixel range of the data (linked from the datamodule; must match the VQ-VAE's).
        optimizer: optimizer factory for the PixelCNN (default: Adam, lr 1e-3).
        lr_scheduler: optional scheduler factory (monitors ``val/loss``).
    """

    def __init__(
        self,
        vqvae_checkpoint: str,
        channels: int = 64,
        num_layers: int = 8,
        kernel_size: int = 5,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int | None = None,
        pixel_range: tuple[float, float] = (0.0, 1.0),
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # LightningCLI hands this module's hyperparameters to every save_hyperparameters() call made while it is
        # built: without clearing that, the VQ-VAE loaded here would record the prior's hyperparameters as its own
        token = _given_hyperparameters.set(None)
        try:
            vqvae = self._load_vqvae(vqvae_checkpoint)
        finally:
            _given_hyperparameters.reset(token)
        if tuple(image_shape) != vqvae.image_shape:
            raise ValueError(f"image_shape {tuple(image_shape)} does not match the VQ-VAE's {vqvae.image_shape}")
        if tuple(float(p) for p in pixel_range) != vqvae.pixel_range:
            raise ValueError(f"pixel_range {tuple(pixel_range)} does not match the VQ-VAE's {vqvae.pixel_range}")
        self.vqvae = vqvae.eval().requires_grad_(False)
        self.image_shape = vqvae.image_shape
        self.grid_shape: tuple[int, int] = tuple(  # type: ignore[assignment]
            self.vqvae.encode_to_indices(torch.zeros(1, *self.image_shape)).shape[1:])
        self.pixelcnn = GatedPixelCNN(vqvae.quantizer.num_codes, channels, num_layers, kernel_size)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler

    @staticmethod
    def _load_vqvae(path: str) -> VQVAE:
        embedded = _EMBEDDED_VQVAE.get()
        if embedded is not None:  # loading a prior checkpoint that holds its VQ-VAE
            return embedded
        if not Path(path).is_file():
            raise FileNotFoundError(f"vqvae_checkpoint {path!r} does not exist: train the VQ-VAE first "
                                    "(lightning-ae fit --config configs/<dataset>/vqvae.yaml)")
        return VQVAE.load_from_checkpoint(path, map_location="cpu", weights_only=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vqvae_hyper_parameters"] = dict(self.vqvae.hparams)
        save_rng_states(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_rng_states(self, checkpoint)

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path | IO, map_location: Any = None, hparams_file: str | Path | None = None,
        strict: bool | None = None, weights_only: bool | None = None, **kwargs: Any,
    ) -> PixelCNNPrior:
        """Lightning's ``load_from_checkpoint``, rebuilding the VQ-VAE from the checkpoint itself (see the class
        docstring); checkpoints without it (older versions) read ``vqvae_checkpoint`` as before."""
        checkpoint = load_checkpoint(checkpoint_path, map_location="cpu", weights_only=False)
        if hasattr(checkpoint_path, "seek"):
            checkpoint_path.seek(0)
        token = _EMBEDDED_VQVAE.set(_embedded_vqvae(checkpoint))
        try:
            return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, weights_only,
                                                **kwargs)
        finally:
            _EMBEDDED_VQVAE.reset(token)

    def train(self, mode: bool = True) -> PixelCNNPrior:
        super().train(mode)
        self.vqvae.eval()  # frozen: its quantizer never updates the codebook
        return self

    # ---- codes, likelihood, samples ------------------------------------------------------------------------------
    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> code indices ``(B, h, w)`` of the frozen VQ-VAE."""
        return self.vqvae.encode_to_indices(x)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices ``(B, h, w)`` -> logits ``(B, K, h, w)`` of each code given the ones before it."""
        return self.pixelcnn(indices)

    def nll(self, indices: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood in nats per code."""
        return F.cross_entropy(self(indices), indices)

    def bits_per_dim(self, nats_per_code: torch.Tensor) -> torch.Tensor:
        """NLL of a whole code grid in bits, per image dimension ``C*H*W``."""
        return nats_per_code * math.prod(self.grid_shape) / (math.log(2) * math.prod(self.image_shape))

    def sample_indices(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """``n`` code grids ``(n, h, w)`` drawn from the prior."""
        return self.pixelcnn.sample(n, self.grid_shape, temperature)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """``n`` images ``(n, C, H, W)`` in pixel space: prior samples decoded by the VQ-VAE."""
        return self.vqvae.decode_indices(self.sample_indices(n, temperature))

    # ---- the step ------------------------------------------------------------------------------------------------
    def _step(self, batch: Any, stage: Stage) -> torch.Tensor:
        x = self.vqvae.check_images(extract_images(batch))
        loss = self.nll(self.codes(x))
        on_step = stage == "train"
        self.log_dict({f"{stage}/loss": loss.detach(), f"{stage}/bits_per_dim": self.bits_per_dim(loss.detach())},
                      on_step=on_step, on_epoch=not on_step, sync_dist=not on_step, batch_size=x.shape[0])
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        return build_optimization(self.pixelcnn.parameters(), self.optimizer_factory, self.lr_scheduler_factory)
