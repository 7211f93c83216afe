"""Lookup-free quantization (Yu et al. 2023, "Language Model Beats Diffusion -- Tokenizer is Key to Visual
Generation", MAGVIT-v2, arXiv 2310.05737, section 3.1): each of ``d = log2 K`` channels is quantized to its sign,
the index is the binary number of the bits, and an entropy penalty spreads the batch over the ``K = 2^d`` codes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ae.quantizers.base import Quantizer, QuantizerOutput
from lightning_ae.quantizers.functional import (
    all_reduce_sum_with_grad,
    count_codes,
    entropy,
    perplexity_of_counts,
    straight_through,
)


class LFQ(Quantizer):
    """Lookup-free quantizer (MAGVIT-v2, section 3.1).

    ``q(z_i) = sign(z_i)`` (``+1`` for ``z_i > 0``, else ``-1``) with a straight-through gradient; the index is
    ``sum_i 2^(d-1-i) [z_i > 0]`` (eq. 2, the first channel the most significant bit). The loss is
    ``beta * ||z - sg[q(z)]||^2 + entropy_weight * (E[H(p(c|z))] - diversity_gamma * H(E[p(c|z)]))`` (eq. 3's
    entropy penalty: low entropy per sample, high entropy of the batch's code distribution), with the soft
    assignment ``p(c|z) = softmax_c(-||z - c||^2 / temperature)`` over all ``K`` codes ``c`` in ``{-1, 1}^d``.
    In training steps (``update``) the batch distribution ``E[p]`` is averaged over all DDP ranks, through a
    differentiable all-reduce, so the penalty and its gradient are those of one process holding every rank's data;
    otherwise over this rank's batch. The soft assignment is an ``(N, K)`` matrix: keep ``K`` to about ``2^14``.

    Args:
        num_codes: codebook size ``K``, a power of two (``d = log2 K`` bits).
        code_dim: the input's channel dimension; when it differs from ``d`` linear maps project in and out.
            ``None``: ``d``.
        beta: commitment weight.
        entropy_weight: weight of the entropy penalty (0.1 as in vector-quantize-pytorch).
        diversity_gamma: weight of the batch entropy inside the penalty (1 in the paper).
        temperature: temperature of the soft assignment (0.01 as in vector-quantize-pytorch).
    """

    def __init__(self, num_codes: int = 1024, code_dim: int | None = None, beta: float = 0.25,
                 entropy_weight: float = 0.1, diversity_gamma: float = 1.0, temperature: float = 0.01) -> None:
        super().__init__()
        if num_codes < 2 or num_codes & (num_codes - 1):
            raise ValueError(f"num_codes must be a power of two >= 2 for LFQ (one bit per channel), got {num_codes}")
        for name, value in (("beta", beta), ("entropy_weight", entropy_weight), ("diversity_gamma", diversity_gamma)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if code_dim is not None and code_dim < 1:
            raise ValueError(f"code_dim must be >= 1 (or None), got {code_dim}")
        self.num_codes, self.num_bits = num_codes, num_codes.bit_length() - 1
        self.code_dim = self.num_bits if code_dim is None else code_dim
        self.beta, self.entropy_weight = beta, entropy_weight
        self.diversity_gamma, self.temperature = diversity_gamma, temperature
        projected = self.code_dim != self.num_bits
        self.project_in = nn.Linear(self.code_dim, self.num_bits) if projected else nn.Identity()
        self.project_out = nn.Linear(self.num_bits, self.code_dim) if projected else nn.Identity()
        self.register_buffer("_bit_values", 2 ** torch.arange(self.num_bits - 1, -1, -1), persistent=False)
        self.register_buffer("_all_codes", self.indices_to_bit_codes(torch.arange(num_codes)), persistent=False)

    @property
    def codebook_size(self) -> int:
        return self.num_codes

    def indices_to_bit_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices ``(...)`` -> codes ``(..., d)`` in ``{-1, 1}`` (before ``project_out``)."""
        bits = torch.div(indices.unsqueeze(-1), self._bit_values, rounding_mode="floor") % 2  # no bitwise `&`:
        return bits.float() * 2 - 1  # ONNX has no integer AND

    def bit_codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes or pre-quantization values ``(..., d)`` -> indices ``(...)`` from the signs (eq. 2)."""
        return ((codes > 0).long() * self._bit_values).sum(-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices ``(B, *spatial)`` -> codes ``(B, code_dim, *spatial)`` (or ``(N,)`` -> ``(N, code_dim)``)."""
        return self.codes_to_channels_first(self.project_out(self.indices_to_bit_codes(indices)), indices)

    def entropies(self, h: torch.Tensor, all_ranks: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E[H(p(c|h))], H(E[p(c|h)]))`` for rows ``h`` ``(N, d)``; the batch mean over all ranks if asked.

        ``-||h - c||^2 = 2 h.c - ||h||^2 - d``: only ``2 h.c`` differs between codes, so the soft assignment is the
        softmax of ``2 h.c / temperature`` (one ``(N, d) x (d, K)`` product).
        """
        log_p = F.log_softmax(h @ self._all_codes.t() * (2 / self.temperature), dim=-1)  # (N, K)
        p = log_p.exp()
        per_sample = -(p * log_p).sum(-1).mean()
        totals = torch.cat([p.sum(0), p.new_full((1,), p.shape[0])])
        if all_ranks:
            totals = all_reduce_sum_with_grad(totals)
        return per_sample, entropy(totals[:-1] / totals[-1])

    def forward(self, z: torch.Tensor, update: bool | None = None) -> QuantizerOutput:
        """Quantizes ``z`` ``(B, code_dim, *spatial)`` or ``(N, code_dim)``.

        Args:
            z: encoder outputs.
            update: a training step on every rank: the batch entropy is then reduced over the DDP ranks (a
                collective, so every rank must call it); default ``self.training``.
        """
        update = self.training if update is None else update
        with torch.autocast(z.device.type, enabled=False):
            h = self.project_in(self.flatten(z))  # (N, d) fp32
            codes = torch.where(h > 0, 1.0, -1.0)
            indices = self.bit_codes_to_indices(h.detach())
            commitment = self.beta * F.mse_loss(h, codes)
            per_sample, batch = self.entropies(h, all_ranks=update)
            penalty = per_sample - self.diversity_gamma * batch
            quantized = self.project_out(straight_through(h, codes))
        terms = {"entropy_penalty": penalty, "per_sample_entropy": per_sample, "codebook_entropy": batch}
        return QuantizerOutput(self.unflatten(quantized, z), self.rows_to_index_grid(indices, z),
                               commitment + self.entropy_weight * penalty, commitment.new_zeros(()), commitment,
                               perplexity_of_counts(count_codes(indices, self.num_codes)), terms)

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, code_dim={self.code_dim}, beta={self.beta}, "
                f"entropy_weight={self.entropy_weight}, diversity_gamma={self.diversity_gamma}, "
                f"temperature={self.temperature}")
