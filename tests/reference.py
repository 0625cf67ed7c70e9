"""An independent float64 reference for fastxent's tests.

Written from the definitions (PyTorch's meaning of weight / ignore_index /
label_smoothing, the special values of docs/spec.md#conventions), row by row where
that is clearer, and deliberately NOT in terms of the "effective target q" that the
kernels and the NumPy twin use: the class-index path is built as PyTorch builds it
(an NLL term plus a smoothing term), the dense path as -sum_j w_j y'_j log softmax(x)_j.

The gradient is the chain rule through log_softmax, dL/dx = G - softmax * sum(G)
with G = dL/dlog_softmax, written out per row; tests check that one separately
against the full softmax Jacobian and central finite differences.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import fastxent as fx


def _rows(a: np.ndarray, axis: int) -> np.ndarray:
    a = np.moveaxis(np.asarray(a), axis, -1)
    return a.reshape(-1, a.shape[-1])


def _unrows(g: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    moved = list(shape)
    k = moved.pop(axis % len(shape))
    return np.moveaxis(g.reshape(*moved, k), -1, axis % len(shape))


def log_softmax_row(x: np.ndarray) -> tuple[np.ndarray, float]:
    """float64 log softmax of one row and its logsumexp; NaN everywhere when the row
    has no softmax (a NaN, a +inf, or all -inf)."""
    x = np.asarray(x, np.float64)
    m = np.max(x)  # NaN if any NaN
    if not np.isfinite(m):
        return np.full_like(x, np.nan), float("nan")
    with np.errstate(under="ignore"):
        lse = float(m + np.log(np.sum(np.exp(x - m))))
    return x - lse, lse


def logsumexp(x: Any, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, np.float64)
    rows = _rows(x, axis)
    out = np.array([log_softmax_row(r)[1] for r in rows])
    lead = list(x.shape)
    lead.pop(axis % x.ndim)
    return out.reshape(lead)


def log_softmax(x: Any, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, np.float64)
    rows = _rows(x, axis)
    return _unrows(np.stack([log_softmax_row(r)[0] for r in rows]) if len(rows) else rows, x.shape, axis)


def softmax(x: Any, axis: int = -1) -> np.ndarray:
    return np.exp(log_softmax(x, axis))


def sparse_to_dense(t: Any, k: int) -> np.ndarray:
    """Dense float64 (N, K) from SparseTargets or a scipy.sparse matrix: duplicates summed."""
    if isinstance(t, fx.SparseTargets):
        indptr, indices, values = t.indptr, t.indices, t.values
    else:
        csr = t.tocsr()  # keeps duplicates (not summed until asked)
        indptr, indices, values = csr.indptr, csr.indices, csr.data
    n = len(indptr) - 1
    out = np.zeros((n, k))
    for i in range(n):
        for pos in range(indptr[i], indptr[i + 1]):
            out[i, indices[pos]] += 1.0 if values is None else float(values[pos])
    return out


def _mul_masked(coef: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """coef * logp with 0 * (-inf) = 0 (a class with no target mass adds nothing)."""
    with np.errstate(invalid="ignore"):
        return np.where(coef != 0, coef * logp, 0.0)


def cross_entropy(
    logits: Any,
    targets: Any,
    *,
    axis: int = -1,
    reduction: str = "mean",
    weight: Any = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> tuple[Any, np.ndarray]:
    """(loss, grad of the returned loss) in float64, for any target kind."""
    x = np.asarray(logits, np.float64)
    ax = axis % x.ndim
    k = x.shape[ax]
    lead = x.shape[:ax] + x.shape[ax + 1 :]
    xr = _rows(x, ax)
    n = xr.shape[0]
    w = np.ones(k) if weight is None else np.asarray(weight, np.float64)
    eps = float(label_smoothing)

    if softcap:
        th = np.tanh(xr / softcap)
        xt, dcap = softcap * th, 1.0 - th * th
    else:
        xt, dcap = xr, np.ones_like(xr)

    is_sparse = isinstance(targets, fx.SparseTargets) or hasattr(targets, "tocsr")
    if is_sparse:
        kind, y = "dense", sparse_to_dense(targets, k)
    else:
        t = np.asarray(targets)
        if t.dtype.kind in "iu":
            kind, idx = "index", t.reshape(-1).astype(np.int64)
        else:
            kind, y = "dense", _rows(t.astype(np.float64), ax)

    row_loss = np.zeros(n)
    grad = np.zeros((n, k))
    denom = float(n)
    if kind == "index":
        valid = idx != ignore_index
        denom = float(sum(w[c] for c in idx[valid]))
    for i in range(n):
        logp, lse = log_softmax_row(xt[i])
        if kind == "index":
            if not valid[i]:
                continue  # loss 0, grad 0
            c = idx[i]
            # PyTorch: (1 - eps) * nll + eps / K * (-sum_j w_j log p_j)
            nll = -w[c] * logp[c]
            smooth = -np.sum(_mul_masked(w, logp))
            loss = (1 - eps) * nll + (eps / k) * smooth if eps else nll
            g = -(eps / k) * w  # dL/dlogp
            g[c] -= (1 - eps) * w[c]
        else:
            yy = y[i] * (1 - eps) + eps / k
            coef = w * yy
            loss = -np.sum(_mul_masked(coef, logp))
            g = -coef
        loss += z_loss * lse * lse
        s = np.exp(logp)
        gx = g - s * np.sum(g) + 2 * z_loss * lse * s  # chain through log_softmax (+ z-loss)
        row_loss[i] = loss
        grad[i] = gx * dcap[i]

    if reduction == "none":
        return row_loss.reshape(lead), _unrows(grad, x.shape, ax)
    if reduction == "sum":
        return float(np.sum(row_loss)), _unrows(grad, x.shape, ax)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.sum(row_loss) / denom), _unrows(grad / denom, x.shape, ax)


def jacobian_chain_grad(x_row: np.ndarray, y_row: np.ndarray) -> np.ndarray:
    """dL/dx = dL/ds . ds/dx with the full K x K softmax Jacobian, L = -sum y log s."""
    s = softmax(x_row)
    dl_ds = -y_row / s
    jac = np.diag(s) - np.outer(s, s)  # ds_i/dx_j = s_i (delta_ij - s_j)
    return dl_ds @ jac


# ---- tolerances ----------------------------------------------------------------
EPS = {np.dtype(np.float32): float(np.finfo(np.float32).eps), np.dtype(np.float64): float(np.finfo(np.float64).eps)}


def assert_close(actual: Any, expected: Any, *, rtol: float, atol: float, what: str = "") -> None:
    """assert_allclose that treats NaN == NaN and equal infinities as equal."""
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=rtol, atol=atol, equal_nan=True,
        err_msg=what,
    )


def max_rel_err(actual: Any, expected: Any, floor: float = 1.0) -> float:
    """max |a - e| / max(|e|, floor) over finite entries (for reporting worst errors)."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    fin = np.isfinite(e) & np.isfinite(a)
    if not fin.any():
        return 0.0
    return float(np.max(np.abs(a[fin] - e[fin]) / np.maximum(np.abs(e[fin]), floor)))


