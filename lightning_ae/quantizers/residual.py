"""Residual vector quantization (Zeghidour et al. 2021, "SoundStream: An End-to-End Neural Audio Codec", arXiv
2107.03312, section 3.3, Algorithm 1): Q vector quantizers, each quantizing what the ones before it left over; the
code of a position is the sum of its Q codes, so Q levels of K codes address K^Q points."""

from __future__ import annotations

import torch
from torch import nn

from lightning_ae.quantizers.base import Quantizer, QuantizerOutput
from lightning_ae.quantizers.functional import straight_through
from lightning_ae.quantizers.vq import VectorQuantizer


class ResidualVQ(Quantizer):
    """Residual vector quantizer (SoundStream, Algorithm 1): ``r_0 = z``, ``e_q = Q_q(r_{q-1})``,
    ``r_q = r_{q-1} - e_q``, output ``sum_q e_q`` with a straight-through gradient to ``z``.

    Each level is a :class:`VectorQuantizer` with its own loss (eq. 3 of van den Oord et al. 2017 on its residual:
    the commitment pulls ``z`` towards each partial sum) and, as configured, EMA, k-means initialisation and
    restarts, each DDP-synchronised as in the single quantizer, so every level's codebook is identical on all ranks.
    Indices are ``(B, Q, *spatial)`` (``(N, Q)`` for rows); ``codebook_size`` is the size of one level.

    Quantizer dropout (SoundStream section 3.3): in training, each sample uses only its first ``n_q`` levels,
    ``n_q`` drawn uniformly from ``1..Q`` on the device, so the decoder learns to work at every bitrate. Every
    level still quantizes and learns from every residual (the residuals do not depend on the dropout), so the
    codebook statistics, and their DDP reduction, are those without dropout.

    Args:
        num_quantizers: number of levels ``Q``.
        num_codes: codes per level ``K``.
        code_dim: code dimension ``D`` (the input's channel dimension).
        beta: commitment weight of every level.
        ema: EMA codebook updates.
        decay: EMA decay.
        epsilon: Laplace smoothing of the EMA cluster sizes.
        kmeans_init: k-means initialisation of each level on the first training batch's residuals.
        kmeans_iters: Lloyd iterations of that k-means.
        restart_threshold: restart codes of a level whose EMA usage per step falls below this (0: never).
        cosine: cosine lookup in every level.
        codebook_dim: factorized lookup dimension of every level (``None``: ``code_dim``).
        rotation_trick: the rotation-trick gradient in every level.
        quantizer_dropout: quantizer dropout in training.

    Every level option is passed to :class:`VectorQuantizer` by keyword, as it documents them.
    """

    def __init__(
        self,
        num_quantizers: int = 4,
        num_codes: int = 512,
        code_dim: int = 64,
        beta: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        restart_threshold: float = 0.0,
        cosine: bool = False,
        codebook_dim: int | None = None,
        rotation_trick: bool = False,
        quantizer_dropout: bool = False,
    ) -> None:
        super().__init__()
        if num_quantizers < 1:
            raise ValueError(f"num_quantizers must be >= 1, got {num_quantizers}")
        self.code_dim, self.num_codes, self.quantizer_dropout = code_dim, num_codes, quantizer_dropout
        self.indices_per_position = num_quantizers
        level = {"num_codes": num_codes, "code_dim": code_dim, "beta": beta, "ema": ema, "decay": decay,
                 "epsilon": epsilon, "kmeans_init": kmeans_init, "kmeans_iters": kmeans_iters,
                 "restart_threshold": restart_threshold, "cosine": cosine, "codebook_dim": codebook_dim,
                 "rotation_trick": rotation_trick}
        self.layers = nn.ModuleList(VectorQuantizer(**level) for _ in range(num_quantizers))

    @property
    def codebook_size(self) -> int:
        return self.num_codes

    @property
    def num_quantizers(self) -> int:
        return len(self.layers)

    def usage_per_step(self) -> torch.Tensor:
        """Debiased EMA of each code's assignments per training step, one row per level ``(Q, K)``."""
        return torch.stack([layer.usage_per_step() for layer in self.layers])

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices ``(B, Q, *spatial)`` -> the sum of the levels' codes ``(B, D, *spatial)`` (``(N, Q)`` ->
        ``(N, D)``); fewer than Q levels give the coarser codes of the first ones."""
        if indices.ndim < 2 or indices.shape[1] > self.num_quantizers:
            raise ValueError(f"expected indices (B, Q, ...) with at most Q={self.num_quantizers} levels, got "
                             f"{tuple(indices.shape)}")
        return sum(layer.indices_to_codes(indices[:, q]) for q, layer in enumerate(self.layers[:indices.shape[1]]))

    def dropout_mask(self, z: torch.Tensor, rows: int) -> torch.Tensor:
        """``(N, Q)`` float mask of the levels each row keeps: per sample, the first ``n_q ~ U{1..Q}`` levels."""
        keep = torch.randint(1, self.num_quantizers + 1, (z.shape[0], 1), device=z.device)
        levels = torch.arange(self.num_quantizers, device=z.device)
        return (levels < keep).float().repeat_interleave(rows // z.shape[0], dim=0)

    def forward(self, z: torch.Tensor, update: bool | None = None) -> QuantizerOutput:
        """Quantizes ``z`` ``(B, D, *spatial)`` or ``(N, D)`` level by level.

        Args:
            z: encoder outputs.
            update: change the codebooks from this batch (every level, on every rank); default ``self.training``.
        """
        update = self.training if update is None else update
        with torch.autocast(z.device.type, enabled=False):
            flat = self.flatten(z)  # (N, D) fp32
            residual, total, outs = flat, torch.zeros_like(flat), []
            keep = self.dropout_mask(z, flat.shape[0]) if self.training and self.quantizer_dropout else None
            for q, layer in enumerate(self.layers):
                out = layer(residual, update=update)
                code = out.quantized.detach()  # the level's code e_q (its value; the gradient goes to z below)
                total = total + (code if keep is None else code * keep[:, q:q + 1])
                residual = residual - code
                outs.append(out)
            quantized = straight_through(flat, total)
        indices = torch.stack([out.indices for out in outs], 1)  # (N, Q)
        loss, codebook_loss, commitment_loss = (sum(getattr(out, name) for out in outs)
                                                for name in ("loss", "codebook_loss", "commitment_loss"))
        perplexity = torch.stack([out.perplexity for out in outs]).mean()
        return QuantizerOutput(self.unflatten(quantized, z), self.rows_to_index_grid(indices, z), loss,
                               codebook_loss, commitment_loss, perplexity, {})

    def extra_repr(self) -> str:
        return f"num_quantizers={self.num_quantizers}, quantizer_dropout={self.quantizer_dropout}"
