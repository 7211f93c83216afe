"""Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple", arXiv
2309.15505): each of ``d = len(levels)`` channels is bounded to ``L_i`` values and rounded; the implicit codebook is
the grid of ``prod(L_i)`` points, so there is nothing to learn, no auxiliary loss, and no codebook to collapse."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from lightning_ae.quantizers.base import Quantizer, QuantizerOutput
from lightning_ae.quantizers.functional import count_codes, perplexity_of_counts, straight_through


class FSQ(Quantizer):
    """Finite scalar quantizer (Mentzer et al. 2023, section 3 and Appendix A.1).

    A channel with ``L`` levels is bounded by ``f(z) = floor(L/2)``-scaled ``tanh`` (the paper's
    ``f: z -> floor(L/2) tanh(z)``, shifted by half a step for even ``L`` as in its reference code:
    ``f(z) = tanh(z + atanh(o / h)) h - o`` with ``h = (L - 1)(1 + eps) / 2``, ``o = 0.5`` for even ``L``, else 0),
    then rounded with a straight-through gradient (eq. 1, ``z^ = round(f(z))``), and divided by ``floor(L/2)``
    so codes lie in ``[-1, 1]``. The index is the mixed-radix number of the digits ``round(f(z)) + floor(L/2)``
    in ``[0, L)``, the first channel the least significant. Distances and rounding run in fp32.

    Args:
        levels: levels per channel (the paper's recommendations: ``[8, 5, 5, 5]`` for 1,000 codes,
            ``[8, 8, 8, 5, 5, 5]`` for 64,000); each >= 2.
        code_dim: the input's channel dimension; when it differs from ``len(levels)`` a linear map projects in
            and another out (Appendix A.1). ``None``: ``len(levels)``.
        eps: the ``eps`` of the bound, keeping ``round`` away from the half-integers at the edges.
    """

    def __init__(self, levels: Sequence[int] = (8, 5, 5, 5), code_dim: int | None = None, eps: float = 1e-3) -> None:
        super().__init__()
        levels = [int(level) for level in levels]
        if not levels or min(levels) < 2:
            raise ValueError(f"levels must be a non-empty list of integers >= 2, got {levels}")
        if code_dim is not None and code_dim < 1:
            raise ValueError(f"code_dim must be >= 1 (or None), got {code_dim}")
        self.levels, self.eps = levels, eps
        self.code_dim = len(levels) if code_dim is None else code_dim
        projected = self.code_dim != len(levels)
        self.project_in = nn.Linear(self.code_dim, len(levels)) if projected else nn.Identity()
        self.project_out = nn.Linear(len(levels), self.code_dim) if projected else nn.Identity()
        level_tensor = torch.tensor(levels)
        self.register_buffer("_levels", level_tensor, persistent=False)
        self.register_buffer("_basis", torch.cumprod(torch.tensor([1, *levels[:-1]]), 0), persistent=False)
        self.register_buffer("_half_width", level_tensor // 2, persistent=False)
        half = (level_tensor.double() - 1) * (1 + eps) / 2
        offset = (level_tensor % 2 == 0).double() * 0.5
        self.register_buffer("_half", half.float(), persistent=False)
        self.register_buffer("_offset", offset.float(), persistent=False)
        self.register_buffer("_shift", torch.atanh(offset / half).float(), persistent=False)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    @staticmethod
    def along_channels(buffer: torch.Tensor, ndim: int) -> torch.Tensor:
        """A per-level buffer ``(d,)`` shaped to broadcast along dimension 1 of an ``ndim``-dimensional input
        (``(d,)`` for rows ``(N, d)``, ``(d, 1, 1)`` for ``(B, d, h, w)``)."""
        return buffer.view(-1, *([1] * (ndim - 2)))

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """``f(z)``: each channel (dimension 1) squashed into an open interval that holds exactly ``L`` integers."""
        shift, half, offset = (self.along_channels(b, z.ndim) for b in (self._shift, self._half, self._offset))
        return torch.tanh(z + shift) * half - offset

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, d)`` rows or ``(B, d, *spatial)`` -> normalised codes in ``[-1, 1]``, rounded with a
        straight-through gradient."""
        return self.quantize_with_digits(z)[0]

    def quantize_with_digits(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`quantize`, and the index of every position ``(N,)`` / ``(B, *spatial)`` from the same rounding
        (the digits ``round(f(z)) + floor(L/2)`` in mixed radix), without a second pass over the codes."""
        half_width = self.along_channels(self._half_width, z.ndim)
        bounded = self.bound(z)
        rounded = bounded.round()
        digits = (rounded.detach() + half_width).long()
        indices = (digits * self.along_channels(self._basis, z.ndim)).sum(1)
        return straight_through(bounded, rounded) / half_width, indices

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Normalised codes ``(..., len(levels))`` -> mixed-radix indices ``(...)``."""
        digits = (codes * self._half_width + self._half_width).round().long()
        return (digits * self._basis).sum(-1)

    def indices_to_grid_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices ``(...)`` -> normalised codes ``(..., len(levels))`` in ``[-1, 1]`` (before ``project_out``)."""
        digits = (indices.unsqueeze(-1) // self._basis) % self._levels
        return (digits - self._half_width).float() / self._half_width

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices ``(B, *spatial)`` -> codes ``(B, code_dim, *spatial)`` (or ``(N,)`` -> ``(N, code_dim)``)."""
        return self.codes_to_channels_first(self.project_out(self.indices_to_grid_codes(indices)), indices)

    def forward(self, z: torch.Tensor, update: bool | None = None) -> QuantizerOutput:
        """Quantizes ``z`` ``(B, code_dim, *spatial)`` or ``(N, code_dim)``; ``update`` is accepted for the common
        interface (FSQ has no state to update). All losses are zero (FSQ needs none)."""
        with torch.autocast(z.device.type, enabled=False):
            if isinstance(self.project_in, nn.Identity):  # elementwise per channel: in place, no transposes
                # codes (B, d, *spatial), indices (B, *spatial)
                codes, indices = self.quantize_with_digits(self.check_channels(z).float())
                quantized = codes.to(z.dtype)
            else:  # the projections are linear maps of each position's vector: rows (N, code_dim)
                codes, rows = self.quantize_with_digits(self.project_in(self.flatten(z)))  # (N, d), (N,)
                quantized, indices = self.unflatten(self.project_out(codes), z), self.rows_to_index_grid(rows, z)
        zero = quantized.new_zeros(())
        return QuantizerOutput(quantized, indices, zero, zero, zero,
                               perplexity_of_counts(count_codes(indices, self.codebook_size)), {})

    def extra_repr(self) -> str:
        return f"levels={self.levels}, code_dim={self.code_dim}, codebook_size={self.codebook_size}"
