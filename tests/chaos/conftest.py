"""The chaos tests run the scenarios of bench/reliability.py (the figures of docs/reliability.md) and assert on them."""

from __future__ import annotations

from types import ModuleType

import pytest

from bench_modules import load_bench


@pytest.fixture(scope="session")
def reliability() -> ModuleType:
    return load_bench("reliability")
