"""Every argument check, done once before any backend runs.

`prepare_loss` turns the public arguments into a `LossProblem`: 2-D (rows, classes)
views with contiguous columns, targets in one of three kinds, and the output
buffers, so both backends see exactly the same, already-validated problem.
"""

from __future__ import annotations

import operator
from typing import Any, cast

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
    except Exception as exc:  # re-raised with the argument's name
        raise TypeError(f"{name}: expected an array, got {type(obj).__name__} ({exc})") from exc


def _builtin_dtype(a: np.ndarray) -> np.ndarray:
    """The same memory under NumPy's own dtype object for its kind and size. The
    binding matches dtypes by identity, and an equal descriptor (one with metadata,
    made by newbyteorder, or C's long long where int64 is long) is a different
    object. Only for native-order dtypes."""
    canon = np.dtype(f"{a.dtype.kind}{a.dtype.itemsize}")  # e.g. longlong ('q') -> int64
    return a if a.dtype is canon else a.view(canon)


def check_logits(logits: Any, name: str = "logits") -> np.ndarray:
    x = as_array(logits, name)
    if x.dtype.kind == "f" and x.dtype.itemsize in (4, 8) and not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))  # non-native byte order: one converting copy
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{name}: expected at least 1 dimension (the class axis), got a 0-d array")
    return _builtin_dtype(x)


def normalize_axis(axis: Any, ndim: int) -> int:
    try:
        ax = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis: expected an int, got {_describe(axis)}") from None
    if not -ndim <= ax < ndim:
        raise ValueError(f"axis: {ax} is out of bounds for logits with {ndim} dimensions")
    return ax % ndim


def _canonical(r: np.ndarray) -> np.ndarray:
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


def _kernel_layout(r: np.ndarray) -> bool:
    """True when the kernels can read r (rows, classes) in place: unit column stride,
    a row stride in whole items, and aligned data (the C++ side dereferences T*)."""
    return r.flags.aligned and r.strides[0] % r.itemsize == 0 and (r.shape[1] == 1 or r.strides[1] == r.itemsize)


def rows_view(a: np.ndarray, axis: int) -> np.ndarray:
    """(rows, classes) view with the class axis last; copies only when no view exists."""
    if axis != a.ndim - 1:
        a = np.moveaxis(a, axis, -1)
    k = a.shape[-1]
    r = _canonical(a.reshape(-1, k) if a.ndim != 2 else a)
    if not _kernel_layout(r):
        r = r.copy(order="C")  # a fresh buffer: aligned, unit strides (ascontiguousarray keeps a misaligned one)
    return r


def empty_rows(n: int, k: int, dtype: np.dtype) -> np.ndarray:
    """A fresh (n, k) array with strides the kernels accept (also when n == 0)."""
    return _canonical(np.empty((n, k), dtype=dtype))


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
    r = _canonical(r)
    if not _kernel_layout(r):
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


def _shares_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Exact overlap test (bounds first: cheap, and exact only when they overlap)."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=cast(Any, 10**6)))  # numpy's stub allows only -1 / 0
    except np.exceptions.TooHardError:  # NumPy >= 1.25
        return True


def as_writable_array(obj: Any, name: str) -> np.ndarray:
    """A writable NumPy view of obj's own memory, for out= and inplace=True: an
    ndarray, a writable buffer (memoryview, array.array, bytearray), a __dlpack__
    object (a CPU tensor), or an __array__ object that can give its memory without a
    copy. Anything NumPy could only copy is refused, so writes never get lost."""
    if isinstance(obj, np.ndarray):
        arr = obj
    elif hasattr(obj, "__dlpack__") and not hasattr(obj, "__array_interface__"):
        try:
            arr = np.from_dlpack(obj)
        except (TypeError, BufferError, RuntimeError) as exc:
            raise TypeError(f"{name}: {type(obj).__name__} cannot be viewed as a NumPy array without a copy ({exc})") from exc
    else:
        try:
            arr = np.asarray(obj, copy=False)  # NumPy >= 2: raises instead of copying
        except ValueError:
            raise TypeError(
                f"{name}: expected an array whose memory can be written in place (ndarray, writable buffer, "
                f"CPU tensor), got {type(obj).__name__}, which NumPy could only copy"
            ) from None
    if not arr.flags.writeable:
        raise ValueError(f"{name}: is read-only; the gradient is written into it")
    return arr


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {_describe(value)}")
    return bool(value)


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


_FAST_INDEX_DTYPES = (np.dtype(np.int64), np.dtype(np.int32))


