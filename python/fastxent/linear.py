"""Fused linear + cross-entropy: the loss of ``input @ linear_weight.T + linear_bias``
and its gradients without ever holding the N x K logits (docs/spec.md#linear-cross-entropy).

Rows are processed a chunk at a time. The chunk's logits go into one reused buffer
(a matrix product with ``out=``, through the caller's BLAS), the fused kernel turns
that buffer into the chunk's logit gradient G in place (the same LossProblem record
and backends as ``softmax_cross_entropy``), then ``d_input[rows] = G @ W``,
``d_linear_weight += G.T @ input[rows]`` and ``d_linear_bias += G.sum(0)``.

The mean's denominator is the whole batch's, found before the first chunk. The
chunks run with reduction "sum" and the class weights and z-loss divided by that
denominator (``q = (w / D) (a y + b)`` and ``z / D`` give exactly the mean's row
gradient, and the row losses summed give the mean), so no pass rescales G, d_input
or d_linear_weight. When ``w / D`` or ``1 / D`` does not fit the dtype, the chunks
run with the caller's weights and G is scaled in place instead (or NaN, as in
docs/spec.md#reductions).

This module holds the checks, the chunk plan and the loop, shared with the torch
adapter (_torch_linear.py), which supplies its own matrix products.
"""

from __future__ import annotations

import operator
from typing import Any, Literal, Optional, Protocol

import numpy as np

from . import _backend, numpy_backend
from ._checks import (
    FLOAT_DTYPES,
    LossOptions,
    as_array,
    builtin_dtype,
    check_backend,
    check_bool,
    check_options,
    describe,
)
from ._layout import rows_view
from ._problem import LossProblem, _index_targets, _sparse_targets, _weight
from .sparse import SparseTargets, is_scipy_sparse

Reduction = Literal["none", "sum", "mean"]
Backend = Optional[Literal["auto", "cpp", "numpy"]]  # (X | None is Python >= 3.10 outside annotations)

#: The default chunk's logits buffer, in bytes: chunk_size = this / (K * itemsize)
#: rows (at least 1). bench/bench_linear.py measures the curve that chose it.
DEFAULT_CHUNK_BYTES = 64 * 2**20
#: The largest temporary the NumPy path's d_linear_weight accumulation uses
#: (NumPy's matmul cannot add into its output: G.T @ input[rows] is computed a
#: block of classes at a time into it, then added).
_ACCUMULATE_BYTES = 8 * 2**20


