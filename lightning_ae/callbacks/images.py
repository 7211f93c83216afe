"""Image grids of what a model does: reconstructions, samples, interpolations and latent traversals."""

from __future__ import annotations

import inspect

import torch
from lightning.pytorch import LightningModule, Trainer

from lightning_ae.callbacks.base import EpochCallback, Rows, ValidationCollector, pixel_range_of, require_methods
from lightning_ae.callbacks.grid import make_grid, normalize_images, stack_rows
from lightning_ae.callbacks.logging import log_image


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _to_unit(pl_module: LightningModule, images: torch.Tensor) -> torch.Tensor:
    return normalize_images(images, pixel_range_of(pl_module))


class ReconstructionGrid(ValidationCollector):
    """Validation images with their reconstructions below them, logged as ``val/reconstructions``.

    Works with every :class:`~lightning_ae.models.AutoencoderBase` (``forward`` reconstructs in pixel space).
    The grid alternates a row of ``nrow`` inputs with the row of their reconstructions.

    Args:
        every_n_epochs: draw on every n-th validation epoch (and on the last one).
        num_images: validation images shown (gathered from all ranks).
        nrow: images per row.
    """

    def __init__(self, every_n_epochs: int = 1, num_images: int = 8, nrow: int = 8) -> None:
        _check_positive(num_images=num_images, nrow=nrow)
        super().__init__(every_n_epochs, max_rows=num_images)
        self.nrow = nrow

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        require_methods(self, pl_module, ("forward", "encode", "decode"))

    def collect(self, pl_module: LightningModule, images: torch.Tensor, labels: torch.Tensor | None) -> Rows:
        return {"image": images, "reconstruction": pl_module(images)}

    def render(self, trainer: Trainer, pl_module: LightningModule, rows: Rows) -> None:
        inputs, outputs = _to_unit(pl_module, rows["image"]), _to_unit(pl_module, rows["reconstruction"])
        chunks = []
        for start in range(0, inputs.shape[0], self.nrow):
            chunks += [inputs[start : start + self.nrow], outputs[start : start + self.nrow]]
        ncol = min(self.nrow, inputs.shape[0])
        log_image(trainer, "val/reconstructions", make_grid(stack_rows(chunks, ncol), nrow=ncol))


class SampleGrid(EpochCallback):
    """Samples from the model's prior (``pl_module.sample(n)``), logged as ``val/samples``.

    For the :class:`~lightning_ae.models.VAE` (``z ~ N(0, I)``) and for a VQ-VAE through its learned prior
    (:class:`~lightning_ae.models.PixelCNNPrior`); a plain VQ-VAE has no prior to sample from. The random seed
    is the same every time (the training RNG is left untouched), so successive grids show the same latents.
    A class-conditional model (``sample(n, labels=...)`` and an integer ``num_classes``, as the
    :class:`~lightning_ae.models.ConditionalVAE`) gets one row of ``nrow`` samples per class instead.

    Args:
        every_n_epochs: draw on every n-th validation epoch (and on the last one).
        num_samples: images drawn.
        nrow: images per row.
        seed: seed of the samples.
    """

    def __init__(self, every_n_epochs: int = 1, num_samples: int = 64, nrow: int = 8, seed: int = 0) -> None:
        _check_positive(num_samples=num_samples, nrow=nrow)
        super().__init__(every_n_epochs)
        self.num_samples, self.nrow, self.seed = num_samples, nrow, seed

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        require_methods(self, pl_module, ("sample",))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active:
            return
        device = pl_module.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            samples = self._draw(pl_module)  # every rank samples: forward passes run everywhere
        log_image(trainer, "val/samples", make_grid(_to_unit(pl_module, samples), nrow=self.nrow))

    def _draw(self, pl_module: LightningModule) -> torch.Tensor:
        num_classes = getattr(pl_module, "num_classes", None)
        if isinstance(num_classes, int) and "labels" in inspect.signature(pl_module.sample).parameters:
            labels = torch.arange(num_classes, device=pl_module.device).repeat_interleave(self.nrow)
            return pl_module.sample(labels.shape[0], labels=labels)
        return pl_module.sample(self.num_samples)


class LatentInterpolation(ValidationCollector):
    """Decoded straight lines between the codes of pairs of validation images (``val/interpolations``; each
    row starts and ends with the two inputs), and for models with ``traverse`` (the VAE) traversals of single
    latent dimensions (``val/latent_traversals``; one row per dimension, the most varying ones first).

    Args:
        every_n_epochs: draw on every n-th validation epoch (and on the last one).
        num_pairs: pairs of validation images, one row each.
        steps: decoded points per line, both ends included (>= 2).
        traversal_dims: latent dimensions traversed (0 disables the traversals).
        traversal_range: a traversal sets the dimension to values in ``[-range, range]``.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_pairs: int = 4,
        steps: int = 8,
        traversal_dims: int = 4,
        traversal_range: float = 3.0,
    ) -> None:
        _check_positive(num_pairs=num_pairs)
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        if traversal_dims < 0:
            raise ValueError(f"traversal_dims must be >= 0, got {traversal_dims}")
        if traversal_range <= 0:
            raise ValueError(f"traversal_range must be > 0, got {traversal_range}")
        super().__init__(every_n_epochs, max_rows=2 * num_pairs)
        self.steps, self.traversal_dims, self.traversal_range = steps, traversal_dims, traversal_range

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        require_methods(self, pl_module, ("interpolate",))

    def render(self, trainer: Trainer, pl_module: LightningModule, rows: Rows) -> None:
        x = rows["image"].to(pl_module.device)
        pairs = x.shape[0] // 2
        if pairs >= 1:
            log_image(trainer, "val/interpolations", self._interpolations(pl_module, x, pairs))
        if self.traversal_dims > 0 and callable(getattr(pl_module, "traverse", None)):
            log_image(trainer, "val/latent_traversals", self._traversals(pl_module, x))

    def _interpolations(self, pl_module: LightningModule, x: torch.Tensor, pairs: int) -> torch.Tensor:
        decoded = pl_module.interpolate(x[0 : 2 * pairs : 2], x[1 : 2 * pairs : 2], self.steps)  # (steps, pairs, ...)
        rows = [torch.cat([x[2 * i : 2 * i + 1], decoded[:, i], x[2 * i + 1 : 2 * i + 2]]) for i in range(pairs)]
        return make_grid(_to_unit(pl_module, torch.cat(rows)), nrow=self.steps + 2)

    def _traversals(self, pl_module: LightningModule, x: torch.Tensor) -> torch.Tensor:
        z = pl_module.encode(x)
        spread = z.flatten(1).var(dim=0) if z.shape[0] > 1 else torch.ones(z.flatten(1).shape[1], device=z.device)
        dims = spread.argsort(descending=True)[: self.traversal_dims].tolist()
        values = torch.linspace(-self.traversal_range, self.traversal_range, self.steps)
        rows = [pl_module.traverse(x[0], dim, values) for dim in dims]
        return make_grid(_to_unit(pl_module, torch.cat(rows)), nrow=self.steps)
