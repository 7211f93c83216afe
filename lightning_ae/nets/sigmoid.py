"""A single sigmoid layer encoder: the encoder of the original contractive autoencoder (Rifai et al. 2011)."""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_ae.batch import ImageShape, check_image_shape
from lightning_ae.configurable import Configurable


class SigmoidEncoder(Configurable, nn.Module):
    """``h = sigmoid(W flatten(x) + b)``: one linear layer and a sigmoid.

    The contractive penalty of this encoder has a closed form (``penalty: sigmoid`` of
    :class:`~lightning_ae.ContractiveAutoencoder`).

    Args:
        image_shape: ``(C, H, W)`` of the input images.
        out_dim: code size.
    """

    def __init__(self, image_shape: ImageShape = (1, 28, 28), out_dim: int = 32) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        self.linear = nn.Linear(math.prod(self.image_shape), out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(x.flatten(1)))  # (B, C, H, W) -> (B, out_dim)
