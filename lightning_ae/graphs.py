"""What a model exports: each model declares its graphs (:class:`Graph`) with ``export_graphs()``, and
:mod:`lightning_ae.export` writes, verifies and describes them. A neutral module: it imports no model.

>>> import torch
>>> g = Graph("double", FunctionModule(torch.nn.Identity(), lambda x: 2 * x), lambda n: (torch.ones(n, 3),),
...           ("x",), ("y",))
>>> g.module(*g.make_inputs(2)).tolist()
[[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class Graph:
    """One exported graph: ``module(*make_inputs(n))`` maps a batch of ``n`` to the outputs named ``output_names``.

    Attributes:
        name: the graph's name; the file is ``<name>.onnx`` / ``<name>.pt``.
        module: the module to trace.
        make_inputs: ``n`` -> a tuple of example inputs of batch ``n`` (the batch axis is dynamic).
        input_names: names of the inputs (``images``, ``codes``, ``indices``, ``labels``...).
        output_names: names of the outputs (one or several tensors).
    """

    name: str
    module: nn.Module
    make_inputs: Callable[[int], tuple[torch.Tensor, ...]]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


class FunctionModule(nn.Module):
    """Wraps a function of ``owner`` (e.g. ``model.encode_indices``) as a module to trace; the children of
    ``owner`` are held as submodules so that its parameters and buffers are in the graph (the LightningModule itself
    is not: tracing reads its attributes, and some of them need a Trainer)."""

    def __init__(self, owner: nn.Module, function: Callable[..., Any]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(owner.children())
        self.function = function

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.function(*inputs)


def random_images(model: Any) -> Callable[[int], tuple[torch.Tensor]]:
    """``n`` -> ``(images,)``: uniform images ``(n, *model.image_shape)`` in ``model.pixel_range``."""
    low, high = model.pixel_range
    return lambda n: (torch.rand(n, *model.image_shape, device=model.device) * (high - low) + low,)


def output_shape(function: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...]) -> tuple[int, ...]:
    """The shape of ``function(*inputs)`` without its batch dimension (evaluated without gradient)."""
    with torch.no_grad():
        return tuple(function(*inputs).shape[1:])
