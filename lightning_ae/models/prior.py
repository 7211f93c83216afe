"""The learned categorical prior of the VQ-VAE (van den Oord et al. 2017, section 3.2): an autoregressive gated
PixelCNN over the grid of code indices of a frozen, trained :class:`VQVAE`, so that the VQ-VAE can generate."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable, instantiate_module

from lightning_ae.batch import extract_images
from lightning_ae.graphs import FunctionModule, Graph
from lightning_ae.models.base import Stage, build_optimization
from lightning_ae.models.vqvae import VQVAE
from lightning_ae.nets.pixelcnn import GatedPixelCNN
from lightning_ae.pretrained import CONFIG_NAME, PretrainedMixin, is_model_folder, read_checkpoint
from lightning_ae.resume import restore_rng_states, save_rng_states


def build_vqvae(hparams: dict[str, Any]) -> VQVAE:
    """A :class:`VQVAE` (untrained weights) from the hyperparameters of its checkpoint, with the class paths of a
    VQ-VAE that ``lightning-ae fit`` trained resolved as Lightning's ``load_from_checkpoint`` resolves them."""
    hparams = dict(hparams)
    if hparams.pop("_instantiator", None) is not None:
        return instantiate_module(VQVAE, hparams)
    vqvae = VQVAE(**hparams)
    vqvae.hparams.clear()  # built inside LightningCLI, it would record the prior's hyperparameters as its own
    vqvae.hparams.update(hparams)
    return vqvae


def load_vqvae(path: str) -> tuple[VQVAE, dict[str, Any]]:
    """The trained :class:`VQVAE` of checkpoint or model folder ``path`` and its hyperparameters (a checkpoint is
    read once, with ``weights_only=True``: nothing in it runs).

    Raises:
        FileNotFoundError: for a path that does not exist.
        ValueError: for a folder that is not a model folder, or a file that is not a safe Lightning checkpoint of a
            VQ-VAE (naming the path).
    """
    source = Path(path)
    if source.is_dir():  # a model folder (save_pretrained writes the prior's VQ-VAE as one)
        if not is_model_folder(source):
            raise ValueError(f"vqvae_checkpoint {path} is a folder without {CONFIG_NAME}: not a model folder")
        vqvae = VQVAE.from_pretrained(path)
        return vqvae, dict(vqvae.hparams)
    if not source.exists():
        raise FileNotFoundError(f"vqvae_checkpoint {path!r} does not exist: train the VQ-VAE first "
                                "(lightning-ae fit --config configs/<dataset>/vqvae.yaml)")
    checkpoint = read_checkpoint(source, "vqvae_checkpoint")
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    vqvae = build_vqvae(hparams)
    vqvae.load_state_dict(checkpoint["state_dict"])
    return vqvae, hparams


def check_one_index_per_position(vqvae: VQVAE) -> None:
    """Raises a clear error for a quantizer with several indices per position (residual VQ)."""
    levels = vqvae.quantizer.indices_per_position
    if levels > 1:
        raise ValueError(
            f"PixelCNNPrior models one code index per position, but the VQ-VAE's quantizer "
            f"{type(vqvae.quantizer).__name__} gives {levels} per position (indices (B, {levels}, h, w)): a prior over "
            "residual codes needs a model of all levels (e.g. a depth transformer, RQ-Transformer), which this "
            "PixelCNN is not; train the VQ-VAE with VectorQuantizer, FSQ or LFQ for a PixelCNN prior")


