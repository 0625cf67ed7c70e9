"""Row statistics and the gradient from given statistics (docs/spec.md#row-statistics).

The kernel record's two extra modes, which the framework adapters' backward passes
use: a forward call that also writes per-row [M, log S, Q, D], and a gradient-only
call that reads those statistics instead of making a statistics pass, with an
optional per-row multiplier (the cotangent). Checked on the NumPy twin and every
SIMD variant against the float64 reference and against the fused call.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest
import reference as ref

import fastxent as fx
from fastxent import _backend, numpy_backend
from fastxent._problem import LossProblem, prepare_loss

KINDS = ["dense", "index", "sparse"]
OPTIONS: list[dict[str, Any]] = [
    {},
    {"label_smoothing": 0.1},
    {"z_loss": 1e-3},
    {"softcap": 3.0},
    {"weight": True, "label_smoothing": 0.2, "z_loss": 1e-4, "softcap": 30.0},
]
# Multi-block rows, rows spread over threads, and a few wide rows split by blocks.
SHAPES = [(7, 5000), (40, 4000), (3, 50000)]


def _targets(kind: str, n: int, k: int, dtype: Any, rng: np.random.Generator) -> Any:
    if kind == "index":
        t = rng.integers(0, k, n)
        t[::4] = -100  # ignored rows
        return t
    if kind == "dense":
        return (rng.random((n, k)) < 3 / k).astype(dtype) * rng.random((n, k)).astype(dtype)
    nnz = rng.integers(0, 4, n)
    indptr = np.concatenate([[0], np.cumsum(nnz)])
    return fx.SparseTargets(indptr, rng.integers(0, k, int(indptr[-1])), rng.random(int(indptr[-1])).astype(dtype))


def _run(engine: str, x: np.ndarray, t: Any, opts: dict[str, Any], *, reduction: str = "none",
         row_stats: bool = False, given: np.ndarray | None = None, row_scale: np.ndarray | None = None,
         inplace: bool = False) -> LossProblem:
    k = x.shape[1]
    weight = opts.get("weight")
    p = prepare_loss(
        x, t, axis=-1, reduction=reduction,
        weight=np.linspace(0.5, 2.0, k).astype(x.dtype) if weight is True else None,
        ignore_index=-100, label_smoothing=opts.get("label_smoothing", 0.0), z_loss=opts.get("z_loss", 0.0),
        softcap=opts.get("softcap"), return_grad=True, out=None, inplace=inplace,
    )
    if row_stats:
        p.row_stats = np.full((x.shape[0], 4), -7, np.float32 if x.dtype.itemsize == 2 else x.dtype)  # compute dtype
    p.given_stats = given
    p.row_grad_scale = row_scale
    core = None if engine == "numpy" else _backend.require_core()
    if core is None:
        numpy_backend.softmax_cross_entropy(p)
    else:
        core.loss(p)
    return p


def _capped(x: np.ndarray, softcap: float | None) -> np.ndarray:
    x = x.astype(np.float64)
    return softcap * np.tanh(x / softcap) if softcap else x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(o) or "plain")
def test_statistics_and_gradient_from_them(engine: str, dtype: Any, shape: tuple[int, int], kind: str,
                                            opts: dict[str, Any]) -> None:
    rng = np.random.default_rng(hash((shape, kind, len(opts))) % 2**32)
    n, k = shape
    x = (rng.standard_normal(shape) * 4 + 50).astype(dtype)  # an offset: M must cancel it
    x[1, ::3] = -np.inf  # masked classes
    t = _targets(kind, n, k, dtype, rng)
    eps = float(np.finfo(dtype).eps)

    fused = _run(engine, x, t, opts, row_stats=True)
    st = fused.row_stats.astype(np.float64)
    xt = _capped(x, opts.get("softcap"))
    ignored = fused.class_index == -100 if kind == "index" else np.zeros(n, bool)
    live = ~ignored
    assert np.all(st[ignored] == 0)
    # M is the row max of x~ as the kernel computes it (a value of the dtype).
    np.testing.assert_allclose(st[live, 0], xt[live].max(axis=1), rtol=4 * eps)
    log_s = np.log(np.exp(xt[live] - st[live, 0][:, None]).sum(axis=1))
    np.testing.assert_allclose(st[live, 1], log_s, rtol=16 * eps, atol=16 * eps)
    # loss = Q log S - D + z lse^2: the statistics reassemble the row loss.
    z = opts.get("z_loss", 0.0)
    lse = st[:, 0] + st[:, 1]
    with np.errstate(invalid="ignore"):  # inf - inf in a masked row with smoothing
        loss = st[:, 2] * st[:, 1] - st[:, 3] + z * lse * lse
    terms = 1 + np.abs(st[:, 2] * st[:, 1]) + np.abs(st[:, 3]) + z * lse * lse
    finite = live & np.isfinite(fused.row_loss)  # a target on a masked class: +inf in both
    assert np.all(np.abs(loss[finite] - fused.row_loss[finite]) <= 8 * eps * terms[finite])
    np.testing.assert_array_equal(loss[live & ~finite], fused.row_loss[live & ~finite])
    # ... which is the float64 reference loss.
    dense_t = ref.sparse_to_dense(t, k) if kind == "sparse" else t
    want, _ = ref.cross_entropy(x, dense_t, reduction="none", weight=fused.weight,
                                label_smoothing=opts.get("label_smoothing", 0.0), z_loss=z, softcap=opts.get("softcap"))
    np.testing.assert_allclose(fused.row_loss, want, rtol=1e3 * eps, atol=1e3 * eps)

    # The gradient from the statistics is the fused gradient, with any per-row multiplier.
    ct = rng.standard_normal(n).astype(dtype)
    given = _run(engine, x, t, opts, given=fused.row_stats, row_scale=ct)
    scale = np.abs(fused.grad).max() * np.abs(ct).max() + 1e-30
    want_grad = fused.grad.astype(np.float64) * ct[:, None].astype(np.float64)
    np.testing.assert_allclose(given.grad, want_grad, rtol=0, atol=32 * eps * scale)
    assert np.all(given.grad[ignored] == 0)
    # The fused call honours the multiplier too.
    fused_ct = _run(engine, x, t, opts, row_scale=ct)
    np.testing.assert_allclose(fused_ct.grad, want_grad, rtol=0, atol=4 * eps * scale)
    # In place: the logits become the gradient.
    inplace = _run(engine, x.copy(), t, opts, given=fused.row_stats, row_scale=ct, inplace=True)
    np.testing.assert_array_equal(inplace.grad, given.grad)


def test_statistics_of_special_rows(engine: str) -> None:
    x = np.array([[0.0, np.nan, 1.0], [np.inf, 0.0, 1.0], [-np.inf] * 3, [1.0, 2.0, 3.0]], np.float32)
    t = np.array([0, 1, 2, -100])
    p = _run(engine, x, t, {}, row_stats=True)
    for i in range(2):  # no softmax: M = 0, the rest NaN
        assert p.row_stats[i, 0] == 0, p.row_stats[i]
        assert np.all(np.isnan(p.row_stats[i, 1:])), p.row_stats[i]
    # All -inf (a vocabulary shard's empty part): M = log S = -inf, the target terms
    # kept (D relative to 0: the target's -inf logit)
    np.testing.assert_array_equal(p.row_stats[2], [-np.inf, -np.inf, 1.0, -np.inf])
    assert np.all(p.row_stats[3] == 0)  # ignored
    g = _run(engine, x, t, {}, given=p.row_stats)
    assert np.all(np.isnan(g.grad[:3]))
    assert np.all(g.grad[3] == 0)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_from_statistics_is_bitwise_identical_for_any_thread_count(simd: str, kind: str) -> None:
    rng = np.random.default_rng(3)
    for n, k in [(64, 4000), (3, 50000)]:
        x = rng.standard_normal((n, k)).astype(np.float32)
        t = _targets(kind, n, k, np.float32, rng)
        ct = rng.standard_normal(n).astype(np.float32)
        results = []
        for threads in (1, 2, 3):
            fx.set_num_threads(threads)
            try:
                f = _run("cpp", x, t, {"label_smoothing": 0.1}, row_stats=True)
                g = _run("cpp", x, t, {"label_smoothing": 0.1}, given=f.row_stats, row_scale=ct)
            finally:
                fx.set_num_threads(None)
            results.append((f.row_stats.tobytes(), g.grad.tobytes()))
        assert results[0] == results[1] == results[2]


def test_mean_reduction_scale_applies_in_gradient_mode(engine: str) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 300)).astype(np.float64)
    t = rng.integers(0, 300, 9)
    t[2] = -100
    fused = _run(engine, x, t, {"weight": True}, reduction="mean", row_stats=True)
    given = _run(engine, x, t, {"weight": True}, reduction="mean", given=fused.row_stats)
    np.testing.assert_allclose(given.grad, fused.grad, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_gradient_from_statistics_in_16_bit(engine: str, kind: str, dtype_name: str) -> None:
    # 16-bit logits: statistics in float32, the gradient rounded once from float32 (a
    # T scratch row, entry corrections added before rounding), as the fused call does.
    dtype = np.dtype(np.float16) if dtype_name == "float16" else np.dtype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(11)
    n, k = 9, 3000
    x = (rng.standard_normal((n, k)) * 3).astype(dtype)
    t = _targets(kind, n, k, np.float32, rng)
    fused = _run(engine, x, t, {"label_smoothing": 0.1}, row_stats=True)
    assert fused.row_stats.dtype == np.float32
    ct = rng.standard_normal(n).astype(np.float32)
    given = _run(engine, x, t, {"label_smoothing": 0.1}, given=fused.row_stats, row_scale=ct)
    assert given.grad.dtype == dtype
    want = fused.grad.astype(np.float64) * ct[:, None]
    got = given.grad.astype(np.float64)
    eps = 2.0 ** (-10 if dtype_name == "float16" else -7)
    # one rounding of each side to the 16-bit dtype, plus float32 noise at the scale of the row
    assert np.all(np.abs(got - want) <= 2 * eps * np.abs(want) + 1e-6 * np.abs(ct)[:, None]), np.abs(got - want).max()
    inplace = _run(engine, x.copy(), t, {"label_smoothing": 0.1}, given=fused.row_stats, row_scale=ct, inplace=True)
    np.testing.assert_array_equal(inplace.grad.view(np.uint16), given.grad.view(np.uint16))
