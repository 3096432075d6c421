"""Every module of the two packages imports (a syntax or import error fails here, fast)."""
from __future__ import annotations

import importlib
import pkgutil

import pytest

import agent
import datapath

MODULES = sorted(f"{pkg.__name__}.{m.name}" for pkg in (agent, datapath)
                 for m in pkgutil.iter_modules(pkg.__path__))


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)
