"""The network building blocks: sonnet 2's default initialisation of the conv networks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_ae import VQVAE
from lightning_ae.nets import ConvDecoder, ConvEncoder
from lightning_ae.nets.common import sonnet_init_

TRUNCATED_STD = 0.8796  # std of a unit normal truncated at +-2


def test_sonnet_init_scales_by_fan_in() -> None:
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Conv2d(64, 128, 3), nn.ConvTranspose2d(128, 32, 4), nn.Linear(256, 512))
    sonnet_init_(layers)
    for layer, fan_in in zip(layers, (64 * 9, 128 * 16, 256), strict=True):  # transposed: input channels too
        std = 1 / math.sqrt(fan_in)
        assert layer.weight.std().item() == pytest.approx(TRUNCATED_STD * std, rel=0.03)
        assert layer.weight.abs().max().item() <= 2 * std
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


@pytest.mark.parametrize("net", [ConvEncoder, ConvDecoder])
def test_conv_networks_take_the_init_option(net: type[nn.Module]) -> None:
    built = net((3, 32, 32), 16, spatial=True, init="sonnet")
    biases = [m.bias for m in built.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert biases and all(torch.equal(b, torch.zeros_like(b)) for b in biases)
    default = net((3, 32, 32), 16, spatial=True)
    assert any(m.bias.abs().sum() > 0 for m in default.modules() if isinstance(m, nn.Conv2d))
    with pytest.raises(ValueError, match="init must be"):
        net((3, 32, 32), 16, init="xavier")


def test_vqvae_weight_init_reaches_its_networks() -> None:
    model = VQVAE(image_shape=(3, 32, 32), hidden_channels=16, res_channels=8, weight_init="sonnet")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert len(convs) == 15 and all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in convs)
