"""The public functions: argument checks (_checks, _problem), backend choice, results."""

from __future__ import annotations

from typing import Any, Literal, Optional

import numpy as np

from . import _backend, numpy_backend
from ._checks import check_backend, check_logits, compute_dtype, normalize_axis
from ._layout import empty_rows, rows_view
from ._problem import prepare_loss

Reduction = Literal["none", "sum", "mean"]
Backend = Optional[Literal["auto", "cpp", "numpy"]]  # (X | None is Python >= 3.10 outside annotations)


def _pick_core(backend: str | None) -> Any:
    """The extension module to use, or None for the NumPy twin."""
    if backend == "numpy":
        return None
    if backend == "cpp":
        return _backend.require_core()
    return _backend.core_or_none()


def softmax_cross_entropy(
    logits: Any,
    targets: Any,
    *,
    axis: int = -1,
    reduction: Reduction = "mean",
    weight: Any = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_grad: bool = True,
    out: Any = None,
    inplace: bool = False,
    backend: Backend = None,
) -> tuple[Any, np.ndarray | None]:
    """Softmax cross-entropy loss and its fused gradient, in one pass over memory.

    For each row x (classes on ``axis``) with targets y::

        lse  = log(sum_j exp(x_j))
        loss = lse * sum(y) - sum_j y_j x_j          (= -sum_j y_j log softmax(x)_j)
        grad = softmax(x) * sum(y) - y

    which holds for soft, multi-hot (sum(y) > 1) and weighted targets alike.
    Integer targets are class indices (y = one-hot). ``weight``, ``ignore_index``,
    ``label_smoothing`` and ``reduction`` mean what they mean in
    ``torch.nn.functional.cross_entropy``. ``z_loss`` adds ``z_loss * lse**2`` per
    row; ``softcap`` replaces x by ``softcap * tanh(x / softcap)`` first.

    Args:
        logits: float32, float64, float16 or bfloat16 (ml_dtypes' NumPy dtype,
            also JAX's) array, any number of dimensions, in any layout. 16-bit
            logits are computed in float32 and the gradient rounded to nearest
            even. Anything NumPy can view without a copy is taken as is:
            ndarrays, buffers (memoryview, array.array), ``__array__`` and
            ``__dlpack__`` objects such as PyTorch CPU tensors.
        targets: integer class indices of shape ``logits.shape`` without ``axis``;
            float or bool dense targets of ``logits.shape`` (for 16-bit logits:
            read as they are in the logits' dtype or float32); or ``SparseTargets`` /
            a scipy.sparse CSR matrix of shape (rows, classes).
        reduction: "none" (per-row losses, shape of logits without ``axis``),
            "sum" or "mean".
        return_grad: False computes the loss only (one read of logits, no writes).
        out: array of logits' shape and dtype, contiguous along ``axis``, that
            receives the gradient: an ndarray (returned as grad) or any object
            whose memory NumPy can view and write without a copy (a writable
            buffer, a CPU tensor; grad is then a NumPy view of that memory). It
            must not share memory with an input.
        inplace: write the gradient into ``logits`` itself (same conditions as
            ``out``) and return it. A layout that cannot be written in place is
            an error, never a silent copy.
        backend: None/"auto" (compiled kernels if importable), "cpp" or "numpy".

    Returns:
        ``(loss, grad)``: loss has logits' dtype, float32 for 16-bit logits (a
        loss rounded to bfloat16 keeps under three digits) (an array for "none",
        else a scalar); grad has logits' shape and dtype, and is the gradient of the
        returned loss (None when ``return_grad=False``).

    Conventions: a class with target 0 adds nothing even at logit -inf; a row
    with a NaN, with +inf, or with all logits -inf gives NaN loss and gradient
    for that row only; ignored rows give 0 and do not count in "mean".
    A bad argument raises TypeError, ValueError or IndexError with a message
    that starts with the argument's name (the full table: docs/bad_inputs.md).

    Example:
        >>> import numpy as np, fastxent as fx
        >>> x = np.array([[2.0, 1.0, 0.1]], np.float32)
        >>> y = np.array([[1.0, 1.0, 0.0]], np.float32)   # multi-hot
        >>> loss, grad = fx.softmax_cross_entropy(x, y)
        >>> bool(abs(grad.sum()) < 1e-6)
        True
    """
    be = check_backend(backend)
    p = prepare_loss(
        logits,
        targets,
        axis=axis,
        reduction=reduction,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        return_grad=return_grad,
        out=out,
        inplace=inplace,
    )
    core = _pick_core(be)
    reduced = numpy_backend.softmax_cross_entropy(p) if core is None else core.loss(p)
    loss = p.row_loss.reshape(p.lead_shape) if p.reduction == "none" else p.row_loss.dtype.type(reduced)
    return loss, p.grad_result


def _run(p: Any, backend: Backend) -> float:
    core = _pick_core(check_backend(backend))
    return float(numpy_backend.softmax_cross_entropy(p) if core is None else core.loss(p))


