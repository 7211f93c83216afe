"""Parts that describe themselves: the library's networks and quantizers record the arguments they were built
with, so a model assembled in Python (``VQVAE(quantizer=FSQ(levels=[8, 5, 5, 5]))``) is written to a model folder
or checkpoint as ``class_path`` / ``init_args``, exactly like one built from YAML. A neutral module: it imports no
model.

>>> from lightning_ae.quantizers import FSQ
>>> part_config(FSQ(levels=[8, 5, 5, 5], code_dim=16))
{'class_path': 'lightning_ae.quantizers.fsq.FSQ', 'init_args': {'levels': [8, 5, 5, 5], 'code_dim': 16}}
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from torch import nn


class Configurable:
    """Mixin of the library's ``nn.Module`` parts: each instance keeps the arguments its class's ``__init__`` was
    called with (``init_arguments``), recorded by the outermost ``__init__`` of the instance's own class."""

    init_arguments: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in vars(cls):
            return
        init = cls.__init__
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self: Any, *args: Any, **kw: Any) -> None:
            init(self, *args, **kw)
            if _own_init(type(self)) is cls:  # the instance's class, not a parent called through super()
                bound = signature.bind(self, *args, **kw)
                arguments = dict(bound.arguments)
                arguments.pop(next(iter(signature.parameters)))  # self
                object.__setattr__(self, "init_arguments", arguments)

        cls.__init__ = recording_init  # type: ignore[method-assign]


def _own_init(cls: type) -> type:
    """The class of ``cls``'s MRO whose ``__init__`` an instance of ``cls`` runs first."""
    return next(k for k in cls.__mro__ if "__init__" in vars(k))


def is_library_part(module: nn.Module) -> bool:
    """Whether ``module`` is a :class:`Configurable` part of ``lightning_ae`` (it can be described without code)."""
    return isinstance(module, Configurable) and type(module).__module__.split(".")[0] == "lightning_ae" and hasattr(
        module, "init_arguments")


def part_config(module: nn.Module) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of a library part, its arguments as JSON values (tuples as lists).

    Raises:
        ValueError: for a module that is not a part of ``lightning_ae`` (a user's own class, or a ``torch.nn``
            container), naming its class.
    """
    if not is_library_part(module):
        cls = type(module)
        raise ValueError(f"{cls.__module__}.{cls.__qualname__} is not a part of lightning_ae, so it cannot be "
                         "described without code")
    cls = type(module)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}",
            "init_args": {k: _json(v) for k, v in module.init_arguments.items()}}


def _json(value: Any) -> Any:
    if isinstance(value, nn.Module):
        return part_config(value)
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    return value
