"""Array layouts the kernels can take: (rows, classes) views, strides, alignment,
writable views for out= / inplace=True, and memory-overlap checks.

The kernels read element (i, j) at ``data[i * row_stride + j]``: a unit stride along
the classes, a row stride in whole items, aligned data. Inputs that are not so are
copied once; outputs that are not so are refused (writes must land in the caller's
memory).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np


def canonical(r: np.ndarray) -> np.ndarray:
    """The same (rows, classes) memory with strides the kernels can take literally.

    NumPy gives empty arrays zero strides and leaves the stride of a length-1 axis
    arbitrary; neither says anything about memory, so they are replaced by the
    C-contiguous ones (no element is reached through a stride that was not there).
    """
    n, k = r.shape
    row, col = r.strides
    if r.size == 0:
        row, col = k * r.itemsize, r.itemsize
    else:
        if n == 1:
            row = k * r.itemsize
        if k == 1:
            col = r.itemsize
    if (row, col) != r.strides:
        r = np.lib.stride_tricks.as_strided(r, (n, k), (row, col))
    return r


def kernel_layout(r: np.ndarray) -> bool:
    """True when the kernels can read r (rows, classes) in place: unit column stride,
    a row stride in whole items, and aligned data (the C++ side dereferences T*)."""
    return r.flags.aligned and r.strides[0] % r.itemsize == 0 and (r.shape[1] == 1 or r.strides[1] == r.itemsize)


def rows_view(a: np.ndarray, axis: int) -> np.ndarray:
    """(rows, classes) view with the class axis last; copies only when no view exists."""
    if axis != a.ndim - 1:
        a = np.moveaxis(a, axis, -1)
    k = a.shape[-1]
    r = canonical(a.reshape(-1, k) if a.ndim != 2 else a)
    if not kernel_layout(r):
        r = r.copy(order="C")  # a fresh buffer: aligned, unit strides (ascontiguousarray keeps a misaligned one)
    return r


def empty_rows(n: int, k: int, dtype: np.dtype) -> np.ndarray:
    """A fresh (n, k) array with strides the kernels accept (also when n == 0)."""
    return canonical(np.empty((n, k), dtype=dtype))


def writable_rows_view(a: np.ndarray, axis: int, name: str) -> np.ndarray:
    """Like rows_view but never copies: writes must land in `a` itself, and no two
    elements may share memory (threads write rows concurrently)."""
    if axis != a.ndim - 1:
        a = np.moveaxis(a, axis, -1)
    k = a.shape[-1]
    try:
        r = a.reshape(-1, k) if a.ndim != 2 else a
        if r.size and not np.may_share_memory(r, a):  # reshape had to copy
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{name}: its layout (shape {a.shape}, strides {a.strides}) cannot be viewed as rows of classes "
            "without a copy; pass an array that is contiguous along the class axis"
        ) from None
    r = canonical(r)
    if not kernel_layout(r):
        what = "is not aligned to its item size" if not r.flags.aligned else f"has class-axis stride {r.strides[1]} bytes"
        raise ValueError(
            f"{name}: must be contiguous along the class axis and aligned (it {what}); "
            "the gradient is written without a copy"
        )
    n = r.shape[0]
    if n > 1 and abs(r.strides[0]) < k * r.itemsize:
        raise ValueError(
            f"{name}: its rows overlap in memory (row stride {r.strides[0]} bytes < {k} classes x {r.itemsize} bytes); "
            "every gradient element needs its own memory"
        )
    return r


def shares_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Exact overlap test (bounds first: cheap, and exact only when they overlap)."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=cast(Any, 10**6)))  # numpy's stub allows only -1 / 0
    except np.exceptions.TooHardError:
        return True


def refuse_overlap(dest: np.ndarray, reads: list[np.ndarray], message: str) -> None:
    """ValueError(message) when dest shares memory with any array in reads.

    `reads` holds the caller's own arrays as passed, not only the converted copies
    the kernels get: a destination inside an argument that was converted (another
    dtype, byte order or layout) would otherwise be overwritten unnoticed."""
    for a in reads:
        if shares_memory(dest, a):
            raise ValueError(message)
