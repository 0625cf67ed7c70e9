"""Extreme-scale numerics, per SIMD variant and on the NumPy backend: soft caps far
larger and far smaller than 1, and softmax / log_softmax of huge and very negative
logits. Each result is checked against an extended-precision reference computed here.

These inputs catch what ordinary logits hide: a fused multiply-add the compiler
contracts on its own (cap * tanh(x / cap) - max is then not exactly 0 at the max),
a soft cap computed as x * (1 / cap) (1 / cap overflows for a subnormal cap), and
log(S) recovered as lse - max (rounded at the scale of the max).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import fastxent as fx

BACKENDS = ("cpp", "numpy")  # "cpp" runs the variant chosen by the `simd` fixture
LD = np.longdouble


def _eps(dtype: Any) -> float:
    return float(np.finfo(dtype).eps)


def _reference_loss(x: np.ndarray, q: np.ndarray, cap: Any) -> tuple[np.ndarray, np.ndarray]:
    """Row losses and the mean-reduced gradient in extended precision, in the shifted
    form (sum q) log S - sum q (x~ - max), which never cancels at the logits' scale."""
    xl, ql, capl = x.astype(LD), q.astype(LD), LD(cap)
    with np.errstate(over="ignore"):
        th = np.tanh(xl / capl)  # x / cap overflows to inf for a tiny cap: tanh = +-1
    xt = capl * th
    t = xt - xt.max(axis=1, keepdims=True)
    e = np.exp(t)
    s = e.sum(axis=1, keepdims=True)
    q_sum = ql.sum(axis=1, keepdims=True)
    loss = (q_sum * np.log(s) - (ql * t).sum(axis=1, keepdims=True))[:, 0]
    grad = (e / s * q_sum - ql) * (1 - th * th) / x.shape[0]
    return loss, grad


