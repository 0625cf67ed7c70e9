"""JAX adapter: optax-compatible softmax cross-entropy computed by fastxent's fused kernel.

    from fastxent.jax import softmax_cross_entropy_with_integer_labels
    loss = softmax_cross_entropy_with_integer_labels(logits, labels).mean()

Both functions take optax's arguments and return optax's per-example losses, and
work under ``jax.jit``, ``jax.grad`` / ``jax.vjp`` and ``jax.vmap``. The forward
pass is one ``jax.pure_callback`` into the kernel returning the losses and the fused
gradient ``softmax * sum(y) - y``, kept as the residual; the backward pass multiplies
it by the cotangent. Runs on the CPU (the callback's arrays live in host memory);
forward-mode differentiation (``jax.jvp``) is not supported (``jax.custom_vjp``).

Importing this module imports jax; ``import fastxent`` alone does not.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import api
from ._checks import FLOAT_DTYPES, normalize_axis

__all__ = ["softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels"]


def _host_loss_and_grad(logits: Any, labels: Any, axis: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(logits)
    loss, grad = api.softmax_cross_entropy(x, np.asarray(labels), axis=axis, reduction="none")
    assert grad is not None
    return np.asarray(loss, dtype=x.dtype), grad


def _loss_and_grad(logits: jax.Array, labels: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """Per-example losses and d(sum of losses)/d(logits), from one kernel call."""
    lead = logits.shape[:axis] + logits.shape[axis + 1 :]
    result = (
        jax.ShapeDtypeStruct(lead, logits.dtype),  # type: ignore[no-untyped-call]
        jax.ShapeDtypeStruct(logits.shape, logits.dtype),  # type: ignore[no-untyped-call]
    )
    # The callback's axis is counted from the end: under vmap ("broadcast_all") it
    # receives every argument with the batch dimensions in front, which also suits
    # a kernel that takes any leading dimensions.
    host = partial(_host_loss_and_grad, axis=axis - logits.ndim)
    loss, grad = jax.pure_callback(host, result, logits, labels, vmap_method="broadcast_all")
    return loss, grad


def _check(logits: Any, labels: Any, axis: int, integer: bool) -> tuple[jax.Array, jax.Array, int]:
    x = jnp.asarray(logits)
    y = jnp.asarray(labels)
    if np.dtype(x.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"logits: expected float32 or float64, got dtype {x.dtype}")
    axis = normalize_axis(axis, x.ndim)  # (a tuple of axes is not supported: TypeError)
    if x.shape[axis] == 0:
        raise ValueError(f"logits: the class axis ({axis}) has length 0; at least one class is needed")
    if integer:
        if not jnp.issubdtype(y.dtype, jnp.integer):
            raise TypeError(f"labels: expected integer class indices, got dtype {y.dtype}")
        want = x.shape[:axis] + x.shape[axis + 1 :]
        if y.shape != want:
            raise ValueError(f"labels: expected shape {want} (logits' shape without axis {axis}), got {y.shape}")
        if not isinstance(labels, jax.core.Tracer) and y.size:
            # Concrete labels are checked here (in NumPy: jnp would stage the check
            # into a surrounding jit); traced ones only the kernel sees, and an error
            # raised there reaches the caller wrapped by XLA.
            concrete = np.asarray(labels)
            lo, hi = int(concrete.min()), int(concrete.max())
            if lo < 0 or hi >= x.shape[axis]:
                bad = lo if lo < 0 else hi
                raise IndexError(f"labels: class index {bad} is out of range for {x.shape[axis]} classes")
    else:
        if y.shape != x.shape:
            raise ValueError(f"labels: expected the logits' shape {x.shape}, got {y.shape}")
        y = y.astype(x.dtype)
    return x, y, axis


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_xent(logits: jax.Array, labels: jax.Array, axis: int) -> jax.Array:
    return _loss_and_grad(logits, labels, axis)[0]


def _dense_fwd(logits: jax.Array, labels: jax.Array, axis: int) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    loss, grad = _loss_and_grad(logits, labels, axis)
    return loss, (grad, logits)


def _dense_bwd(axis: int, res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    grad, logits = res
    g = jnp.expand_dims(g, axis)
    # d loss / d labels = -log_softmax(logits): computed only when asked for (under
    # jit, XLA drops it otherwise).
    return grad * g, -jax.nn.log_softmax(logits, axis=axis) * g


_dense_xent.defvjp(_dense_fwd, _dense_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _index_xent(logits: jax.Array, labels: jax.Array, axis: int) -> jax.Array:
    return _loss_and_grad(logits, labels, axis)[0]


def _index_fwd(logits: jax.Array, labels: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    return _loss_and_grad(logits, labels, axis)


def _index_bwd(axis: int, grad: jax.Array, g: jax.Array) -> tuple[jax.Array, None]:
    return grad * jnp.expand_dims(g, axis), None  # integer labels have no cotangent


_index_xent.defvjp(_index_fwd, _index_bwd)


def softmax_cross_entropy(logits: Any, labels: Any, axis: int = -1) -> jax.Array:
    """``optax.softmax_cross_entropy`` by fastxent's fused kernel.

    Per example (classes on ``axis``)::

        loss = -sum_c labels_c * log_softmax(logits)_c
        d loss / d logits = softmax(logits) * sum_c labels_c - labels

    Labels may be probabilities, multi-hot (several ones) or any weights.

    Args:
        logits: float32 or float64 array, any leading dimensions.
        labels: array of logits' shape.
        axis: the class axis (an int).

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
    x, y, ax = _check(logits, labels, axis, integer=False)
    return _dense_xent(x, y, ax)


def softmax_cross_entropy_with_integer_labels(logits: Any, labels: Any, axis: int = -1) -> jax.Array:
    """``optax.softmax_cross_entropy_with_integer_labels`` by fastxent's fused kernel.

    Per example, with class index ``c = labels``::

        loss = logsumexp(logits) - logits_c
        d loss / d logits = softmax(logits) - one_hot(c)

    Args:
        logits: float32 or float64 array, any leading dimensions.
        labels: integer class indices in [0, num_classes), logits' shape without ``axis``.
        axis: the class axis (an int).

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
    x, y, ax = _check(logits, labels, axis, integer=True)
    return _index_xent(x, y, ax)
