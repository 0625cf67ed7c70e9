"""Every argument check, done once before any backend runs.

`prepare_loss` turns the public arguments into a `LossProblem`: 2-D (rows, classes)
views with contiguous columns, targets in one of three kinds, and the output
buffers, so both backends see exactly the same, already-validated problem.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from .sparse import SparseTargets, is_scipy_sparse

REDUCTIONS = ("none", "sum", "mean")
BACKENDS = (None, "auto", "cpp", "numpy")
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class LossProblem:
    """A validated call: what the kernels compute, plus how to shape the results."""

    __slots__ = (
        "dense",
        "grad",
        "grad_result",
        "ignore_index",
        "index",
        "kind",
        "label_smoothing",
        "lead_shape",
        "reduction",
        "softcap",
        "sparse",
        "weight",
        "x",
        "z_loss",
    )

    x: np.ndarray
    kind: str
    dense: np.ndarray | None
    index: np.ndarray | None
    sparse: SparseTargets | None
    weight: np.ndarray | None
    grad: np.ndarray | None
    grad_result: np.ndarray | None
    lead_shape: tuple[int, ...]
    reduction: str
    ignore_index: int
    label_smoothing: float
    z_loss: float
    softcap: float


def _describe(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"an array of shape {a.shape} and dtype {a.dtype}"
    return f"{type(a).__name__} {a!r}"[:120]


def as_array(obj: Any, name: str) -> np.ndarray:
    """A NumPy view of anything NumPy can view without copying (arrays, buffers,
    __array__, __dlpack__ such as CPU tensors)."""
    if isinstance(obj, np.ndarray):
        return obj
    if hasattr(obj, "__dlpack__") and not hasattr(obj, "__array_interface__"):
        try:
            return np.from_dlpack(obj)
        except (TypeError, BufferError, RuntimeError):
            pass  # e.g. a tensor that requires grad: fall through to __array__
    try:
        return np.asarray(obj)
    except Exception as exc:  # noqa: BLE001 - re-raised with the argument's name
        raise TypeError(f"{name}: expected an array, got {type(obj).__name__} ({exc})") from exc


def check_logits(logits: Any, name: str = "logits") -> np.ndarray:
    x = as_array(logits, name)
    if x.dtype not in _FLOAT_DTYPES:
        if x.dtype.kind == "f" and x.dtype.itemsize in (4, 8) and not x.dtype.isnative:
            return x.astype(x.dtype.newbyteorder("="))  # non-native byte order: one converting copy
        raise TypeError(f"{name}: expected float32 or float64, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{name}: expected at least 1 dimension (the class axis), got a 0-d array")
    return x


def normalize_axis(axis: Any, ndim: int) -> int:
    try:
        ax = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis: expected an int, got {_describe(axis)}") from None
    if not -ndim <= ax < ndim:
        raise ValueError(f"axis: {ax} is out of bounds for logits with {ndim} dimensions")
    return ax % ndim


def rows_view(a: np.ndarray, axis: int) -> np.ndarray:
    """(rows, classes) view with the class axis last; copies only when no view exists."""
    if axis != a.ndim - 1:
        a = np.moveaxis(a, axis, -1)
    k = a.shape[-1]
    r = a.reshape(-1, k) if a.ndim != 2 else a
    if k > 1 and r.strides[1] != r.itemsize or r.strides[0] % r.itemsize:
        r = np.ascontiguousarray(r)
    return r


def writable_rows_view(a: np.ndarray, axis: int, name: str) -> np.ndarray:
    """Like rows_view but never copies: writes must land in `a` itself."""
    if axis != a.ndim - 1:
        a = np.moveaxis(a, axis, -1)
    k = a.shape[-1]
    try:
        r = a.reshape(-1, k) if a.ndim != 2 else a
        if r.size and not np.may_share_memory(r, a):  # reshape had to copy
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{name}: its layout cannot be viewed as rows of classes without a copy; "
            "pass an array that is contiguous along the class axis"
        ) from None
    if k > 1 and r.strides[1] != r.itemsize or r.strides[0] % r.itemsize:
        raise ValueError(f"{name}: must be contiguous along the class axis (stride {r.strides[-1]} bytes)")
    return r


def check_reduction(reduction: Any) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of 'none', 'sum', 'mean', got {reduction!r}")
    return str(reduction)


def check_backend(backend: Any) -> str | None:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected None, 'auto', 'cpp' or 'numpy', got {backend!r}")
    return None if backend == "auto" else backend


def _check_float_option(value: Any, name: str, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a float, got {_describe(value)}")
    v = float(value)
    if not (lo < v if lo_open else lo <= v) or not v <= hi:
        lo_s = f"({lo}" if lo_open else f"[{lo}"
        raise ValueError(f"{name}: expected a value in {lo_s}, {hi}], got {value!r}")
    return v


def prepare_loss(
    logits: Any,
    targets: Any,
    *,
    axis: Any,
    reduction: Any,
    weight: Any,
    ignore_index: Any,
    label_smoothing: Any,
    z_loss: Any,
    softcap: Any,
    return_grad: bool,
    out: Any,
    inplace: bool,
) -> LossProblem:
    p = LossProblem()
    x = check_logits(logits)
    ax = normalize_axis(axis, x.ndim)
    k = x.shape[ax]
    if k == 0:
        raise ValueError(f"logits: the class axis ({ax}) has length 0; at least one class is needed")
    p.reduction = check_reduction(reduction)
    lead_shape = x.shape[:ax] + x.shape[ax + 1 :]
    p.lead_shape = lead_shape
    dtype = x.dtype

    # ---- options
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index: expected an int, got {_describe(ignore_index)}")
    p.ignore_index = int(ignore_index)
    p.label_smoothing = _check_float_option(label_smoothing, "label_smoothing", 0.0, 1.0)
    p.z_loss = _check_float_option(z_loss, "z_loss", 0.0, float(np.finfo(np.float64).max))
    if softcap is None:
        p.softcap = 0.0
    else:
        p.softcap = _check_float_option(softcap, "softcap", 0.0, float(np.finfo(np.float64).max), lo_open=True)
    if weight is None:
        p.weight = None
    else:
        w = as_array(weight, "weight")
        if w.shape != (k,) or w.dtype.kind not in "fiu":
            raise ValueError(f"weight: expected a real array of shape ({k},) (one per class), got {_describe(w)}")
        p.weight = np.ascontiguousarray(w, dtype=dtype)

    # ---- targets
    p.dense = p.index = p.sparse = None
    if isinstance(targets, SparseTargets) or is_scipy_sparse(targets):
        t = targets if isinstance(targets, SparseTargets) else SparseTargets.from_scipy(targets)
        n_rows = int(np.prod(lead_shape))
        if is_scipy_sparse(targets) and tuple(targets.shape) != (n_rows, k):
            raise ValueError(f"targets: sparse matrix of shape {tuple(targets.shape)}, expected ({n_rows}, {k})")
        if t.num_rows != n_rows:
            raise ValueError(f"targets: SparseTargets has {t.num_rows} rows, logits have {n_rows}")
        if t.indices.size and (t.indices.min() < 0 or t.indices.max() >= k):
            bad = t.indices[(t.indices < 0) | (t.indices >= k)][0]
            raise IndexError(f"targets: sparse class index {bad} is out of range for {k} classes")
        if p.ignore_index >= 0:
            raise ValueError("ignore_index: is only supported with integer class-index targets")
        if t.values is not None and t.values.dtype != dtype:
            t = SparseTargets(t.indptr, t.indices, np.ascontiguousarray(t.values, dtype=dtype))
        p.kind, p.sparse = "sparse", t
    else:
        t = as_array(targets, "targets")
        if t.dtype.kind in "iu":
            if t.shape != lead_shape:
                raise ValueError(
                    f"targets: integer class indices must have shape {lead_shape} "
                    f"(logits' shape without axis {ax}), got {t.shape}"
                )
            idx = t.reshape(-1)
            if idx.dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
                idx = idx.astype(np.int64)
            if idx.size:
                lo, hi = int(idx.min()), int(idx.max())
                if lo < 0 or hi >= k:
                    bad_mask = ((idx < 0) | (idx >= k)) & (idx != p.ignore_index)
                    if bad_mask.any():
                        raise IndexError(
                            f"targets: class index {int(idx[bad_mask][0])} is out of range for {k} classes "
                            f"(expected 0 <= index < {k}, or ignore_index={p.ignore_index})"
                        )
            p.kind, p.index = "index", idx
        elif t.dtype.kind in "fb":
            if t.shape != x.shape:
                raise ValueError(
                    f"targets: dense (probability / multi-hot) targets must have the logits' shape "
                    f"{x.shape}, got {t.shape}"
                )
            if p.ignore_index >= 0:
                raise ValueError("ignore_index: is not supported with dense (floating point) targets, as in PyTorch")
            if t.dtype != dtype:
                t = t.astype(dtype)
            p.kind, p.dense = "dense", rows_view(t, ax)
        else:
            raise TypeError(
                f"targets: expected integer class indices, float/bool dense targets or SparseTargets, "
                f"got dtype {t.dtype}"
            )

    # ---- gradient destination
    p.grad = p.grad_result = None
    if inplace and out is not None:
        raise ValueError("out: cannot be combined with inplace=True (the gradient goes into logits)")
    if inplace and not return_grad:
        raise ValueError("inplace: requires return_grad=True")
    if inplace:
        if isinstance(logits, np.ndarray) and x is not logits:
            raise ValueError("inplace: logits must be float32/float64 in native byte order (no converting copy)")
        if not isinstance(logits, np.ndarray) and x.base is None:
            raise ValueError(f"inplace: logits must be an array whose memory can be written, got {type(logits).__name__}")
        if not x.flags.writeable:
            raise ValueError("inplace: logits is read-only")
        p.x = writable_rows_view(x, ax, "logits (inplace=True)")
        p.grad, p.grad_result = p.x, x
    else:
        p.x = rows_view(x, ax)
        if return_grad:
            if out is None:
                moved = np.empty(x.shape[:ax] + x.shape[ax + 1 :] + (k,), dtype=dtype)
                p.grad = moved.reshape(-1, k)
                p.grad_result = np.moveaxis(moved, -1, ax) if ax != x.ndim - 1 else moved
            else:
                if not isinstance(out, np.ndarray):
                    raise TypeError(f"out: expected a NumPy array, got {type(out).__name__}")
                if out.shape != x.shape or out.dtype != dtype:
                    raise ValueError(
                        f"out: expected shape {x.shape} and dtype {dtype}, got shape {out.shape} dtype {out.dtype}"
                    )
                if not out.flags.writeable:
                    raise ValueError("out: is read-only")
                inputs = [x, *(a for a in (p.dense, p.index, p.weight) if a is not None)]
                if any(np.may_share_memory(out, a) for a in inputs):
                    raise ValueError("out: overlaps an input; use inplace=True to write the gradient into logits")
                p.grad, p.grad_result = writable_rows_view(out, ax, "out"), out
    return p
