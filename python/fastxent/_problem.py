"""LossProblem: the one record of a validated loss call, and prepare_loss, which builds it.

Both backends compute from the same record: the binding (python/_core.cpp) reads
its fields by name into ``fastxent::Problem<T>``, and the NumPy twin reads the same
fields. Adding an option is one field here, one in ``Problem<T>``, one check in
_checks.py, one line in the binding.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ._backend import empty_grad
from ._checks import (
    FLOAT_DTYPES,
    LossOptions,
    as_array,
    as_writable_array,
    builtin_dtype,
    check_bool,
    check_int,
    check_logits,
    check_options,
    compute_dtype,
    describe,
    is_16bit,
    is_float_like,
    normalize_axis,
)
from ._layout import canonical, refuse_overlap, rows_view, writable_rows_view
from .sparse import SparseTargets, is_scipy_sparse


class LossProblem:
    """A validated call: what the kernels read and write, and how to shape the results.

    Arrays the kernels read or write are (rows, classes) with a unit column stride,
    a row stride in whole items, aligned, in NumPy's own dtype objects.
    """

    __slots__ = (
        "class_index",
        "class_offset",
        "dense_targets",
        "given_stats",
        "grad",
        "grad_result",
        "ignore_index",
        "label_smoothing",
        "lead_shape",
        "logits",
        "reduction",
        "row_grad_scale",
        "row_loss",
        "row_stats",
        "softcap",
        "sparse_indices",
        "sparse_indptr",
        "sparse_values",
        "target_kind",
        "total_classes",
        "weight",
        "z_loss",
    )

    def __init__(
        self,
        *,
        logits: np.ndarray,
        target_kind: str,
        options: LossOptions,
        row_loss: np.ndarray,
        grad: np.ndarray | None,
        grad_result: np.ndarray | None,
        lead_shape: tuple[int, ...],
        dense_targets: np.ndarray | None = None,
        class_index: np.ndarray | None = None,
        sparse_indptr: np.ndarray | None = None,
        sparse_indices: np.ndarray | None = None,
        sparse_values: np.ndarray | None = None,
        weight: np.ndarray | None = None,
    ) -> None:
        # C below is the compute dtype: the logits' for float32/float64, float32 for
        # float16/bfloat16 logits (docs/spec.md#low-precision)
        self.logits = logits  # (N, K) float32/float64/float16/bfloat16
        self.target_kind = target_kind  # "dense", "index" or "sparse"
        self.dense_targets = dense_targets  # dense: (N, K), logits' dtype (16-bit logits: or float32)
        self.class_index = class_index  # index: (N,) int32 or int64, in [0, K) or ignore_index
        self.sparse_indptr = sparse_indptr  # sparse (CSR): (N + 1,) int64, contiguous
        self.sparse_indices = sparse_indices  # (nnz,) int64 in [0, K), contiguous
        self.sparse_values = sparse_values  # (nnz,) C, or None for ones
        self.weight = weight  # (K,) C, finite, or None
        self.reduction = options.reduction
        self.ignore_index = options.ignore_index
        self.label_smoothing = options.label_smoothing
        self.z_loss = options.z_loss
        self.softcap = options.softcap  # 0.0 = off
        self.row_loss = row_loss  # written: (N,) C, contiguous
        self.grad = grad  # written: (N, K) logits' dtype, or None for the loss only
        # docs/spec.md#row-statistics; set after construction by the callers that use them
        self.row_grad_scale: np.ndarray | None = None  # (N,) logits' dtype: per-row gradient multiplier
        self.row_stats: np.ndarray | None = None  # written when set: (N, 4) [M, log S, Q, D]
        self.given_stats: np.ndarray | None = None  # read when set: gradient only, from these (N, 4)
        # docs/spec.md#vocabulary-shards: these K classes are the global classes
        # [class_offset, class_offset + K) of total_classes (0: not a shard); index
        # targets then hold global classes
        self.class_offset = 0
        self.total_classes = 0
        # Python only: the gradient as returned (logits' layout), the loss's shape for "none"
        self.grad_result = grad_result
        self.lead_shape = lead_shape


class _Targets(NamedTuple):
    kind: str
    dense: np.ndarray | None = None
    class_index: np.ndarray | None = None
    indptr: np.ndarray | None = None
    indices: np.ndarray | None = None
    values: np.ndarray | None = None
    caller_arrays: tuple[np.ndarray, ...] = ()  # the caller's own memory, for overlap checks


_FAST_INDEX_DTYPES = (np.dtype(np.int64), np.dtype(np.int32))
_PLAIN_NUMBERS = (float, int)


def _fast_problem(
    logits: Any, targets: Any, axis: Any, reduction: Any, weight: Any, ignore_index: Any, label_smoothing: Any,
    z_loss: Any, softcap: Any, return_grad: Any, out: Any, inplace: Any,
) -> LossProblem | None:
    """The common call (C-contiguous 2-D logits, class indices in range or same-dtype
    dense targets, no weight/smoothing/z-loss/cap, gradient allocated or into a
    C-contiguous out= that overlaps nothing) with only the checks it needs: a few
    microseconds instead of the general path's ten or more. The options go through
    the same check_options. None sends the call to the general path."""
    if not (
        type(logits) is np.ndarray and type(targets) is np.ndarray and weight is None and softcap is None
        and inplace is False and return_grad is True and (out is None or type(out) is np.ndarray)
        and type(axis) is int and (axis == -1 or axis == 1)
        and type(label_smoothing) in _PLAIN_NUMBERS and label_smoothing == 0
        and type(z_loss) in _PLAIN_NUMBERS and z_loss == 0
    ):
        return None
    dtype = logits.dtype
    if logits.ndim != 2 or not (dtype is FLOAT_DTYPES[0] or dtype is FLOAT_DTYPES[1]):
        return None
    n, k = logits.shape
    if n == 0 or k < 2 or not (logits.flags.c_contiguous and logits.flags.aligned):
        return None  # (k == 1 arrays may have any stride: the general path canonicalises)
    if not (targets.flags.c_contiguous and targets.flags.aligned):
        return None
    opts = check_options(dtype, reduction, ignore_index, label_smoothing, z_loss, softcap)
    tdt = targets.dtype
    dense = index = None
    if tdt is _FAST_INDEX_DTYPES[0] or tdt is _FAST_INDEX_DTYPES[1]:
        if targets.shape != (n,):
            return None
        # One reduction checks both bounds: seen unsigned, a negative label is huge.
        unsigned = targets.view(np.uint64 if tdt.itemsize == 8 else np.uint32)
        if int(np.maximum.reduce(unsigned)) >= k:
            return None  # ignored rows or a bad label: the general path tells them apart
        kind, index = "index", targets
    elif tdt is dtype and targets.shape == (n, k) and opts.ignore_index < 0:
        kind, dense = "dense", targets
    else:
        return None
    if out is None:
        out = empty_grad((n, k), dtype)
    elif not (
        out.dtype is dtype and out.shape == (n, k) and out.flags.c_contiguous and out.flags.aligned
        and out.flags.writeable and not np.may_share_memory(out, logits) and not np.may_share_memory(out, targets)
    ):
        return None
    return LossProblem(
        logits=logits, target_kind=kind, dense_targets=dense, class_index=index, options=opts,
        row_loss=np.empty(n, dtype=dtype), grad=out, grad_result=out, lead_shape=(n,),
    )


def _weight(weight: Any, k: int, dtype: np.dtype) -> tuple[np.ndarray | None, tuple[np.ndarray, ...]]:
    """K finite class weights in the compute dtype (the logits', float32 for 16-bit
    logits), contiguous; and the caller's array."""
    if weight is None:
        return None, ()
    raw = as_array(weight, "weight")
    dtype = compute_dtype(dtype)
    if raw.shape != (k,) or not (raw.dtype.kind in "iu" or is_float_like(raw.dtype)):
        raise ValueError(f"weight: expected a real array of shape ({k},) (one per class), got {describe(raw)}")
    w = builtin_dtype(np.require(raw, dtype=dtype, requirements=["C", "A"]))
    if not np.isfinite(w).all():
        bad = int(np.flatnonzero(~np.isfinite(w))[0])
        raise ValueError(f"weight: must be finite, got {w[bad]} for class {bad}")
    return w, (raw,)


