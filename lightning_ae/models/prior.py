"""Learned priors over the code indices of a frozen, trained :class:`VQVAE` (or :class:`VQGAN`), so that a discrete
autoencoder can generate (van den Oord et al. 2017, section 3.2): :class:`CodePrior` holds what every prior shares
(the frozen model, its code grid, the step, bits per code and per image dimension, samples), :class:`PixelCNNPrior`
is the 2017 gated PixelCNN and :class:`~lightning_ae.models.transformer_prior.TransformerPrior` a decoder-only
transformer.

A prior trains on codes: from a :class:`~lightning_ae.data.CodeDataModule` (the codes of an image datamodule's
splits, extracted once by the frozen model and cached), or from images, which it then encodes on every step."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable, instantiate_module

from lightning_ae.batch import extract_images, extract_labels
from lightning_ae.graphs import FunctionModule, Graph
from lightning_ae.models.base import Stage, build_optimization
from lightning_ae.models.vqvae import VQVAE
from lightning_ae.nets.pixelcnn import GatedPixelCNN
from lightning_ae.pretrained import (
    CONFIG_NAME,
    PretrainedMixin,
    check_config,
    is_model_folder,
    read_checkpoint,
    resolve_class,
)
from lightning_ae.resume import restore_rng_states, save_rng_states


def build_vqvae(hparams: dict[str, Any]) -> VQVAE:
    """A :class:`VQVAE` (untrained weights) from the hyperparameters of its checkpoint, with the class paths of a
    VQ-VAE that ``lightning-ae fit`` trained resolved as Lightning's ``load_from_checkpoint`` resolves them."""
    hparams = dict(hparams)
    instantiator = hparams.pop("_instantiator", None)
    check_config(hparams, "the VQ-VAE's hyper_parameters")  # they may come from a file: they name no outside code
    if instantiator is not None:
        return instantiate_module(VQVAE, hparams)
    cls = resolve_class(hparams.pop("_class_path"), VQVAE) if "_class_path" in hparams else VQVAE  # e.g. VQGAN
    vqvae = cls(**hparams)
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


def check_one_index_per_position(vqvae: VQVAE, prior: str = "PixelCNNPrior") -> None:
    """Raises a clear error for a quantizer with several indices per position (residual VQ)."""
    levels = vqvae.quantizer.indices_per_position
    if levels > 1:
        raise ValueError(
            f"{prior} models one code index per position, but the VQ-VAE's quantizer "
            f"{type(vqvae.quantizer).__name__} gives {levels} per position (indices (B, {levels}, h, w)): a prior over "
            "residual codes needs a model of all levels: use TransformerPrior, whose depth transformer models "
            "them (RQ-Transformer), or train the VQ-VAE with VectorQuantizer, FSQ or LFQ")


def codes_of_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """``(codes or images, labels, is_codes)`` of a batch: integer tensors are code indices (a
    :class:`~lightning_ae.data.CodeDataModule`'s), floating ones images."""
    x = extract_images(batch)
    if torch.is_floating_point(x):
        return x, extract_labels(batch), False
    if x.dtype in (torch.int16, torch.int32, torch.int64):
        return x.long(), extract_labels(batch), True
    raise TypeError(f"a prior's batch holds float images or integer code indices, got {x.dtype}")


