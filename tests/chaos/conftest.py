"""The chaos tests run the scenarios of bench/reliability.py (the figures of docs/reliability.md) and assert on them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_reliability() -> ModuleType:
    """bench/reliability.py as a module (bench/ is not a package)."""
    name = "churnsync_bench_reliability"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "reliability.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def reliability() -> ModuleType:
    return load_reliability()