def _caller_sparse_arrays(targets: Any) -> tuple[np.ndarray, ...]:
    """The arrays a scipy.sparse matrix holds (data, indices, indptr, or coords)."""
    found: list[np.ndarray] = []
    attributes = vars(targets).values() if hasattr(targets, "__dict__") else ()
    for v in attributes:
        found += [a for a in (v if isinstance(v, tuple) else (v,)) if isinstance(a, np.ndarray)]
    return tuple(found)


def _sparse_targets(targets: Any, n: int, k: int, dtype: np.dtype, opts: LossOptions) -> _Targets:
    scipy = not isinstance(targets, SparseTargets)
    if scipy and tuple(targets.shape) != (n, k):
        raise ValueError(f"targets: sparse matrix of shape {tuple(targets.shape)}, expected ({n}, {k})")
    st = SparseTargets.from_scipy(targets) if scipy else targets
    if st.num_rows != n:
        raise ValueError(f"targets: SparseTargets has {st.num_rows} rows, logits have {n}")
    if st.indices.size and (st.indices.min() < 0 or st.indices.max() >= k):
        bad = st.indices[(st.indices < 0) | (st.indices >= k)][0]
        raise IndexError(f"targets: sparse class index {bad} is out of range for {k} classes")
    if opts.ignore_index >= 0:
        raise ValueError("ignore_index: is only supported with integer class-index targets")
    # SparseTargets holds read-only int64 copies (checked when it was built); the
    # kernels read values in the compute dtype (the logits', float32 for 16-bit logits).
    values = None if st.values is None else builtin_dtype(np.require(st.values, compute_dtype(dtype), ["C", "A"]))
    caller = _caller_sparse_arrays(targets) if scipy else ()
    return _Targets("sparse", indptr=st.indptr, indices=st.indices, values=values, caller_arrays=caller)


