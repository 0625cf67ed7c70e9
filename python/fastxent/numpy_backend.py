"""The NumPy twin of the C++ kernels: the same math, conventions and results (to
float rounding), used when the extension is unavailable or backend="numpy".

It reads the same `LossProblem` record as the binding (_problem.py), so both
backends see exactly the same inputs. Clarity over speed: it builds dense N x K temporaries.
"""

from __future__ import annotations

import numpy as np

from ._checks import compute_dtype
from ._problem import LossProblem


def effective_targets(p: LossProblem) -> np.ndarray:
    """q of docs/spec.md#effective-targets, densely: q_j = w_j (a y_j + b) with a = 1 - eps, b = eps / K."""
    n, k = p.logits.shape
    dtype = compute_dtype(p.logits.dtype)
    a = dtype.type(1 - p.label_smoothing)
    b = dtype.type(p.label_smoothing / k)
    if p.target_kind == "dense":
        assert p.dense_targets is not None
        q: np.ndarray = p.dense_targets.astype(dtype, copy=False) * a + b
    else:
        q = np.full((n, k), b, dtype=dtype)
        if p.target_kind == "index":
            idx = p.class_index
            assert idx is not None
            rows = np.flatnonzero(idx != p.ignore_index)
            q[rows, idx[rows]] += a
        else:
            indptr, indices = p.sparse_indptr, p.sparse_indices
            assert indptr is not None
            assert indices is not None
            rows = np.repeat(np.arange(n), np.diff(indptr))
            vals = np.ones(indices.shape[0], dtype) if p.sparse_values is None else p.sparse_values
            np.add.at(q, (rows, indices), a * vals)
    if p.weight is not None:
        q = q * p.weight
    return q


def ignored_rows(p: LossProblem) -> np.ndarray:
    if p.target_kind == "index":
        assert p.class_index is not None
        mask: np.ndarray = p.class_index == p.ignore_index
        return mask
    return np.zeros(p.logits.shape[0], dtype=bool)


def mean_denominator(p: LossProblem) -> float:
    """torch's: the weights of the non-ignored rows' classes (index targets), else N."""
    if p.target_kind != "index":
        return float(p.logits.shape[0])
    assert p.class_index is not None
    keep = p.class_index[p.class_index != p.ignore_index]
    if p.weight is None:
        return float(keep.shape[0])
    return float(np.sum(p.weight[keep], dtype=np.float64))


def softmax_cross_entropy(p: LossProblem) -> float:
    """Writes p.row_loss (and p.grad when set); returns the reduced loss.

    16-bit logits are computed in float32, as the kernels do; writing the gradient
    into p.grad rounds it to nearest even."""
    with np.errstate(all="ignore"):  # NaN / inf rows are part of the contract
        x = p.logits.astype(compute_dtype(p.logits.dtype), copy=False)
        if p.softcap > 0:
            th = np.tanh(x / x.dtype.type(p.softcap))
            xt = th * x.dtype.type(p.softcap)
        else:
            xt = x
        m = xt.max(axis=1, keepdims=True) if xt.shape[0] else np.zeros((0, 1), x.dtype)
        no_softmax = ~np.isfinite(m[:, 0])  # NaN, +inf, or all -inf
        shift = np.where(np.isfinite(m), m, 0).astype(x.dtype)
        t = xt - shift
        e = np.exp(t)
        s = e.sum(axis=1, dtype=np.float64)
        log_s = np.log(s)
        lse = shift[:, 0] + log_s
        q = effective_targets(p)
        q_sum = q.sum(axis=1, dtype=np.float64)
        qt = np.where(q != 0, q * t, 0)  # a q == 0 term adds nothing, even at -inf
        d = qt.sum(axis=1, dtype=np.float64)
        row = q_sum * log_s - d + p.z_loss * lse * lse
        no_mass = ~np.isfinite(q_sum.astype(x.dtype))  # a +-inf/NaN target, or a sum beyond the dtype
        no_softmax |= no_mass
        row[no_softmax | np.isnan(s)] = np.nan
        ignored = ignored_rows(p)
        row[ignored] = 0
        total = float(np.sum(row, dtype=np.float64))
        denom = mean_denominator(p)
        scale = float(np.float64(1.0) / denom) if p.reduction == "mean" else 1.0
        with np.errstate(over="ignore"):
            if not np.isfinite(x.dtype.type(scale)):
                scale = np.nan  # 1/denominator overflows the dtype: no gradient (docs/spec.md#reductions)
        if p.grad is not None:
            coef = (q_sum + 2 * p.z_loss * lse) / s
            coef[no_softmax | ~np.isfinite(coef)] = np.nan  # an overflowing coefficient: no gradient
            g = (e * (coef * scale).astype(x.dtype)[:, None] - q * x.dtype.type(scale)).astype(x.dtype)
            if p.softcap > 0:
                g *= 1 - th * th
            g[ignored] = 0
            p.grad[...] = g
        p.row_loss[...] = row
        return float(np.float64(total) / denom) if p.reduction == "mean" else total


def rowwise(op: str, x_in: np.ndarray) -> np.ndarray:
    """logsumexp (N,), softmax or log_softmax (N, K) over rows of x (N, K), in x's
    dtype (16-bit: computed in float32, rounded to nearest even)."""
    x = x_in.astype(compute_dtype(x_in.dtype), copy=False)
    with np.errstate(all="ignore"):
        m = x.max(axis=1, keepdims=True) if x.shape[0] else np.zeros((0, 1), x.dtype)
        bad = ~np.isfinite(m)
        shift: np.ndarray = np.where(bad, 0, m).astype(x.dtype)
        t = x - shift
        s = np.exp(t).sum(axis=1, keepdims=True, dtype=np.float64)
        log_s: np.ndarray = np.where(bad, np.nan, np.log(s))
        res: np.ndarray  # (NumPy's stubs type arithmetic on dtype[Any] arrays as Any)
        if op == "logsumexp":
            res = (shift + log_s)[:, 0]
        elif op == "softmax":
            res = np.exp(t) * np.exp(-log_s)
        else:
            res = t - log_s
        return res.astype(x_in.dtype)
