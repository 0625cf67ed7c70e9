"""Type stub for fastxent's compiled kernels (python/_core.cpp).

Private: the public functions in fastxent check every argument and then call these
with the validated LossProblem record (_problem.py) or already-validated 2-D (rows,
classes) arrays whose columns are contiguous.
"""

from typing import Any

import numpy as np

from ._problem import LossProblem

def loss(problem: LossProblem) -> float:
    """Reads the record's fields; fills problem.row_loss (and problem.grad unless
    None); returns the reduced loss."""

def rowwise(op: str, x: np.ndarray, out: np.ndarray) -> None:
    """op: 'logsumexp' (out has one value per row), 'softmax' or 'log_softmax'."""

def vector_exp(isa: str, x: np.ndarray, out: np.ndarray) -> None:
    """Element-wise exp with one SIMD variant's vector exp (for accuracy tests)."""

def memory_floor(x: np.ndarray, y: np.ndarray | None, g: np.ndarray) -> None:
    """The benchmarks' memory floor: g = x + y (or g = -x when y is None) on the
    thread pool, as the kernel splits the same rows (C-contiguous float32/float64)."""

def empty_grad(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A C-contiguous array for a gradient: large ones from the bounded block cache
    (its base is a capsule that returns the block when the array dies)."""

def grad_cache_info() -> dict[str, int]:
    """limit_bytes, cached_bytes, cached_blocks, hits, misses, min_bytes."""

def set_grad_cache_limit(nbytes: int) -> None:
    """At most this many bytes of freed blocks kept (0: none); trims at once."""

def info() -> dict[str, Any]:
    """simd, best_simd, supported_simd, all_simd, num_threads, compiler."""

def set_num_threads(n: int) -> None:
    """0 means FASTXENT_NUM_THREADS, else all cores."""

def set_simd(name: str) -> None:
    """'generic', 'avx2' or 'avx512'; ValueError when this CPU lacks it."""

def xla_ffi_targets() -> dict[str, Any]:
    """name -> PyCapsule of each XLA FFI handler (python/xla_ffi.cpp); empty when built without them."""
