"""fastxent.jax against optax's own functions: values, vector-Jacobian and
Jacobian-vector products with random cotangents and tangents, under jit, grad, jvp,
jacfwd and vmap (batched and unbatched arguments), tuple axes and ``where``; on the
XLA FFI path (the lowered HLO holds fastxent's custom calls and no callback) and on
the pure_callback fallback alike (the `path` fixture)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fastxent.jax as fxjax
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


@pytest.fixture(params=["ffi", "callback"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The test on the XLA FFI targets and on the pure_callback fallback (the tests
    without it run on the FFI targets: the fallback shares all but the two calls)."""
    if request.param == "ffi" and not fxjax.FFI_AVAILABLE:
        pytest.fail("this build of fastxent has no XLA FFI handlers: fastxent.jax would be slow")
    monkeypatch.setattr(fxjax, "FFI_AVAILABLE", request.param == "ffi")
    jax.clear_caches()  # traces made on the other path must not be reused
    yield str(request.param)
    jax.clear_caches()


def _custom_calls(f: Callable[..., Any], *args: Any) -> list[str]:
    """The custom-call targets in f's lowered HLO, in order."""
    text = jax.jit(f).lower(*args).as_text()
    return re.findall(r"custom_call @(\w+)", text)


@pytest.mark.parametrize("kind", list(PAIRS))
@pytest.mark.parametrize("shape", [(K,), (6, K), (2, 3, K)], ids=str)
def test_values_and_vjp_match_optax(kind: str, shape: tuple[int, ...], path: str, rng: np.random.Generator) -> None:
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
def test_jit_value_and_grad_is_two_kernel_calls(kind: str, path: str, rng: np.random.Generator) -> None:
    ours, theirs = PAIRS[kind]
    x, y = _logits((8, K), rng), _labels(kind, (8, K), rng)

    def objective(f: Callable[..., jax.Array]) -> Callable[[jax.Array], jax.Array]:
        return lambda a: 2.5 * f(a, y).mean()

    loss, g = jax.jit(jax.value_and_grad(objective(ours)))(x)
    ref_loss, ref_g = jax.value_and_grad(objective(theirs))(x)
    _close(loss, ref_loss)
    _close(g, ref_g)
    _close(jax.jit(ours)(x, y), theirs(x, y))
    # The forward pass keeps row statistics, the backward pass is one call that writes
    # cotangent x gradient: nothing else of N x K size, and no Python in the graph.
    calls = _custom_calls(jax.value_and_grad(objective(ours)), x)
    if path == "ffi":
        assert calls == ["fastxent_loss_stats", "fastxent_grad_from_stats"]
    else:
        assert len(calls) == 2, calls
        assert all("callback" in c for c in calls), calls
    assert _custom_calls(lambda a: ours(a, y), x) == (["fastxent_loss_stats"] if path == "ffi" else calls[:1])


@pytest.mark.parametrize("kind", list(PAIRS))
def test_forward_mode_matches_optax(kind: str, path: str, rng: np.random.Generator) -> None:
    ours, theirs = PAIRS[kind]
    x, y = _logits((5, K), rng), _labels(kind, (5, K), rng)
    dx = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    out, tangent = jax.jvp(lambda a: ours(a, y), (x,), (dx,))
    ref_out, ref_tangent = jax.jvp(lambda a: theirs(a, y), (x,), (dx,))
    _close(out, ref_out)
    _close(tangent, ref_tangent)
    _close(jax.jacfwd(lambda a: ours(a, y))(x), jax.jacfwd(lambda a: theirs(a, y))(x))
    _close(jax.jit(jax.jacfwd(lambda a: ours(a, y).sum()))(x), jax.grad(lambda a: theirs(a, y).sum())(x))
    # reverse over the same rule: jacrev agrees too
    _close(jax.jacrev(lambda a: ours(a, y))(x), jax.jacrev(lambda a: theirs(a, y))(x))
    if kind == "dense":  # tangents in the labels (and in both at once)
        dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
        _close(jax.jvp(ours, (x, y), (dx, dy))[1], jax.jvp(theirs, (x, y), (dx, dy))[1])
        _close(jax.jacfwd(ours, argnums=1)(x, y), jax.jacfwd(theirs, argnums=1)(x, y))


def test_second_derivatives_are_refused(rng: np.random.Generator) -> None:
    # Not provided (docs/spec.md#jax): an error, never a wrong Hessian.
    x, y = _logits((3, K), rng), _labels("integer", (3, K), rng)
    with pytest.raises(Exception, match="second derivatives|cannot be differentiated|Pure callbacks do not support"):
        jax.hessian(lambda a: softmax_cross_entropy_with_integer_labels(a, y).sum())(x)


