"""The examples in the docstrings of the pure functions run, and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["lightning_ae.batch", "lightning_ae.losses", "lightning_ae.distributions",
           "lightning_ae.quantizers.functional", "lightning_ae.corruptions", "lightning_ae.nets.defaults"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
