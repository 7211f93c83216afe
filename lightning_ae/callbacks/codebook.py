"""Codebook health of a vector-quantized model on the validation data: a sorted usage chart, perplexity and
dead codes in the logs, and a warning when usage collapses."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure

from lightning_ae.batch import extract_images
from lightning_ae.callbacks.base import EpochCallback, epoch_label, require_methods
from lightning_ae.callbacks.logging import log_image, new_figure
from lightning_ae.metrics import CodebookUsage


def usage_figure(counts: torch.Tensor, title: str = "codebook usage") -> Figure:
    """A bar chart of code usage ``counts`` ``(K,)``, sorted from the most to the least used code."""
    counts = counts.detach().cpu().double()
    share = (counts / counts.sum().clamp_min(1)).sort(descending=True).values.numpy()
    figure = new_figure(7.0, 4.0)
    ax = figure.add_subplot()
    ax.bar(range(len(share)), share, width=1.0, color="tab:blue")
    ax.set_xlim(-0.5, len(share) - 0.5)
    ax.set_xlabel("code (sorted by usage)")
    ax.set_ylabel("share of assignments")
    ax.set_title(title)
    figure.tight_layout()
    return figure


class CodebookUsageMonitor(EpochCallback):
    """Counts the codes a vector-quantized model assigns to the validation images of an epoch.

    Needs ``pl_module.encode_to_indices(x)`` and ``pl_module.quantizer.num_codes`` (the
    :class:`~lightning_ae.models.VQVAE`). Each rank counts its own shard (no collective per batch); at the end
    of the epoch the counts are summed over ranks once (:class:`~lightning_ae.metrics.CodebookUsage`), then
    ``val/codebook_perplexity``, ``val/codebook_used_fraction`` and ``val/codebook_dead_codes`` are logged with
    ``pl_module.log``, ``val/codebook_usage`` (the sorted bar chart) goes to the loggers, and a warning is
    emitted when fewer than ``min_used_fraction`` of the codes are used.

    Args:
        every_n_epochs: count on every n-th validation epoch (and on the last one).
        min_used_fraction: warn when the fraction of codes used at least once falls below this, in ``[0, 1]``.
    """

    def __init__(self, every_n_epochs: int = 1, min_used_fraction: float = 0.1) -> None:
        if not 0.0 <= min_used_fraction <= 1.0:
            raise ValueError(f"min_used_fraction must be in [0, 1], got {min_used_fraction}")
        super().__init__(every_n_epochs)
        self.min_used_fraction = min_used_fraction
        self.usage: CodebookUsage | None = None
        self.last_counts: torch.Tensor | None = None
        self.last_values: dict[str, float] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        require_methods(self, pl_module, ("encode_to_indices",))
        num_codes = getattr(getattr(pl_module, "quantizer", None), "num_codes", None)
        if not isinstance(num_codes, int):
            raise TypeError(f"{type(self).__name__} needs a model with quantizer.num_codes; "
                            f"{type(pl_module).__name__} has none")
        self.usage = CodebookUsage(num_codes)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        if self._active and self.usage is not None:
            self.usage = self.usage.to(pl_module.device)
            self.usage.reset()
            self.usage.update(torch.zeros(0, dtype=torch.long, device=pl_module.device))  # a rank with no batch

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._active and self.usage is not None and dataloader_idx == 0:
            self.usage.update(pl_module.encode_to_indices(extract_images(batch)))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active or self.usage is None:
            return
        # every rank, unconditionally: the counts are summed over ranks (two small collectives, once an epoch)
        values = self.usage.compute()
        with self.usage.sync_context():
            self.last_counts = self.usage.counts.detach().cpu().clone()
        if self.last_counts.sum() == 0:  # no validation data at all: nothing to report
            return
        self.last_values = {k: float(v) for k, v in values.items()}
        for name, value in values.items():
            # equal on every rank already; sync_dist only silences Lightning's advice (a mean of equal values)
            pl_module.log(f"val/codebook_{name}", value.float(), on_step=False, on_epoch=True, sync_dist=True)
        self._warn_if_collapsed(pl_module)
        if trainer.is_global_zero:
            used = self.usage.num_codes - int(self.last_values["dead_codes"])
            title = (f"codebook usage{epoch_label(trainer)}: {used}/{self.usage.num_codes} codes used, "
                     f"perplexity {self.last_values['perplexity']:.1f}")
            log_image(trainer, "val/codebook_usage", usage_figure(self.last_counts, title))

    def _warn_if_collapsed(self, pl_module: LightningModule) -> None:
        used_fraction = self.last_values["used_fraction"]
        if used_fraction < self.min_used_fraction:
            message = (f"codebook usage collapsed: {used_fraction:.1%} of the {self.usage.num_codes} codes are used "
                       f"on the validation data (perplexity {self.last_values['perplexity']:.1f}), below "
                       f"min_used_fraction={self.min_used_fraction}; consider k-means init, dead-code restarts "
                       "or a smaller codebook")
            rank_zero_warn(message)
