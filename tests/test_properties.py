"""Property tests (hypothesis) over shapes, dtypes, strides, values and options.

Properties, each for every target kind where it applies:
- the C++ and NumPy backends agree;
- adding a constant to a row changes neither its loss nor its gradient;
- every gradient row sums to zero (sum_i s_i sum(q) - sum_i q_i = 0);
- the gradient matches float64 central finite differences of the loss;
- integer targets give what their one-hot dense (and one-entry sparse) rows give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

import fastxent as fx

# Modest example counts keep this file at a few seconds; deadline=None because the
# first call of a shape may allocate and CI machines are shared.
PROPS = settings(max_examples=60, deadline=None)
EPS = {np.dtype(np.float32): float(np.finfo(np.float32).eps), np.dtype(np.float64): float(np.finfo(np.float64).eps)}


@dataclass
class Problem:
    x: np.ndarray
    targets: Any
    kind: str
    options: dict[str, Any]

    def call(self, backend: str, x: np.ndarray | None = None, **extra: Any) -> tuple[np.ndarray, np.ndarray]:
        opts = {**self.options, **extra}
        loss, grad = fx.softmax_cross_entropy(self.x if x is None else x, self.targets, backend=backend, **opts)
        assert grad is not None
        return np.asarray(loss, np.float64), np.asarray(grad, np.float64)


def strided(draw: st.DrawFn, a: np.ndarray) -> np.ndarray:
    """The same values in a layout hypothesis picks: contiguous, reversed rows,
    every other row, inside a bigger buffer, or Fortran order."""
    layout = draw(st.sampled_from(["c", "reversed", "every_other", "inside", "fortran"]))
    if layout == "reversed":
        return np.ascontiguousarray(a[::-1])[::-1]
    if layout == "every_other":
        buf = np.zeros((2 * a.shape[0], a.shape[1]), a.dtype)
        buf[::2] = a
        return buf[::2]
    if layout == "inside":
        buf = np.zeros((a.shape[0] + 3, a.shape[1] + 5), a.dtype)
        buf[1 : 1 + a.shape[0], 2 : 2 + a.shape[1]] = a
        return buf[1 : 1 + a.shape[0], 2 : 2 + a.shape[1]]
    if layout == "fortran":
        return np.asfortranarray(a)
    return a


@st.composite
def problems(
    draw: st.DrawFn,
    *,
    dtypes: tuple[Any, ...] = (np.float32, np.float64),
    max_k: int = 70,
    kinds: tuple[str, ...] = ("index", "dense", "sparse"),
    options: bool = True,
    lo: float = -30.0,
    hi: float = 30.0,
    grid: bool = False,
) -> Problem:
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    n = draw(st.integers(0, 6))
    k = draw(st.integers(1, max_k))
    width = 32 if dtype == np.float32 else 64
    if grid:  # multiples of 1/64: adding an integer constant is exact in float32 too
        elements = st.integers(int(lo * 64), int(hi * 64)).map(lambda v: v / 64)
    else:
        elements = st.floats(lo, hi, width=width)
    x = draw(hnp.arrays(dtype, (n, k), elements=elements))
    x = strided(draw, x)
    kind = draw(st.sampled_from(kinds))
    opts: dict[str, Any] = {"reduction": draw(st.sampled_from(["none", "sum", "mean"]))}
    if kind == "index":
        targets: Any = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, k - 1)))
        if n and draw(st.booleans()):
            targets[draw(st.integers(0, n - 1))] = -100  # an ignored row
    elif kind == "dense":
        y = draw(hnp.arrays(dtype, (n, k), elements=st.sampled_from([0.0, 0.0, 0.0, 1.0, 0.5, 2.0])))
        targets = strided(draw, y)
    else:
        nnz = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 3)))
        indptr = np.concatenate([[0], np.cumsum(nnz)]).astype(np.int64)
        indices = draw(hnp.arrays(np.int64, (int(indptr[-1]),), elements=st.integers(0, k - 1)))
        values = draw(hnp.arrays(np.float64, (int(indptr[-1]),), elements=st.floats(0, 2)))
        targets = fx.SparseTargets(indptr, indices, values)
    if options:
        if draw(st.booleans()):
            opts["weight"] = draw(hnp.arrays(np.float64, (k,), elements=st.floats(0.1, 3.0)))
        opts["label_smoothing"] = draw(st.sampled_from([0.0, 0.0, 0.1, 1.0]))
        opts["z_loss"] = draw(st.sampled_from([0.0, 0.0, 1e-3]))
        opts["softcap"] = draw(st.sampled_from([None, None, 15.0]))
    return Problem(x, targets, kind, opts)


def _q_scale(p: Problem) -> float:
    """An upper bound on sum_j |q_j| per row (targets x weights), for tolerances."""
    w = float(np.max(p.options.get("weight", [1.0]), initial=1.0))
    if p.kind == "dense":
        mass = float(np.max(np.sum(p.targets, axis=-1), initial=1.0))
    elif p.kind == "sparse":
        mass = float(np.max(p.targets.to_dense(p.x.shape[1]).sum(axis=1), initial=1.0))
    else:
        mass = 1.0
    return max(mass, 1.0) * w


@PROPS
@given(problems())
# Found by this test: softcap turned the -inf padding of a row's last partial vector
# into -softcap, adding exp(-softcap - max) per padding lane (fixed in ab0b103).
@example(Problem(np.zeros((1, 1)), np.array([0]), "index", {"reduction": "none", "softcap": 15.0}))
@example(Problem(np.zeros((2, 3), np.float32), np.array([0, 2]), "index", {"reduction": "sum", "softcap": 15.0}))
def test_backends_agree(p: Problem) -> None:
    with np.errstate(all="ignore"):
        a_loss, a_grad = p.call("cpp")
        b_loss, b_grad = p.call("numpy")
    eps = EPS[p.x.dtype]
    k = p.x.shape[1]
    lse_scale = 30.0 + np.log(k)  # |x| <= 30: |lse| and |x| bounded by this
    # Both round each exp/log/product once in the logits' dtype and accumulate the
    # row sums differently (SIMD lanes vs pairwise): a few eps per term, times K
    # terms at worst, times the size of the numbers summed.
    scale = _q_scale(p) * (1 + p.options.get("z_loss", 0.0) * 2 * lse_scale)
    tol_loss = 16 * eps * k * lse_scale * scale
    tol_grad = 16 * eps * k * scale
    np.testing.assert_allclose(a_loss, b_loss, rtol=0, atol=tol_loss * max(1, p.x.shape[0]))
    np.testing.assert_allclose(a_grad, b_grad, rtol=0, atol=tol_grad)


@PROPS
@given(problems(lo=-8, hi=8, grid=True), st.integers(-64, 64))
def test_adding_a_constant_to_a_row_changes_nothing(p: Problem, c: int) -> None:
    # z-loss depends on lse itself and softcap on x itself: not shift-invariant.
    p.options.update(z_loss=0.0, softcap=None)
    shifted = p.x + p.x.dtype.type(c)
    np.testing.assert_array_equal(shifted - p.x.dtype.type(c), p.x)  # the shift is exact
    eps = EPS[p.x.dtype]
    k = p.x.shape[1]
    q = _q_scale(p)
    for backend in ("cpp", "numpy"):
        loss0, grad0 = p.call(backend)
        loss1, grad1 = p.call(backend, x=shifted)
        # x - max(x) is the same exactly, so only lse = max + log(sum) rounds
        # differently: a few eps of |lse| <= 72 + log K per row and target unit.
        np.testing.assert_allclose(loss1, loss0, rtol=0, atol=8 * eps * (72 + np.log(k)) * q * max(1, p.x.shape[0]))
        np.testing.assert_allclose(grad1, grad0, rtol=0, atol=8 * eps * q)


@PROPS
@given(problems(kinds=("index", "dense", "sparse")))
def test_every_gradient_row_sums_to_zero(p: Problem) -> None:
    # sum_i dL/dx_i = sum(q) (sum_i s_i - 1) = 0; the z-loss term adds
    # 2 z lse (sum_i s_i) != 0, and softcap scales each term by its own factor.
    p.options.update(z_loss=0.0, softcap=None)
    for backend in ("cpp", "numpy"):
        _, grad = p.call(backend)
        sums = grad.sum(axis=1)
        k = p.x.shape[1]
        np.testing.assert_allclose(sums, 0.0, atol=8 * EPS[p.x.dtype] * k * 2 * _q_scale(p))


def _loss_f64(p: Problem, x: np.ndarray) -> float:
    loss, _ = fx.softmax_cross_entropy(x, p.targets, backend="cpp", return_grad=False, **p.options)
    return float(np.sum(loss))


@settings(max_examples=40, deadline=None)
@given(problems(dtypes=(np.float64,), max_k=6, lo=-5, hi=5))
def test_gradient_matches_finite_differences(p: Problem) -> None:
    if p.kind == "index" and p.options["reduction"] == "mean" and np.all(p.targets == -100):
        p.options["reduction"] = "sum"  # mean over no rows is NaN (documented), nothing to differentiate
    x = np.ascontiguousarray(p.x)
    _, grad = p.call("cpp", x=x)
    h = 1e-6
    fd = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        fd[idx] = (_loss_f64(p, xp) - _loss_f64(p, xm)) / (2 * h)
    # central differences: O(h^2) truncation (third derivatives are O(scale)) plus
    # cancellation ~ eps * |loss| / h; loss <= N * scale * (lse + |x|) <= ~100x scale.
    scale = _q_scale(p) * (1 + 40 * p.options.get("z_loss", 0.0))
    np.testing.assert_allclose(grad, fd, rtol=0, atol=1e-7 * scale * max(1, x.shape[0]))


@PROPS
@given(problems(kinds=("index",)))
def test_integer_targets_equal_one_hot_dense_and_sparse(p: Problem) -> None:
    keep = p.targets != -100
    x, idx = p.x[keep], p.targets[keep]  # ignored rows have no one-hot form
    n, k = x.shape
    dense = np.zeros((n, k), x.dtype)
    dense[np.arange(n), idx] = 1.0
    sparse = fx.SparseTargets(np.arange(n + 1), idx)
    opts = dict(p.options)
    if opts["reduction"] == "mean" and "weight" in opts:
        opts["reduction"] = "sum"  # index "mean" divides by the targets' weights, dense by N
    eps = EPS[x.dtype]
    scale = _q_scale(p) * (1 + opts["z_loss"] * 80)
    for backend in ("cpp", "numpy"):
        li, gi = Problem(x, idx, "index", opts).call(backend)
        for t, kind in ((dense, "dense"), (sparse, "sparse")):
            ld, gd = Problem(x, t, kind, opts).call(backend)
            # different code paths for the same q: rounding of K-term sums
            np.testing.assert_allclose(li, ld, rtol=0, atol=16 * eps * k * 40 * scale * max(1, n))
            np.testing.assert_allclose(gi, gd, rtol=0, atol=16 * eps * k * scale)
