"""Fully connected encoders and decoders: plain ``nn.Module``s, no Lightning inside."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from lightning_ae.batch import ImageShape, check_image_shape
from lightning_ae.configurable import Configurable
from lightning_ae.nets.common import make_activation


def mlp(sizes: Sequence[int], activation: str = "relu", final_activation: bool = False) -> nn.Sequential:
    """A stack of ``Linear`` layers with ``activation`` between them (and after the last if asked)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(sizes) - 2 or final_activation:
            layers.append(make_activation(activation))
    return nn.Sequential(*layers)


class MLPEncoder(Configurable, nn.Module):
    """Flattens an image and maps it through an MLP to ``out_dim`` features.

    Args:
        image_shape: ``(C, H, W)`` of the input images.
        out_dim: number of output features (the code size; twice it for a Gaussian encoder).
        hidden_dims: widths of the hidden layers.
        activation: name of the hidden activation (``relu``, ``gelu``, ``silu``, ``tanh``,
            ``sigmoid``, ``elu``, ``leaky_relu``, ``softplus``).
    """

    def __init__(
        self,
        image_shape: ImageShape = (1, 28, 28),
        out_dim: int = 32,
        hidden_dims: Sequence[int] = (512, 256),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        self.net = mlp([math.prod(self.image_shape), *hidden_dims, out_dim], activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))  # (B, C, H, W) -> (B, out_dim)


class MLPDecoder(Configurable, nn.Module):
    """Maps a code through an MLP to an image of ``image_shape`` (unbounded outputs: logits or means).

    Args:
        image_shape: ``(C, H, W)`` of the images to produce.
        latent_dim: size of the input code.
        hidden_dims: widths of the hidden layers.
        activation: name of the hidden activation.
        out_channels_mult: output channels per image channel (2 for a mean and a log-variance).
    """

    def __init__(
        self,
        image_shape: ImageShape = (1, 28, 28),
        latent_dim: int = 32,
        hidden_dims: Sequence[int] = (256, 512),
        activation: str = "relu",
        out_channels_mult: int = 1,
    ) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        c, h, w = self.image_shape
        self.out_shape = (c * out_channels_mult, h, w)
        self.net = mlp([latent_dim, *hidden_dims, math.prod(self.out_shape)], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.out_shape)  # (B, latent_dim) -> (B, C, H, W)
