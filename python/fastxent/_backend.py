"""Loads the compiled kernels, or records why they could not be loaded."""

from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Any

import numpy as np

from ._checks import check_int, describe
from ._version import __version__

MAX_THREADS = 1024  # a bound on the pool, not a recommendation: more threads than cores only wait

_core: ModuleType | None
_import_error: str | None
try:
    from . import _core
    _import_error = None
except ImportError as exc:  # a source checkout without a build, or a broken wheel
    _core = None
    _import_error = str(exc)

_warned = False


def core_or_none() -> ModuleType | None:
    """The extension module, warning once when it is missing and the default was asked for."""
    global _warned
    if _core is None and not _warned:
        _warned = True
        warnings.warn(
            f"fastxent: compiled kernels unavailable ({_import_error}); using the NumPy backend",
            RuntimeWarning,
            stacklevel=3,
        )
    return _core


def require_core() -> ModuleType:
    if _core is None:
        raise RuntimeError(
            f"backend: 'cpp' was requested but the compiled kernels could not be imported: {_import_error}"
        )
    return _core


def backend_info() -> dict[str, Any]:
    """Which backend the default uses, its SIMD level and threads, and the version.

    Example:
        >>> import fastxent as fx
        >>> fx.backend_info()["backend"] in ("cpp", "numpy")
        True
    """
    info: dict[str, Any] = {"version": __version__}
    if _core is None:
        info.update(backend="numpy", simd=None, num_threads=1, import_error=_import_error)
    else:
        info.update(backend="cpp", **_core.info())
    return info


def set_num_threads(n: int | None) -> None:
    """Sets how many threads the C++ kernels use, 1 to MAX_THREADS (None:
    FASTXENT_NUM_THREADS, else all cores).

    Results are bitwise identical for every thread count.

    Example:
        >>> import fastxent as fx
        >>> fx.set_num_threads(1); fx.set_num_threads(None)
    """
    if n is not None:
        n = check_int(n, "n")
        if not 1 <= n <= MAX_THREADS:
            raise ValueError(f"n: expected a thread count in [1, {MAX_THREADS}] or None, got {n}")
    if _core is not None:
        _core.set_num_threads(0 if n is None else n)


def set_simd(name: str | None) -> None:
    """Forces a SIMD variant ('generic', 'avx2', 'avx512'); None restores the best one.

    The environment variable FASTXENT_SIMD does the same at import time.
    """
    core = require_core()
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name: expected a SIMD variant's name (a str) or None, got {describe(name)}")
    info = core.info()
    if name is not None and name not in info["supported_simd"]:
        raise ValueError(f"name: SIMD variant {name!r} is not supported here (supported: {info['supported_simd']})")
    core.set_simd(name if name is not None else info["best_simd"])


# Gradients of at least this many bytes come from the compiled extension's block
# cache (python/_core.cpp, docs/spec.md#gradient-memory); smaller ones from np.empty.
_GRAD_CACHE_MIN_BYTES = None if _core is None else int(_core.grad_cache_info()["min_bytes"])


def empty_grad(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A fresh C-contiguous array for a gradient fastxent returns: from the block
    cache when large and the extension is there, else np.empty. No live array ever
    shares its memory."""
    if _GRAD_CACHE_MIN_BYTES is not None:
        count = 1
        for d in shape:
            count *= d
        if count * dtype.itemsize >= _GRAD_CACHE_MIN_BYTES:
            assert _core is not None
            out: np.ndarray = _core.empty_grad(shape, dtype)
            return out
    return np.empty(shape, dtype=dtype)


def _apply_environment() -> None:
    # FASTXENT_SIMD / FASTXENT_NUM_THREADS are read by the C++ side at first use;
    # an unsupported FASTXENT_SIMD there silently means "best", so say so here.
    wanted = os.environ.get("FASTXENT_SIMD")
    if _core is not None and wanted and wanted not in _core.info()["supported_simd"]:
        warnings.warn(
            f"FASTXENT_SIMD={wanted!r} is not supported here "
            f"(supported: {_core.info()['supported_simd']}); using {_core.info()['simd']!r}",
            RuntimeWarning,
            stacklevel=2,
        )
    cache_mb = os.environ.get("FASTXENT_GRAD_CACHE_MB")
    if _core is not None and cache_mb is not None and not cache_mb.isdigit():
        warnings.warn(
            f"FASTXENT_GRAD_CACHE_MB={cache_mb!r} is not a non-negative integer (MiB); "
            f"using {_core.grad_cache_info()['limit_bytes'] >> 20}",
            RuntimeWarning,
            stacklevel=2,
        )


_apply_environment()
