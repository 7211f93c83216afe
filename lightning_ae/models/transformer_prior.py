"""An autoregressive transformer prior over the codes of a frozen VQ-VAE / VQGAN (VQGAN's GPT, Esser et al. 2021,
section 3.2; LlamaGen, Sun et al. 2024): class-conditional with classifier-free guidance, every quantizer, residual
codes through a depth transformer (RQ-Transformer, Lee et al. 2022), sampling with a KV cache."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_ae.graphs import FunctionModule, Graph
from lightning_ae.models.prior import CodePrior
from lightning_ae.nets.transformer import Positions, PriorTransformer


class TransformerPrior(CodePrior):
    """A decoder-only transformer over the raster-ordered code indices of a frozen VQ-VAE or VQGAN.

    Models ``p(c | y) = prod_t prod_q p(c_{t,q} | c_{<t}, c_{t,<q}, y)`` (the NLL, eq. 1 of Esser et al. 2021, is
    the cross-entropy of each index given the ones before it). Every quantizer gives one index per position
    (``VectorQuantizer`` with or without the rotation trick or a factorized codebook, ``FSQ``, ``LFQ``: the
    vocabulary is ``codebook_size``) except ``ResidualVQ``, whose ``Q`` levels per position are modelled by a depth
    transformer (RQ-Transformer, Lee et al. 2022, eq. 6-7): the spatial transformer reads a position's levels as
    the sum of their embeddings, and the depth transformer predicts level ``q`` from that context and the partial
    sum of levels ``< q``. Summing the embeddings without a depth model would have to predict the ``Q`` levels of a
    position independently, which cannot represent how a residual level depends on the coarser ones.

    Class-conditional when the datamodule has labels (``num_classes``, linked) and ``class_conditional`` is set: a
    class token starts the sequence, replaced during training by a "no class" token with probability
    ``class_dropout``, so that :meth:`sample` can guide (``cfg_scale``; Ho and Salimans 2022, eq. 6). Validation
    and test NLLs are conditional on the true class.

    Train it on codes cached by a :class:`~lightning_ae.data.CodeDataModule` (a prior step then never runs the
    frozen encoder); an image datamodule also works (its images are encoded on every step).

    Args:
        vqvae_checkpoint: path of a trained VQ-VAE / VQGAN checkpoint or model folder.
        vqvae_hparams: the frozen model's hyperparameters, filled in from ``vqvae_checkpoint`` (leave it unset).
        dim: width of the transformer.
        num_layers: transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP width relative to ``dim``.
        dropout: dropout in attention and MLP.
        positions: ``learned`` absolute position embeddings or ``rope`` (rotary).
        tie_embeddings: output layer = transposed code embeddings.
        depth_layers: blocks of the depth transformer (residual VQ only).
        class_conditional: condition on the datamodule's labels when it has them.
        class_dropout: probability that a training sequence's class token is replaced by "no class".
        image_shape: ``(C, H, W)`` of the images (linked from the datamodule).
        num_classes: classes of the dataset (linked from the datamodule; None: unconditional).
        pixel_range: pixel range of the data (linked from the datamodule).
        optimizer: optimizer factory (default: AdamW with torch's defaults; the configs use lr 3e-4, betas
            (0.9, 0.95) as LlamaGen).
        lr_scheduler: optional scheduler factory (monitors ``val/loss``).
    """

    supports_levels = True

    def __init__(
        self,
        vqvae_checkpoint: str,
        vqvae_hparams: dict | None = None,
        dim: int = 256,
        num_layers: int = 8,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        positions: Positions = "learned",
        tie_embeddings: bool = True,
        depth_layers: int = 2,
        class_conditional: bool = True,
        class_dropout: float = 0.1,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int | None = None,
        pixel_range: tuple[float, float] = (0.0, 1.0),
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(vqvae_checkpoint, vqvae_hparams, image_shape, num_classes, pixel_range, optimizer,
                         lr_scheduler)
        if not 0.0 <= class_dropout < 1.0:
            raise ValueError(f"class_dropout must be in [0, 1), got {class_dropout}")
        conditional = class_conditional and num_classes is not None
        if conditional and num_classes < 1:  # type: ignore[operator]
            raise ValueError(f"num_classes must be >= 1 for a class-conditional prior, got {num_classes}")
        self.num_classes = num_classes if conditional else None  # SampleGrid draws one row per class when set
        self.class_dropout = class_dropout
        self.transformer = PriorTransformer(
            self.codebook_size, self.grid_shape[0] * self.grid_shape[1], self.levels,
            num_classes if conditional else 0, dim, num_layers, num_heads, mlp_ratio, dropout, positions,
            tie_embeddings, depth_layers)

    # ---- the grid as a sequence ----------------------------------------------------------------------------------
    def to_sequence(self, indices: torch.Tensor) -> torch.Tensor:
        """Code grid ``(B, h, w)`` or ``(B, Q, h, w)`` -> raster-ordered sequence ``(B, h*w, Q)``."""
        if indices.ndim == 3:
            return indices.flatten(1)[..., None]
        return indices.flatten(2).transpose(1, 2)

    def to_grid(self, sequence: torch.Tensor) -> torch.Tensor:
        """Sequence ``(B, h*w, Q)`` -> the frozen model's grid ``(B, h, w)`` (``(B, Q, h, w)`` for residual VQ)."""
        b = sequence.shape[0]
        if self.levels == 1:
            return sequence[..., 0].view(b, *self.grid_shape)
        return sequence.transpose(1, 2).reshape(b, self.levels, *self.grid_shape)

    # ---- likelihood ----------------------------------------------------------------------------------------------
    def forward(self, indices: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Code grid -> logits ``(B, K, *grid)`` of each index given the ones before it (and the class)."""
        return self.logits(indices, labels)

    def logits(self, indices: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes is None:
            labels = None
        elif labels is None:  # a conditional prior without labels: the "no class" token
            labels = torch.full(indices.shape[:1], self.transformer.null_class, device=indices.device)
        logits = self.transformer(self.to_sequence(indices), labels)  # (B, L, Q, K)
        b, _, _, k = logits.shape
        if self.levels == 1:
            return logits[:, :, 0].transpose(1, 2).reshape(b, k, *self.grid_shape)
        return logits.permute(0, 3, 2, 1).reshape(b, k, self.levels, *self.grid_shape)

    def conditioning(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """Training labels with each replaced by "no class" with probability ``class_dropout`` (for guidance)."""
        if self.num_classes is None or labels is None:
            return None
        drop = torch.rand(labels.shape, device=labels.device) < self.class_dropout
        return labels.masked_fill(drop, self.transformer.null_class)

    def network_parameters(self) -> Any:
        return self.transformer.parameters()

    # ---- samples -------------------------------------------------------------------------------------------------
    def sample_indices(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0,
                       labels: torch.Tensor | None = None, top_k: int | None = None, top_p: float | None = None,
                       cfg_scale: float = 1.0, use_cache: bool = True) -> torch.Tensor:
        """``n`` code grids drawn from the prior (``(n, h, w)``; ``(n, Q, h, w)`` for residual VQ); see
        :meth:`~lightning_ae.nets.transformer.PriorTransformer.sample` for the options."""
        if labels is not None and self.num_classes is None:
            raise ValueError("labels given to an unconditional prior (its datamodule had no labels, or "
                             "class_conditional is false)")
        was_training = self.transformer.training
        self.transformer.eval()
        try:
            sequence = self.transformer.sample(n, labels, temperature, top_k, top_p, cfg_scale, generator, use_cache)
        finally:
            self.transformer.train(was_training)
        return self.to_grid(sequence)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0,
               labels: torch.Tensor | None = None, top_k: int | None = None, top_p: float | None = None,
               cfg_scale: float = 1.0, use_cache: bool = True) -> torch.Tensor:
        """``n`` images ``(n, C, H, W)`` in pixel space: prior samples decoded by the frozen model (``labels``
        ``(n,)`` for a conditional prior; the other options as :meth:`sample_indices`)."""
        indices = self.sample_indices(n, generator, temperature, labels, top_k, top_p, cfg_scale, use_cache)
        return self.vqvae.decode_indices(indices)

    # ---- export --------------------------------------------------------------------------------------------------
    def export_graphs(self) -> list[Graph]:
        """``prior``: code indices (and ``labels`` ``(B,)`` when conditional) -> ``logits`` ``(B, K, *grid)`` of
        each index given the ones before it (sampling runs it once per position, in raster order; the KV cache is
        not part of the graph), and the frozen model's ``decoder`` indices -> images."""
        owner = nn.ModuleList([self.transformer])  # the transformer's own parameters (positions) are in the graph
        if self.num_classes is None:
            graph = Graph("prior", FunctionModule(owner, self.logits), self.prior_graph_inputs,
                          ("indices",), ("logits",))
        else:
            def inputs(n: int) -> tuple[torch.Tensor, ...]:
                return (*self.prior_graph_inputs(n), torch.randint(self.num_classes, (n,), device=self.device))

            graph = Graph("prior", FunctionModule(owner, self.logits), inputs, ("indices", "labels"),
                          ("logits",))
        return [graph, self.vqvae.export_graphs()[1]]