class PixelCNNPrior(PretrainedMixin, LightningModule):
    """Stage two of the VQ-VAE: a gated PixelCNN trained on the codes of a frozen VQ-VAE, computed on the fly.

    Logs ``{stage}/loss`` (the NLL in nats per code) and ``{stage}/bits_per_dim`` (the NLL of a whole code grid
    in bits, divided by the number of image dimensions ``C*H*W``). ``sample_indices(n)`` draws code grids and
    ``sample(n)`` decodes them through the VQ-VAE into images.

    The prior's hyperparameters hold the VQ-VAE's (``vqvae_hparams``) and its state dict the VQ-VAE's weights, so
    ``load_from_checkpoint`` restores exactly the VQ-VAE the prior was trained on without reading
    ``vqvae_checkpoint`` (which may since have moved, or been overwritten by a new run).

    The prior's vocabulary is the quantizer's ``codebook_size`` (``VectorQuantizer``, ``FSQ`` and ``LFQ`` give one
    index per position); a VQ-VAE with a ``ResidualVQ`` (Q indices per position) is refused with a ``ValueError``:
    a PixelCNN over one grid does not model the levels' joint distribution.

    Args:
        vqvae_checkpoint: path of a trained :class:`VQVAE` checkpoint (``lightning-ae fit`` writes one) or model
            folder (``save_pretrained``).
        vqvae_hparams: the VQ-VAE's hyperparameters, filled in from ``vqvae_checkpoint`` (leave it unset); when
            given, the VQ-VAE is built from them and ``vqvae_checkpoint`` is not read (its weights then come
            from the prior's own checkpoint).
        channels: feature channels of the PixelCNN.
        num_layers: gated layers of the PixelCNN.
        kernel_size: odd kernel size of the gated layers.
        image_shape: ``(C, H, W)`` of the images (linked from the datamodule; must match the VQ-VAE's).
        num_classes: classes of the dataset (linked from the datamodule; unused).
        pixel_range: pixel range of the data (linked from the datamodule; must match the VQ-VAE's).
        optimizer: optimizer factory for the PixelCNN (default: Adam, lr 1e-3).
        lr_scheduler: optional scheduler factory (monitors ``val/loss``).
    """

    pretrained_submodels = {"vqvae_checkpoint": "vqvae"}  # save_pretrained: the VQ-VAE as the folder's vqvae/
    pretrained_derived = ("vqvae_hparams",)  # ...whose hyperparameters it holds

    def __init__(
        self,
        vqvae_checkpoint: str,
        vqvae_hparams: dict | None = None,
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
        if vqvae_hparams is None:
            vqvae, vqvae_hparams = load_vqvae(vqvae_checkpoint)
            self.hparams["vqvae_hparams"] = vqvae_hparams  # so that the prior's checkpoint rebuilds this VQ-VAE
        else:
            vqvae = build_vqvae(vqvae_hparams)
        if tuple(image_shape) != vqvae.image_shape:
            raise ValueError(f"image_shape {tuple(image_shape)} does not match the VQ-VAE's {vqvae.image_shape}")
        if tuple(float(p) for p in pixel_range) != vqvae.pixel_range:
            raise ValueError(f"pixel_range {tuple(pixel_range)} does not match the VQ-VAE's {vqvae.pixel_range}")
        check_one_index_per_position(vqvae)
        self.vqvae = vqvae.eval().requires_grad_(False)
        self.image_shape, self.pixel_range = vqvae.image_shape, vqvae.pixel_range
        self.grid_shape: tuple[int, int] = tuple(  # type: ignore[assignment]
            self.vqvae.encode_indices(torch.zeros(1, *self.image_shape)).shape[1:])
        self.pixelcnn = GatedPixelCNN(vqvae.quantizer.codebook_size, channels, num_layers, kernel_size)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_rng_states(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_rng_states(self, checkpoint)

    def train(self, mode: bool = True) -> PixelCNNPrior:
        super().train(mode)
        self.vqvae.eval()  # frozen: its quantizer never updates the codebook
        return self

    # ---- codes, likelihood, samples ------------------------------------------------------------------------------
    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices ``(B, h, w)`` -> logits ``(B, K, h, w)`` of each code given the ones before it."""
        return self.pixelcnn(indices)

    def nll(self, indices: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood in nats per code."""
        return F.cross_entropy(self(indices), indices)

    def bits_per_dim(self, nats_per_code: torch.Tensor) -> torch.Tensor:
        """NLL of a whole code grid in bits, per image dimension ``C*H*W``."""
        return nats_per_code * math.prod(self.grid_shape) / (math.log(2) * math.prod(self.image_shape))

    def sample_indices(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0
                       ) -> torch.Tensor:
        """``n`` code grids ``(n, h, w)`` drawn from the prior (logits divided by ``temperature``)."""
        return self.pixelcnn.sample(n, self.grid_shape, generator, temperature)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` images ``(n, C, H, W)`` in pixel space: prior samples decoded by the VQ-VAE."""
        return self.vqvae.decode_indices(self.sample_indices(n, generator, temperature))

    def export_graphs(self) -> list[Graph]:
        """``prior`` code indices ``(B, h, w)`` -> ``logits`` ``(B, K, h, w)`` of each code given the ones before
        it (sampling runs it once per position, in raster order), and the VQ-VAE's ``decoder`` indices -> images."""
        size = self.vqvae.quantizer.codebook_size

        def indices(n: int) -> tuple[torch.Tensor]:
            return (torch.randint(size, (n, *self.grid_shape), device=self.device),)

        return [Graph("prior", FunctionModule(self.pixelcnn, self.pixelcnn), indices, ("indices",), ("logits",)),
                self.vqvae.export_graphs()[1]]

    # ---- the step ------------------------------------------------------------------------------------------------
    def _step(self, batch: Any, stage: Stage) -> torch.Tensor:
        x = self.vqvae.check_images(extract_images(batch))
        with torch.no_grad():
            indices = self.vqvae.encode_indices(x)
        loss = self.nll(indices)
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
