"""The default encoder and decoder of a variant: a plain function of the image shape, latent size and network."""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from lightning_ae.batch import ImageShape
from lightning_ae.nets.common import Init
from lightning_ae.nets.conv import ConvDecoder, ConvEncoder
from lightning_ae.nets.ldm import LDMDecoder, LDMEncoder
from lightning_ae.nets.mlp import MLPDecoder, MLPEncoder
from lightning_ae.nets.sigmoid import SigmoidEncoder

Network = Literal["mlp", "conv", "sigmoid", "ldm"]
NETWORKS: tuple[str, ...] = ("mlp", "conv", "sigmoid", "ldm")
LDM_OPTIONS: tuple[str, ...] = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "resolution", "z_channels",
                                "dropout", "mid_attention", "quant_conv")
LDM_DEFAULTS: dict[str, Any] = {"ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": []}
"""The ``ldm`` family's default size: f4 (a 32x32 image gives an 8x8 latent), about 1M parameters per network,
small enough to train on a CPU; Stable Diffusion's VAE is ``ch 128, ch_mult [1, 2, 4, 4], num_res_blocks 2``."""


def check_network(network: str) -> str:
    """Raises a ``ValueError`` naming ``network`` unless it is one of :data:`NETWORKS`."""
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")
    return network


def default_networks(
    network: Network,
    image_shape: ImageShape,
    latent_dim: int,
    encoder_out_mult: int = 1,
    decoder_out_mult: int = 1,
    spatial: bool = False,
    hidden_channels: int = 64,
    res_channels: int = 32,
    num_res_blocks: int = 2,
    init: Init = "torch",
    network_options: dict[str, Any] | None = None,
) -> tuple[nn.Module, nn.Module]:
    """Builds ``(encoder, decoder)`` for images of ``image_shape`` and a code of size ``latent_dim``.

    Args:
        network: ``mlp`` (:class:`MLPEncoder` / :class:`MLPDecoder`), ``conv`` (residual
            :class:`ConvEncoder` / :class:`ConvDecoder`) or ``sigmoid`` (a single sigmoid layer
            :class:`SigmoidEncoder`, the closed-form contractive penalty's encoder, with the MLP decoder) or ``ldm``
            (the latent-diffusion :class:`LDMEncoder` / :class:`LDMDecoder`: a ``(latent_dim, H / f, W / f)`` grid).
        image_shape: ``(C, H, W)`` of the images.
        latent_dim: the decoder's input size (channels of the code grid when ``spatial``).
        encoder_out_mult: encoder outputs per latent dimension (2 for a Gaussian posterior's mean and log-variance).
        decoder_out_mult: decoder output channels per image channel (2 for a learned-variance Gaussian).
        spatial: conv networks keep a ``(latent_dim, h, w)`` grid (the VQ-VAE) instead of a vector.
        hidden_channels: hidden channels of the conv networks.
        res_channels: channels inside their residual blocks.
        num_res_blocks: residual blocks of the conv networks.
        init: initialisation of the conv networks.
        network_options: options of the ``ldm`` networks (:data:`LDM_OPTIONS`: ``ch``, ``ch_mult``,
            ``num_res_blocks``, ``attn_resolutions``, ``resolution`` (that ``attn_resolutions`` refer to; default the
            image height), ``z_channels`` (default ``latent_dim``), ``dropout``, ``mid_attention``, ``quant_conv``
            (the 1x1 ``quant_conv`` / ``post_quant_conv`` pair)), over :data:`LDM_DEFAULTS`; only for ``ldm``.

    >>> import torch
    >>> encoder, decoder = default_networks("mlp", (1, 28, 28), 8, encoder_out_mult=2)
    >>> encoder(torch.zeros(5, 1, 28, 28)).shape, decoder(torch.zeros(5, 8)).shape
    (torch.Size([5, 16]), torch.Size([5, 1, 28, 28]))
    """
    out_dim = latent_dim * encoder_out_mult
    if network_options and network != "ldm":
        raise ValueError(f"network_options {sorted(network_options)} apply to network='ldm' only, got {network!r}")
    if check_network(network) == "ldm":
        return ldm_networks(image_shape, latent_dim, encoder_out_mult, decoder_out_mult, network_options)
    if network == "mlp":
        return MLPEncoder(image_shape, out_dim), MLPDecoder(image_shape, latent_dim, out_channels_mult=decoder_out_mult)
    if network == "sigmoid":
        if encoder_out_mult != 1:
            raise ValueError("network='sigmoid' builds a single sigmoid layer, which cannot output "
                             f"{encoder_out_mult} values per latent dimension; use 'mlp' or 'conv'")
        return SigmoidEncoder(image_shape, out_dim), MLPDecoder(image_shape, latent_dim,
                                                                 out_channels_mult=decoder_out_mult)
    arch = {"hidden_channels": hidden_channels, "res_channels": res_channels, "num_res_blocks": num_res_blocks,
            "spatial": spatial, "init": init}
    return (ConvEncoder(image_shape, out_dim, **arch),
            ConvDecoder(image_shape, latent_dim, out_channels_mult=decoder_out_mult, **arch))


def ldm_networks(image_shape: ImageShape, latent_dim: int, encoder_out_mult: int = 1, decoder_out_mult: int = 1,
                 network_options: dict[str, Any] | None = None) -> tuple[LDMEncoder, LDMDecoder]:
    """The ``ldm`` family: an :class:`LDMEncoder` to ``latent_dim`` (``encoder_out_mult`` 2: a Gaussian's mean and
    log-variance, ``double_z``) channels at ``H / f``, and the mirror :class:`LDMDecoder` (see
    :func:`default_networks`)."""
    unknown = sorted(set(network_options or {}) - set(LDM_OPTIONS))
    if unknown:
        raise ValueError(f"unknown network_options {unknown} for network='ldm'; known: {list(LDM_OPTIONS)}")
    if encoder_out_mult not in (1, 2):
        raise ValueError(f"network='ldm' outputs one or two values per latent channel, not {encoder_out_mult}")
    c, h, _ = image_shape
    options = {"z_channels": latent_dim, "resolution": h, **LDM_DEFAULTS, **(network_options or {})}
    quant_conv = options.pop("quant_conv", True)
    common = {**options, "embed_dim": latent_dim}
    return (LDMEncoder(in_channels=c, double_z=encoder_out_mult == 2, quant_conv=quant_conv, **common),
            LDMDecoder(out_channels=c * decoder_out_mult, post_quant_conv=quant_conv, **common))
