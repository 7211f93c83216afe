"""Small shared pieces of the networks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

ImageShape = tuple[int, int, int]

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


def check_image_shape(image_shape: Sequence[int]) -> ImageShape:
    """Validates a ``(C, H, W)`` shape and returns it as a tuple of ints."""
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (channels, height, width) of positive ints, got {tuple(image_shape)}")
    return shape  # type: ignore[return-value]