def _check_loss(
    simd: str, x: np.ndarray, target: np.ndarray, cap: float, loss_atol: float, grad_atol: float
) -> None:
    """Runs both target kinds (index, and the same classes one-hot as dense rows)."""
    n = x.shape[0]
    one_hot = np.zeros_like(x)
    one_hot[np.arange(n), target] = 1
    want_rows, want_grad = _reference_loss(x, one_hot, x.dtype.type(cap))
    for backend in BACKENDS:
        for kind, tgt in (("index", target), ("dense", one_hot)):
            what = f"{backend} ({simd}) {kind} {x.dtype} softcap={cap:g}"
            rows, _ = fx.softmax_cross_entropy(x, tgt, softcap=cap, reduction="none", return_grad=False, backend=backend)
            _, grad = fx.softmax_cross_entropy(x, tgt, softcap=cap, backend=backend)
            assert grad is not None
            assert np.all(np.isfinite(rows)), (what, rows)
            assert np.all(np.isfinite(grad)), (what, grad)
            assert np.all(rows >= 0), (what, rows)  # a cross-entropy with one-hot targets
            np.testing.assert_allclose(rows.astype(LD), want_rows, rtol=0, atol=loss_atol, err_msg=what)
            np.testing.assert_allclose(grad.astype(LD), want_grad, rtol=0, atol=grad_atol, err_msg=what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softcap_as_large_as_the_logits(simd: str, dtype: type) -> None:
    """x / cap is O(1) while x is huge: the capped max must shift to exactly 0.

    Row 0: cap * tanh(1) is the max; the loss is log(1 + exp(-7.6e19)) = 0 exactly
    in any format, and so is the gradient. Row 1: the target is the max, its rival
    is 9.4e28 below: loss exactly 0. Row 2: the target is the smaller one, so the
    loss is the difference of the two capped logits (9.4e28), known to a few ulp of
    the capped values (each within ~2 ulp: tanh's error and the product's rounding).
    """
    for cap, x, target in (
        (1e20, [[1e20, 0.0]], [0]),
        (1e30, [[3e29, 2e29], [3e29, 2e29]], [0, 1]),
    ):
        xa = np.array(x, dtype=dtype)
        xt = float(np.max(np.abs(np.tanh(xa.astype(LD) / LD(dtype(cap))) * LD(dtype(cap)))))
        _check_loss(simd, xa, np.array(target), cap, loss_atol=8 * _eps(dtype) * xt, grad_atol=8 * _eps(dtype))
    # And the exact zeros, stated plainly: the target row is the max.
    for backend in BACKENDS:
        for x, cap in (([[1e20, 0.0]], 1e20), ([[3e29, 2e29]], 1e30)):
            loss, grad = fx.softmax_cross_entropy(np.array(x, dtype), np.array([0]), softcap=cap, backend=backend)
            assert loss == 0.0, (backend, simd, x, loss)
            assert grad is not None
            assert np.all(grad == 0), (backend, simd, x, grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subnormal_softcap(simd: str, dtype: type) -> None:
    """A cap of the dtype's smallest subnormals: 1 / cap overflows, x / cap does not
    need to. Every logit far from 0 is capped to +-cap, so exp(x~) = 1 for all of
    them and the loss is log K; the gradient keeps only the 1 - tanh^2 factor of
    the logits comparable to the cap (x = 0, x = cap, x = -2 cap)."""
    finfo = np.finfo(dtype)
    for cap in (float(finfo.smallest_subnormal), float(dtype(1e-40 if dtype == np.float32 else 1e-310))):
        c = dtype(cap)
        x = np.array(
            [[1.0, -2.0, 0.0, c, -2 * c, 3e38, -np.inf, np.inf], [0.0, 0.0, 5.0, -5.0, c, 1.0, 2.0, 0.0]],
            dtype=dtype,
        )
        _check_loss(simd, x, np.array([0, 2]), cap, loss_atol=4 * _eps(dtype), grad_atol=4 * _eps(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softcap_saturates_for_huge_ratios(simd: str, dtype: type) -> None:
    """tanh(+-inf) and tanh of huge finite arguments are exactly +-1 in every
    variant: the capped logits are exactly +-cap and their gradient factor is 0."""
    big = float(np.finfo(dtype).max)
    x = np.array([[big, -big, np.inf, -np.inf, 1e30, 0.0, -1e30, 0.5]], dtype=dtype)
    for cap in (1.0, 2.5):
        _check_loss(simd, x, np.array([5]), cap, loss_atol=4 * _eps(dtype), grad_atol=4 * _eps(dtype))


def _reference_rowwise(x: np.ndarray) -> dict[str, np.ndarray]:
    xl = x.astype(LD)
    m = xl.max(axis=1, keepdims=True)
    t = xl - m
    log_s = np.log(np.exp(t).sum(axis=1, keepdims=True))
    return {"logsumexp": (m + log_s)[:, 0], "softmax": np.exp(t - log_s), "log_softmax": t - log_s}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value_name", ["1e30", "-1e30", "max", "-max"])
def test_rowwise_equal_huge_logits(simd: str, dtype: type, value_name: str) -> None:
    """Rows of K equal huge values: softmax 1/K and log_softmax -log K, to a few ulp
    (log S = log K is computed directly; recovering it as lse - max would lose it
    entirely at this scale)."""
    value = {"1e30": 1e30, "-1e30": -1e30, "max": float(np.finfo(dtype).max), "-max": -float(np.finfo(dtype).max)}
    for k in (2, 3, 37, 2049):
        x = np.full((2, k), value[value_name], dtype=dtype)
        want = _reference_rowwise(x)
        for backend in BACKENDS:
            for op in ("softmax", "log_softmax", "logsumexp"):
                got = getattr(fx, op)(x, backend=backend)
                np.testing.assert_allclose(
                    got.astype(LD), want[op], rtol=4 * _eps(dtype), atol=0, err_msg=f"{backend} ({simd}) {op} K={k}"
                )


def test_rowwise_very_negative_logits_float64(simd: str, rng: np.random.Generator) -> None:
    """Logits near -1e4: x - max is exact (Sterbenz), so log_softmax's only error is
    log S and one subtraction (a few ulp of max(1, |result|)), and softmax's is two
    exps and a product (a few ulp, relative). lse - max would be off by up to half
    an ulp of 1e4 (9e-13) instead."""
    x = -1e4 + 3 * rng.standard_normal((16, 300))
    want = _reference_rowwise(x)
    eps = _eps(np.float64)
    for backend in BACKENDS:
        log_sm = fx.log_softmax(x, backend=backend).astype(LD)
        err = np.abs(log_sm - want["log_softmax"]) / np.maximum(1, np.abs(want["log_softmax"]))
        assert float(err.max()) <= 8 * eps, (backend, simd, float(err.max()))
        sm = fx.softmax(x, backend=backend).astype(LD)
        assert float(np.max(np.abs(sm - want["softmax"]) / want["softmax"])) <= 8 * eps, (backend, simd)
        lse = fx.logsumexp(x, backend=backend).astype(LD)
        np.testing.assert_allclose(lse, want["logsumexp"], rtol=2 * eps, atol=0, err_msg=f"{backend} ({simd})")
