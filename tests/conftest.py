"""Shared fixtures: every test that takes `backend` runs against both backends,
`simd` runs the C++ backend once per SIMD variant this CPU supports, and `engine`
runs the NumPy twin and the C++ backend once per SIMD variant."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

import fastxent as fx
import fastxent.api

SUPPORTED_SIMD = fx.backend_info().get("supported_simd") or []


def pytest_report_header(config: pytest.Config) -> str:
    return f"fastxent: {fx.backend_info()}"


@contextmanager
def forced_simd(name: str) -> Iterator[None]:
    """One SIMD variant of the C++ kernels inside the block, the best one after it."""
    fx.set_simd(name)
    try:
        yield
    finally:
        fx.set_simd(None)


@pytest.fixture(params=["cpp", "numpy"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=SUPPORTED_SIMD)
def simd(request: pytest.FixtureRequest) -> Iterator[str]:
    """Forces one SIMD variant of the C++ kernels for the test."""
    with forced_simd(request.param):
        yield str(request.param)


@pytest.fixture(params=["numpy"] + [f"cpp-{s}" for s in SUPPORTED_SIMD])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """The backend name to pass: "numpy", or "cpp" with one SIMD variant forced."""
    name = str(request.param)
    if name == "numpy":
        yield name
        return
    with forced_simd(name.removeprefix("cpp-")):
        yield "cpp"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def api_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of fastxent.api.softmax_cross_entropy (what the adapters call)."""
    calls: list[int] = []
    real = fastxent.api.softmax_cross_entropy

    def counting(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(fastxent.api, "softmax_cross_entropy", counting)
    return calls