def _index_out_of_range(bad: int, k: int, opts: LossOptions) -> IndexError:
    return IndexError(
        f"targets: class index {bad} is out of range for {k} classes "
        f"(expected 0 <= index < {k}, or ignore_index={opts.ignore_index})"
    )


def _index_targets(
    t: np.ndarray, x: np.ndarray, ax: int, lead_shape: tuple[int, ...], opts: LossOptions, label_classes: int
) -> _Targets:
    k = label_classes  # the logits' classes, or all of them for a vocabulary shard's global labels
    if t.shape != lead_shape:
        hint = " (multi-hot targets of the logits' shape must be float or bool)" if t.shape == x.shape else ""
        raise ValueError(
            f"targets: integer class indices must have shape {lead_shape} "
            f"(logits' shape without axis {ax}), got {t.shape}{hint}"
        )

    idx = t.reshape(-1)
    if idx.size and idx.dtype.kind == "u" and idx.dtype.itemsize == 8 and int(idx.max()) >= k:
        raise _index_out_of_range(int(idx[idx >= k][0]), k, opts)  # before the cast to int64, which would wrap it
    if not idx.dtype.isnative or idx.dtype not in _FAST_INDEX_DTYPES:
        idx = idx.astype(np.int64)
    if not idx.flags.aligned or idx.strides[0] % idx.itemsize:
        idx = idx.copy()  # the kernel steps through it in whole, aligned items
    if idx.size:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= k:
            bad_mask = ((idx < 0) | (idx >= k)) & (idx != opts.ignore_index)
            if bad_mask.any():
                raise _index_out_of_range(int(idx[bad_mask][0]), k, opts)
    return _Targets("index", class_index=builtin_dtype(idx), caller_arrays=(t,))


def _dense_targets(t: np.ndarray, x: np.ndarray, ax: int, lead_shape: tuple[int, ...], opts: LossOptions) -> _Targets:
    if t.shape != x.shape:
        hint = f"; class indices must have an integer dtype, not {t.dtype}" if t.shape == lead_shape else ""
        raise ValueError(
            f"targets: dense (probability / multi-hot) targets must have the logits' shape "
            f"{x.shape}, got {t.shape}{hint}"
        )
    if opts.ignore_index >= 0:
        raise ValueError("ignore_index: is not supported with dense (floating point) targets, as in PyTorch")
    if t.dtype.isnative and (t.dtype == x.dtype or (t.dtype == np.float32 and is_16bit(x.dtype))):
        y = t  # 16-bit logits: targets in their dtype or in float32, read as they are
    else:
        y = t.astype(compute_dtype(x.dtype))
    return _Targets("dense", dense=rows_view(builtin_dtype(y), ax), caller_arrays=(t,))


def _targets(
    targets: Any, x: np.ndarray, ax: int, lead_shape: tuple[int, ...], opts: LossOptions, label_classes: int
) -> _Targets:
    if isinstance(targets, SparseTargets) or is_scipy_sparse(targets):
        return _sparse_targets(targets, int(np.prod(lead_shape)), x.shape[ax], x.dtype, opts)
    t = as_array(targets, "targets")
    if t.dtype.kind in "iu":
        return _index_targets(t, x, ax, lead_shape, opts, label_classes)
    if t.dtype.kind in "fb" or is_float_like(t.dtype):
        return _dense_targets(t, x, ax, lead_shape, opts)
    raise TypeError(
        f"targets: expected integer class indices, float/bool dense targets or SparseTargets, "
        f"got {describe(targets) if t.dtype.kind == 'O' else f'dtype {t.dtype}'}"
    )


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
    vocab_shard: tuple[Any, Any] | None = None,
) -> LossProblem:
    """Checks every argument of softmax_cross_entropy and builds the record.
    vocab_shard: (vocab_start, num_classes) when the logits are a vocabulary shard
    (docs/spec.md#vocabulary-shards)."""
    args = (logits, targets, axis, reduction, weight, ignore_index, label_smoothing, z_loss, softcap, return_grad, out,
            inplace)
    if vocab_shard is not None:
        return _general_problem(*args, vocab_shard=vocab_shard)
    return _fast_problem(*args) or _general_problem(*args)