@pytest.mark.parametrize("kind", list(PAIRS))
@pytest.mark.parametrize("axis", [(1, 2), (2, 1), (0, 2), (-1,)], ids=str)
def test_tuple_of_class_axes(kind: str, axis: tuple[int, ...], rng: np.random.Generator) -> None:
    ours, theirs = PAIRS[kind]
    x = _logits((4, 3, 5), rng)
    axes = tuple(a % 3 for a in axis)
    lead_axes = tuple(d for d in range(3) if d not in axes)
    lead = tuple(x.shape[d] for d in lead_axes)
    k = int(np.prod([x.shape[a] for a in axes]))
    y = jnp.asarray(rng.integers(0, k, lead), jnp.int32) if kind == "integer" else _labels(kind, x.shape, rng)

    def flat(a: jax.Array) -> jax.Array:  # optax's meaning: the axes moved last, in the order given, flattened
        return jnp.transpose(a, lead_axes + axes).reshape(lead + (k,))

    def reference(a: jax.Array) -> jax.Array:
        return theirs(flat(a), y if kind == "integer" else flat(y))

    _close(ours(x, y, axis=axis), reference(x))
    ct = jnp.asarray(rng.standard_normal(lead), jnp.float32)
    _close(jax.grad(lambda a: jnp.vdot(ours(a, y, axis=axis), ct))(x), jax.grad(lambda a: jnp.vdot(reference(a), ct))(x))


@pytest.mark.parametrize("kind", list(PAIRS))
@pytest.mark.parametrize("per_example", [False, True])
def test_where(kind: str, per_example: bool, rng: np.random.Generator) -> None:
    ours, theirs = PAIRS[kind]
    x, y = _logits((6, K), rng), _labels(kind, (6, K), rng)
    if per_example:
        where = jnp.asarray([True, False, True, True, False, True])
    else:
        w = rng.random((6, K)) < 0.6
        w[1] = False  # a row with no class included: loss 0, as optax
        if kind == "integer":
            w[np.arange(6), np.asarray(y)] = True  # (a label on an excluded class: docs/spec.md#jax)
            w[1] = False
        where = jnp.asarray(w)
    full = jnp.broadcast_to(where if where.ndim == 2 else where[:, None], x.shape)  # (optax < 0.2.5: full only)
    got, want = ours(x, y, where=where), theirs(x, y, where=full)
    included = np.asarray(jnp.any(full, axis=-1))
    # A row with no class included: 0, as optax >= 0.2.5 (0.2.4 gave -inf there).
    assert np.all(np.asarray(got)[~included] == 0)
    _close(np.asarray(got)[included], np.asarray(want)[included])
    ct = jnp.asarray(rng.standard_normal(6), jnp.float32)
    g = np.asarray(jax.jit(jax.grad(lambda a: jnp.vdot(ours(a, y, where=where), ct)))(x))
    want_g = np.asarray(jax.grad(lambda a: jnp.vdot(theirs(a, y, where=full), ct))(x))
    assert np.all(g[~included] == 0)
    _close(g[included], want_g[included])


@pytest.mark.parametrize("kind", list(PAIRS))
def test_vmap(kind: str, path: str, rng: np.random.Generator) -> None:
    ours, theirs = PAIRS[kind]
    x, y = _logits((4, 3, K), rng), _labels(kind, (4, 3, K), rng)
    # batched logits and labels: one kernel call over the whole batch, not one per example
    _close(jax.vmap(ours)(x, y), theirs(x, y))
    hlo = jax.jit(jax.vmap(ours)).lower(x, y).as_text()
    assert len(re.findall(r"custom_call @", hlo)) == 1
    if path == "ffi":
        assert re.search(r"custom_call @fastxent_loss_stats\(.*tensor<4x3x11xf32>", hlo)
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
def test_float64(kind: str, path: str, rng: np.random.Generator) -> None:
    ours, theirs = PAIRS[kind]
    enable_x64 = getattr(jax, "enable_x64", None)
    if enable_x64 is None:  # jax < 0.6
        from jax.experimental import enable_x64
    with enable_x64(True):
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
        softmax_cross_entropy(x, jnp.zeros((3, K)), axis=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="axis: repeated"):
        softmax_cross_entropy(x, jnp.zeros((3, K)), axis=(1, -1))
    with pytest.raises(TypeError, match="where"):
        softmax_cross_entropy(x, jnp.zeros((3, K)), where=jnp.ones((3, K)))
    with pytest.raises(ValueError, match="where"):
        softmax_cross_entropy(x, jnp.zeros((3, K)), where=jnp.ones((4,), bool))
    with pytest.raises(ValueError, match="axis"):
        softmax_cross_entropy(x, jnp.zeros((3, K)), axis=2)
    # Concrete labels out of range and an empty class axis are caught before the
    # kernel runs, with Python's exceptions.
    with pytest.raises(IndexError, match="^labels: class index 99 is out of range for 11 classes"):
        softmax_cross_entropy_with_integer_labels(x, jnp.array([0, 99, 1]))
    with pytest.raises(IndexError, match="^labels: class index -1 is out of range"):
        softmax_cross_entropy_with_integer_labels(x, jnp.array([0, -1, 1]))
    with pytest.raises(ValueError, match=r"^logits: the class axis 0 has length 0"):
        softmax_cross_entropy(jnp.zeros((0, 4)), jnp.zeros((0, 4)), 0)


