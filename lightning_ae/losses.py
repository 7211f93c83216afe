"""Loss terms as pure functions of tensors: no modules, no state. Each docstring names its source.

Reductions: the plain autoencoders' reconstruction terms are means over every element (so regularizer
weights are comparable across image sizes); likelihood terms of probabilistic models are sums over pixels
(nats per image), averaged over the batch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Reconstruction = Literal["mse", "bce"]


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor, kind: Reconstruction) -> torch.Tensor:
    """Mean reconstruction error per element.

    Args:
        output: decoder output ``(B, ...)``: the reconstruction for ``mse``, logits for ``bce``.
        target: images ``(B, ...)``; in [0, 1] for ``bce``.
        kind: ``mse`` — mean squared error; ``bce`` — binary cross-entropy of Bernoulli logits (the
            cross-entropy reconstruction of Vincent et al. 2010, eq. 2), computed stably from logits.

    Returns:
        A scalar tensor.
    """
    if output.shape != target.shape:
        raise ValueError(f"output shape {tuple(output.shape)} does not match target shape {tuple(target.shape)}")
    if kind == "mse":
        return F.mse_loss(output, target)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(output, target)
    raise ValueError(f"reconstruction must be 'mse' or 'bce', got {kind!r}")
