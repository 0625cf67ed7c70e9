"""Sparse multi-label targets in CSR form."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


class SparseTargets:
    """Multi-label targets as CSR rows: row i's classes are
    ``indices[indptr[i]:indptr[i+1]]`` with weights ``values`` (1.0 each when None).

    Immutable: the arrays are checked once and held as read-only copies, so a call
    can trust them (docs/spec.md#sparse-targets).

    The kernels never build the dense N x K target: they touch only the listed
    entries. A class listed twice in a row counts twice (its values are summed),
    as in scipy.sparse.

    Example:
        >>> import numpy as np, fastxent as fx
        >>> t = fx.SparseTargets(indptr=[0, 2, 3], indices=[1, 4, 0])
        >>> loss, grad = fx.softmax_cross_entropy(np.zeros((2, 5), np.float32), t)
    """

    __slots__ = ("indices", "indptr", "values")
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray | None

    def __init__(self, indptr: npt.ArrayLike, indices: npt.ArrayLike, values: npt.ArrayLike | None = None):
        ip = np.asarray(indptr)
        ix = np.asarray(indices)
        if ip.ndim != 1 or ip.shape[0] < 1 or ip.dtype.kind not in "iu":
            raise ValueError(f"indptr: expected a 1-D integer array of length N + 1, got {_describe(ip)}")
        if ix.ndim != 1 or (ix.dtype.kind not in "iu" and ix.size > 0):
            raise ValueError(f"indices: expected a 1-D integer array, got {_describe(ix)}")
        if ip.dtype.kind == "u" and ip.size and int(ip.max()) > np.iinfo(np.int64).max:
            raise ValueError(f"indptr: values must fit in int64, got {int(ip.max())}")
        if ix.dtype.kind == "u" and ix.size and int(ix.max()) > np.iinfo(np.int64).max:
            raise ValueError(f"indices: values must fit in int64, got {int(ix.max())}")
        ip = _frozen(ip, np.dtype(np.int64))
        ix = _frozen(ix, np.dtype(np.int64))
        if ip[0] != 0 or ip[-1] != ix.shape[0]:
            raise ValueError(
                f"indptr: must start at 0 and end at len(indices) = {ix.shape[0]}, got {ip[0]} .. {ip[-1]}"
            )
        if ip.shape[0] > 1 and np.any(np.diff(ip) < 0):
            raise ValueError("indptr: must be non-decreasing")
        v = None
        if values is not None:
            v = np.asarray(values)
            if v.ndim != 1 or v.shape[0] != ix.shape[0] or v.dtype.kind not in "fbiu":
                raise ValueError(
                    f"values: expected a 1-D real array of length len(indices) = {ix.shape[0]}, got {_describe(v)}"
                )
            v = _frozen(v, v.dtype.newbyteorder("="))
        # Checked once, here: the kernels trust these arrays, so nothing may change them.
        object.__setattr__(self, "indptr", ip)
        object.__setattr__(self, "indices", ix)
        object.__setattr__(self, "values", v)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"SparseTargets is immutable: build a new one instead of setting {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"SparseTargets is immutable: {name!r} cannot be deleted")

    @property
    def num_rows(self) -> int:
        return int(self.indptr.shape[0] - 1)

    @classmethod
    def from_scipy(cls, matrix: Any) -> SparseTargets:
        """From any scipy.sparse matrix or array (converted to CSR)."""
        if getattr(matrix, "format", "csr") != "csr" and hasattr(matrix, "check_format"):
            # scipy's conversion trusts a compressed structure and can write out of
            # bounds on a broken one; a CSR one goes straight to the checks below.
            try:
                matrix.check_format(full_check=True)
            except (ValueError, IndexError, TypeError) as exc:
                raise ValueError(f"targets: the scipy.sparse {matrix.format} structure is invalid ({exc})") from None
        csr = matrix.tocsr()
        return cls(csr.indptr, csr.indices, csr.data)

    def to_dense(self, num_classes: int, dtype: npt.DTypeLike = np.float64) -> np.ndarray:
        """The dense (N, num_classes) target these rows stand for (for tests and small N)."""
        out = np.zeros((self.num_rows, num_classes), dtype=dtype)
        rows = np.repeat(np.arange(self.num_rows), np.diff(self.indptr))
        np.add.at(out, (rows, self.indices), 1.0 if self.values is None else self.values)
        return out

    def __repr__(self) -> str:
        return f"SparseTargets(rows={self.num_rows}, nnz={self.indices.shape[0]})"


def _frozen(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A read-only copy of a in dtype that cannot be made writable again: it views an
    immutable bytes object (no writable alias of it exists anywhere)."""
    return np.frombuffer(np.ascontiguousarray(a, dtype=dtype).tobytes(), dtype=dtype)


def is_scipy_sparse(obj: Any) -> bool:
    return hasattr(obj, "tocsr") and hasattr(obj, "nnz") and hasattr(obj, "shape")


def _describe(a: np.ndarray) -> str:
    return f"shape {a.shape} dtype {a.dtype}"
