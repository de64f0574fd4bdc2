"""The examples in docstrings run: a doctest that drifts from the code fails here."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ("core.io", "core.names", "generators.common.autoencoder", "generators.ldm3d.conditioning", "cohorts.captions")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (see the output above)"
