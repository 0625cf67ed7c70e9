"""Vocabulary-sharded cross-entropy (docs/spec.md#vocabulary-shards): the two kernel
passes over one shard of the classes, and the O(N) math that combines the shards'
row statistics, for any collective library.

Each process holds the columns ``[vocab_start, vocab_start + K_r)`` of every row's
logits. One call per row and per step::

    stats = fx.vocab_shard_statistics(x_r, t_r, vocab_start=v0, num_classes=K)    # one read
    row_max = allreduce_max(stats[:, 0])                                           # N values
    sums = allreduce_sum(fx.vocab_shard_partial_sums(stats, row_max))              # 3N values
    row_stats = fx.row_statistics_from_sums(row_max, sums)                         # [M, log S, Q, D]
    losses = fx.loss_from_row_statistics(row_stats, ignored=...)                   # every rank alike
    grad_r = fx.vocab_shard_gradient(x_r, t_r, row_stats, vocab_start=v0,
                                      num_classes=K, grad_scale=...)               # one read, one write

``fastxent.torch.vocab_parallel_cross_entropy`` (torch.distributed) and
``fastxent.jax.vocab_parallel_softmax_cross_entropy`` (``shard_map``) are built on
these. The combining math is written once over an array namespace (NumPy or
jax.numpy) so that both run exactly the same formulas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import api
from ._checks import check_float, compute_dtype, is_float_like
from ._layout import refuse_overlap
from ._problem import prepare_loss

__all__ = [
    "combine_vocab_shard_statistics",
    "loss_from_row_statistics",
    "row_statistics_from_sums",
    "vocab_shard_gradient",
    "vocab_shard_partial_sums",
    "vocab_shard_statistics",
]

STATS_WIDTH = 4  # [M, log S, Q, D] per row (docs/spec.md#row-statistics)


# ---- the combining math, once, over an array namespace xp (numpy or jax.numpy) -----


def partial_sums(xp: Any, stats: Any, row_max: Any) -> Any:
    """Per row, a shard's share of [S, Q, D] relative to the global row max M:
    [S_r exp(m_r - M), Q_r, D_r + Q_r (ref_r - M)], ref_r = m_r, or 0 where m_r = -inf."""
    m, log_s, q, d = stats[..., 0], stats[..., 1], stats[..., 2], stats[..., 3]
    ref = xp.where(m == -np.inf, 0, m)
    # (m - M) first: for huge equal maxima it is exactly 0. An empty shard (m = -inf)
    # adds exp(-inf) = 0; when every shard is empty, -inf - -inf makes the row NaN.
    s = xp.exp(log_s + (m - row_max))
    shift = xp.where(q == 0, 0, q * (ref - row_max))
    return xp.stack([s, q, d + shift], axis=-1)


def row_statistics(xp: Any, row_max: Any, sums: Any, dtype: Any) -> Any:
    """[M, log S, Q, D] from the global max and the summed partials; a row with no
    softmax (a NaN or +inf logit anywhere, every logit -inf) or no finite target mass
    in ``dtype`` (the compute dtype) is [0, NaN, NaN, NaN], as in one process."""
    s, q, d = sums[..., 0], sums[..., 1], sums[..., 2]
    bad = ~(s > 0) | (row_max == -np.inf) | ~xp.isfinite(q.astype(dtype))
    nan = xp.asarray(np.nan, dtype=s.dtype)
    return xp.stack(
        [xp.where(bad, 0, row_max), xp.where(bad, nan, xp.log(xp.where(bad, 1, s))), xp.where(bad, nan, q),
         xp.where(bad, nan, d)],
        axis=-1,
    )


def row_losses(xp: Any, row_stats: Any, z_loss: float, ignored: Any) -> Any:
    """loss = Q log S - D + z_loss (M + log S)^2 per row; 0 where ``ignored``."""
    m, log_s, q, d = row_stats[..., 0], row_stats[..., 1], row_stats[..., 2], row_stats[..., 3]
    loss = q * log_s - d
    if z_loss:
        lse = m + log_s
        loss = loss + z_loss * lse * lse
    return loss if ignored is None else xp.where(ignored, 0, loss)


# ---- public NumPy functions ----------------------------------------------------------


def vocab_shard_statistics(
    logits: Any,
    targets: Any,
    *,
    vocab_start: int,
    num_classes: int,
    weight: Any = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    softcap: float | None = None,
    backend: api.Backend = None,
) -> np.ndarray:
    """Row statistics of one vocabulary shard: one read of the logits, no N x K write.

    Args:
        logits: (..., K_r): this shard's columns ``[vocab_start, vocab_start + K_r)``
            of the logits, classes on the last axis; any dtype fastxent takes.
        targets: global class indices (..., ) in ``[0, num_classes)`` or
            ``ignore_index`` (the shard holding a row's class adds its target term);
            or this shard's columns of dense targets (..., K_r), or of sparse
            targets (``SparseTargets`` / CSR with K_r columns, local indices).
        vocab_start, num_classes: the shard's first global class and the number of
            classes of the whole vocabulary (label smoothing's ``eps / K``).
        weight: this shard's K_r class weights. Other options as in
            ``softmax_cross_entropy`` (z_loss enters only when combining).

    Returns:
        (..., 4) in the compute dtype (float32 for 16-bit logits): per row
        ``[m_r, log S_r, Q_r, D_r]`` over the shard's classes (docs/spec.md#vocabulary-shards):
        the shard max, the log of its shifted sum of exponentials, its target mass
        and its target dot product relative to m_r. A shard whose row is all -inf
        has ``[-inf, -inf, Q_r, D_r]`` (D_r relative to 0); a row with a NaN or +inf
        logit ``[0, NaN, NaN, NaN]``; an ignored row zeros.
    """
    p = prepare_loss(
        logits, targets, axis=-1, reduction="none", weight=weight, ignore_index=ignore_index,
        label_smoothing=label_smoothing, z_loss=0.0, softcap=softcap, return_grad=False, out=None, inplace=False,
        vocab_shard=(vocab_start, num_classes),
    )
    p.row_stats = np.empty((p.logits.shape[0], STATS_WIDTH), compute_dtype(p.logits.dtype))
    api._run(p, backend)
    return p.row_stats.reshape(p.lead_shape + (STATS_WIDTH,))


def _stats_array(stats: Any, name: str) -> np.ndarray:
    try:
        a = np.asarray(stats)
    except (TypeError, ValueError) as exc:  # ragged nesting, unconvertible objects
        raise ValueError(f"{name}: expected float row statistics of shape (..., {STATS_WIDTH}), got {type(stats).__name__}") from exc
    if a.ndim < 1 or a.shape[-1] != STATS_WIDTH or a.dtype.kind != "f":
        raise ValueError(f"{name}: expected float row statistics of shape (..., {STATS_WIDTH}), got {a.shape} {a.dtype}")
    return a


def _real_array(values: Any, name: str) -> np.ndarray:
    """values as float64, refusing what is not real numbers (a complex row max would
    otherwise lose its imaginary part silently, a string fail without a name)."""
    try:
        a = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a real array, got {type(values).__name__}") from exc
    if a.dtype.kind not in "iuf" and not is_float_like(a.dtype):
        raise ValueError(f"{name}: expected a real (integer or float) array, got dtype {a.dtype}")
    return a.astype(np.float64)


def _float_dtype(dtype: Any) -> np.dtype:
    try:
        dt: np.dtype[Any] = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype: expected the logits' float dtype, got {dtype!r}") from exc
    if not is_float_like(dt):
        raise TypeError(f"dtype: expected the logits' float dtype (float16, bfloat16, float32 or float64), got {dt}")
    return dt


def vocab_shard_partial_sums(shard_stats: Any, row_max: Any) -> np.ndarray:
    """This shard's terms of the per-row sums, given the row max over all shards:
    (..., 3) float64 ``[S_r exp(m_r - M), Q_r, D_r + Q_r (ref_r - M)]``, to be summed
    across the shards (one all-reduce of 3N values)."""
    st = _stats_array(shard_stats, "shard_stats").astype(np.float64)
    m = _real_array(row_max, "row_max")
    if m.shape != st.shape[:-1]:
        raise ValueError(f"row_max: expected shape {st.shape[:-1]} (one per row), got {m.shape}")
    with np.errstate(all="ignore"):
        out: np.ndarray = partial_sums(np, st, m)
    return out


def row_statistics_from_sums(row_max: Any, sums: Any, *, dtype: Any = np.float32) -> np.ndarray:
    """The whole rows' statistics [M, log S, Q, D] (..., 4) float64 from the global row
    max and the summed partials of ``vocab_shard_partial_sums``. ``dtype``: the
    logits' compute dtype, in which a target mass must be finite."""
    m = _real_array(row_max, "row_max")
    s = _real_array(sums, "sums")
    c = compute_dtype(_float_dtype(dtype))
    if s.shape != m.shape + (3,):
        raise ValueError(f"sums: expected shape {m.shape + (3,)} (three per row), got {s.shape}")
    with np.errstate(all="ignore"):
        out: np.ndarray = row_statistics(np, m, s, c)
    return out


def combine_vocab_shard_statistics(shard_stats: Sequence[Any] | np.ndarray) -> np.ndarray:
    """The whole rows' statistics from every shard's (gathered: a sequence, or stacked
    on a leading axis); what the two all-reduces compute. float64 (..., 4)."""
    if isinstance(shard_stats, np.ndarray):
        stacked = _stats_array(shard_stats, "shard_stats")
    else:
        try:
            shards = [_stats_array(s, "shard_stats") for s in shard_stats]
        except TypeError as exc:  # not iterable
            raise TypeError(f"shard_stats: expected a sequence of the shards' statistics, got {type(shard_stats).__name__}") from exc
        if not shards:
            raise ValueError("shard_stats: expected the statistics of at least one shard, got an empty sequence")
        if len({s.shape for s in shards}) > 1:
            raise ValueError(
                "shard_stats: every shard's statistics must have the same shape (the same rows), got "
                + ", ".join(sorted({str(s.shape) for s in shards}))
            )
        stacked = np.stack(shards)
    if stacked.ndim < 2 or stacked.shape[0] < 1:
        raise ValueError("shard_stats: expected the statistics of at least one shard")
    row_max = stacked[..., 0].astype(np.float64).max(axis=0)
    sums = sum(vocab_shard_partial_sums(s, row_max) for s in stacked)
    return row_statistics_from_sums(row_max, sums, dtype=stacked.dtype)


def loss_from_row_statistics(row_stats: Any, *, z_loss: float = 0.0, ignored: Any = None) -> np.ndarray:
    """Per-row losses ``Q log S - D + z_loss (M + log S)^2`` (float64; NaN rows stay
    NaN); rows where the bool mask ``ignored`` is set give 0 (ignored rows cannot be
    told from their statistics once combined)."""
    st = _stats_array(row_stats, "row_stats").astype(np.float64)
    z = check_float(z_loss, "z_loss", 0.0, np.inf)
    mask = None
    if ignored is not None:
        mask = np.asarray(ignored)
        if mask.dtype != np.bool_ or mask.shape != st.shape[:-1]:
            raise ValueError(f"ignored: expected a bool mask of shape {st.shape[:-1]}, got {mask.shape} {mask.dtype}")
    with np.errstate(all="ignore"):
        out: np.ndarray = np.asarray(row_losses(np, st, z, mask))  # (a 0-d array for one row, not a scalar)
    return out


def vocab_shard_gradient(
    logits: Any,
    targets: Any,
    row_stats: Any,
    *,
    vocab_start: int,
    num_classes: int,
    grad_scale: Any = 1.0,
    weight: Any = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    out: Any = None,
    backend: api.Backend = None,
) -> np.ndarray:
    """This shard's columns of the gradient of ``sum_i grad_scale_i * loss_i``, from
    the whole rows' statistics (``row_statistics_from_sums``): one read of the
    logits, one write, no communication.

    ``grad_scale``: a scalar or one value per row (the reduction's factor times the
    upstream gradient: ``1 / denominator`` for a mean). The other arguments are the
    statistics pass's, plus z_loss; ``out`` receives the gradient as in
    ``softmax_cross_entropy``. Ignored rows get 0, rows with no softmax NaN.
    """
    p = prepare_loss(
        logits, targets, axis=-1, reduction="sum", weight=weight, ignore_index=ignore_index,
        label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, return_grad=True, out=out, inplace=False,
        vocab_shard=(vocab_start, num_classes),
    )
    n, c = p.logits.shape[0], compute_dtype(p.logits.dtype)
    st = _stats_array(row_stats, "row_stats")
    if st.shape != p.lead_shape + (STATS_WIDTH,):
        raise ValueError(f"row_stats: expected shape {p.lead_shape + (STATS_WIDTH,)}, got {st.shape}")
    scale = np.asarray(grad_scale)
    if scale.dtype.kind not in "iuf" or scale.shape not in ((), p.lead_shape):
        raise ValueError(f"grad_scale: expected a real scalar or shape {p.lead_shape}, got {scale.shape} {scale.dtype}")
    if p.grad is not None and out is not None:
        # row_stats may be read in place (float rows already contiguous): out must not
        # overwrite the statistics of rows still to come, nor any other input
        refuse_overlap(p.grad, [st, scale], "out: shares memory with an input (row_stats or grad_scale)")
    p.given_stats = np.ascontiguousarray(st.reshape(n, STATS_WIDTH), dtype=c)
    with np.errstate(over="ignore"):  # a scale beyond the compute dtype is inf there, as the math says
        p.row_grad_scale = np.ascontiguousarray(np.broadcast_to(scale.astype(c).reshape(-1), (n,)))
    api._run(p, backend)
    assert p.grad_result is not None
    return p.grad_result
