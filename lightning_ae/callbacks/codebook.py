"""Codebook health of a vector-quantized model on the validation data: a sorted usage chart and a warning when
usage collapses (the model itself logs perplexity and dead codes)."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure

from lightning_ae.callbacks.base import EpochCallback, epoch_label, require_methods
from lightning_ae.callbacks.logging import log_image, new_figure


def usage_figure(counts: torch.Tensor, title: str = "codebook usage") -> Figure:
    """A bar chart of code usage ``counts`` ``(K,)``, sorted from the most to the least used code; for the
    ``(Q, K)`` counts of a residual quantizer, one sorted curve per level."""
    counts = counts.detach().cpu().double()
    share = (counts / counts.sum(-1, keepdim=True).clamp_min(1)).sort(-1, descending=True).values.numpy()
    figure = new_figure(7.0, 4.0)
    ax = figure.add_subplot()
    if share.ndim == 1:
        ax.bar(range(len(share)), share, width=1.0, color="tab:blue")
    else:
        for level, row in enumerate(share):
            ax.step(range(len(row)), row, where="mid", label=f"level {level}")
        ax.legend()
    ax.set_xlim(-0.5, share.shape[-1] - 0.5)
    ax.set_xlabel("code (sorted by usage)")
    ax.set_ylabel("share of assignments")
    ax.set_title(title)
    figure.tight_layout()
    return figure


class CodebookUsageMonitor(EpochCallback):
    """Draws and watches the codebook usage that a vector-quantized model counts on the validation data.

    Needs ``pl_module.codebook_usage("val")``, the model's :class:`~lightning_ae.metrics.CodebookUsage` of the
    epoch (the :class:`~lightning_ae.models.VQVAE` counts it in its step and logs ``val/codebook_perplexity``,
    ``val/codebook_used_fraction`` and ``val/codebook_dead_codes``; nothing is encoded twice). On the epochs it
    runs, ``val/codebook_usage`` (the sorted bar chart) goes to the loggers, and a warning is emitted when fewer
    than ``min_used_fraction`` of the codes are used.

    Args:
        every_n_epochs: draw on every n-th validation epoch (and on the last one).
        min_used_fraction: warn when the fraction of codes used at least once falls below this, in ``[0, 1]``.
    """

    def __init__(self, every_n_epochs: int = 1, min_used_fraction: float = 0.1) -> None:
        if not 0.0 <= min_used_fraction <= 1.0:
            raise ValueError(f"min_used_fraction must be in [0, 1], got {min_used_fraction}")
        super().__init__(every_n_epochs)
        self.min_used_fraction = min_used_fraction
        self.last_counts: torch.Tensor | None = None
        self.last_values: dict[str, float] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        require_methods(self, pl_module, ("codebook_usage",))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        usage = pl_module.codebook_usage("val")
        if not self._active or not usage.update_called:
            return
        # every rank, unconditionally: compute() sums the counts over ranks (the model's own log reuses the result)
        values = usage.compute()
        with usage.sync_context():
            self.last_counts = usage.counts.detach().cpu().clone()
        if self.last_counts.sum() == 0:  # no validation data at all: nothing to report
            return
        self.last_values = {k: float(v) for k, v in values.items()}
        total = self.last_counts.numel()
        self._warn_if_collapsed(total)
        if trainer.is_global_zero:
            used = total - int(self.last_values["dead_codes"])
            title = (f"codebook usage{epoch_label(trainer)}: {used}/{total} codes used, "
                     f"perplexity {self.last_values['perplexity']:.1f}")
            log_image(trainer, "val/codebook_usage", usage_figure(self.last_counts, title))

    def _warn_if_collapsed(self, num_codes: int) -> None:
        used_fraction = self.last_values["used_fraction"]
        if used_fraction < self.min_used_fraction:
            rank_zero_warn(
                f"codebook usage collapsed: {used_fraction:.1%} of the {num_codes} codes are used on the validation "
                f"data (perplexity {self.last_values['perplexity']:.1f}), below min_used_fraction="
                f"{self.min_used_fraction}; consider k-means init, dead-code restarts or a smaller codebook")
