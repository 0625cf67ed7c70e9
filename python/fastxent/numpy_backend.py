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
    b = dtype.type(p.label_smoothing / (p.total_classes or k))
    if p.target_kind == "dense":
        assert p.dense_targets is not None
        q: np.ndarray = p.dense_targets.astype(dtype, copy=False) * a + b
    else:
        q = np.full((n, k), b, dtype=dtype)
        if p.target_kind == "index":
            assert p.class_index is not None
            idx = p.class_index - p.class_offset  # a vocabulary shard's own classes
            rows = np.flatnonzero(_in_shard(p))
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


def _in_shard(p: LossProblem) -> np.ndarray:
    """Index targets: the rows not ignored whose (global) class is one of these K columns."""
    assert p.class_index is not None
    local = p.class_index - p.class_offset
    keep: np.ndarray = (p.class_index != p.ignore_index) & (local >= 0) & (local < p.logits.shape[1])
    return keep


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
    keep = p.class_index[_in_shard(p)] - p.class_offset
    if p.weight is None:
        return float(keep.shape[0])
    return float(np.sum(p.weight[keep], dtype=np.float64))


def _row_scale(p: LossProblem, scale: float) -> np.ndarray:
    """The reduction's scale times each row's own multiplier, in double (N,)."""
    n = p.logits.shape[0]
    if p.row_grad_scale is None:
        return np.full(n, scale)
    return scale * p.row_grad_scale.astype(np.float64)


def _gradient(p: LossProblem, e: np.ndarray, coef: np.ndarray, q: np.ndarray, row_scale: np.ndarray,
              th: np.ndarray | None, ignored: np.ndarray) -> np.ndarray:
    """g = row_scale * dx~/dx * (e * coef - q), rounded as the kernels round it (in
    the compute dtype; the caller's store into a 16-bit p.grad rounds once more)."""
    dtype = compute_dtype(p.logits.dtype)
    g: np.ndarray = e * (coef * row_scale).astype(dtype)[:, None] - q * row_scale.astype(dtype)[:, None]
    g = g.astype(dtype)
    if th is not None:
        g *= 1 - th * th
    g[ignored] = 0
    return g


def softmax_cross_entropy(p: LossProblem) -> float:
    """Writes p.row_loss (and p.grad when set, p.row_stats when set); returns the
    reduced loss. With p.given_stats, writes the gradient only, returns 0.

    16-bit logits are computed in float32, as the kernels do; writing the gradient
    into p.grad rounds it to nearest even."""
    with np.errstate(all="ignore"):  # NaN / inf rows are part of the contract
        x = p.logits.astype(compute_dtype(p.logits.dtype), copy=False)
        dtype = x.dtype
        th = np.tanh(x / dtype.type(p.softcap)) if p.softcap > 0 else None
        xt = th * dtype.type(p.softcap) if th is not None else x
        q = effective_targets(p)
        ignored = ignored_rows(p)
        denom = mean_denominator(p)
        scale = float(np.float64(1.0) / denom) if p.reduction == "mean" else 1.0
        with np.errstate(over="ignore"):
            if not np.isfinite(dtype.type(scale)):
                scale = np.nan  # 1/denominator overflows the dtype: no gradient (docs/spec.md#reductions)
        row_scale = _row_scale(p, scale)

        if p.given_stats is not None:  # the gradient alone, from the given statistics
            assert p.grad is not None
            st = p.given_stats.astype(np.float64)
            m, log_s, q_sum = st[:, 0], st[:, 1], st[:, 2]
            bad = ~np.isfinite(m) | np.isnan(log_s) | ~np.isfinite(q_sum.astype(dtype))
            m = np.where(bad, 0, m)
            e = np.exp(xt - m.astype(dtype)[:, None])
            coef = (q_sum + 2 * p.z_loss * (m + log_s)) * np.exp(-log_s)
            coef[bad | ~np.isfinite(coef)] = np.nan
            p.grad[...] = _gradient(p, e, coef, q, row_scale, th, ignored)
            return 0.0

        m = xt.max(axis=1, keepdims=True) if xt.shape[0] else np.zeros((0, 1), dtype)
        no_softmax = ~np.isfinite(m[:, 0])  # NaN, +inf, or all -inf
        shift = np.where(np.isfinite(m), m, 0).astype(dtype)
        t = xt - shift
        e = np.exp(t)
        s = e.sum(axis=1, dtype=np.float64)
        log_s = np.log(s)
        lse = shift[:, 0] + log_s
        q_sum = q.sum(axis=1, dtype=np.float64)
        qt = np.where(q != 0, q * t, 0)  # a q == 0 term adds nothing, even at -inf
        d = qt.sum(axis=1, dtype=np.float64)
        row = q_sum * log_s - d + p.z_loss * lse * lse
        no_mass = ~np.isfinite(q_sum.astype(dtype))  # a +-inf/NaN target, or a sum beyond the dtype
        # all -inf (np.max gives NaN for a NaN): a vocabulary shard's empty part
        empty = (m[:, 0] == -np.inf) & ~no_mass
        no_softmax |= no_mass | np.isnan(s)
        row[no_softmax] = np.nan
        row[ignored] = 0
        total = float(np.sum(row, dtype=np.float64))
        if p.grad is not None:
            coef = (q_sum + 2 * p.z_loss * lse) / s
            coef[no_softmax | ~np.isfinite(coef)] = np.nan  # an overflowing coefficient: no gradient
            p.grad[...] = _gradient(p, e, coef, q, row_scale, th, ignored)
        if p.row_stats is not None:
            stats = np.stack([shift[:, 0].astype(np.float64), log_s, q_sum, d], axis=1)
            stats[no_softmax & ~empty] = [0, np.nan, np.nan, np.nan]
            stats[empty, :2] = -np.inf  # [-inf, -inf, Q, D], D relative to 0
            stats[ignored] = 0
            p.row_stats[...] = stats
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
