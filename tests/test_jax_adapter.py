"""fastxent.jax against optax's own functions: values and vector-Jacobian products with
random cotangents, under jit, grad and vmap (batched and unbatched arguments)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fastxent.api
from fastxent.jax import (
    softmax_cross_entropy,
    softmax_cross_entropy_with_integer_labels,
)

K = 11
PAIRS = {
    "dense": (softmax_cross_entropy, optax.softmax_cross_entropy),
    "integer": (softmax_cross_entropy_with_integer_labels, optax.softmax_cross_entropy_with_integer_labels),
}
# float32 kernel vs optax's float32 XLA: each does its own logsumexp over 11 classes,
# a few eps (1.2e-7) of |x| ~ 3 apart.
TOL = {"rtol": 2e-6, "atol": 2e-6}


def _labels(kind: str, shape: tuple[int, ...], rng: np.random.Generator, axis: int = -1) -> jax.Array:
    if kind == "integer":
        lead = shape[: axis % len(shape)] + shape[axis % len(shape) + 1 :]
        return jnp.asarray(rng.integers(0, shape[axis], lead), jnp.int32)
    # multi-hot rows mixed with soft ones: sum(y) is not 1
    y = (rng.random(shape) < 0.3) + rng.random(shape) * 0.5
    return jnp.asarray(y, jnp.float32)


def _logits(shape: tuple[int, ...], rng: np.random.Generator) -> jax.Array:
    return jnp.asarray(3 * rng.standard_normal(shape), jnp.float32)


def _close(a: Any, b: Any, **tol: float) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **(tol or TOL))


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    calls: list[tuple[int, ...]] = []
    real = fastxent.api.softmax_cross_entropy

    def counting(logits: np.ndarray, *a: Any, **kw: Any) -> Any:
        calls.append(logits.shape)
        return real(logits, *a, **kw)

    monkeypatch.setattr(fastxent.api, "softmax_cross_entropy", counting)
    return calls


@pytest.mark.parametrize("kind", list(PAIRS))
@pytest.mark.parametrize("shape", [(K,), (6, K), (2, 3, K)], ids=str)
def test_values_and_vjp_match_optax(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> None:
    ours, theirs = PAIRS[kind]
    x, y = _logits(shape, rng), _labels(kind, shape, rng)
    loss, vjp = jax.vjp(lambda a: ours(a, y), x)
    ref_loss, ref_vjp = jax.vjp(lambda a: theirs(a, y), x)
    assert loss.shape == ref_loss.shape == shape[:-1]
    assert loss.dtype == jnp.float32
    _close(loss, ref_loss)
    ct = jnp.asarray(rng.standard_normal(loss.shape), jnp.float32)  # cotangent that is not 1
    _close(vjp(ct)[0], ref_vjp(ct)[0])


def test_labels_cotangent_matches_optax(rng: np.random.Generator) -> None:
    x, y = _logits((5, K), rng), _labels("dense", (5, K), rng)
    ct = jnp.asarray(rng.standard_normal(5), jnp.float32)
    _, vjp = jax.vjp(softmax_cross_entropy, x, y)
    _, ref_vjp = jax.vjp(optax.softmax_cross_entropy, x, y)
    for got, want in zip(vjp(ct), ref_vjp(ct)):
        _close(got, want)


@pytest.mark.parametrize(("kind", "axis"), [("dense", 0), ("integer", 1), ("dense", -2)])
def test_class_axis(kind: str, axis: int, rng: np.random.Generator) -> None:
    ours, theirs = PAIRS[kind]
    shape = [4, 5, 3]
    shape[axis] = K
    x, y = _logits(tuple(shape), rng), _labels(kind, tuple(shape), rng, axis)
    _close(ours(x, y, axis=axis), theirs(x, y, axis=axis))
    ct = jnp.asarray(rng.standard_normal(theirs(x, y, axis=axis).shape), jnp.float32)
    g = jax.grad(lambda a: jnp.vdot(ours(a, y, axis=axis), ct))(x)
    _close(g, jax.grad(lambda a: jnp.vdot(theirs(a, y, axis=axis), ct))(x))


@pytest.mark.parametrize("kind", list(PAIRS))
def test_jit_grad_calls_the_kernel_once(
    kind: str, rng: np.random.Generator, kernel_calls: list[tuple[int, ...]]
) -> None:
    ours, theirs = PAIRS[kind]
    x, y = _logits((8, K), rng), _labels(kind, (8, K), rng)

    def objective(f: Callable[..., jax.Array]) -> Callable[[jax.Array], jax.Array]:
        return lambda a: 2.5 * f(a, y).mean()

    loss, g = jax.jit(jax.value_and_grad(objective(ours)))(x)
    ref_loss, ref_g = jax.value_and_grad(objective(theirs))(x)
    _close(loss, ref_loss)
    _close(g, ref_g)
    # the backward pass reuses the forward's gradient: one kernel call for both
    assert kernel_calls == [(8, K)]
    _close(jax.jit(ours)(x, y), theirs(x, y))


@pytest.mark.parametrize("kind", list(PAIRS))
def test_vmap(kind: str, rng: np.random.Generator, kernel_calls: list[tuple[int, ...]]) -> None:
    ours, theirs = PAIRS[kind]
    x, y = _logits((4, 3, K), rng), _labels(kind, (4, 3, K), rng)
    # batched logits and labels: one kernel call over the whole batch, not one per example
    _close(jax.vmap(ours)(x, y), theirs(x, y))
    assert kernel_calls == [(4, 3, K)]
    # unbatched labels, and a batch dimension that is not the leading one
    y0 = y[0]
    _close(jax.vmap(ours, in_axes=(0, None))(x, y0), jax.vmap(theirs, in_axes=(0, None))(x, y0))
    _close(jax.vmap(ours, in_axes=(1, 1))(x, y), jax.vmap(theirs, in_axes=(1, 1))(x, y))
    # nested, and composed with jit and grad in both orders
    _close(jax.jit(jax.vmap(jax.vmap(ours)))(x, y), theirs(x, y))
    ct = jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)
    per_example = jax.vmap(jax.grad(lambda a, b, c: c * ours(a, b)))
    want = jax.vmap(jax.grad(lambda a, b, c: c * theirs(a, b)))(x[:, 0], y[:, 0], ct[:, 0])
    _close(per_example(x[:, 0], y[:, 0], ct[:, 0]), want)
    g = jax.jit(jax.grad(lambda a: jnp.vdot(jax.vmap(ours)(a, y), ct)))(x)
    _close(g, jax.grad(lambda a: jnp.vdot(theirs(a, y), ct))(x))


@pytest.mark.parametrize("kind", list(PAIRS))
def test_float64(kind: str, rng: np.random.Generator) -> None:
    ours, theirs = PAIRS[kind]
    with jax.enable_x64(True):
        x = jnp.asarray(3 * rng.standard_normal((5, K)), jnp.float64)
        y = _labels(kind, (5, K), rng)
        if kind == "dense":
            y = y.astype(jnp.float64)
        loss, g = jax.value_and_grad(lambda a: 1.7 * ours(a, y).sum())(x)
        ref_loss, ref_g = jax.value_and_grad(lambda a: 1.7 * theirs(a, y).sum())(x)
        assert loss.dtype == g.dtype == jnp.float64
        _close(loss, ref_loss, rtol=1e-13, atol=1e-13)  # both float64
        _close(g, ref_g, rtol=1e-12, atol=1e-14)


def test_bad_arguments() -> None:
    x = jnp.zeros((3, K))
    with pytest.raises(TypeError, match="logits"):
        softmax_cross_entropy_with_integer_labels(jnp.zeros((3, K), jnp.int32), jnp.zeros(3, jnp.int32))
    with pytest.raises(TypeError, match="labels"):
        softmax_cross_entropy_with_integer_labels(x, jnp.zeros(3))
    with pytest.raises(ValueError, match="labels"):
        softmax_cross_entropy_with_integer_labels(x, jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="labels"):
        softmax_cross_entropy(x, jnp.zeros((3, K + 1)))
    with pytest.raises(TypeError, match="axis"):
        softmax_cross_entropy(x, jnp.zeros((3, K)), axis=(0, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="axis"):
        softmax_cross_entropy(x, jnp.zeros((3, K)), axis=2)
    # Concrete labels out of range and an empty class axis are caught before the
    # kernel runs (from inside the callback they would reach the caller as XLA errors).
    with pytest.raises(IndexError, match="^labels: class index 99 is out of range for 11 classes"):
        softmax_cross_entropy_with_integer_labels(x, jnp.array([0, 99, 1]))
    with pytest.raises(IndexError, match="^labels: class index -1 is out of range"):
        softmax_cross_entropy_with_integer_labels(x, jnp.array([0, -1, 1]))
    with pytest.raises(ValueError, match=r"^logits: the class axis \(0\) has length 0"):
        softmax_cross_entropy(jnp.zeros((0, 4)), jnp.zeros((0, 4)), 0)