def _check_vocab_shard(vocab_shard: tuple[Any, Any], k: int) -> tuple[int, int]:
    """(vocab_start, num_classes) of a shard of k classes, checked."""
    start, total = check_int(vocab_shard[0], "vocab_start"), check_int(vocab_shard[1], "num_classes")
    if total < 1:
        raise ValueError(f"num_classes: expected the number of classes of the whole vocabulary (>= 1), got {total}")
    if total < k:
        raise ValueError(f"num_classes: the whole vocabulary's {total} classes cannot hold this shard's {k} classes")
    if start < 0 or start + k > total:
        raise ValueError(
            f"vocab_start: this shard's {k} classes from {start} must lie within the {total} classes "
            f"(expected 0 <= vocab_start <= {total - k})"
        )
    return start, total


def _general_problem(
    logits: Any, targets: Any, axis: Any, reduction: Any, weight: Any, ignore_index: Any, label_smoothing: Any,
    z_loss: Any, softcap: Any, return_grad: Any, out: Any, inplace: Any, vocab_shard: tuple[Any, Any] | None = None,
) -> LossProblem:
    """Every check, for any argument: what _fast_problem skips when it can."""
    return_grad = check_bool(return_grad, "return_grad")
    inplace = check_bool(inplace, "inplace")
    if inplace:
        # The gradient must land in the caller's memory: no converting copy allowed.
        caller_logits = as_writable_array(logits, "logits (inplace=True)")
        if caller_logits.dtype.kind == "f" and not caller_logits.dtype.isnative:
            raise ValueError(
                f"inplace: logits of dtype {caller_logits.dtype} (non-native byte order) would need a converting "
                "copy; pass native float32/float64/float16"
            )
    else:
        caller_logits = as_array(logits, "logits")
    x = check_logits(caller_logits)
    ax = normalize_axis(axis, x.ndim)
    k = x.shape[ax]
    if k == 0:
        raise ValueError(f"logits: the class axis ({ax}) has length 0; at least one class is needed")
    opts = check_options(x.dtype, reduction, ignore_index, label_smoothing, z_loss, softcap)

    lead_shape = x.shape[:ax] + x.shape[ax + 1 :]
    class_offset, total_classes = _check_vocab_shard(vocab_shard, k) if vocab_shard is not None else (0, 0)
    w, caller_weight = _weight(weight, k, x.dtype)
    t = _targets(targets, x, ax, lead_shape, opts, total_classes or k)
    # Everything the kernels read besides logits, as converted and as passed: the
    # gradient must land on none of it.
    reads = [a for a in (t.dense, t.class_index, t.indptr, t.indices, t.values, w) if a is not None]
    reads += [*t.caller_arrays, *caller_weight]

    if inplace and out is not None:
        raise ValueError("out: cannot be combined with inplace=True (the gradient goes into logits)")
    if not return_grad and (inplace or out is not None):
        raise ValueError(f"{'inplace' if inplace else 'out'}: requires return_grad=True (it receives the gradient)")
    grad = grad_result = None
    if inplace:
        rows = writable_rows_view(x, ax, "logits (inplace=True)")
        refuse_overlap(
            x, reads, "inplace: logits shares memory with targets or weight, which are read while it is written"
        )
        grad, grad_result = rows, logits if isinstance(logits, np.ndarray) else x
    else:
        rows = rows_view(x, ax)
        if return_grad and out is None:
            moved = empty_grad(lead_shape + (k,), x.dtype)
            grad = canonical(moved.reshape(-1, k))
            grad_result = np.moveaxis(moved, -1, ax) if ax != x.ndim - 1 else moved
        elif return_grad:
            o = as_writable_array(out, "out")
            if o.shape != x.shape or o.dtype != x.dtype:
                raise ValueError(
                    f"out: expected shape {x.shape} and dtype {x.dtype} (native byte order), "
                    f"got shape {o.shape} and dtype {o.dtype}"
                )
            refuse_overlap(
                o, [caller_logits, x, rows, *reads],
                "out: shares memory with an input (logits, targets or weight); "
                "use inplace=True to write the gradient into logits",
            )
            grad, grad_result = writable_rows_view(builtin_dtype(o), ax, "out"), out if isinstance(out, np.ndarray) else o
    p = LossProblem(
        logits=rows, target_kind=t.kind, dense_targets=t.dense, class_index=t.class_index, sparse_indptr=t.indptr,
        sparse_indices=t.indices, sparse_values=t.values, weight=w, options=opts,
        row_loss=np.empty(rows.shape[0], dtype=compute_dtype(x.dtype)), grad=grad, grad_result=grad_result,
        lead_shape=lead_shape,
    )
    p.class_offset, p.total_classes = class_offset, total_classes
    return p


__all__ = ["FLOAT_DTYPES", "LossProblem", "prepare_loss"]
