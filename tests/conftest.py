"""Shared fixtures: every test that takes `backend` runs against both backends, and
`simd` runs the C++ backend once per SIMD variant this CPU supports."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import fastxent as fx

SUPPORTED_SIMD = fx.backend_info().get("supported_simd") or []


def pytest_report_header(config: pytest.Config) -> str:
    return f"fastxent: {fx.backend_info()}"


@pytest.fixture(params=["cpp", "numpy"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=SUPPORTED_SIMD)
def simd(request: pytest.FixtureRequest) -> Iterator[str]:
    """Forces one SIMD variant of the C++ kernels for the test, then restores the best."""
    fx.set_simd(request.param)
    try:
        yield str(request.param)
    finally:
        fx.set_simd(None)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