def test_traced_bad_labels_are_an_error_not_a_bad_read(path: str) -> None:
    # Under jit the labels are not concrete: the kernel checks them and XLA raises.
    x = jnp.zeros((3, K))
    f = jax.jit(softmax_cross_entropy_with_integer_labels)
    for bad in (99, -1):
        with pytest.raises(Exception, match=f"(labels|targets): class index {bad} is out of range for 11 classes"):
            jax.block_until_ready(f(x, jnp.array([0, bad, 1])))


def test_empty_batch(path: str, rng: np.random.Generator) -> None:
    for kind, (ours, _theirs) in PAIRS.items():
        x, y = _logits((0, K), rng), _labels(kind, (0, K), rng)
        assert ours(x, y).shape == (0,)
        assert jax.jit(jax.grad(lambda a, f=ours, b=y: f(a, b).sum()))(x).shape == (0, K)


def test_missing_handlers_fall_back_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoHandlers:
        @staticmethod
        def xla_ffi_targets() -> dict[str, Any]:
            return {}

    monkeypatch.setattr(fxjax._backend, "core_or_none", lambda: NoHandlers())
    with pytest.warns(RuntimeWarning, match="pure_callback"):
        assert fxjax._register_ffi_targets() is False


def test_import_without_jax_and_registration_in_a_fresh_process() -> None:
    # import fastxent never imports jax; fastxent.jax registers the targets silently.
    code = (
        "import sys, warnings; warnings.simplefilter('error'); import fastxent; "
        "assert 'jax' not in sys.modules; import fastxent.jax as f; assert f.FFI_AVAILABLE"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("kind", list(PAIRS))
def test_16_bit_logits(kind: str, dtype_name: str, path: str, rng: np.random.Generator) -> None:
    # 16-bit logits in, computed in float32 (docs/spec.md#low-precision), loss and
    # gradient out in the logits' dtype as optax returns them: each within one
    # rounding to that dtype of optax's float32 result on the same 16-bit values.
    ours, theirs = PAIRS[kind]
    dtype = jnp.dtype(dtype_name)
    eps = 2.0 ** (-8 if dtype_name == "bfloat16" else -11)  # half an ulp, relative
    x = _logits((6, K), rng).astype(dtype)
    y = _labels(kind, (6, K), rng)
    y = y if kind == "integer" else y.astype(dtype)
    x32, y32 = x.astype(jnp.float32), (y if kind == "integer" else y.astype(jnp.float32))
    loss = ours(x, y)
    assert loss.dtype == dtype
    want = np.asarray(theirs(x32, y32), np.float64)
    assert np.all(np.abs(np.asarray(loss, np.float64) - want) <= eps * np.abs(want) + 1e-6)
    ct = jnp.asarray(rng.standard_normal(6), jnp.float32)
    g = jax.jit(jax.grad(lambda a: jnp.vdot(ours(a, y).astype(jnp.float32), ct)))(x)
    assert g.dtype == dtype
    want_g = np.asarray(jax.grad(lambda a: jnp.vdot(theirs(a, y32), ct))(x32), np.float64)
    got_g = np.asarray(g, np.float64)
    # (two roundings: the cotangent reaches the loss in its 16-bit dtype, then the gradient)
    assert np.all(np.abs(got_g - want_g) <= 2 * eps * np.abs(want_g) + 1e-6 * np.abs(want_g).max())
    if path == "ffi":
        assert "fastxent_grad_from_stats" in jax.jit(jax.grad(lambda a: ours(a, y).sum().astype(jnp.float32))).lower(
            x).as_text()
