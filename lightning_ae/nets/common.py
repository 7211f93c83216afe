"""Small shared pieces of the networks."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

Init = Literal["torch", "sonnet"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
}


def make_activation(name: str) -> nn.Module:
    """Builds an activation by name; an unknown name is a ``ValueError`` listing the known ones."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"activation={name!r} is not one of {sorted(_ACTIVATIONS)}") from None


@torch.no_grad()
def sonnet_init_(module: nn.Module) -> nn.Module:
    """Re-initialises the conv, transposed-conv and linear layers of ``module`` as sonnet 2 does by default:
    weights from a normal with std ``1/sqrt(fan_in)`` truncated at two std, zero biases (PyTorch's default draws
    uniform weights with std ``1/sqrt(3 fan_in)`` and nonzero biases). ``fan_in`` is the input channels times the
    kernel size, for transposed convolutions too, as in sonnet. Returns ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            fan_in = m.in_channels // m.groups * math.prod(m.kernel_size)
        elif isinstance(m, nn.Linear):
            fan_in = m.in_features
        else:
            continue
        std = 1.0 / math.sqrt(fan_in)
        nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
        if m.bias is not None:
            m.bias.zero_()
    return module


def initialize(module: nn.Module, init: Init) -> nn.Module:
    """Applies the weight initialisation named by ``init`` (``torch``: keep PyTorch's; ``sonnet``:
    :func:`sonnet_init_`); an unknown name is a ``ValueError``."""
    if init == "sonnet":
        return sonnet_init_(module)
    if init != "torch":
        raise ValueError(f"init must be 'torch' or 'sonnet', got {init!r}")
    return module