def _loss_and_row_statistics(
    logits: Any, targets: Any, *, axis: int = -1, reduction: Reduction = "mean", weight: Any = None,
    ignore_index: int = -100, label_smoothing: float = 0.0, backend: Backend = None,
) -> tuple[Any, np.ndarray]:
    """The loss (as softmax_cross_entropy returns it) and the row statistics
    [M, log S, Q, D] of docs/spec.md#row-statistics, (rows, 4): one read of the
    logits, no N x K write. The forward half of the framework adapters' split."""
    p = prepare_loss(
        logits, targets, axis=axis, reduction=reduction, weight=weight, ignore_index=ignore_index,
        label_smoothing=label_smoothing, z_loss=0.0, softcap=None, return_grad=False, out=None, inplace=False,
    )
    p.row_stats = np.empty((p.logits.shape[0], 4), compute_dtype(p.logits.dtype))
    reduced = _run(p, backend)
    loss = p.row_loss.reshape(p.lead_shape) if p.reduction == "none" else p.logits.dtype.type(reduced)
    return loss, p.row_stats


def _gradient_from_row_statistics(
    logits: Any, targets: Any, row_stats: np.ndarray, row_scale: np.ndarray, *, axis: int = -1,
    reduction: Reduction = "mean", weight: Any = None, ignore_index: int = -100, label_smoothing: float = 0.0,
    backend: Backend = None,
) -> np.ndarray:
    """row_scale_i x the gradient of the reduced loss, from _loss_and_row_statistics's
    statistics of the same arguments: one read of the logits, one write. The backward
    half of the adapters' split (row_scale: the upstream gradient, one per row)."""
    p = prepare_loss(
        logits, targets, axis=axis, reduction=reduction, weight=weight, ignore_index=ignore_index,
        label_smoothing=label_smoothing, z_loss=0.0, softcap=None, return_grad=True, out=None, inplace=False,
    )
    n, dtype = p.logits.shape[0], compute_dtype(p.logits.dtype)
    if row_stats.shape != (n, 4) or row_stats.dtype != dtype:
        raise ValueError(f"row_stats: expected shape {(n, 4)} and dtype {dtype}, got {row_stats.shape} {row_stats.dtype}")
    p.given_stats = np.ascontiguousarray(row_stats)
    p.row_grad_scale = np.ascontiguousarray(np.broadcast_to(np.asarray(row_scale, dtype).reshape(-1), (n,)))
    _run(p, backend)
    assert p.grad_result is not None
    return p.grad_result


def _rowwise(op: str, x: Any, axis: int, backend: Backend) -> np.ndarray:
    arr = check_logits(x, "x")
    ax = normalize_axis(axis, arr.ndim)
    k = arr.shape[ax]
    if k == 0:
        raise ValueError(f"x: axis {ax} has length 0")
    be = check_backend(backend)
    core = _pick_core(be)
    rows = rows_view(arr, ax)
    lead = arr.shape[:ax] + arr.shape[ax + 1 :]
    if core is None:
        res = numpy_backend.rowwise(op, rows)
    else:
        n = rows.shape[0]
        res = np.empty(n, dtype=arr.dtype) if op == "logsumexp" else empty_rows(n, k, arr.dtype)
        core.rowwise(op, rows, res)
    if op == "logsumexp":
        return res.reshape(lead)
    return np.moveaxis(res.reshape(lead + (k,)), -1, ax)


def logsumexp(x: Any, axis: int = -1, *, backend: Backend = None) -> np.ndarray:
    """log(sum(exp(x))) along ``axis``, computed stably (max shift).

    float32/float64/float16/bfloat16 in, same dtype out (16-bit: computed in
    float32, rounded to nearest even), shape of x without ``axis``. A slice
    with a NaN or +inf, or all -inf, gives NaN.

    Example:
        >>> import numpy as np, fastxent as fx
        >>> float(fx.logsumexp(np.log(np.array([1.0, 3.0]))))
        1.3862943611198906
    """
    return _rowwise("logsumexp", x, axis, backend)


def softmax(x: Any, axis: int = -1, *, backend: Backend = None) -> np.ndarray:
    """exp(x - logsumexp(x)) along ``axis``; same shape and dtype as x.

    Example:
        >>> import numpy as np, fastxent as fx
        >>> fx.softmax(np.array([0.0, 0.0])).tolist()
        [0.5, 0.5]
    """
    return _rowwise("softmax", x, axis, backend)


def log_softmax(x: Any, axis: int = -1, *, backend: Backend = None) -> np.ndarray:
    """x - logsumexp(x) along ``axis``; same shape and dtype as x (-inf stays -inf).

    Example:
        >>> import numpy as np, fastxent as fx
        >>> fx.log_softmax(np.array([0.0, -np.inf])).tolist()
        [0.0, -inf]
    """
    return _rowwise("log_softmax", x, axis, backend)


__all__ = ["log_softmax", "logsumexp", "softmax", "softmax_cross_entropy"]
