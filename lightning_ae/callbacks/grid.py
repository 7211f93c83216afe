"""Pure-torch image grids and conversion to 8-bit RGB arrays (no torchvision)."""

from __future__ import annotations

import math

import numpy as np
import torch


def normalize_images(images: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Maps images with values in ``value_range`` to ``[0, 1]`` (clamped), as float32 on the CPU."""
    low, high = float(value_range[0]), float(value_range[1])
    if not low < high:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
    return ((images.detach().float().cpu() - low) / (high - low)).clamp(0.0, 1.0)


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Tiles images ``(N, C, H, W)`` into one image ``(C, rows * (H + p) + p, nrow * (W + p) + p)``.

    Args:
        images: a batch of images; ``N`` may be any count >= 1 (the last row is padded with ``pad_value``).
        nrow: images per row (the grid is ``min(nrow, N)`` images wide).
        padding: pixels between and around the images.
        pad_value: value of the padding (and of empty cells).

    Returns:
        The grid, same dtype and device as ``images``.
    """
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"images must be a non-empty (N, C, H, W) batch, got shape {tuple(images.shape)}")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, c, h, w = images.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = images.new_full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for i in range(n):
        top, left = padding + (i // cols) * (h + padding), padding + (i % cols) * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def to_rgb_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """An image as an ``(H, W, 3)`` uint8 array.

    Accepts a float tensor ``(C, H, W)`` in ``[0, 1]`` with ``C`` 1 or 3 (channels first, as ``make_grid``
    returns), or an array ``(H, W)``, ``(H, W, 3)``/``(H, W, 4)`` (uint8, or float in ``[0, 1]``).
    """
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"an image tensor must be (C, H, W) with C in (1, 3), got {tuple(image.shape)}")
        image = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    array = array[..., :3]
    return np.ascontiguousarray(np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array)


def stack_rows(rows: list[torch.Tensor], ncol: int, pad_value: float = 1.0) -> torch.Tensor:
    """Stacks rows of images ``(k_i, C, H, W)`` (``k_i <= ncol``) into ``(len(rows) * ncol, C, H, W)``, filling
    short rows with blank images, so that ``make_grid(..., nrow=ncol)`` keeps each row on its own line."""
    if not rows:
        raise ValueError("rows must hold at least one row of images")
    padded = []
    for row in rows:
        if row.shape[0] > ncol:
            raise ValueError(f"a row has {row.shape[0]} images, more than ncol={ncol}")
        blank = row.new_full((ncol - row.shape[0], *row.shape[1:]), pad_value)
        padded.append(torch.cat([row, blank]))
    return torch.cat(padded)