class CodePrior(PretrainedMixin, LightningModule):
    """What every prior over a frozen VQ-VAE's codes shares.

    The frozen model is named by ``vqvae_checkpoint`` (a checkpoint, read with ``weights_only=True``, or a model
    folder) and stored inside the prior: its hyperparameters in ``vqvae_hparams``, its weights in the prior's state
    dict, so ``load_from_checkpoint`` and ``from_pretrained`` rebuild exactly the model the prior was trained on.
    Logs ``{stage}/loss`` (nats per code), ``{stage}/bits_per_code`` and ``{stage}/bits_per_dim`` (the NLL of a
    whole code grid in bits, divided by the number of image dimensions ``C*H*W``).

    Subclasses build their network in ``__init__`` and implement :meth:`logits`, :meth:`sample_indices` and
    :meth:`network_parameters`; ``supports_levels`` says whether they model several indices per position.

    Args:
        vqvae_checkpoint: path of a trained VQ-VAE / VQGAN checkpoint or model folder.
        vqvae_hparams: the frozen model's hyperparameters, filled in from ``vqvae_checkpoint`` (leave it unset).
        image_shape: ``(C, H, W)`` of the images (linked from the datamodule; must match the frozen model's).
        num_classes: classes of the dataset (linked from the datamodule).
        pixel_range: pixel range of the data (linked from the datamodule; must match the frozen model's).
        optimizer: optimizer factory for the prior's network.
        lr_scheduler: optional scheduler factory (monitors ``val/loss``).
    """

    pretrained_submodels = {"vqvae_checkpoint": "vqvae"}  # save_pretrained: the VQ-VAE as the folder's vqvae/
    pretrained_derived = ("vqvae_hparams",)  # ...whose hyperparameters it holds
    supports_levels = False

    def __init__(
        self,
        vqvae_checkpoint: str,
        vqvae_hparams: dict | None = None,
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
        if not self.supports_levels:
            check_one_index_per_position(vqvae, type(self).__name__)
        self.vqvae = vqvae.eval().requires_grad_(False)
        self.image_shape, self.pixel_range = vqvae.image_shape, vqvae.pixel_range
        self.levels = vqvae.quantizer.indices_per_position
        self.codebook_size = vqvae.quantizer.codebook_size
        grid = self.vqvae.encode_indices(torch.zeros(1, *self.image_shape)).shape[1:]
        self.grid_shape: tuple[int, int] = tuple(grid[-2:])  # type: ignore[assignment]
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_rng_states(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_rng_states(self, checkpoint)

    def train(self, mode: bool = True) -> CodePrior:
        super().train(mode)
        self.vqvae.eval()  # frozen: its quantizer never updates the codebook
        return self

    # ---- what subclasses give ------------------------------------------------------------------------------------
    def logits(self, indices: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Code indices (the grid :meth:`encode_codes` gives) -> logits ``(B, K, *indices.shape[1:])``."""
        raise NotImplementedError

    def sample_indices(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0
                       ) -> torch.Tensor:
        """``n`` code grids drawn from the prior."""
        raise NotImplementedError

    def network_parameters(self) -> Any:
        """The parameters the optimizer trains (the frozen VQ-VAE's are not among them)."""
        raise NotImplementedError

    def conditioning(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """The labels the network sees in a training step (an unconditional prior ignores them)."""
        return None

    # ---- codes, likelihood, samples ------------------------------------------------------------------------------
    def encode_codes(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> the frozen model's code indices ``(B, h, w)`` (``(B, Q, h, w)`` for
        residual VQ): what a :class:`~lightning_ae.data.CodeDataModule` caches."""
        with torch.no_grad():
            return self.vqvae.encode_indices(images)

    def codes_fingerprint(self) -> str:
        """A hash of the frozen model (class and weights): a code cache is only reused for the same model."""
        return tensors_fingerprint(f"{type(self.vqvae).__module__}.{type(self.vqvae).__qualname__}",
                                   self.vqvae.state_dict())

    def check_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Raises ``ValueError`` for code indices whose grid or range is not the frozen model's."""
        grid = (self.levels, *self.grid_shape) if self.levels > 1 else self.grid_shape
        if tuple(indices.shape[1:]) != tuple(grid):
            raise ValueError(f"code indices of shape {tuple(indices.shape)}, expected (B, {', '.join(map(str, grid))})"
                             " (the frozen model's grid): were the cached codes made by another model?")
        return indices

    def nll(self, indices: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood in nats per code index (fp32 cross-entropy, also under autocast)."""
        return F.cross_entropy(self.logits(indices, labels).float(), indices)

    def bits_per_code(self, nats_per_code: torch.Tensor) -> torch.Tensor:
        """Nats per code index -> bits per code index."""
        return nats_per_code / math.log(2)

    def bits_per_dim(self, nats_per_code: torch.Tensor) -> torch.Tensor:
        """NLL of a whole code grid in bits, per image dimension ``C*H*W``."""
        codes = math.prod(self.grid_shape) * self.levels
        return nats_per_code * codes / (math.log(2) * math.prod(self.image_shape))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` images ``(n, C, H, W)`` in pixel space: prior samples decoded by the VQ-VAE."""
        return self.vqvae.decode_indices(self.sample_indices(n, generator, temperature))

    def prior_graph_inputs(self, n: int) -> tuple[torch.Tensor, ...]:
        """Example inputs of the exported ``prior`` graph: random code indices of the frozen model's grid."""
        grid = (self.levels, *self.grid_shape) if self.levels > 1 else self.grid_shape
        return (torch.randint(self.codebook_size, (n, *grid), device=self.device),)

    # ---- the step ------------------------------------------------------------------------------------------------
    def _step(self, batch: Any, stage: Stage) -> torch.Tensor:
        x, labels, is_codes = codes_of_batch(batch)
        indices = self.check_codes(x) if is_codes else self.encode_codes(self.vqvae.check_images(x))
        loss = self.nll(indices, self.conditioning(labels) if stage == "train" else labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage} loss is {loss.item()} at step {self.global_step}")
        on_step = stage == "train"
        nats = loss.detach()
        self.log_dict({f"{stage}/loss": nats, f"{stage}/bits_per_code": self.bits_per_code(nats),
                       f"{stage}/bits_per_dim": self.bits_per_dim(nats)},
                      on_step=on_step, on_epoch=not on_step, sync_dist=not on_step, batch_size=x.shape[0])
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        return build_optimization(self.network_parameters(), self.optimizer_factory, self.lr_scheduler_factory)


def tensors_fingerprint(name: str, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over ``name`` and the names, dtypes, shapes and bytes of ``tensors``."""
    digest = hashlib.sha256(name.encode())
    for key, tensor in tensors.items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.flatten().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class PixelCNNPrior(CodePrior):
    """Stage two of the VQ-VAE: a gated PixelCNN trained on the codes of a frozen VQ-VAE.

    The prior's vocabulary is the quantizer's ``codebook_size`` (``VectorQuantizer``, ``FSQ`` and ``LFQ`` give one
    index per position); a VQ-VAE with a ``ResidualVQ`` (Q indices per position) is refused with a ``ValueError``:
    a PixelCNN over one grid does not model the levels' joint distribution (the
    :class:`~lightning_ae.models.transformer_prior.TransformerPrior` does). See :class:`CodePrior` for what is
    logged and how the frozen model is stored.

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
        super().__init__(vqvae_checkpoint, vqvae_hparams, image_shape, num_classes, pixel_range, optimizer,
                         lr_scheduler)
        self.pixelcnn = GatedPixelCNN(self.codebook_size, channels, num_layers, kernel_size)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices ``(B, h, w)`` -> logits ``(B, K, h, w)`` of each code given the ones before it."""
        return self.pixelcnn(indices)

    def logits(self, indices: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.pixelcnn(indices)

    def network_parameters(self) -> Any:
        return self.pixelcnn.parameters()

    def sample_indices(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0
                       ) -> torch.Tensor:
        """``n`` code grids ``(n, h, w)`` drawn from the prior (logits divided by ``temperature``)."""
        return self.pixelcnn.sample(n, self.grid_shape, generator, temperature)

    def export_graphs(self) -> list[Graph]:
        """``prior`` code indices ``(B, h, w)`` -> ``logits`` ``(B, K, h, w)`` of each code given the ones before
        it (sampling runs it once per position, in raster order), and the VQ-VAE's ``decoder`` indices -> images."""
        return [Graph("prior", FunctionModule(self.pixelcnn, self.pixelcnn), self.prior_graph_inputs, ("indices",),
                      ("logits",)),
                self.vqvae.export_graphs()[1]]
