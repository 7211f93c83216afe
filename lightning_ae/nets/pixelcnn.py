"""Gated PixelCNN over a grid of categorical codes (van den Oord et al. 2016, "Conditional Image Generation
with PixelCNN Decoders", arXiv 1606.05328): plain ``nn.Module``s, no Lightning inside.

A vertical stack sees the rows above; a horizontal stack sees the pixels to the left in the current row plus the
vertical stack, so the receptive field has no blind spot. The first layer (mask ``A``) excludes the current
position; later layers (mask ``B``) include it, because their inputs at that position only carry earlier ones.
So logits at ``(i, j)`` depend only on codes at positions before ``(i, j)`` in raster order.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_ae.configurable import Configurable


def gate(x: torch.Tensor) -> torch.Tensor:
    """Gated activation ``tanh(a) * sigmoid(b)`` (eq. 2 of the paper) of the two halves of the channels."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedMaskedConv2d(nn.Module):
    """One gated PixelCNN layer: ``(vertical, horizontal) -> (vertical, horizontal)``, shapes ``(B, C, h, w)``.

    Args:
        channels: feature channels ``C`` of both stacks.
        kernel_size: odd kernel size ``k``.
        mask_a: first layer (excludes the current position).
    """

    def __init__(self, channels: int, kernel_size: int, mask_a: bool) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        half = kernel_size // 2
        # vertical: rows i-half..i (the last row is masked out for mask A); cropped to the first h rows below
        self.vertical = nn.Conv2d(channels, 2 * channels, (half + 1, kernel_size), padding=(half, half))
        # horizontal: columns j-half..j of the current row (the last column masked out for mask A)
        self.horizontal = nn.Conv2d(channels, 2 * channels, (1, half + 1), padding=(0, half))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal_out = nn.Conv2d(channels, channels, 1)
        self.mask_a = mask_a
        v_mask, h_mask = torch.ones_like(self.vertical.weight), torch.ones_like(self.horizontal.weight)
        if mask_a:
            v_mask[:, :, -1] = 0
            h_mask[:, :, :, -1] = 0
        self.register_buffer("v_mask", v_mask, persistent=False)
        self.register_buffer("h_mask", h_mask, persistent=False)

    def forward(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = v.shape[-2:]
        v_feat = nn.functional.conv2d(v, self.vertical.weight * self.v_mask, self.vertical.bias,
                                      padding=self.vertical.padding)[:, :, :height]
        h_feat = nn.functional.conv2d(h, self.horizontal.weight * self.h_mask, self.horizontal.bias,
                                      padding=self.horizontal.padding)[:, :, :, :width]
        # vertical features of row i depend on input rows < i only (mask A, then carried on by mask B layers)
        h_out = self.horizontal_out(gate(h_feat + self.vertical_to_horizontal(v_feat)))
        return gate(v_feat), h_out if self.mask_a else h + h_out


class GatedPixelCNN(Configurable, nn.Module):
    """Autoregressive model of a ``(B, h, w)`` grid of codes in ``[0, num_codes)``: returns logits
    ``(B, num_codes, h, w)``, those at ``(i, j)`` a function of the codes before ``(i, j)`` in raster order.

    Args:
        num_codes: number of categories ``K``.
        channels: feature channels.
        num_layers: gated layers (the first with mask A).
        kernel_size: odd kernel size of the gated layers.
    """

    def __init__(self, num_codes: int = 512, channels: int = 64, num_layers: int = 8, kernel_size: int = 5) -> None:
        super().__init__()
        if num_codes < 2:
            raise ValueError(f"num_codes must be >= 2, got {num_codes}")
        if channels < 1 or num_layers < 1:
            raise ValueError(f"channels and num_layers must be >= 1, got {channels}, {num_layers}")
        self.num_codes = num_codes
        self.embedding = nn.Embedding(num_codes, channels)
        self.layers = nn.ModuleList(
            GatedMaskedConv2d(channels, kernel_size, mask_a=i == 0) for i in range(num_layers)
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, 2 * channels, 1), nn.ReLU(),
                                  nn.Conv2d(2 * channels, num_codes, 1))

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.logits_from_embeddings(self.embedding(indices).permute(0, 3, 1, 2))  # (B, h, w) -> (B, K, h, w)

    def logits_from_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from embedded codes ``(B, C, h, w)`` (a differentiable input, for causality checks)."""
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h)
        return self.head(h)

    @torch.no_grad()
    def sample(self, n: int, grid_shape: tuple[int, int], generator: torch.Generator | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        """Draws ``n`` grids ``(n, h, w)`` position by position in raster order."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        device = self.embedding.weight.device
        grid = torch.zeros(n, *grid_shape, dtype=torch.long, device=device)
        for i in range(grid_shape[0]):
            for j in range(grid_shape[1]):
                logits = self(grid)[:, :, i, j] / temperature
                grid[:, i, j] = torch.multinomial(logits.softmax(1), 1, generator=generator).squeeze(1)
        return grid