# ---- appended: PyTorch autograd reference and error bounds ---------------------


def torch_cross_entropy(
    logits: Any,
    targets: Any,
    *,
    axis: int = -1,
    reduction: str = "mean",
    weight: Any = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> tuple[Any, np.ndarray]:
    """(loss, grad) from torch.nn.functional.cross_entropy and autograd, computed in
    the logits' own dtype (so its float32 error can be compared with ours).

    The class axis is moved to dim 1, where PyTorch wants it. ``softcap`` and
    ``z_loss`` are built from PyTorch ops (tanh, logsumexp): the cap applies before the
    softmax, ``z_loss * logsumexp(capped)**2`` is added to each non-ignored row, and
    "mean" divides it by PyTorch's own denominator (weights of non-ignored rows for
    class indices, N for dense targets). Dense targets only (no sparse).
    """
    import torch
    import torch.nn.functional as F

    xn = np.asarray(logits)
    x = torch.tensor(xn, requires_grad=True)
    ax = axis % xn.ndim
    xt = torch.movedim(x, ax, 1) if xn.ndim >= 2 else x
    cdim = 1 if xn.ndim >= 2 else 0
    tn = np.asarray(targets)
    index = tn.dtype.kind in "iu"
    if index:
        t = torch.tensor(tn.astype(np.int64))
    else:
        t = torch.tensor(tn.astype(xn.dtype))
        t = torch.movedim(t, ax, 1) if xn.ndim >= 2 else t
    w = None if weight is None else torch.tensor(np.asarray(weight, xn.dtype))
    if softcap:
        xt = softcap * torch.tanh(xt / softcap)
    rows = F.cross_entropy(
        xt, t, weight=w, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="none"
    )
    if index:
        keep = t != ignore_index
        safe = torch.where(keep, t, torch.zeros_like(t))
        denom = (w[safe] * keep).sum() if w is not None else keep.sum()
    else:
        keep = torch.ones(rows.shape, dtype=torch.bool)
        denom = torch.tensor(float(rows.numel()), dtype=x.dtype)
    if z_loss:
        lse = torch.logsumexp(xt, dim=cdim)
        rows = rows + torch.where(keep, z_loss * lse * lse, torch.zeros_like(lse))
    if reduction == "none":
        loss = rows
        loss.sum().backward()
    else:
        if reduction == "mean" and not z_loss:
            loss = F.cross_entropy(
                xt, t, weight=w, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="mean"
            )  # PyTorch's own mean, not ours re-derived
        else:
            loss = rows.sum() / (denom if reduction == "mean" else 1)
        loss.backward()
    assert x.grad is not None
    out = loss.detach().numpy()
    return (out if reduction == "none" else float(out)), x.grad.numpy()


def rtol_for(dtype: Any, k: int, factor: float = 16.0) -> float:
    """A relative error bound for a K-term reduction in `dtype`: a few eps for the
    final roundings and exp/log, times log2(K) for the (pairwise / lane-split) sums."""
    return factor * EPS[np.dtype(dtype)] * max(1.0, float(np.log2(k + 1)))


def assert_within(actual: Any, expected: Any, *, rtol: float, scale: Any = 0.0, what: str = "") -> None:
    """|a - e| <= rtol * (|e| + scale) elementwise, with NaN == NaN and equal infinities.
    `scale` carries the size of the terms that cancel into e (e.g. lse*sum(y) and
    sum(y*x) for a loss), which bounds the absolute rounding error a correct kernel makes."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    same_special = (np.isnan(a) & np.isnan(e)) | (np.isinf(a) & (a == e))
    bad_special = ~same_special & ~(np.isfinite(a) & np.isfinite(e))
    assert not bad_special.any(), f"{what}: special values differ at {np.argwhere(bad_special)[:5].tolist()}: {a[bad_special][:5]} vs {e[bad_special][:5]}"
    fin = np.isfinite(a) & np.isfinite(e)
    bound = rtol * (np.abs(e) + np.broadcast_to(np.asarray(scale, np.float64), e.shape))
    err = np.abs(np.where(fin, a, 0.0) - np.where(fin, e, 0.0))
    over = fin & (err > bound)
    assert not over.any(), (
        f"{what}: {int(over.sum())} entries off; worst |a-e|={err[over].max():.3g} "
        f"where bound={bound[over][np.argmax(err[over])]:.3g} (rtol={rtol:.3g})"
    )


def loss_scale(logits: Any, targets_dense: Any, axis: int = -1) -> np.ndarray:
    """Per-row size of the terms a stable loss adds up: sum|y| * (log K + max|x - max x|)
    over the row's finite logits; the absolute rounding error of a correct kernel is
    a few eps times this."""
    x = _rows(np.asarray(logits, np.float64), axis)
    y = _rows(np.asarray(targets_dense, np.float64), axis)
    fin = np.isfinite(x)
    m = np.max(np.where(fin, x, -np.inf), axis=1, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0.0)
    spread = np.max(np.where(fin, np.abs(x - m), 0.0), axis=1, initial=0.0)
    k = x.shape[1]
    return np.sum(np.abs(y), axis=1) * (np.log(k) + spread + 1.0)


def one_hot(index: Any, k: int, axis: int = -1, dtype: Any = np.float64) -> np.ndarray:
    """Dense one-hot targets with the class axis at `axis` (ignored/out-of-range rows: 0)."""
    idx = np.asarray(index)
    oh = (idx[..., None] == np.arange(k)).astype(dtype)
    return np.moveaxis(oh, -1, axis % (idx.ndim + 1))
