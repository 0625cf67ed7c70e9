"""JAX adapter: optax-compatible softmax cross-entropy computed by fastxent's kernels.

    from fastxent.jax import softmax_cross_entropy_with_integer_labels
    loss = softmax_cross_entropy_with_integer_labels(logits, labels).mean()

Both functions take optax's arguments (``axis`` an int or a tuple of axes, ``where``)
and return optax's per-example losses. They work under ``jax.jit``, ``jax.grad`` /
``jax.vjp``, ``jax.jvp`` / ``jax.jacfwd`` and ``jax.vmap``, with gradients for
probability labels too.

How (docs/spec.md#jax): the kernels are XLA FFI targets of the extension, registered
at import and called with ``jax.ffi.ffi_call`` on the buffers XLA owns (no copy).
The forward pass writes the per-example losses and row statistics only
(docs/spec.md#row-statistics: one read of the logits, no N x K write); the backward
pass is one call that reads the logits and writes ``cotangent x gradient`` (one read,
one write). The loss is a ``jax.custom_jvp`` whose tangent is a linear primitive,
so forward mode evaluates it and reverse mode transposes it into that one call.
When the extension was built without the FFI handlers (or this jax refuses them),
the same two calls go through ``jax.pure_callback`` instead, after one warning.

Importing this module imports jax; ``import fastxent`` alone does not.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

_ad: Any = ad  # (untyped)

from . import _backend, api, vocab_shards
from ._checks import FLOAT_DTYPES, compute_dtype, is_16bit, normalize_axis

__all__ = [
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "vocab_parallel_softmax_cross_entropy",
    "vocab_parallel_softmax_cross_entropy_with_integer_labels",
]

# No class index can equal it (labels are int32/int64): the kernels check every label.
_NO_IGNORE = np.int64(np.iinfo(np.int64).min)
_ATTRS = {
    "ignore_index": _NO_IGNORE,
    "label_smoothing": np.float64(0.0),
    "z_loss": np.float64(0.0),
    "softcap": np.float64(0.0),
}
_NO_OFFSET = np.int32(0)  # the class_offset operand: a shard's first global class
_LOSS_STATS = "fastxent_loss_stats"
_GRAD_FROM_STATS = "fastxent_grad_from_stats"
_STATS_WIDTH = 4  # [M, log S, Q, D] per row


def _register_ffi_targets() -> bool:
    """Registers the extension's XLA FFI targets; False (after one warning) when absent."""
    core = _backend.core_or_none()
    targets = core.xla_ffi_targets() if core is not None else {}
    reason = "" if targets else "the extension was built without the XLA FFI handlers"
    if targets:
        try:
            for name, capsule in targets.items():
                jax.ffi.register_ffi_target(name, capsule, platform="cpu")
        except Exception as exc:  # noqa: BLE001 - e.g. handlers built against a newer FFI API than this jaxlib's
            reason = f"this jax refused the XLA FFI handlers ({exc})"
    if reason:
        warnings.warn(
            f"fastxent.jax: {reason}; using jax.pure_callback, which copies the logits "
            "and the gradient (docs/spec.md#jax)",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


FFI_AVAILABLE = _register_ffi_targets()


# ---- the two kernel calls, through XLA FFI or (fallback) a host callback ----------


def _host_loss_stats(total_classes: int, x: Any, y: Any, offset: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    if total_classes:  # a vocabulary shard (the loss is combined by the caller)
        stats = vocab_shards.vocab_shard_statistics(
            x, np.asarray(y), vocab_start=int(np.asarray(offset).reshape(-1)[0]), num_classes=total_classes,
            ignore_index=int(_NO_IGNORE))
        return np.zeros(x.shape[:-1], stats.dtype), stats
    loss, stats = api._loss_and_row_statistics(x, np.asarray(y), reduction="none", ignore_index=int(_NO_IGNORE))
    return loss, stats.reshape(x.shape[:-1] + (_STATS_WIDTH,))


def _host_grad(total_classes: int, x: Any, y: Any, offset: Any, stats: Any, cotangent: Any) -> np.ndarray:
    x = np.asarray(x)
    if total_classes:
        return vocab_shards.vocab_shard_gradient(
            x, np.asarray(y), np.asarray(stats), vocab_start=int(np.asarray(offset).reshape(-1)[0]),
            num_classes=total_classes, grad_scale=np.asarray(cotangent), ignore_index=int(_NO_IGNORE))
    return api._gradient_from_row_statistics(
        x, np.asarray(y), np.asarray(stats).reshape(-1, _STATS_WIDTH), np.asarray(cotangent).reshape(-1),
        reduction="none", ignore_index=int(_NO_IGNORE),
    )


def _compute(dtype: Any) -> np.dtype:
    """The kernels' compute dtype: float32 for 16-bit logits, else the logits' own."""
    return compute_dtype(np.dtype(dtype))


def _loss_stats(x: jax.Array, y: jax.Array, offset: Any = _NO_OFFSET, total_classes: int = 0) -> tuple[jax.Array, jax.Array]:
    """Per-row losses and row statistics, in the compute dtype; classes on the last axis of x.
    A vocabulary shard (docs/spec.md#vocabulary-shards): the global classes from
    ``offset`` of ``total_classes``, its statistics (and no meaningful loss)."""
    lead = x.shape[:-1]
    c = _compute(x.dtype)
    result = (
        jax.ShapeDtypeStruct(lead, c),  # type: ignore[no-untyped-call]
        jax.ShapeDtypeStruct(lead + (_STATS_WIDTH,), c),  # type: ignore[no-untyped-call]
    )
    # "broadcast_all": under vmap every argument arrives with the batch dimensions in
    # front, which the kernels take as more rows.
    if FFI_AVAILABLE:
        loss, stats = jax.ffi.ffi_call(_LOSS_STATS, result, vmap_method="broadcast_all")(
            x, y, offset, **_ATTRS, total_classes=np.int64(total_classes)
        )
    else:
        loss, stats = jax.pure_callback(partial(_host_loss_stats, total_classes), result, x, y, offset,
                                        vmap_method="broadcast_all")
    return loss, stats


def _grad(x: jax.Array, y: jax.Array, stats: jax.Array, cotangent: jax.Array, offset: Any = _NO_OFFSET,
          total_classes: int = 0) -> jax.Array:
    """cotangent_i x d loss_i / d x_i, from the forward's statistics (x's dtype)."""
    result = jax.ShapeDtypeStruct(x.shape, x.dtype)  # type: ignore[no-untyped-call]
    cotangent = cotangent.astype(_compute(x.dtype))
    if FFI_AVAILABLE:
        g: jax.Array = jax.ffi.ffi_call(_GRAD_FROM_STATS, result, vmap_method="broadcast_all")(
            x, y, offset, stats, cotangent, **_ATTRS, total_classes=np.int64(total_classes)
        )
    else:
        g = jax.pure_callback(partial(_host_grad, total_classes), result, x, y, offset, stats, cotangent,
                              vmap_method="broadcast_all")
    return g


# ---- the tangent of the loss in the logits: a linear primitive ---------------------
# loss_tangent(x, y, stats, dx)_i = sum_j G_ij dx_ij with G the gradient of row i's
# loss. Linear in dx; its transpose is _grad (the backward pass, one kernel call).

_loss_tangent_p: Any = Primitive("fastxent_loss_tangent")  # (jax.extend is untyped)


def _loss_tangent_impl(x: jax.Array, y: jax.Array, stats: jax.Array, dx: jax.Array) -> jax.Array:
    # Forward mode: G from the kernel, then one reduction by XLA (in the compute dtype).
    c = _compute(x.dtype)
    ones = jnp.ones(x.shape[:-1], c)
    return jnp.sum(_grad(x, y, stats, ones).astype(c) * dx.astype(c), axis=-1).astype(x.dtype)


def _loss_tangent_abstract(x: Any, y: Any, stats: Any, dx: Any) -> Any:
    return jax.core.ShapedArray(x.shape[:-1], x.dtype)


def _loss_tangent_transpose(ct: Any, x: Any, y: Any, stats: Any, dx: Any) -> list[Any]:
    if any(_ad.is_undefined_primal(a) for a in (x, y, stats)):
        raise NotImplementedError("fastxent.jax: the loss tangent is linear in the logits' tangent only")
    if type(ct) is ad.Zero:
        return [None, None, None, ad.Zero(dx.aval)]
    return [None, None, None, _grad(x, y, stats, ct)]


def _loss_tangent_batch(args: tuple[Any, ...], dims: tuple[Any, ...]) -> tuple[Any, int]:
    # Batch dimensions in front of every argument: the kernels take them as rows.
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    moved = [
        jnp.broadcast_to(a, (size,) + a.shape) if d is None else jnp.moveaxis(a, d, 0)
        for a, d in zip(args, dims)
    ]
    return _loss_tangent_p.bind(*moved), 0


def _loss_tangent_jvp(primals: Any, tangents: Any) -> Any:
    # Linear in dx; second derivatives through x, y or stats are not provided.
    x, y, stats, dx = primals
    tx, ty, tstats, tdx = tangents
    if any(type(t) is not ad.Zero for t in (tx, ty, tstats)):
        raise NotImplementedError("fastxent.jax: second derivatives of the loss are not supported")
    out = _loss_tangent_p.bind(x, y, stats, dx)
    return out, (_loss_tangent_p.bind(x, y, stats, tdx) if type(tdx) is not ad.Zero else jnp.zeros_like(out))


_loss_tangent_p.def_impl(_loss_tangent_impl)
_loss_tangent_p.def_abstract_eval(_loss_tangent_abstract)
mlir.register_lowering(_loss_tangent_p, mlir.lower_fun(_loss_tangent_impl, multiple_results=False))
ad.primitive_transposes[_loss_tangent_p] = _loss_tangent_transpose
ad.primitive_jvps[_loss_tangent_p] = _loss_tangent_jvp
batching.primitive_batchers[_loss_tangent_p] = _loss_tangent_batch


@jax.custom_jvp
def _xent(x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-row losses; classes on the last axis of x; y dense (x's shape) or indices."""
    return _loss_stats(x, y)[0].astype(x.dtype)  # (16-bit logits: a float32 loss rounded, as optax's dtype)


def _is_zero(t: Any) -> bool:
    return isinstance(t, SymbolicZero)


def _xent_jvp(primals: Any, tangents: Any) -> tuple[jax.Array, jax.Array]:
    x, y = primals
    dx, dy = tangents
    loss, stats = _loss_stats(x, y)
    loss = loss.astype(x.dtype)
    parts = []
    if not _is_zero(dx):
        parts.append(_loss_tangent_p.bind(x, y, stats, dx))
    if not _is_zero(dy) and jnp.issubdtype(y.dtype, jnp.floating):
        # d loss / d y_j = -log_softmax(x)_j = lse - x_j (linear in dy; XLA computes it
        # only when the labels are differentiated).
        lse = stats[..., 0] + stats[..., 1]
        parts.append(jnp.sum((lse[..., None] - x) * dy, axis=-1).astype(x.dtype))
    if not parts:
        return loss, jnp.zeros_like(loss)
    return loss, sum(parts[1:], parts[0])


_xent.defjvp(_xent_jvp, symbolic_zeros=True)


# ---- optax's signatures ------------------------------------------------------------


def _class_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    if isinstance(axis, tuple):
        if not axis:
            raise ValueError("axis: expected at least one class axis, got ()")
        axes = tuple(normalize_axis(a, ndim) for a in axis)
        if len(set(axes)) != len(axes):
            raise ValueError(f"axis: repeated axis in {axis}")
        return axes
    return (normalize_axis(axis, ndim),)  # TypeError for anything but an int


def _classes_last(a: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """a with the class axes moved to the end (in the order given) and flattened into one."""
    lead = tuple(d for d in range(a.ndim) if d not in axes)
    if lead + axes != tuple(range(a.ndim)):
        a = jnp.transpose(a, lead + axes)  # a copy: the kernels want contiguous classes
    k = int(np.prod(a.shape[len(lead) :]))  # (not -1: a batch of 0 rows would make it ambiguous)
    return a.reshape(tuple(a.shape[: len(lead)]) + (k,))


def _prepare(logits: Any, labels: Any, axis: Any, where: Any, integer: bool) -> tuple[jax.Array, jax.Array, Any]:
    x = jnp.asarray(logits)
    y = jnp.asarray(labels)
    if np.dtype(x.dtype) not in FLOAT_DTYPES and not is_16bit(np.dtype(x.dtype)):
        raise TypeError(f"logits: expected float32, float64, bfloat16 or float16, got dtype {x.dtype}")
    axes = _class_axes(axis, x.ndim)
    lead_shape = tuple(s for d, s in enumerate(x.shape) if d not in axes)
    k = int(np.prod([x.shape[a] for a in axes]))
    if k == 0:
        raise ValueError(f"logits: the class axis {axis} has length 0; at least one class is needed")
    if integer:
        if not jnp.issubdtype(y.dtype, jnp.integer):
            raise TypeError(f"labels: expected integer class indices, got dtype {y.dtype}")
        if y.shape != lead_shape:
            raise ValueError(f"labels: expected shape {lead_shape} (logits' shape without axis {axis}), got {y.shape}")
        if y.dtype not in (jnp.int32, jnp.int64):
            y = y.astype(jnp.int32)
        if not isinstance(labels, jax.core.Tracer) and y.size:
            # Concrete labels are checked here, with a Python exception; traced ones
            # the kernel checks, and its error reaches the caller wrapped by XLA.
            concrete = np.asarray(labels)
            lo, hi = int(concrete.min()), int(concrete.max())
            if lo < 0 or hi >= k:
                raise IndexError(f"labels: class index {lo if lo < 0 else hi} is out of range for {k} classes")
    else:
        if y.shape != x.shape:
            raise ValueError(f"labels: expected the logits' shape {x.shape}, got {y.shape}")
        y = _classes_last(y.astype(x.dtype), axes)
    mask = None
    if where is not None:
        w = jnp.asarray(where)
        if w.dtype != jnp.bool_:
            raise TypeError(f"where: expected a boolean mask, got dtype {w.dtype}")
        if w.ndim != x.ndim:  # optax: a per-example mask applies to all of the row's classes
            if w.shape != lead_shape:
                raise ValueError(f"where: expected shape {lead_shape} or the logits' shape {x.shape}, got {w.shape}")
            w = jnp.expand_dims(w, tuple(sorted(axes)))
        try:
            fits = jnp.broadcast_shapes(w.shape, x.shape) == x.shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"where: shape {w.shape} does not broadcast to the logits' shape {x.shape}")
        w = _classes_last(jnp.broadcast_to(w, x.shape), axes)
        # Excluded classes: -inf logits and zero labels, which add nothing to the row.
        x = jnp.where(w, _classes_last(x, axes), -jnp.inf)
        if not integer:
            y = jnp.where(w, y, 0)
        mask = jnp.any(w, axis=-1)
    else:
        x = _classes_last(x, axes)
    return x, y, mask


def _finish(loss: jax.Array, mask: Any) -> jax.Array:
    # optax: a row with no included class has loss 0.
    return loss if mask is None else jnp.where(mask, loss, jnp.zeros((), loss.dtype))


def softmax_cross_entropy(logits: Any, labels: Any, axis: int | tuple[int, ...] = -1, where: Any = None) -> jax.Array:
    """``optax.softmax_cross_entropy`` by fastxent's kernels.

    Per example (classes on ``axis``)::

        loss = -sum_c labels_c * log_softmax(logits)_c
        d loss / d logits = softmax(logits) * sum_c labels_c - labels
        d loss / d labels = -log_softmax(logits)

    Labels may be probabilities, multi-hot (several ones) or any weights.

    Args:
        logits: float32 or float64 array, any leading dimensions.
        labels: array of logits' shape.
        axis: the class axis, or a tuple of axes whose product is the classes.
        where: boolean mask of logits' shape (or of the per-example shape): the
            classes to include; a row with none included has loss 0.

    Returns:
        Per-example losses: logits' shape without ``axis``, logits' dtype.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from fastxent.jax import softmax_cross_entropy
        >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
        >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        >>> [round(float(v), 4) for v in softmax_cross_entropy(logits, labels)]
        [0.2761, 2.9518]
        >>> g = jax.grad(lambda x: softmax_cross_entropy(x, labels).sum())(logits)
    """
    x, y, mask = _prepare(logits, labels, axis, where, integer=False)
    return _finish(_xent(x, y), mask)


def softmax_cross_entropy_with_integer_labels(
    logits: Any, labels: Any, axis: int | tuple[int, ...] = -1, where: Any = None
) -> jax.Array:
    """``optax.softmax_cross_entropy_with_integer_labels`` by fastxent's kernels.

    Per example, with class index ``c = labels``::

        loss = logsumexp(logits) - logits_c
        d loss / d logits = softmax(logits) - one_hot(c)

    Args:
        logits: float32 or float64 array, any leading dimensions.
        labels: integer class indices in [0, num_classes), logits' shape without
            ``axis`` (for a tuple of axes, a flat index into their product).
        axis: the class axis, or a tuple of axes.
        where: boolean mask of logits' shape (or of the per-example shape): the
            classes to include; a row with none included has loss 0. A label on
            an excluded class gives +inf (optax: the included classes' logsumexp
            minus that logit).

    Returns:
        Per-example losses: logits' shape without ``axis``, logits' dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> from fastxent.jax import softmax_cross_entropy_with_integer_labels
        >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
        >>> loss = softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1]))
        >>> [round(float(v), 4) for v in loss]
        [0.2761, 2.9518]
    """
    x, y, mask = _prepare(logits, labels, axis, where, integer=True)
    return _finish(_xent(x, y), mask)


# ---- vocabulary-parallel: the classes split over a mesh axis (inside shard_map) -----
# docs/spec.md#vocabulary-shards. Forward: the shard's statistics (one kernel call),
# one pmax and one psum of O(N) values, the loss from the combined statistics (the
# same on every shard). Backward: one kernel call per shard, no communication.


def _varying_axes(a: Any) -> frozenset[Any]:
    """The mesh axes along which shard_map types ``a`` as varying (check_vma; empty
    on jax versions without these types)."""
    aval = jax.typeof(a) if hasattr(jax, "typeof") else None
    mat = getattr(aval, "manual_axis_type", None)  # jax >= 0.8
    axes = mat.varying if mat is not None else getattr(aval, "vma", frozenset())  # jax 0.6-0.7
    return frozenset(axes)


def _varying_like(a: jax.Array, ref: jax.Array) -> jax.Array:
    """``a`` typed as varying wherever ``ref`` is: a kernel's result differs per shard
    as its inputs do, but an XLA FFI call's result type drops that."""
    missing = tuple(sorted(_varying_axes(ref) - _varying_axes(a), key=str))
    if not missing:
        return a
    if hasattr(jax.lax, "pcast"):
        out: jax.Array = jax.lax.pcast(a, missing, to="varying")
    else:
        out = jax.lax.pvary(a, missing)  # type: ignore[attr-defined]  # (jax 0.6-0.7)
    return out


def _vocab_parallel_fwd(axis_name: Any, total: int, x: jax.Array, y: jax.Array, start: jax.Array) -> Any:
    c = _compute(x.dtype)
    _, stats = _loss_stats(x, y, start, total)
    stats = _varying_like(stats, x)
    row_max = jax.lax.pmax(stats[..., 0], axis_name)  # type: ignore[no-untyped-call]
    sums = jax.lax.psum(vocab_shards.partial_sums(jnp, stats, row_max), axis_name)  # type: ignore[no-untyped-call]
    row_stats = vocab_shards.row_statistics(jnp, row_max, sums, c).astype(c)
    loss = vocab_shards.row_losses(jnp, row_stats, 0.0, None).astype(x.dtype)
    return loss, (x, y, start, row_stats)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _vocab_parallel(axis_name: Any, total: int, x: jax.Array, y: jax.Array, start: jax.Array) -> jax.Array:
    loss: jax.Array = _vocab_parallel_fwd(axis_name, total, x, y, start)[0]
    return loss


def _vocab_parallel_bwd(axis_name: Any, total: int, res: Any, ct: jax.Array) -> tuple[Any, ...]:
    x, y, start, row_stats = res
    ct = ct.astype(row_stats.dtype)
    dx = _varying_like(_grad(x, y, row_stats, ct, start, total), x)
    dy = None
    if jnp.issubdtype(y.dtype, jnp.floating):  # d loss / d y_j = lse - x_j, this shard's columns
        lse = row_stats[..., 0] + row_stats[..., 1]
        dy = (ct[..., None] * (lse[..., None] - x.astype(row_stats.dtype))).astype(y.dtype)
    return dx, dy, None


_vocab_parallel.defvjp(partial(_vocab_parallel_fwd), _vocab_parallel_bwd)


def _vocab_parallel_call(logits: Any, labels: Any, axis_name: Any, vocab_start: Any, num_classes: Any,
                         integer: bool) -> jax.Array:
    x = jnp.asarray(logits)
    y = jnp.asarray(labels)
    if np.dtype(x.dtype) not in FLOAT_DTYPES and not is_16bit(np.dtype(x.dtype)):
        raise TypeError(f"logits: expected float32, float64, bfloat16 or float16, got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(f"logits: expected this shard's classes on the last axis, got shape {x.shape}")
    k = x.shape[-1]
    try:
        shards = jax.lax.psum(1, axis_name)  # type: ignore[no-untyped-call]  # the mesh axis' size (a Python int inside shard_map)
    except NameError:  # (JAX's "unbound axis name": not an axis of the enclosing shard_map, or none encloses)
        shards = None
    if not isinstance(shards, int):
        raise TypeError(f"axis_name: {axis_name!r} must name a mesh axis of the enclosing shard_map")
    total = int(num_classes) if num_classes is not None else k * shards
    if total < k:
        raise ValueError(f"num_classes: {total} is fewer than this shard's {k} classes")
    if total > k * shards:
        # shard_map's shards are equal: classes beyond k * shards would be in no shard, and
        # a label there would count no target (a silent 0 loss) instead of an error
        raise ValueError(f"num_classes: {total} is more than the {shards} shard(s) of {k} classes hold ({k * shards})")
    if vocab_start is None:
        start = jax.lax.axis_index(axis_name) * k  # equal shards in axis order
    else:
        start = jnp.asarray(vocab_start)
        if start.shape != () or not jnp.issubdtype(start.dtype, jnp.integer):
            raise TypeError(f"vocab_start: expected one integer, got {start.dtype} of shape {start.shape}")
    start = start.astype(jnp.int32)
    if integer:
        if not jnp.issubdtype(y.dtype, jnp.integer) or y.shape != x.shape[:-1]:
            raise TypeError(f"labels: expected global integer class indices of shape {x.shape[:-1]}, "
                            f"got {y.dtype} of shape {y.shape}")
        if y.dtype not in (jnp.int32, jnp.int64):
            y = y.astype(jnp.int32)
    elif y.shape != x.shape:
        raise ValueError(f"labels: expected this shard's labels of the logits' shape {x.shape}, got {y.shape}")
    else:
        y = y.astype(x.dtype)
    return _vocab_parallel(axis_name, total, x, y, start)


def vocab_parallel_softmax_cross_entropy(
    logits: Any, labels: Any, *, axis_name: Any, vocab_start: Any = None, num_classes: int | None = None
) -> jax.Array:
    """``softmax_cross_entropy`` over classes split across the mesh axis ``axis_name``,
    for use inside ``jax.shard_map`` (docs/spec.md#vocabulary-shards).

    Each shard passes its columns of ``logits`` (..., K_r) and of ``labels`` (probabilities
    or multi-hot, the same shape); every shard returns the whole rows' losses (...,).
    ``vocab_start``: this shard's first global class (an int or a traced scalar, e.g.
    from ``lax.axis_index``); None means equal shards in axis order. ``num_classes``:
    the whole vocabulary (default ``K_r`` times the axis size). Forward: one kernel
    call, one ``lax.pmax`` and one ``lax.psum`` of O(N) values; the gradient (for the
    logits and the labels) is computed per shard with no communication.
    """
    return _vocab_parallel_call(logits, labels, axis_name, vocab_start, num_classes, integer=False)


def vocab_parallel_softmax_cross_entropy_with_integer_labels(
    logits: Any, labels: Any, *, axis_name: Any, vocab_start: Any = None, num_classes: int | None = None
) -> jax.Array:
    """``softmax_cross_entropy_with_integer_labels`` over classes split across the mesh
    axis ``axis_name`` (inside ``jax.shard_map``): ``labels`` are global class indices
    (...,), the same on every shard, in ``[0, num_classes)`` (checked by the kernel:
    an XLA error otherwise). See ``vocab_parallel_softmax_cross_entropy``.
    """
    return _vocab_parallel_call(logits, labels, axis_name, vocab_start, num_classes, integer=True)
