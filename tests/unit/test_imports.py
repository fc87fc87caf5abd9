"""Every module of the product imports: a stage whose import breaks would only show when a worker
autodiscovers it."""

from __future__ import annotations

import importlib

import pytest

from tests.helpers.imports import modules

PRODUCT = sorted(name for name in modules() if name.split(".")[0] in ("config", "schemas", "pipeline", "agents",
                                                                       "tables", "api"))


@pytest.mark.parametrize("name", PRODUCT)
def test_module_imports(name):
    importlib.import_module(name)
