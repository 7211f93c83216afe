"""Input corruptions of denoising autoencoders (Vincent et al. 2008, sec. 2.3; 2010, sec. 4.1): pure functions
applied per batch, on the batch's device. Each corrupts every element (pixel and channel) independently.
"""

from __future__ import annotations

from typing import Literal

import torch

Corruption = Literal["gaussian", "masking", "salt_and_pepper"]
CORRUPTIONS: tuple[str, ...] = ("gaussian", "masking", "salt_and_pepper")


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")


def gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Additive isotropic Gaussian noise ``x + N(0, sigma^2 I)`` (Vincent et al. 2010, sec. 4.1); not clipped."""
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    return x + sigma * torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)


def masking_noise(x: torch.Tensor, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Masking noise: each element is set to 0 with probability ``fraction`` (Vincent et al. 2008, sec. 2.3).

    >>> masking_noise(torch.ones(2, 3), fraction=1.0)
    tensor([[0., 0., 0.],
            [0., 0., 0.]])
    """
    _check_fraction(fraction)
    drop = torch.rand(x.shape, device=x.device, generator=generator) < fraction
    return x.masked_fill(drop, 0.0)


def salt_and_pepper_noise(
    x: torch.Tensor,
    fraction: float,
    low: float = 0.0,
    high: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Salt-and-pepper noise: each element is, with probability ``fraction``, set to ``low`` or ``high`` by a fair
    coin flip (Vincent et al. 2010, sec. 4.1); the others are kept.
    """
    _check_fraction(fraction)
    hit = torch.rand(x.shape, device=x.device, generator=generator) < fraction
    salt = torch.rand(x.shape, device=x.device, generator=generator) < 0.5
    value = torch.where(salt, torch.full_like(x, high), torch.full_like(x, low))
    return torch.where(hit, value, x)


def corrupt(
    x: torch.Tensor,
    kind: Corruption,
    level: float,
    pixel_range: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Applies the corruption ``kind`` at ``level`` (sigma for ``gaussian``, the corrupted fraction otherwise).

    Args:
        x: images ``(B, C, H, W)``.
        kind: ``gaussian``, ``masking`` (set to 0) or ``salt_and_pepper`` (set to ``pixel_range`` low or high).
        level: noise standard deviation (``gaussian``) or fraction of corrupted elements.
        pixel_range: ``(low, high)`` of the pixels: the pepper and salt values.
        generator: optional random generator.

    Returns:
        The corrupted images, same shape, dtype and device.
    """
    if kind == "gaussian":
        return gaussian_noise(x, level, generator)
    if kind == "masking":
        return masking_noise(x, level, generator)
    if kind == "salt_and_pepper":
        return salt_and_pepper_noise(x, level, pixel_range[0], pixel_range[1], generator)
    raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {kind!r}")
