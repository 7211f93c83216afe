"""The default encoder and decoder of a variant: a plain function of the image shape, latent size and network."""

from __future__ import annotations

from typing import Literal

from torch import nn

from lightning_ae.batch import ImageShape
from lightning_ae.nets.common import Init
from lightning_ae.nets.conv import ConvDecoder, ConvEncoder
from lightning_ae.nets.mlp import MLPDecoder, MLPEncoder
from lightning_ae.nets.sigmoid import SigmoidEncoder

Network = Literal["mlp", "conv", "sigmoid"]
NETWORKS: tuple[str, ...] = ("mlp", "conv", "sigmoid")


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
) -> tuple[nn.Module, nn.Module]:
    """Builds ``(encoder, decoder)`` for images of ``image_shape`` and a code of size ``latent_dim``.

    Args:
        network: ``mlp`` (:class:`MLPEncoder` / :class:`MLPDecoder`), ``conv`` (residual
            :class:`ConvEncoder` / :class:`ConvDecoder`) or ``sigmoid`` (a single sigmoid layer
            :class:`SigmoidEncoder`, the closed-form contractive penalty's encoder, with the MLP decoder).
        image_shape: ``(C, H, W)`` of the images.
        latent_dim: the decoder's input size (channels of the code grid when ``spatial``).
        encoder_out_mult: encoder outputs per latent dimension (2 for a Gaussian posterior's mean and log-variance).
        decoder_out_mult: decoder output channels per image channel (2 for a learned-variance Gaussian).
        spatial: conv networks keep a ``(latent_dim, h, w)`` grid (the VQ-VAE) instead of a vector.
        hidden_channels, res_channels, num_res_blocks, init: options of the conv networks.

    >>> import torch
    >>> encoder, decoder = default_networks("mlp", (1, 28, 28), 8, encoder_out_mult=2)
    >>> encoder(torch.zeros(5, 1, 28, 28)).shape, decoder(torch.zeros(5, 8)).shape
    (torch.Size([5, 16]), torch.Size([5, 1, 28, 28]))
    """
    out_dim = latent_dim * encoder_out_mult
    if check_network(network) == "mlp":
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