def default_chunk_size(n: int, k: int, itemsize: int) -> int:
    """Rows per chunk for a DEFAULT_CHUNK_BYTES logits buffer (between 1 and max(n, 1))."""
    return max(1, min(max(n, 1), DEFAULT_CHUNK_BYTES // (k * itemsize)))


def _check_chunk_size(chunk_size: Any, n: int, k: int, itemsize: int) -> int:
    if chunk_size is None:
        return default_chunk_size(n, k, itemsize)
    if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(f"chunk_size: expected a positive int or None, got {describe(chunk_size)}")
    c = operator.index(chunk_size)
    if c < 1:
        raise ValueError(f"chunk_size: expected a positive int (rows per chunk) or None, got {c}")
    return min(c, max(n, 1))


def _check_float_array(obj: Any, name: str) -> np.ndarray:
    a = as_array(obj, name)
    if a.dtype.kind == "f" and a.dtype.itemsize in (4, 8) and not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got dtype {a.dtype}")
    return builtin_dtype(a)


def _blas_ready(a: np.ndarray) -> np.ndarray:
    """a, or a C-contiguous copy when BLAS could not read it in place (NumPy's matmul
    would otherwise copy it on every chunk, or run its slow non-BLAS loop)."""
    ok = a.flags.aligned and (a.flags.c_contiguous or a.flags.f_contiguous)
    if not ok and a.ndim == 2 and a.flags.aligned:
        s0, s1 = a.strides
        it = a.itemsize
        ok = (s1 == it and s0 >= a.shape[1] * it and s0 % it == 0) or (s0 == it and s1 >= a.shape[0] * it and s1 % it == 0)
    return a if ok else np.ascontiguousarray(a)


class ChunkTargets:
    """The targets, checked once for the whole batch, handed out a chunk of rows at a
    time as LossProblem fields (views where possible; dense rows are converted to the
    logits' dtype one chunk at a time, sparse rows get a rebased indptr)."""

    __slots__ = ("class_index", "dense", "indices", "indptr", "kind", "values")

    def __init__(
        self,
        kind: str,
        *,
        class_index: np.ndarray | None = None,
        dense: np.ndarray | None = None,
        indptr: np.ndarray | None = None,
        indices: np.ndarray | None = None,
        values: np.ndarray | None = None,
    ) -> None:
        self.kind = kind
        self.class_index = class_index
        self.dense = dense  # (N, K) as the caller's, any real dtype and layout
        self.indptr = indptr
        self.indices = indices
        self.values = values

    def fields(self, r0: int, r1: int, dtype: np.dtype) -> dict[str, Any]:
        if self.kind == "index":
            assert self.class_index is not None
            return {"class_index": self.class_index[r0:r1]}
        if self.kind == "dense":
            assert self.dense is not None
            y = self.dense[r0:r1]
            if y.dtype != dtype or not y.dtype.isnative:
                y = y.astype(dtype)
            return {"dense_targets": rows_view(builtin_dtype(y), 1)}
        assert self.indptr is not None
        assert self.indices is not None
        a, b = int(self.indptr[r0]), int(self.indptr[r1])
        return {
            "sparse_indptr": self.indptr[r0 : r1 + 1] - a,
            "sparse_indices": self.indices[a:b],
            "sparse_values": None if self.values is None else self.values[a:b],
        }

    def counted(self, r0: int, r1: int, ignore_index: int) -> np.ndarray | slice:
        """The chunk's rows that count in a mean (all but ignored index rows)."""
        if self.kind != "index":
            return slice(None)
        assert self.class_index is not None
        return np.flatnonzero(self.class_index[r0:r1] != ignore_index)


def _check_targets(targets: Any, lead_shape: tuple[int, ...], k: int, dtype: np.dtype, opts: LossOptions) -> ChunkTargets:
    n = int(np.prod(lead_shape))
    full_shape = lead_shape + (k,)
    if isinstance(targets, SparseTargets) or is_scipy_sparse(targets):
        t = _sparse_targets(targets, n, k, dtype, opts)
        return ChunkTargets("sparse", indptr=t.indptr, indices=t.indices, values=t.values)
    arr = as_array(targets, "targets")
    # The logits' shape without their memory, for the shared target checks.
    logits_like = np.broadcast_to(np.zeros((), dtype), full_shape)
    ax = len(lead_shape)
    if arr.dtype.kind in "iu":
        t = _index_targets(arr, logits_like, ax, lead_shape, opts, k)
        assert t.class_index is not None
        return ChunkTargets("index", class_index=t.class_index)
    if arr.dtype.kind in "fb":
        if arr.shape != full_shape:
            hint = f"; class indices must have an integer dtype, not {arr.dtype}" if arr.shape == lead_shape else ""
            raise ValueError(
                f"targets: dense (probability / multi-hot) targets must have the logits' shape "
                f"{full_shape} (input's leading shape + (K,)), got {arr.shape}{hint}"
            )
        if opts.ignore_index >= 0:
            raise ValueError("ignore_index: is not supported with dense (floating point) targets, as in PyTorch")
        return ChunkTargets("dense", dense=arr.reshape(n, k))
    raise TypeError(
        f"targets: expected integer class indices, float/bool dense targets or SparseTargets, "
        f"got {describe(targets) if arr.dtype.kind == 'O' else f'dtype {arr.dtype}'}"
    )


class LinearPlan:
    """A validated linear_cross_entropy call: the arrays (as NumPy views of the
    caller's memory), the targets, the options and the chunking."""

    __slots__ = (
        "bias", "chunk", "d", "denominator", "dtype", "grad_scale", "hidden", "k", "kernel", "kernel_weight", "kernel_z_loss",
        "lead_shape", "n", "opts", "reduction", "run_reduction", "targets", "weight",
    )

    def __init__(
        self, hidden: np.ndarray, weight_matrix: np.ndarray, bias: np.ndarray | None, targets: ChunkTargets,
        lead_shape: tuple[int, ...], opts: LossOptions, class_weight: np.ndarray | None, chunk: int, kernel: Any,
    ) -> None:
        self.hidden = hidden  # (N, D), BLAS-readable
        self.weight = weight_matrix  # (K, D), BLAS-readable
        self.bias = bias  # (K,) or None
        self.targets = targets
        self.lead_shape = lead_shape
        self.n, self.d = hidden.shape
        self.k = weight_matrix.shape[0]
        self.dtype = hidden.dtype
        self.opts = opts
        self.reduction = opts.reduction
        self.chunk = chunk
        self.kernel = kernel  # a LossProblem -> reduced loss callable (C++ or the NumPy twin)
        # What the chunks run with (see the module docstring): "none" stays "none"; "sum"
        # and "mean" run as "sum", the mean with w / D and z / D when they fit the dtype.
        self.run_reduction = "none" if opts.reduction == "none" else "sum"
        self.kernel_weight = class_weight
        self.kernel_z_loss = opts.z_loss
        self.grad_scale: float | None = None  # mean only: scale G in place by this (NaN: no gradient)
        self.denominator = 1.0
        if opts.reduction == "mean":
            self.denominator = mean_denominator(targets, self.n, opts.ignore_index, class_weight)
            self._fold_mean(class_weight, self.denominator)

    def _fold_mean(self, class_weight: np.ndarray | None, denom: float) -> None:
        with np.errstate(all="ignore"):
            scale = np.float64(1.0) / np.float64(denom)
            fits = bool(np.isfinite(self.dtype.type(scale)))
            if fits:
                w64 = np.ones(self.k) if class_weight is None else class_weight.astype(np.float64)
                w = (w64 / denom).astype(self.dtype)
                z = self.opts.z_loss / denom
                if np.isfinite(w).all() and np.isfinite(z):
                    self.kernel_weight, self.kernel_z_loss = builtin_dtype(w), float(z)
                    return
        self.grad_scale = float(scale) if fits else float("nan")

    def problem(self, logits: np.ndarray, grad: np.ndarray | None, row_loss: np.ndarray, r0: int, r1: int) -> LossProblem:
        opts = LossOptions(self.run_reduction, self.opts.ignore_index, self.opts.label_smoothing, self.kernel_z_loss,
                           self.opts.softcap)
        return LossProblem(
            logits=logits, target_kind=self.targets.kind, options=opts, row_loss=row_loss, grad=grad, grad_result=None,
            lead_shape=(r1 - r0,), weight=self.kernel_weight, **self.targets.fields(r0, r1, self.dtype),
        )


def mean_denominator(targets: ChunkTargets, n: int, ignore_index: int, weight: np.ndarray | None) -> float:
    """PyTorch's mean denominator for the whole batch (docs/spec.md#reductions): the
    weights of the non-ignored rows' classes for class indices, else N."""
    if targets.kind != "index":
        return float(n)
    assert targets.class_index is not None
    keep = targets.class_index[targets.class_index != ignore_index]
    if weight is None:
        return float(keep.shape[0])
    return float(np.sum(weight[keep], dtype=np.float64))


def prepare_linear(
    input: Any, linear_weight: Any, targets: Any, *, linear_bias: Any, weight: Any, reduction: Any, ignore_index: Any,
    label_smoothing: Any, z_loss: Any, softcap: Any, chunk_size: Any, backend: Any, blas_copy: bool = True,
) -> LinearPlan:
    """Checks every argument of linear_cross_entropy and builds the plan."""
    be = check_backend(backend)
    x = _check_float_array(input, "input")
    if x.ndim == 0:
        raise ValueError("input: expected at least 1 dimension (..., D), got a 0-d array")
    d = x.shape[-1]
    w = _check_float_array(linear_weight, "linear_weight")
    if w.dtype != x.dtype:
        raise TypeError(f"linear_weight: dtype {w.dtype} does not match input's dtype {x.dtype}")
    if w.ndim != 2 or w.shape[1] != d:
        raise ValueError(f"linear_weight: expected shape (K, {d}) (K classes, D = input.shape[-1]), got {w.shape}")
    k = w.shape[0]
    if k == 0:
        raise ValueError("linear_weight: has 0 rows; at least one class is needed")
    b = None
    if linear_bias is not None:
        b = _check_float_array(linear_bias, "linear_bias")
        if b.dtype != x.dtype:
            raise TypeError(f"linear_bias: dtype {b.dtype} does not match input's dtype {x.dtype}")
        if b.shape != (k,):
            raise ValueError(f"linear_bias: expected shape ({k},) (one per row of linear_weight), got {b.shape}")
    opts = check_options(x.dtype, reduction, ignore_index, label_smoothing, z_loss, softcap)
    lead_shape = x.shape[:-1]
    n = int(np.prod(lead_shape))
    class_weight, _ = _weight(weight, k, x.dtype)
    t = _check_targets(targets, lead_shape, k, x.dtype, opts)
    chunk = _check_chunk_size(chunk_size, n, k, x.dtype.itemsize)
    core = None if be == "numpy" else (_backend.require_core() if be == "cpp" else _backend.core_or_none())
    kernel = numpy_backend.softmax_cross_entropy if core is None else core.loss
    h = x.reshape(n, d)
    if blas_copy:  # (the torch adapter multiplies its own tensors)
        h, w = _blas_ready(h), _blas_ready(w)
    return LinearPlan(h, w, b, t, lead_shape, opts, class_weight, chunk, kernel)


class GemmOps(Protocol):
    """The matrix products of one call, in some framework's BLAS (NumPy or torch)."""

    def logits(self, r0: int, r1: int) -> np.ndarray:
        """Writes input[r0:r1] @ W.T (+ bias) into the chunk buffer; returns it (a NumPy view)."""

    def backward(self, r0: int, r1: int, g: np.ndarray, row_scale: np.ndarray | None) -> None:
        """From the chunk's logit gradient g (the buffer): d_input[r0:r1], and adds to
        d_linear_weight and d_linear_bias (each row of g times row_scale when given)."""


def run_chunks(plan: LinearPlan, ops: GemmOps, *, with_grad: bool, row_scale: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """The chunk loop. Returns the reduced loss as a float (sum or mean; meaningless
    for "none") and the (N,) row losses (scaled by 1/D for a folded mean)."""
    n, c = plan.n, plan.chunk
    row_loss = np.empty(n, dtype=plan.dtype)
    total = 0.0
    for r0 in range(0, n, c):
        r1 = min(n, r0 + c)
        g = ops.logits(r0, r1)
        p = plan.problem(g, g if with_grad else None, row_loss[r0:r1], r0, r1)
        total += float(plan.kernel(p))
        if with_grad:
            if plan.grad_scale is not None:
                _scale_in_place(plan, g, r0, r1)
            ops.backward(r0, r1, g, None if row_scale is None else row_scale[r0:r1])
    if plan.reduction == "mean" and plan.grad_scale is not None:
        with np.errstate(all="ignore"):
            total = float(np.float64(total) / plan.denominator)
    return total, row_loss


def _scale_in_place(plan: LinearPlan, g: np.ndarray, r0: int, r1: int) -> None:
    """The mean's 1/D applied to G itself (when it could not be folded into the weights);
    NaN in the counted rows when 1/D does not fit the dtype (docs/spec.md#reductions)."""
    s = plan.grad_scale
    assert s is not None
    if np.isnan(s):
        g[plan.targets.counted(r0, r1, plan.opts.ignore_index)] = np.nan
    else:
        g *= plan.dtype.type(s)


class NumpyGemm:
    """The NumPy path's products: np.matmul with out= (NumPy's BLAS)."""

    def __init__(self, plan: LinearPlan, with_grad: bool) -> None:
        self.plan = plan
        self.buf = np.empty((plan.chunk if plan.n else 0, plan.k), dtype=plan.dtype)
        self.d_input = self.d_weight = self.d_bias = None
        if with_grad:
            self.d_input = np.empty((plan.n, plan.d), dtype=plan.dtype)
            # Written by the first chunk (no accumulation), zeros for N = 0.
            self.d_weight = (np.empty if plan.n else np.zeros)((plan.k, plan.d), dtype=plan.dtype)
            if plan.bias is not None:
                self.d_bias = np.zeros(plan.k, dtype=plan.dtype)
        self._acc: np.ndarray | None = None

    def logits(self, r0: int, r1: int) -> np.ndarray:
        p = self.plan
        out = self.buf[: r1 - r0]
        np.matmul(p.hidden[r0:r1], p.weight.T, out=out)
        if p.bias is not None:
            out += p.bias
        return out

    def backward(self, r0: int, r1: int, g: np.ndarray, row_scale: np.ndarray | None) -> None:
        p = self.plan
        assert self.d_input is not None
        assert self.d_weight is not None
        h = p.hidden[r0:r1]
        d_in = self.d_input[r0:r1]
        np.matmul(g, p.weight, out=d_in)
        if row_scale is not None:
            rs = row_scale[:, None].astype(p.dtype)
            d_in *= rs
            h = h * rs
        if r0 == 0:
            np.matmul(g.T, h, out=self.d_weight)
        else:
            self._accumulate(g, h)
        if self.d_bias is not None:
            self.d_bias += g.sum(axis=0) if row_scale is None else row_scale.astype(p.dtype) @ g

    def _accumulate(self, g: np.ndarray, h: np.ndarray) -> None:
        """d_weight += g.T @ h, a block of classes at a time through a small temporary."""
        assert self.d_weight is not None
        k, d = self.d_weight.shape
        block = max(1, min(k, _ACCUMULATE_BYTES // (d * self.d_weight.itemsize))) if d else k
        if self._acc is None:
            self._acc = np.empty((block, d), dtype=self.d_weight.dtype)
        for k0 in range(0, k, block):
            k1 = min(k, k0 + block)
            tmp = self._acc[: k1 - k0]
            np.matmul(g[:, k0:k1].T, h, out=tmp)
            self.d_weight[k0:k1] += tmp


def linear_cross_entropy(
    input: Any,
    linear_weight: Any,
    targets: Any,
    *,
    linear_bias: Any = None,
    weight: Any = None,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
    return_grad: bool = True,
    backend: Backend = None,
) -> tuple[Any, tuple[np.ndarray, np.ndarray, np.ndarray | None] | None]:
    """Cross-entropy of the logits ``input @ linear_weight.T + linear_bias`` and its
    gradients, computed a chunk of rows at a time: the N x K logits never exist whole.

    The result is that of ``softmax_cross_entropy(input @ linear_weight.T +
    linear_bias, targets, ...)`` with the chain rule applied: every target kind and
    option means the same (docs/spec.md#linear-cross-entropy).

    Args:
        input: (..., D) float32 or float64; the leading dimensions are the rows.
        linear_weight: (K, D), input's dtype.
        targets: class indices of input's leading shape, dense float/bool targets
            of shape (..., K), or ``SparseTargets`` / scipy.sparse CSR with N rows.
        linear_bias: (K,) of input's dtype, or None.
        weight, reduction, ignore_index, label_smoothing, z_loss, softcap: as in
            ``softmax_cross_entropy``; "mean" divides by the whole batch's
            denominator.
        chunk_size: rows per chunk; None picks it from a memory budget (a logits
            buffer of DEFAULT_CHUNK_BYTES).
        return_grad: False computes the loss only (one matrix product per chunk).
        backend: as in ``softmax_cross_entropy`` (the kernel; the matrix products
            are NumPy's).

    Returns:
        ``(loss, (d_input, d_linear_weight, d_linear_bias))``: loss in input's dtype
        (per row, input's leading shape, for "none"), the gradients of the returned
        loss (of the sum of the row losses for "none") in input's dtype and the
        shapes of input, linear_weight and linear_bias (None without a bias); or
        ``(loss, None)`` when ``return_grad=False``.

    Example:
        >>> import numpy as np, fastxent as fx
        >>> h = np.ones((3, 4), np.float32); W = np.zeros((5, 4), np.float32)
        >>> loss, (dh, dW, db) = fx.linear_cross_entropy(h, W, np.array([0, 1, 2]))
        >>> round(float(loss), 4), dh.shape, dW.shape, db   # log(5)
        (1.6094, (3, 4), (5, 4), None)
    """
    with_grad = check_bool(return_grad, "return_grad")
    plan = prepare_linear(
        input, linear_weight, targets, linear_bias=linear_bias, weight=weight, reduction=reduction,
        ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
        chunk_size=chunk_size, backend=backend,
    )
    ops = NumpyGemm(plan, with_grad)
    total, row_loss = run_chunks(plan, ops, with_grad=with_grad)
    loss: Any = row_loss.reshape(plan.lead_shape) if plan.reduction == "none" else plan.dtype.type(total)
    if not with_grad:
        return loss, None
    assert ops.d_input is not None
    assert ops.d_weight is not None
    return loss, (ops.d_input.reshape(plan.lead_shape + (plan.d,)), ops.d_weight, ops.d_bias)


__all__ = ["DEFAULT_CHUNK_BYTES", "default_chunk_size", "linear_cross_entropy"]
