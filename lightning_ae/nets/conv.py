"""Convolutional residual encoders and decoders (the VQ-VAE architecture of van den Oord et al. 2017,
as in DeepMind's sonnet example): plain ``nn.Module``s, no Lightning inside.

Encoder: ``num_downsamples`` strided 4x4 convolutions and a 3x3 convolution, each followed by a ReLU, a residual
stack, then either a 1x1 convolution to ``out_dim`` channels (``spatial=True``: a grid of codes, for the VQ-VAE)
or a flatten and a linear layer to ``out_dim`` features (``spatial=False``). The decoder mirrors it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_ae.batch import ImageShape, check_image_shape
from lightning_ae.configurable import Configurable
from lightning_ae.nets.common import Init, initialize


class ResidualBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))`` (sonnet's residual unit)."""

    def __init__(self, channels: int, res_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, res_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(res_channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResidualStack(nn.Sequential):
    """``num_blocks`` residual blocks followed by a ReLU."""

    def __init__(self, channels: int, res_channels: int, num_blocks: int) -> None:
        super().__init__(*[ResidualBlock(channels, res_channels) for _ in range(num_blocks)], nn.ReLU())


def _grid_shape(image_shape: ImageShape, num_downsamples: int) -> tuple[int, int]:
    _, h, w = image_shape
    f = 2**num_downsamples
    if h % f or w % f:
        raise ValueError(f"image size {h}x{w} is not divisible by 2**num_downsamples={f}")
    return h // f, w // f


class ConvEncoder(Configurable, nn.Module):
    """Strided-convolution residual encoder.

    Args:
        image_shape: ``(C, H, W)`` of the input images (H and W divisible by ``2**num_downsamples``).
        out_dim: output channels (``spatial=True``) or features (``spatial=False``).
        hidden_channels: channels of the convolutions (sonnet: 128).
        res_channels: hidden channels of each residual block (sonnet: 32).
        num_res_blocks: residual blocks in the stack (sonnet: 2).
        num_downsamples: strided 4x4 convolutions, each halving H and W.
        spatial: keep the spatial grid (``(B, out_dim, H/f, W/f)``) instead of flattening to ``(B, out_dim)``.
        init: weight initialisation, ``torch`` (PyTorch's defaults) or ``sonnet`` (sonnet 2's defaults,
            :func:`~lightning_ae.nets.common.sonnet_init_`).
    """

    def __init__(
        self,
        image_shape: ImageShape = (1, 28, 28),
        out_dim: int = 32,
        hidden_channels: int = 64,
        res_channels: int = 32,
        num_res_blocks: int = 2,
        num_downsamples: int = 2,
        spatial: bool = False,
        init: Init = "torch",
    ) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        self.grid_shape = _grid_shape(self.image_shape, num_downsamples)
        layers: list[nn.Module] = []
        c_in = self.image_shape[0]
        for i in range(num_downsamples):
            c_out = hidden_channels // 2 if i < num_downsamples - 1 else hidden_channels
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
            c_in = c_out
        layers += [
            nn.Conv2d(c_in, hidden_channels, 3, padding=1),
            nn.ReLU(),  # as sonnet's example encoder: the residual stream starts non-negative
            ResidualStack(hidden_channels, res_channels, num_res_blocks),
        ]
        if spatial:
            layers.append(nn.Conv2d(hidden_channels, out_dim, 1))
        else:
            layers += [nn.Flatten(1), nn.Linear(hidden_channels * math.prod(self.grid_shape), out_dim)]
        self.net = initialize(nn.Sequential(*layers), init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, C, H, W) -> (B, out_dim[, H/f, W/f])


class ConvDecoder(Configurable, nn.Module):
    """Transposed-convolution residual decoder, the mirror of :class:`ConvEncoder` (unbounded outputs).

    Args:
        image_shape: ``(C, H, W)`` of the images to produce.
        latent_dim: input channels (``spatial=True``) or features (``spatial=False``).
        hidden_channels: channels of the convolutions.
        res_channels: hidden channels of each residual block.
        num_res_blocks: residual blocks in the stack.
        num_downsamples: transposed 4x4 convolutions, each doubling H and W.
        spatial: the input is a grid ``(B, latent_dim, H/f, W/f)`` rather than a vector.
        out_channels_mult: output channels per image channel (2 for a mean and a log-variance).
        init: weight initialisation, ``torch`` or ``sonnet`` (see :class:`ConvEncoder`).
    """

    def __init__(
        self,
        image_shape: ImageShape = (1, 28, 28),
        latent_dim: int = 32,
        hidden_channels: int = 64,
        res_channels: int = 32,
        num_res_blocks: int = 2,
        num_downsamples: int = 2,
        spatial: bool = False,
        out_channels_mult: int = 1,
        init: Init = "torch",
    ) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        gh, gw = _grid_shape(self.image_shape, num_downsamples)
        layers: list[nn.Module] = []
        if spatial:
            layers.append(nn.Conv2d(latent_dim, hidden_channels, 3, padding=1))
        else:
            layers += [nn.Linear(latent_dim, hidden_channels * gh * gw), nn.Unflatten(1, (hidden_channels, gh, gw))]
        layers.append(ResidualStack(hidden_channels, res_channels, num_res_blocks))
        c_in = hidden_channels
        for i in range(num_downsamples):
            last = i == num_downsamples - 1
            c_out = self.image_shape[0] * out_channels_mult if last else hidden_channels // 2
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.ReLU())
            c_in = c_out
        self.net = initialize(nn.Sequential(*layers), init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # (B, latent_dim[, h, w]) -> (B, C * out_channels_mult, H, W)
