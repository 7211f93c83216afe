"""What every quantizer returns and the small base class that fixes the contract (:class:`Quantizer`)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

import torch
from torch import nn

from lightning_ae.configurable import Configurable

NO_TERMS: Mapping[str, torch.Tensor] = MappingProxyType({})


class QuantizerOutput(NamedTuple):
    """What every quantizer returns.

    Attributes:
        quantized: the codes, shaped like the input, with the quantizer's gradient estimator (straight-through,
            the rotation trick, or FSQ's rounding).
        indices: code indices (int64), the input's shape without the code dimension (``(B, *spatial)`` or
            ``(N,)``); with ``indices_per_position`` Q > 1 (residual VQ) ``(B, Q, *spatial)`` or ``(N, Q)``.
        loss: the quantizer's total loss (to be added to the model's).
        codebook_loss: ``||sg[z_e] - e||^2`` (van den Oord et al. 2017, eq. 3, second term); without gradient when
            the codebook uses EMA, zero for quantizers without a codebook (FSQ, LFQ).
        commitment_loss: ``beta * ||z_e - sg[e]||^2`` (eq. 3, third term); zero for FSQ.
        perplexity: ``exp(-sum p log p)`` of this batch's code usage (this rank's data only; the mean over levels
            for residual VQ).
        terms: further named loss terms or diagnostics of the quantizer (LFQ's entropies), logged by the VQ-VAE as
            ``{stage}/<name>``; already included in ``loss`` where they are losses.
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor
    terms: Mapping[str, torch.Tensor] = NO_TERMS


class Quantizer(Configurable, nn.Module):
    """Base of the quantizers: channel-first input ``(B, code_dim, *spatial)`` or ``(N, code_dim)``, a
    :class:`QuantizerOutput` from ``forward(z, update=None)``, and ``indices_to_codes`` back from indices.

    A subclass sets ``code_dim`` (the input's channels) and implements :attr:`codebook_size`,
    :meth:`indices_to_codes` and ``forward``. ``indices_per_position`` is the number of indices each input vector
    gets: 1, or Q for a residual quantizer whose indices are ``(B, Q, *spatial)`` (level ``q`` of position ``p`` is
    ``indices[:, q, p]``, each in ``[0, codebook_size)``).
    """

    code_dim: int
    indices_per_position: int = 1

    @property
    def codebook_size(self) -> int:
        """Number of distinct indices of one level (explicit codebook or implicit grid of codes)."""
        raise NotImplementedError(f"{type(self).__name__} must define codebook_size")

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (the shape of :attr:`QuantizerOutput.indices`) -> codes ``(B, code_dim, *spatial)``."""
        raise NotImplementedError(f"{type(self).__name__} must define indices_to_codes")

    def check_channels(self, z: torch.Tensor) -> torch.Tensor:
        """``z``, after a clear error when its channel dimension (1) is not ``code_dim``."""
        if z.ndim < 2 or z.shape[1] != self.code_dim:
            raise ValueError(f"{type(self).__name__} expected input (B, {self.code_dim}, ...) with "
                             f"code_dim={self.code_dim} channels, got {tuple(z.shape)}")
        return z

    def flatten(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, code_dim, *spatial)`` or ``(N, code_dim)`` -> fp32 rows ``(N, code_dim)``; a clear error when the
        channel dimension is not ``code_dim``."""
        return self.check_channels(z).float().movedim(1, z.ndim - 1).reshape(-1, self.code_dim)  # dims >= 0: see below

    @staticmethod
    def unflatten(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Rows ``(N, C)`` -> the channel-first layout of ``like`` ``(B, C, *spatial)``, in ``like``'s dtype."""
        out = rows.reshape(like.shape[0], *like.shape[2:], rows.shape[-1]).movedim(like.ndim - 1, 1)
        return out.to(like.dtype)

    @staticmethod
    def rows_to_index_grid(indices: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Indices of the rows ``(N,)`` (or ``(N, Q)``) -> ``(B, *spatial)`` (or ``(B, Q, *spatial)``)."""
        grid = indices.reshape(like.shape[0], *like.shape[2:], *indices.shape[1:])
        return grid.movedim(grid.ndim - 1, 1) if indices.ndim > 1 else grid

    @staticmethod
    def codes_to_channels_first(codes: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Codes ``(*indices.shape, D)`` -> ``(B, D, *spatial)`` (rows ``(N, D)`` stay as they are).

        Every ``movedim`` here names non-negative dimensions: for ``-1`` the ONNX exporter writes a Transpose with
        a negative ``perm`` that onnxruntime refuses to load."""
        return codes.movedim(indices.ndim, 1) if indices.ndim > 1 else codes


def check_quantizer(quantizer: nn.Module, code_dim: int) -> Quantizer:
    """``quantizer`` if it is a :class:`Quantizer` of ``code_dim``-dimensional inputs; a clear error otherwise
    (naming both dimensions: the model's latent size and the quantizer's ``code_dim``)."""
    if not isinstance(quantizer, Quantizer):
        raise TypeError(f"quantizer must be a lightning_ae.quantizers.Quantizer (VectorQuantizer, FSQ, LFQ, "
                        f"ResidualVQ or a subclass of your own), got {type(quantizer).__name__}")
    if quantizer.code_dim != code_dim:
        raise ValueError(f"the quantizer's code_dim={quantizer.code_dim} differs from the VQ-VAE's latent_dim="
                         f"{code_dim} (the encoder's output channels): set both to the same value")
    return quantizer