def _fast_problem(
    logits: Any, targets: Any, axis: Any, reduction: Any, weight: Any, ignore_index: Any,
    label_smoothing: Any, z_loss: Any, softcap: Any, return_grad: Any, out: Any, inplace: Any,
) -> LossProblem | None:
    """The common call (C-contiguous 2-D logits, class indices or same-dtype dense
    targets, default options, gradient allocated or into a C-contiguous out= that
    overlaps nothing) with only the checks it needs:
    a few microseconds instead of the general path's ten or more. None when any
    argument is off this path; prepare_loss then checks everything."""
    if not (
        type(logits) is np.ndarray and type(targets) is np.ndarray
        and weight is None and softcap is None and inplace is False and return_grad is True
        and (out is None or type(out) is np.ndarray)
        and type(ignore_index) is int and label_smoothing == 0.0 and z_loss == 0.0
        and type(label_smoothing) in (float, int) and type(z_loss) in (float, int)
        and (axis == -1 or axis == 1) and type(axis) is int and reduction in REDUCTIONS
    ):
        return None
    dtype = logits.dtype
    if logits.ndim != 2 or not (dtype is _FLOAT_DTYPES[0] or dtype is _FLOAT_DTYPES[1]):
        return None
    n, k = logits.shape
    if n == 0 or k < 2 or not (logits.flags.c_contiguous and logits.flags.aligned):
        return None  # (k == 1 arrays may have any stride: the general path canonicalises)
    tdt = targets.dtype
    p = LossProblem()
    p.dense = p.index = p.sparse = None
    if tdt is _FAST_INDEX_DTYPES[0] or tdt is _FAST_INDEX_DTYPES[1]:
        if targets.shape != (n,) or not (targets.flags.c_contiguous and targets.flags.aligned):
            return None
        # One reduction checks both bounds: seen unsigned, a negative label is huge.
        unsigned = targets.view(np.uint64 if tdt.itemsize == 8 else np.uint32)
        if int(np.maximum.reduce(unsigned)) >= k:
            return None  # ignored rows or a bad label: the general path tells them apart
        p.kind, p.index = "index", targets
    elif tdt is dtype:
        if targets.shape != (n, k) or not (targets.flags.c_contiguous and targets.flags.aligned):
            return None
        if ignore_index >= 0:
            return None  # refused by the general path
        p.kind, p.dense = "dense", targets
    else:
        return None
    if out is None:
        out = np.empty((n, k), dtype=dtype)
    elif not (
        out.dtype is dtype and out.shape == (n, k) and out.flags.c_contiguous and out.flags.aligned
        and out.flags.writeable and not np.may_share_memory(out, logits) and not np.may_share_memory(out, targets)
    ):
        return None
    p.x = logits
    p.grad = p.grad_result = out
    p.weight = None
    p.lead_shape = (n,)
    p.reduction = reduction
    p.ignore_index = ignore_index
    p.label_smoothing = p.z_loss = p.softcap = 0.0
    return p


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
    return_grad: Any,
    out: Any,
    inplace: Any,
) -> LossProblem:
    fast = _fast_problem(
        logits, targets, axis, reduction, weight, ignore_index, label_smoothing, z_loss, softcap, return_grad,
        out, inplace,
    )
    if fast is not None:
        return fast
    p = LossProblem()
    return_grad = _check_bool(return_grad, "return_grad")
    inplace = _check_bool(inplace, "inplace")
    if inplace:
        # The gradient must land in the caller's memory: no converting copy allowed.
        raw = as_writable_array(logits, "logits (inplace=True)")
        if raw.dtype.kind == "f" and not raw.dtype.isnative:
            raise ValueError(
                f"inplace: logits of dtype {raw.dtype} (non-native byte order) would need a converting copy; "
                "pass native float32/float64"
            )
        x = check_logits(raw)
    else:
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
        w = _builtin_dtype(np.require(w, dtype=dtype, requirements=["C", "A"]))
        if not np.isfinite(w).all():
            bad = int(np.flatnonzero(~np.isfinite(w))[0])
            raise ValueError(f"weight: must be finite, got {w[bad]} for class {bad}")
        p.weight = w

    # ---- targets
    p.dense = p.index = p.sparse = None
    if isinstance(targets, SparseTargets) or is_scipy_sparse(targets):
        st = targets if isinstance(targets, SparseTargets) else SparseTargets.from_scipy(targets)
        n_rows = int(np.prod(lead_shape))
        if is_scipy_sparse(targets) and tuple(targets.shape) != (n_rows, k):
            raise ValueError(f"targets: sparse matrix of shape {tuple(targets.shape)}, expected ({n_rows}, {k})")
        if st.num_rows != n_rows:
            raise ValueError(f"targets: SparseTargets has {st.num_rows} rows, logits have {n_rows}")
        if st.indices.size and (st.indices.min() < 0 or st.indices.max() >= k):
            bad = st.indices[(st.indices < 0) | (st.indices >= k)][0]
            raise IndexError(f"targets: sparse class index {bad} is out of range for {k} classes")
        if p.ignore_index >= 0:
            raise ValueError("ignore_index: is only supported with integer class-index targets")
        # The kernels read these as contiguous, aligned int64 / logits-dtype arrays.
        indptr = _builtin_dtype(np.require(st.indptr, np.int64, ["C", "A"]))
        indices = _builtin_dtype(np.require(st.indices, np.int64, ["C", "A"]))
        values = None if st.values is None else _builtin_dtype(np.require(st.values, dtype, ["C", "A"]))
        if indptr is not st.indptr or indices is not st.indices or values is not st.values:
            st = SparseTargets(indptr, indices, values)
        p.kind, p.sparse = "sparse", st
    else:
        t = as_array(targets, "targets")
        if t.dtype.kind in "iu":
            if t.shape != lead_shape:
                hint = " (multi-hot targets of the logits' shape must be float or bool)" if t.shape == x.shape else ""
                raise ValueError(
                    f"targets: integer class indices must have shape {lead_shape} "
                    f"(logits' shape without axis {ax}), got {t.shape}{hint}"
                )
            idx = t.reshape(-1)
            if idx.size and idx.dtype.kind == "u" and idx.dtype.itemsize == 8 and int(idx.max()) >= k:
                bad = int(idx[idx >= k][0])  # before the cast to int64, which would wrap it
                raise IndexError(
                    f"targets: class index {bad} is out of range for {k} classes "
                    f"(expected 0 <= index < {k}, or ignore_index={p.ignore_index})"
                )
            if idx.dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
                idx = idx.astype(np.int64)
            if not idx.flags.aligned or idx.strides[0] % idx.itemsize:
                idx = idx.copy()  # the kernel steps through it in whole, aligned items
            if idx.size:
                lo, hi = int(idx.min()), int(idx.max())
                if lo < 0 or hi >= k:
                    bad_mask = ((idx < 0) | (idx >= k)) & (idx != p.ignore_index)
                    if bad_mask.any():
                        raise IndexError(
                            f"targets: class index {int(idx[bad_mask][0])} is out of range for {k} classes "
                            f"(expected 0 <= index < {k}, or ignore_index={p.ignore_index})"
                        )
            p.kind, p.index = "index", _builtin_dtype(idx)
        elif t.dtype.kind in "fb":
            if t.shape != x.shape:
                hint = ""
                if t.shape == lead_shape:
                    hint = f"; class indices must have an integer dtype, not {t.dtype}"
                raise ValueError(
                    f"targets: dense (probability / multi-hot) targets must have the logits' shape "
                    f"{x.shape}, got {t.shape}{hint}"
                )
            if p.ignore_index >= 0:
                raise ValueError("ignore_index: is not supported with dense (floating point) targets, as in PyTorch")
            if t.dtype != dtype:
                t = t.astype(dtype)
            p.kind, p.dense = "dense", rows_view(_builtin_dtype(t), ax)
        else:
            raise TypeError(
                f"targets: expected integer class indices, float/bool dense targets or SparseTargets, "
                f"got {_describe(targets) if t.dtype.kind == 'O' else f'dtype {t.dtype}'}"
            )

    # ---- gradient destination
    # Everything the kernels read besides logits: the gradient must not land on it.
    reads = [a for a in (p.dense, p.index, p.weight) if a is not None]
    if p.sparse is not None:
        reads += [a for a in (p.sparse.indptr, p.sparse.indices, p.sparse.values) if a is not None]
    p.grad = p.grad_result = None
    if inplace and out is not None:
        raise ValueError("out: cannot be combined with inplace=True (the gradient goes into logits)")
    if not return_grad and (inplace or out is not None):
        raise ValueError(f"{'inplace' if inplace else 'out'}: requires return_grad=True (it receives the gradient)")
    if inplace:
        p.x = writable_rows_view(x, ax, "logits (inplace=True)")
        for a in reads:
            if _shares_memory(x, a):
                raise ValueError("inplace: logits shares memory with targets or weight, which are read while it is written")
        p.grad, p.grad_result = p.x, logits if isinstance(logits, np.ndarray) else x
    else:
        p.x = rows_view(x, ax)
        if return_grad:
            if out is None:
                moved = np.empty(x.shape[:ax] + x.shape[ax + 1 :] + (k,), dtype=dtype)
                p.grad = _canonical(moved.reshape(-1, k))
                p.grad_result = np.moveaxis(moved, -1, ax) if ax != x.ndim - 1 else moved
            else:
                o = as_writable_array(out, "out")
                if o.shape != x.shape or o.dtype != dtype:
                    raise ValueError(
                        f"out: expected shape {x.shape} and dtype {dtype} (native byte order), "
                        f"got shape {o.shape} and dtype {o.dtype}"
                    )
                o = _builtin_dtype(o)
                for a in [x, p.x, *reads]:
                    if _shares_memory(o, a):
                        raise ValueError(
                            "out: shares memory with an input (logits, targets or weight); "
                            "use inplace=True to write the gradient into logits"
                        )
                p.grad, p.grad_result = writable_rows_view(o, ax, "out"), out if isinstance(out, np.ndarray) else o
    return p
