"""fastxent.torch.vocab_parallel_cross_entropy: the vocabulary split across the
processes of a ``torch.distributed`` group (docs/spec.md#vocabulary-shards).

Per call, on every rank of the group, in the same order (so a refused argument on
one rank is an error on all of them, never a hang):

1. ``all_gather`` of a fixed record of 12 int64 per rank: each rank's row count,
   vocabulary range, options and whether its own arguments passed the local checks.
   Every rank validates the whole set (same rows and options, ranges that tile
   ``[0, num_classes)`` exactly) and derives ``num_classes`` when it is None.
2. The shard's statistics pass (one read of the logits, fastxent's kernel).
3. ``all_reduce(MAX)`` of the N row maxima (plus one failure flag: a rank whose
   kernel call refused its targets makes every rank raise).
4. ``all_reduce(SUM)`` of the 3N partial sums (plus the mean's denominator).

The backward pass is one kernel call per rank (one read, one write of its shard's
gradient) and communicates nothing.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import vocab_shards as vs
from ._checks import check_float, check_int, check_reduction, compute_dtype

__all__ = ["vocab_parallel_cross_entropy"]

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_REDUCTIONS = ("none", "sum", "mean")
# The per-rank agreement record (all_gather), int64 each; floats by their bits.
_FIELDS = ("error", "rows", "vocab_start", "classes", "num_classes", "target_kind", "reduction", "ignore_index",
           "label_smoothing", "z_loss", "dtype", "has_weight")
_SHARED = ("rows", "target_kind", "reduction", "ignore_index", "label_smoothing", "z_loss", "dtype", "has_weight")


def _bits(x: float) -> int:
    return int(struct.unpack("<q", struct.pack("<d", float(x)))[0])


def _from_bits(b: int) -> float:
    return float(struct.unpack("<d", struct.pack("<q", int(b)))[0])


class _Local:
    """This rank's arguments after the local checks (error set when they failed)."""

    def __init__(self, logits: Any, target: Any, vocab_start: Any, num_classes: Any, weight: Any, reduction: Any,
                 ignore_index: Any, label_smoothing: Any, z_loss: Any) -> None:
        self.error: Exception | None = None
        self.rows = self.classes = self.target_kind = self.dtype = 0
        self.vocab_start, self.num_classes, self.has_weight = 0, -1, False
        self.reduction, self.ignore_index, self.label_smoothing, self.z_loss = "mean", -100, 0.0, 0.0
        try:
            self._check(logits, target, vocab_start, num_classes, weight, reduction, ignore_index, label_smoothing,
                        z_loss)
        except Exception as exc:  # noqa: BLE001 - any refusal must reach the agreement, or the others would hang
            self.error = exc

    def _check(self, logits: Any, target: Any, vocab_start: Any, num_classes: Any, weight: Any, reduction: Any,
               ignore_index: Any, label_smoothing: Any, z_loss: Any) -> None:
        if not isinstance(logits, Tensor) or logits.device.type != "cpu" or logits.layout != torch.strided:
            raise TypeError(f"logits_shard: expected a strided CPU tensor, got {type(logits).__name__}")
        if logits.dtype == torch.bfloat16 and _adapter()._bfloat16_dtype() is None:
            raise TypeError("logits_shard: bfloat16 needs the ml_dtypes package for its NumPy dtype")
        if logits.dtype not in _DTYPES or logits.dim() < 1 or logits.shape[-1] < 1:
            raise ValueError(
                f"logits_shard: expected a float32/float64/bfloat16/float16 tensor (..., K_r) with K_r >= 1, "
                f"got {logits.dtype} of shape {tuple(logits.shape)}"
            )
        if not isinstance(target, Tensor) or target.device.type != "cpu":
            raise TypeError(f"target: expected a CPU tensor, got {type(target).__name__}")
        lead = tuple(logits.shape[:-1])
        if target.dtype in (torch.int32, torch.int64) and tuple(target.shape) == lead:
            self.target_kind = 0
        elif target.is_floating_point() and target.shape == logits.shape:
            if target.requires_grad:
                raise ValueError("target: probability targets that require grad are not supported here")
            self.target_kind = 1
        else:
            raise ValueError(
                f"target: expected global class indices (int64/int32) of shape {lead} or this shard's "
                f"probabilities of shape {tuple(logits.shape)}, got {target.dtype} of shape {tuple(target.shape)}"
            )
        if weight is not None and (
            not isinstance(weight, Tensor) or tuple(weight.shape) != (logits.shape[-1],) or weight.requires_grad
        ):
            raise ValueError(f"weight: expected this shard's {logits.shape[-1]} class weights (no grad) or None")
        self.rows, self.classes = int(np.prod(lead, dtype=np.int64)), int(logits.shape[-1])
        self.vocab_start = check_int(vocab_start, "vocab_start")
        if num_classes is not None:
            self.num_classes = check_int(num_classes, "num_classes")
            if self.num_classes < 1:
                raise ValueError(f"num_classes: expected the vocabulary's size (>= 1), got {num_classes}")
        self.reduction = check_reduction(reduction)
        self.ignore_index = check_int(ignore_index, "ignore_index")
        self.label_smoothing = check_float(label_smoothing, "label_smoothing", 0.0, 1.0)
        self.z_loss = check_float(z_loss, "z_loss", 0.0, float(np.finfo(np.float64).max))
        self.dtype = _DTYPES.index(logits.dtype)
        self.has_weight = weight is not None

    def record(self) -> Tensor:
        values = {
            "error": int(self.error is not None), "rows": self.rows, "vocab_start": self.vocab_start,
            "classes": self.classes, "num_classes": self.num_classes, "target_kind": self.target_kind,
            "reduction": _REDUCTIONS.index(self.reduction), "ignore_index": self.ignore_index,
            "label_smoothing": _bits(self.label_smoothing), "z_loss": _bits(self.z_loss), "dtype": self.dtype,
            "has_weight": int(self.has_weight),
        }
        return torch.tensor([values[f] for f in _FIELDS], dtype=torch.int64)


