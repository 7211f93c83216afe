"""The latent-diffusion encoder and decoder (Esser et al. 2021, *Taming Transformers*, arXiv 2012.09841;
Rombach et al. 2022, *High-Resolution Image Synthesis with Latent Diffusion Models*, arXiv 2112.10752): the
networks of VQGAN and of Stable Diffusion's VAE, as plain ``nn.Module``s.

The encoder: a 3x3 convolution to ``ch`` channels, one level per entry of ``ch_mult`` (``num_res_blocks`` ResNet
blocks of ``ch * mult`` channels, each followed by self-attention when the level's resolution is in
``attn_resolutions``, then a stride-2 convolution except at the last level), a middle block (ResNet, attention,
ResNet), GroupNorm, SiLU and a 3x3 convolution to ``z_channels`` (``2 * z_channels`` with ``double_z``, a
Gaussian's mean and log-variance), then latent-diffusion's 1x1 ``quant_conv`` to ``embed_dim``. The decoder
mirrors it (``post_quant_conv``, middle block, ``num_res_blocks + 1`` ResNet blocks per level, nearest-neighbour
upsampling and a 3x3 convolution). A ``(C, H, W)`` image gives a ``(embed_dim, H / f, W / f)`` latent with
``f = 2 ** (len(ch_mult) - 1)``.

The parameters are named as in diffusers' ``Encoder`` / ``Decoder`` (``conv_in``, ``down_blocks.<i>.resnets.<j>``,
``mid_block.attentions.0.to_q``...), so a state dict maps one to one onto ``diffusers.AutoencoderKL`` and
``VQModel`` (:mod:`lightning_ae.interop.diffusers`); diffusers itself is not needed to build or train them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ae.batch import ImageShape
from lightning_ae.configurable import Configurable

GROUPS = 32  # GroupNorm(32, eps=1e-6), as latent-diffusion and diffusers
EPS = 1e-6


def _norm(channels: int) -> nn.GroupNorm:
    if channels % GROUPS:
        raise ValueError(f"the LDM networks normalise with GroupNorm({GROUPS}): every level's channels (ch * ch_mult)"
                         f" must be a multiple of {GROUPS}, got {channels}")
    return nn.GroupNorm(GROUPS, channels, eps=EPS)


class ResnetBlock(nn.Module):
    """``x + conv2(dropout(silu(norm2(conv1(silu(norm1(x)))))))``, with a 1x1 ``conv_shortcut`` when the channels
    change (latent-diffusion's ``ResnetBlock`` without a time embedding; diffusers' ``ResnetBlock2D``)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the ``H * W`` positions, with a residual connection (latent-diffusion's
    ``AttnBlock``), computed by ``scaled_dot_product_attention``; named as diffusers' ``Attention``
    (``group_norm``, ``to_q``, ``to_k``, ``to_v``, ``to_out.0``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.group_norm = _norm(channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        b, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = (proj(tokens).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))  # (B, 1, HW, C)
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # softmax(q k^T / sqrt(C)) v
        return x + self.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    """A stride-2 3x3 convolution after zero-padding right and bottom by one (latent-diffusion's asymmetric pad)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H/2, W/2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the encoder or decoder: ResNet blocks, each followed by attention when ``attention``,
    then an optional resampler (diffusers' ``DownEncoderBlock2D`` / ``UpDecoderBlock2D`` and their ``Attn``
    forms)."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, attention: bool, dropout: float,
                 resample: type[Downsample] | type[Upsample] | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(in_channels if i == 0 else out_channels, out_channels, dropout)
                                     for i in range(num_blocks))
        self.attentions = nn.ModuleList(AttnBlock(out_channels) for _ in range(num_blocks)) if attention else None
        name = "downsamplers" if resample is Downsample else "upsamplers"
        setattr(self, name, nn.ModuleList([resample(out_channels)]) if resample is not None else None)
        self._resampler = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(x)
            if self.attentions is not None:
                x = self.attentions[i](x)
        resamplers = getattr(self, self._resampler)
        return x if resamplers is None else resamplers[0](x)


class MidBlock(nn.Module):
    """ResNet, self-attention, ResNet at the lowest resolution (diffusers' ``UNetMidBlock2D``)."""

    def __init__(self, channels: int, dropout: float, attention: bool = True) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([AttnBlock(channels)]) if attention else None
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, dropout), ResnetBlock(channels, channels,
                                                                                            dropout)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


def _check_levels(ch: int, ch_mult: Sequence[int], num_res_blocks: int, resolution: int,
                  attn_resolutions: Sequence[int]) -> list[int]:
    """The channels of each level, after checking the options (each error names the option)."""
    if not ch_mult or any(m < 1 for m in ch_mult):
        raise ValueError(f"ch_mult must be a non-empty list of positive multipliers, got {list(ch_mult)}")
    if num_res_blocks < 1:
        raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
    factor = 2 ** (len(ch_mult) - 1)
    if resolution % factor:
        raise ValueError(f"resolution {resolution} is not divisible by the downsampling factor 2**(len(ch_mult) - 1)"
                         f" = {factor}")
    reachable = {resolution // 2**i for i in range(len(ch_mult))}
    if not set(attn_resolutions) <= reachable:
        raise ValueError(f"attn_resolutions {list(attn_resolutions)} must be among the levels' resolutions "
                         f"{sorted(reachable, reverse=True)}")
    channels = [ch * m for m in ch_mult]
    for c in channels:
        _norm(c)
    return channels


class LDMEncoder(Configurable, nn.Module):
    """The latent-diffusion / VQGAN encoder: images ``(B, in_channels, H, W)`` -> ``(B, embed_dim * (2 if double_z
    else 1), H / f, W / f)``, ``f = 2 ** (len(ch_mult) - 1)``.

    Args:
        in_channels: image channels.
        ch: channels of the first level (Stable Diffusion: 128).
        ch_mult: channel multiplier of each level (Stable Diffusion: ``[1, 2, 4, 4]``, f8).
        num_res_blocks: ResNet blocks per level (Stable Diffusion: 2).
        attn_resolutions: resolutions (the input's is ``resolution``) whose blocks are followed by self-attention
            (Stable Diffusion: none; VQGAN f16: ``[16]``); the middle block always has one.
        resolution: the input's height (sets which level ``attn_resolutions`` names; other sizes still run).
        z_channels: channels of the latent before ``quant_conv`` (Stable Diffusion: 4).
        double_z: output a mean and a log-variance per latent channel (the KL autoencoder) instead of one value.
        embed_dim: channels after the 1x1 ``quant_conv`` (``None``: ``z_channels``; a VQ model's code dimension).
        dropout: dropout inside the ResNet blocks.
        quant_conv: end with latent-diffusion's 1x1 ``quant_conv`` (diffusers' ``use_quant_conv``).
        mid_attention: self-attention in the middle block (diffusers' ``mid_block_add_attention``).
    """

    def __init__(self, in_channels: int = 3, ch: int = 128, ch_mult: Sequence[int] = (1, 2, 4, 4),
                 num_res_blocks: int = 2, attn_resolutions: Sequence[int] = (), resolution: int = 256,
                 z_channels: int = 4, double_z: bool = True, embed_dim: int | None = None, dropout: float = 0.0,
                 quant_conv: bool = True, mid_attention: bool = True) -> None:
        super().__init__()
        channels = _check_levels(ch, ch_mult, num_res_blocks, resolution, attn_resolutions)
        self.downsampling_factor = 2 ** (len(ch_mult) - 1)
        self.in_channels, self.block_channels, self.num_res_blocks = in_channels, channels, num_res_blocks
        self.z_channels, self.double_z, self.mid_attention = z_channels, double_z, mid_attention
        out_mult = 2 if double_z else 1
        self.embed_dim = embed_dim or z_channels
        self.out_channels = self.embed_dim * out_mult
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        previous, levels = channels[0], []
        for i, c in enumerate(channels):
            last = i == len(channels) - 1
            levels.append(Level(previous, c, num_res_blocks, resolution // 2**i in attn_resolutions, dropout,
                                None if last else Downsample))
            previous = c
        self.down_blocks = nn.ModuleList(levels)
        self.mid_block = MidBlock(channels[-1], dropout, mid_attention)
        self.conv_norm_out = _norm(channels[-1])
        self.conv_out = nn.Conv2d(channels[-1], z_channels * out_mult, 3, padding=1)
        self.quant_conv = nn.Conv2d(z_channels * out_mult, self.out_channels, 1) if quant_conv else None
        if not quant_conv and self.embed_dim != z_channels:
            raise ValueError(f"embed_dim={embed_dim} differs from z_channels={z_channels}, which needs quant_conv=True")

    def latent_shape(self, image_shape: ImageShape) -> tuple[int, int, int]:
        """``(out_channels, H / f, W / f)`` of images ``(C, H, W)``."""
        _, h, w = image_shape
        f = self.downsampling_factor
        if h % f or w % f:
            raise ValueError(f"image size {h}x{w} is not divisible by the LDM encoder's downsampling factor {f}")
        return self.out_channels, h // f, w // f

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, out_channels, H/f, W/f)
        h = self.conv_in(x)
        for level in self.down_blocks:
            h = level(h)
        h = self.conv_out(F.silu(self.conv_norm_out(self.mid_block(h))))
        return h if self.quant_conv is None else self.quant_conv(h)


class LDMDecoder(Configurable, nn.Module):
    """The latent-diffusion / VQGAN decoder: latents ``(B, embed_dim, h, w)`` -> ``(B, out_channels, h * f, w * f)``.

    Args:
        out_channels: output channels (image channels, times 2 for a per-pixel mean and log-variance).
        ch: as :class:`LDMEncoder` (the same values of all these options give the mirror network).
        ch_mult: as :class:`LDMEncoder`.
        num_res_blocks: as :class:`LDMEncoder`; each level of the decoder has ``num_res_blocks + 1`` ResNet blocks.
        attn_resolutions: as :class:`LDMEncoder`.
        resolution: as :class:`LDMEncoder`.
        z_channels: as :class:`LDMEncoder`.
        embed_dim: as :class:`LDMEncoder`.
        dropout: as :class:`LDMEncoder`.
        mid_attention: as :class:`LDMEncoder`.
        post_quant_conv: start with latent-diffusion's 1x1 ``post_quant_conv`` from ``embed_dim`` to ``z_channels``.
    """

    def __init__(self, out_channels: int = 3, ch: int = 128, ch_mult: Sequence[int] = (1, 2, 4, 4),
                 num_res_blocks: int = 2, attn_resolutions: Sequence[int] = (), resolution: int = 256,
                 z_channels: int = 4, embed_dim: int | None = None, dropout: float = 0.0,
                 post_quant_conv: bool = True, mid_attention: bool = True) -> None:
        super().__init__()
        channels = _check_levels(ch, ch_mult, num_res_blocks, resolution, attn_resolutions)
        self.upsampling_factor = 2 ** (len(ch_mult) - 1)
        self.out_channels, self.block_channels, self.num_res_blocks = out_channels, channels, num_res_blocks
        self.z_channels, self.mid_attention = z_channels, mid_attention
        self.embed_dim = embed_dim or z_channels
        if not post_quant_conv and self.embed_dim != z_channels:
            raise ValueError(f"embed_dim={embed_dim} differs from z_channels={z_channels}, which needs "
                             "post_quant_conv=True")
        self.post_quant_conv = nn.Conv2d(self.embed_dim, z_channels, 1) if post_quant_conv else None
        self.conv_in = nn.Conv2d(z_channels, channels[-1], 3, padding=1)
        self.mid_block = MidBlock(channels[-1], dropout, mid_attention)
        previous, levels = channels[-1], []
        for i, c in enumerate(reversed(channels)):
            level = len(channels) - 1 - i  # resolution // 2**level
            levels.append(Level(previous, c, num_res_blocks + 1, resolution // 2**level in attn_resolutions,
                                dropout, Upsample if level > 0 else None))
            previous = c
        self.up_blocks = nn.ModuleList(levels)
        self.conv_norm_out = _norm(channels[0])
        self.conv_out = nn.Conv2d(channels[0], out_channels, 3, padding=1)

    @property
    def last_layer(self) -> nn.Parameter:
        """The weight of the last convolution (where VQGAN's adaptive weight is measured)."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, embed_dim, h, w) -> (B, out_channels, h*f, w*f)
        h = self.conv_in(z if self.post_quant_conv is None else self.post_quant_conv(z))
        h = self.mid_block(h)
        for level in self.up_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))
