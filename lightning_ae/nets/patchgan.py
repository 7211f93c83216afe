"""The PatchGAN discriminator (Isola et al. 2017, *Image-to-Image Translation with Conditional Adversarial
Networks*, arXiv 1611.07004, sec. 3.2.2), as taming-transformers' ``NLayerDiscriminator`` builds it for VQGAN and
latent diffusion: a plain ``nn.Module`` mapping images to a map of real/fake logits, one per overlapping patch.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lightning_ae.configurable import Configurable

Norm = Literal["batch", "group", "none"]


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'group' or 'none', got {kind!r}")


@torch.no_grad()
def taming_init_(module: nn.Module) -> nn.Module:
    """taming's ``weights_init``: convolution weights from N(0, 0.02); norm weights from N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


class PatchGANDiscriminator(Configurable, nn.Module):
    """``n_layers`` stride-2 4x4 convolutions (``ndf``, ``2 ndf``, ... up to ``8 ndf`` channels) with LeakyReLU(0.2)
    and a norm after all but the first, a stride-1 convolution, and a 1-channel stride-1 convolution: images
    ``(B, C, H, W)`` -> logits ``(B, 1, h, w)`` (30x30 for 256x256 with 3 layers: each logit sees a 70x70 patch).

    Args:
        in_channels: image channels.
        ndf: channels of the first layer (taming: 64).
        n_layers: stride-2 layers (taming: 3).
        norm: ``batch`` (taming's), ``group`` (independent of the batch size and of DDP ranks) or ``none``.
        init: ``taming`` (:func:`taming_init_`) or ``torch`` (PyTorch's defaults).
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3, norm: Norm = "batch",
                 init: Literal["taming", "torch"] = "taming") -> None:
        super().__init__()
        if ndf < 1 or n_layers < 1:
            raise ValueError(f"ndf and n_layers must be >= 1, got {ndf}, {n_layers}")
        bias = norm == "none"  # a norm after the convolution makes its bias redundant
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            previous, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * previous, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                       _norm(norm, ndf * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        if init == "taming":
            taming_init_(self)
        elif init != "torch":
            raise ValueError(f"init must be 'taming' or 'torch', got {init!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 1, h, w) logits
        return self.main(x)