def _on_every_rank(error: Exception, rank: int) -> Exception:
    """This rank's own error, saying that the whole group raises with it."""
    message = f"{error} (rank {rank}; every rank of the group raises)"
    try:
        return type(error)(message)
    except Exception:  # noqa: BLE001 - an exception type with another constructor
        return RuntimeError(message)


def _agree(local: _Local, group: Any) -> int:
    """One all_gather of every rank's record; the whole vocabulary's size, or the same
    error on every rank."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    mine = local.record()
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine, group=group)
    recs = [dict(zip(_FIELDS, g.tolist())) for g in gathered]
    prefix = "vocab_parallel_cross_entropy: "
    if local.error is not None:
        raise _on_every_rank(local.error, rank) from local.error
    failed = [r for r, rec in enumerate(recs) if rec["error"]]
    if failed:
        raise ValueError(f"{prefix}rank {failed[0]} refused its arguments (see its error); no rank computed")
    for field in _SHARED:
        values = [rec[field] for rec in recs]
        if len(set(values)) > 1:
            shown = [_from_bits(v) if field in ("label_smoothing", "z_loss") else v for v in values]
            raise ValueError(f"{prefix}{field} differs between ranks: {shown} (by rank); every rank must pass the same")
    ranges = sorted((rec["vocab_start"], rec["classes"], r) for r, rec in enumerate(recs))
    expected = 0
    for start, k, _r in ranges:
        if start != expected:
            what = "overlap" if start < expected else "leave a gap"
            raise ValueError(
                f"{prefix}the vocabulary ranges of the ranks {what} at class {min(start, expected)}: by rank "
                f"{[(rec['vocab_start'], rec['vocab_start'] + rec['classes']) for rec in recs]} (start, end); "
                "they must tile [0, num_classes) exactly"
            )
        expected = start + k
    given = {rec["num_classes"] for rec in recs if rec["num_classes"] >= 0}
    if given and given != {expected}:
        raise ValueError(f"{prefix}num_classes={sorted(given)} but the ranks' shards cover {expected} classes")
    return expected


def _adapter() -> Any:
    """fastxent.torch (which imports this module), for its zero-copy tensor <-> NumPy views."""
    from . import torch as adapter

    return adapter


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor, weight: Tensor | None, local: _Local, num_classes: int,
                group: Any) -> Tensor:
        view = _adapter()._numpy
        x = view(logits)
        cdtype = compute_dtype(x.dtype)
        t = view(target)
        w = None if weight is None else weight.detach().to(torch.float64).numpy()
        error: Exception | None = None
        try:
            stats = vs.vocab_shard_statistics(
                x, t, vocab_start=local.vocab_start, num_classes=num_classes, weight=w,
                ignore_index=local.ignore_index, label_smoothing=local.label_smoothing,
            ).reshape(-1, vs.STATS_WIDTH)
        except Exception as exc:  # noqa: BLE001 - e.g. a class index beyond num_classes; the MAX tells the others
            error, stats = exc, np.zeros((local.rows, vs.STATS_WIDTH), cdtype)
        rank = dist.get_rank(group)
        # The MAX carries a failure flag: a rank whose kernel call refused its targets
        # makes every rank stop here, before the SUM it would never join.
        maxima = torch.empty(local.rows + 1, dtype=torch.float64)
        maxima[:-1] = torch.from_numpy(stats[:, 0].astype(np.float64))
        maxima[-1] = rank + 1 if error is not None else 0
        dist.all_reduce(maxima, op=dist.ReduceOp.MAX, group=group)
        if error is not None:
            raise _on_every_rank(error, rank) from error
        if maxima[-1] > 0:
            raise ValueError(f"vocab_parallel_cross_entropy: rank {int(maxima[-1]) - 1} refused its targets (see its "
                             "error); no rank computed")
        row_max = maxima[:-1].numpy()

        # The SUM: 3N partials, and the mean's denominator where only the shard holding
        # a row's class knows its weight.
        index = local.target_kind == 0
        sums = torch.empty(3 * local.rows + 1, dtype=torch.float64)
        sums[:-1] = torch.from_numpy(vs.vocab_shard_partial_sums(stats, row_max).reshape(-1))
        ignored = None
        if index:
            labels = t.reshape(-1).astype(np.int64)
            ignored = labels == local.ignore_index
            owned = ~ignored & (labels >= local.vocab_start) & (labels < local.vocab_start + local.classes)
            own = labels[owned] - local.vocab_start
            sums[-1] = float(np.sum(w[own])) if w is not None else float(own.size)
        else:
            sums[-1] = 0.0
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
        total = sums.numpy()
        row_stats = vs.row_statistics_from_sums(row_max, total[:-1].reshape(-1, 3), dtype=cdtype)
        losses = vs.loss_from_row_statistics(row_stats, z_loss=local.z_loss, ignored=ignored)

        denominator = np.float64(total[-1] if index else local.rows)
        with np.errstate(all="ignore"):
            scale = float(1.0 / denominator) if local.reduction == "mean" else 1.0
            if not np.isfinite(cdtype.type(scale)):
                scale = float("nan")  # 1 / denominator beyond the dtype: no gradient (docs/spec.md#reductions)
            if local.reduction == "none":
                out = torch.from_numpy(losses).reshape(logits.shape[:-1])
            elif local.reduction == "sum":
                out = torch.tensor(np.sum(losses))
            else:
                out = torch.tensor(np.sum(losses) / denominator)
        ctx.save_for_backward(logits, target, weight)
        ctx.row_stats, ctx.scale, ctx.local, ctx.num_classes = row_stats, scale, local, num_classes
        return out.to(logits.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        logits, target, weight = ctx.saved_tensors
        local = ctx.local
        adapter = _adapter()
        # the reduction's factor times the upstream gradient: a scalar, or one per row for "none"
        grad_scale = ctx.scale * grad_loss.detach().to(torch.float64).numpy()
        g = vs.vocab_shard_gradient(
            adapter._numpy(logits), adapter._numpy(target),
            ctx.row_stats.reshape(tuple(logits.shape[:-1]) + (vs.STATS_WIDTH,)),
            vocab_start=local.vocab_start, num_classes=ctx.num_classes, grad_scale=grad_scale,
            weight=None if weight is None else weight.detach().to(torch.float64).numpy(),
            ignore_index=local.ignore_index, label_smoothing=local.label_smoothing, z_loss=local.z_loss,
        )
        return adapter._torch(g), None, None, None, None, None


# Collectives and NumPy views inside: under torch.compile it runs eagerly (one graph
# break) rather than being traced.
@torch.compiler.disable  # type: ignore[untyped-decorator]
def vocab_parallel_cross_entropy(
    logits_shard: Tensor,
    target: Tensor,
    *,
    vocab_start: int,
    num_classes: int | None = None,
    group: Any = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
) -> Tensor:
    """Cross-entropy over a vocabulary split across the ranks of ``group``
    (``torch.distributed``, initialised by the caller; gloo on CPU).

    Each rank passes its shard: ``logits_shard`` (N, K_r) (or (..., K_r): classes
    last) holding the global classes ``[vocab_start, vocab_start + K_r)``; ``target``
    the global class indices (N,) (the same on every rank) or this shard's columns
    of probability targets (N, K_r); ``weight`` this shard's K_r class weights.
    ``num_classes`` is the whole vocabulary's size (None: the sum of the shards).
    ``reduction``, ``ignore_index``, ``label_smoothing`` mean what they mean in
    ``torch.nn.functional.cross_entropy`` and must be the same on every rank;
    ``z_loss`` adds ``z_loss * lse**2`` per row.

    Every rank returns the same loss, equal (to float rounding) to the single-process
    ``fastxent.torch.cross_entropy`` of the concatenated shards. ``loss.backward()``
    gives each rank its shard's gradient with no communication. Per call: one
    all_gather of 12 int64 per rank (argument agreement), then all-reduces of N + 1
    (MAX) and 3N + 1 (SUM) float64 values. Arguments that disagree between ranks, or
    that one rank refuses, raise on every rank (docs/spec.md#vocabulary-shards).
    Under ``torch.compile`` the call runs eagerly (a graph break).
    """
    local = _Local(logits_shard, target, vocab_start, num_classes, weight, reduction, ignore_index, label_smoothing,
                   z_loss)
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("vocab_parallel_cross_entropy: torch.distributed is not initialised (init_process_group)")
    if group is not None and not isinstance(group, dist.ProcessGroup):
        # (refused here, before any collective: an object that is no group cannot take
        # part in the agreement; torch.distributed itself would fail with an AttributeError)
        raise TypeError(f"group: expected a torch.distributed ProcessGroup or None, got {type(group).__name__}")
    total = _agree(local, group)
    result: Tensor = _VocabParallelCrossEntropy.apply(  # type: ignore[no-untyped-call]
        logits_shard, target, weight, local, total, group)
    return result
