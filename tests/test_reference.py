"""Every loss path against the float64 reference (tests/reference.py), in the NumPy
twin and in every SIMD variant of the C++ kernel, float32 and float64: reductions,
return_grad, leading dims and axis, the special values of docs/spec.md#conventions,
integer targets as one-hot, the fused gradient against the Jacobian chain and finite
differences, and adversarial accuracy (no worse than PyTorch's on the same float32
input). The row-wise functions' agreement with it is in test_rowwise.py."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import torch
import torch.nn.functional as F

import fastxent as fx

DTYPES = [np.float32, np.float64]
INF, NAN = np.inf, np.nan


def make_targets(
    kind: str,
    lead: tuple[int, ...],
    k: int,
    axis: int,
    rng: np.random.Generator,
    dtype: type,
) -> np.ndarray:
    """Targets of one kind for logits of shape lead + class axis inserted at `axis`."""
    if kind in ("int32", "int64"):
        return rng.integers(0, k, size=lead).astype(kind)
    shape = list(lead)
    shape.insert(axis % (len(lead) + 1), k)
    if kind == "soft":  # probability rows (sum 1)
        y = rng.random(shape)
        return (y / y.sum(axis=axis, keepdims=True)).astype(dtype)
    if kind == "multihot":  # several ones per row, sum(y) > 1, some rows empty
        return (rng.random(shape) < 0.4).astype(dtype)
    if kind == "weighted":  # arbitrary non-negative label weights
        return (3 * rng.random(shape) * (rng.random(shape) < 0.5)).astype(dtype)
    raise AssertionError(kind)


def dense_of(targets: np.ndarray, k: int, axis: int) -> np.ndarray:
    return (
        ref.one_hot(targets, k, axis)
        if targets.dtype.kind in "iu"
        else targets.astype(np.float64)
    )


SHAPES = [  # (logits shape, class axis)
    ((7, 5), -1),
    ((1, 1), -1),
    ((9,), 0),
    ((3, 4, 6), 1),
    ((3, 4, 6), 0),
    ((2, 3, 4, 5), 2),
    ((2, 3, 4, 33), -1),
]
KINDS = ["int32", "int64", "soft", "multihot", "weighted"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_loss_and_grad_match_reference_for_every_reduction(
    engine: str,
    dtype: type,
    shape: tuple[int, ...],
    axis: int,
    kind: str,
    rng: np.random.Generator,
) -> None:
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    k = shape[axis]
    lead = shape[: axis % len(shape)] + shape[axis % len(shape) + 1 :]
    t = make_targets(kind, lead, k, axis, rng, dtype)
    x0, t0 = x.copy(), t.copy()
    rtol = ref.rtol_for(dtype, k)
    row_scale = ref.loss_scale(x, dense_of(t, k, axis), axis).reshape(lead)
    n = max(1, int(np.prod(lead)))
    for reduction in ("none", "sum", "mean"):
        want_loss, want_grad = ref.cross_entropy(x, t, axis=axis, reduction=reduction)
        loss, grad = fx.softmax_cross_entropy(
            x, t, axis=axis, reduction=reduction, backend=engine
        )
        assert grad is not None
        assert grad.shape == x.shape
        assert grad.dtype == x.dtype
        assert np.asarray(loss).dtype == x.dtype
        scale = {
            "none": row_scale,
            "sum": row_scale.sum(),
            "mean": row_scale.sum() / n,
        }[reduction]
        ref.assert_within(
            loss, want_loss, rtol=rtol, scale=scale, what=f"loss {reduction}"
        )
        # grad entries are s*sum(y) - y: error relative to the row's target mass
        gscale = np.max(np.abs(want_grad)) if want_grad.size else 0.0
        ref.assert_within(
            grad, want_grad, rtol=rtol, scale=gscale, what=f"grad {reduction}"
        )
        loss_only, none_grad = fx.softmax_cross_entropy(
            x, t, axis=axis, reduction=reduction, return_grad=False, backend=engine
        )
        assert none_grad is None
        np.testing.assert_array_equal(
            loss_only, loss
        )  # same arithmetic with or without the gradient
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(t, t0)


@pytest.mark.parametrize("k", [2, 3, 7])
def test_fused_gradient_equals_the_jacobian_chain(
    engine: str, k: int, rng: np.random.Generator
) -> None:
    """s * sum(y) - y is dL/ds . ds/dx with the full softmax Jacobian, for soft,
    multi-hot (sum > 1) and weighted targets alike (s - y would fail the last two)."""
    x = rng.standard_normal((6, k))
    y = np.vstack(
        [
            rng.dirichlet(np.ones(k)),
            np.eye(k)[1 % k],
            (np.arange(k) % 2 == 0).astype(float),  # multi-hot
            np.ones(k),
            2.5 * rng.random(k),  # weighted
            np.zeros(k),
        ]
    )
    _, grad = fx.softmax_cross_entropy(x, y, reduction="none", backend=engine)
    chain = np.stack([ref.jacobian_chain_grad(x[i], y[i]) for i in range(6)])
    np.testing.assert_allclose(grad, chain, rtol=1e-12, atol=1e-13)
    assert not np.allclose(
        grad[2:5], (ref.softmax(x) - y)[2:5]
    )  # the sum(y) != 1 rows differ from s - y


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("kind", ["int64", "multihot", "weighted"])
def test_gradient_matches_central_finite_differences(
    engine: str, reduction: str, kind: str, rng: np.random.Generator
) -> None:
    shape, axis = (3, 5, 2), 1
    x = rng.standard_normal(shape)
    t = make_targets(kind, (3, 2), 5, axis, rng, np.float64)
    _, grad = fx.softmax_cross_entropy(
        x, t, axis=axis, reduction=reduction, backend=engine
    )

    def total(z: np.ndarray) -> float:
        loss, _ = fx.softmax_cross_entropy(
            z, t, axis=axis, reduction=reduction, return_grad=False, backend=engine
        )
        return float(np.sum(loss))  # "none": the gradient returned is that of the sum

    h = 1e-6
    fd = np.zeros_like(x)
    for i in np.ndindex(shape):
        e = np.zeros_like(x)
        e[i] = h
        fd[i] = (total(x + e) - total(x - e)) / (2 * h)
    # central differences: truncation O(h^2) ~ 1e-12, cancellation ~ eps*|L|/h ~ 1e-9
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("itype", [np.int32, np.int64])
def test_integer_targets_equal_one_hot_dense_targets(
    engine: str, dtype: type, reduction: str, itype: type, rng: np.random.Generator
) -> None:
    x = (4 * rng.standard_normal((4, 9, 3))).astype(dtype)
    idx = rng.integers(0, 9, size=(4, 3)).astype(itype)
    loss_i, grad_i = fx.softmax_cross_entropy(
        x, idx, axis=1, reduction=reduction, backend=engine
    )
    loss_d, grad_d = fx.softmax_cross_entropy(
        x,
        ref.one_hot(idx, 9, axis=1, dtype=dtype),
        axis=1,
        reduction=reduction,
        backend=engine,
    )
    rtol = ref.rtol_for(dtype, 9, factor=4)
    np.testing.assert_allclose(loss_i, loss_d, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(grad_i, grad_d, rtol=rtol, atol=rtol)


def special_batch(dtype: type) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One row per convention of docs/spec.md#conventions, plus an ordinary row after
    each bad one."""
    rows = [
        ([0.5, -INF, 1.0, 2.0], [1, 0, 1, 0], "masked class with y=0: finite"),
        ([0.5, -INF, 1.0, 2.0], [0, 0.5, 1, 0], "target mass on -inf: +inf loss"),
        ([0.5, NAN, 1.0, 2.0], [1, 0, 0, 0], "NaN logit: NaN row"),
        ([1.0, 2.0, 3.0, 4.0], [0, 1, 0, 1], "ordinary"),
        ([0.5, INF, 1.0, 2.0], [1, 0, 0, 0], "+inf logit: NaN row"),
        ([-INF, -INF, -INF, -INF], [1, 0, 0, 0], "all -inf: NaN row"),
        (
            [-INF, -INF, -INF, -INF],
            [0, 0, 0, 0],
            "all -inf, no targets: still NaN (no softmax)",
        ),
        ([1e30, 0.0, -1e30, 1.0], [0, 0, 0, 1], "huge finite spread"),
        ([-3.0, 0.0, 3.0, 1.0], [0, 0, 0, 0], "no target mass: 0"),
    ]
    x = np.array([r[0] for r in rows], dtype)
    y = np.array([r[1] for r in rows], dtype)
    return x, y, [r[2] for r in rows]


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values_follow_the_spec_row_by_row(engine: str, dtype: type) -> None:
    x, y, names = special_batch(dtype)
    loss, grad = fx.softmax_cross_entropy(x, y, reduction="none", backend=engine)
    want_loss, want_grad = ref.cross_entropy(x, y, reduction="none")
    assert grad is not None
    rtol = ref.rtol_for(dtype, 4)
    for i, name in enumerate(names):
        ref.assert_within(
            loss[i],
            want_loss[i],
            rtol=rtol,
            scale=ref.loss_scale(x[i : i + 1], y[i : i + 1])[0],
            what=name,
        )
        ref.assert_within(grad[i], want_grad[i], rtol=rtol, scale=1.0, what=name)
    # the conventions spelled out, independent of the reference
    assert np.isfinite(loss[0])
    assert grad[0, 1] == 0
    assert loss[1] == INF
    assert np.all(np.isfinite(grad[1]))
    assert np.isnan(loss[[2, 4, 5, 6]]).all()
    assert np.isnan(grad[[2, 4, 5, 6]]).all()
    assert np.isfinite(loss[[0, 3, 7, 8]]).all()
    assert np.isfinite(grad[[0, 3, 7, 8]]).all()
    assert loss[8] == 0
    assert np.all(grad[8] == 0)
    # reductions: one NaN row makes the total NaN; +inf without NaN stays +inf
    assert np.isnan(fx.softmax_cross_entropy(x, y, reduction="sum", backend=engine)[0])
    inf_rows = [0, 1, 3]
    s, g = fx.softmax_cross_entropy(
        x[inf_rows], y[inf_rows], reduction="mean", backend=engine
    )
    assert s == INF
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values_with_integer_targets(engine: str, dtype: type) -> None:
    x = np.array(
        [
            [0.0, -INF, 1.0],
            [0.0, -INF, 1.0],
            [NAN, 0, 0],
            [INF, 0, 0],
            [-INF, -INF, -INF],
            [1, 2, 3],
        ],
        dtype,
    )
    t = np.array([0, 1, 0, 1, 2, 2])
    loss, grad = fx.softmax_cross_entropy(x, t, reduction="none", backend=engine)
    want_loss, want_grad = ref.cross_entropy(x, t, reduction="none")
    ref.assert_within(loss, want_loss, rtol=ref.rtol_for(dtype, 3), scale=3.0)
    ref.assert_within(grad, want_grad, rtol=ref.rtol_for(dtype, 3), scale=1.0)
    assert np.isfinite(loss[0])
    assert loss[1] == INF
    assert np.isnan(loss[2:5]).all()
    assert np.isfinite(loss[5])
    assert grad[0, 1] == 0
    assert grad[1, 1] == -1


def test_nan_rows_do_not_touch_other_rows_in_a_big_batch(
    engine: str, rng: np.random.Generator
) -> None:
    """Enough rows to be split among threads and SIMD blocks; NaN in scattered rows."""
    x = rng.standard_normal((257, 70)).astype(np.float32)
    y = (rng.random((257, 70)) < 0.1).astype(np.float32)
    bad = [0, 63, 64, 200, 256]
    xb = x.copy()
    xb[bad, [0, 69, 33, 5, 17]] = NAN
    loss, grad = fx.softmax_cross_entropy(xb, y, reduction="none", backend=engine)
    clean_loss, clean_grad = fx.softmax_cross_entropy(
        x, y, reduction="none", backend=engine
    )
    good = np.setdiff1d(np.arange(257), bad)
    assert np.isnan(loss[bad]).all()
    assert np.isnan(grad[bad]).all()
    np.testing.assert_array_equal(loss[good], clean_loss[good])
    np.testing.assert_array_equal(grad[good], clean_grad[good])


def test_empty_batch(engine: str) -> None:
    """N = 0 (any leading dim 0): like PyTorch, "none" gives an empty array, "sum" 0,
    "mean" NaN (0/0), and the gradient is empty."""
    x = np.zeros((0, 4), np.float32)
    for t in (np.zeros((0,), np.int64), np.zeros((0, 4), np.float32)):
        for red, want in (("none", None), ("sum", 0.0), ("mean", NAN)):
            loss, grad = fx.softmax_cross_entropy(x, t, reduction=red, backend=engine)
            assert grad is not None
            assert grad.shape == (0, 4)
            if want is None:
                assert np.asarray(loss).shape == (0,)
            else:
                np.testing.assert_equal(float(loss), want)
    loss, grad = fx.softmax_cross_entropy(
        np.zeros((2, 0, 5)), np.zeros((2, 0), np.int64), backend=engine
    )
    assert grad is not None
    assert grad.shape == (2, 0, 5)
    assert np.isnan(loss)


def test_single_class(engine: str) -> None:
    """K = 1: softmax is 1, loss is 0 for a one-hot row, grad = sum(y) - y = 0."""
    x = np.array([[3.0], [-2.0], [1e6]], np.float32)
    loss, grad = fx.softmax_cross_entropy(
        x, np.zeros(3, np.int32), reduction="none", backend=engine
    )
    np.testing.assert_array_equal(loss, 0)
    np.testing.assert_array_equal(grad, 0)
    loss, grad = fx.softmax_cross_entropy(
        x, np.array([[2.0], [0.5], [1.0]], np.float32), reduction="none", backend=engine
    )
    np.testing.assert_array_equal(loss, 0)
    np.testing.assert_array_equal(grad, 0)


# ---- adversarial accuracy: ours vs float64, and no worse than PyTorch's float32 ----------


def adversarial(case: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """float32 logits and dense float32 targets that stress rounding."""
    n, k = 4, 1000
    if (
        case == "offset_1e6"
    ):  # common offset: lse ~ 1e6, loss ~ log K: the shift must be exact
        x = 1e6 + rng.standard_normal((n, k))
    elif case == "offset_-1e6":
        x = -1e6 + 3 * rng.standard_normal((n, k))
    elif case == "spread_1e4":  # softmax is nearly one-hot; losses up to ~2e4
        x = rng.uniform(-1e4, 1e4, (n, k))
    elif (
        case == "tiny"
    ):  # all logits ~1e-30 (and subnormals): softmax is uniform to eps
        x = 1e-30 * rng.standard_normal((n, k))
        x[:, :10] = 1e-40
    elif case == "k_262144":
        n, k = 2, 262144
        x = 2 * rng.standard_normal((n, k))
    elif case == "k_262144_offset":
        n, k = 2, 262144
        x = 5e4 + 2 * rng.standard_normal((n, k))
    else:
        raise AssertionError(case)
    x = x.astype(np.float32)
    y = (rng.random((n, k)) < 10 / k).astype(np.float32)
    y[:, 0] = 1.0  # every row has at least one label
    y[1] = rng.random(k).astype(np.float32)  # one row of soft weights on every class
    return x, y


def shifted(x: np.ndarray) -> np.ndarray:
    """x - rowmax in float64: exact for float32 inputs, and the loss and gradient do
    not change, but the reference no longer rounds lse ~ 1e6 before subtracting it
    (that alone costs it 1e6 * eps64 ~ 2e-10, more than a good kernel's error)."""
    x64 = x.astype(np.float64)
    return x64 - x64.max(axis=1, keepdims=True)


def torch_f32(
    x: np.ndarray, y: np.ndarray, reduction: str
) -> tuple[np.ndarray, np.ndarray]:
    xt = torch.tensor(x, requires_grad=True)
    loss = F.cross_entropy(xt, torch.tensor(y), reduction=reduction)
    loss.sum().backward()
    assert xt.grad is not None
    return loss.detach().numpy(), xt.grad.numpy()


ADVERSARIAL = [
    "offset_1e6",
    "offset_-1e6",
    "spread_1e4",
    "tiny",
    "k_262144",
    "k_262144_offset",
]


@pytest.mark.parametrize("case", ADVERSARIAL)
def test_adversarial_float32_accuracy_is_at_least_pytorchs(
    engine: str, case: str, rng: np.random.Generator
) -> None:
    x, y = adversarial(case, rng)
    k = x.shape[1]
    for reduction in ("none", "sum"):
        want_loss, want_grad = ref.cross_entropy(shifted(x), y, reduction=reduction)
        loss, grad = fx.softmax_cross_entropy(x, y, reduction=reduction, backend=engine)
        t_loss, t_grad = torch_f32(x, y, reduction)
        scale = ref.loss_scale(x, y)
        if reduction == "sum":
            scale = scale.sum()
        ours_l = np.max(
            np.abs(np.asarray(loss, np.float64) - want_loss)
            / (np.abs(want_loss) + scale)
        )
        theirs_l = np.max(
            np.abs(t_loss.astype(np.float64) - want_loss) / (np.abs(want_loss) + scale)
        )
        gs = np.max(np.abs(want_grad))
        ours_g = np.max(np.abs(grad.astype(np.float64) - want_grad)) / gs
        theirs_g = np.max(np.abs(t_grad.astype(np.float64) - want_grad)) / gs
        # absolute bound: a few eps times log2(K), relative to the size of what cancels
        bound = ref.rtol_for(np.float32, k)
        assert ours_l <= max(2 * theirs_l, bound), (case, reduction, ours_l, theirs_l)
        assert ours_g <= max(2 * theirs_g, bound), (case, reduction, ours_g, theirs_g)


@pytest.mark.parametrize("case", ["offset_1e6", "spread_1e4", "k_262144_offset"])
def test_adversarial_float64_accuracy(
    engine: str, case: str, rng: np.random.Generator
) -> None:
    """The same inputs in float64: the float64 path must be float64-accurate (the
    reference is exact float64 arithmetic on the same values, written differently)."""
    x, y = adversarial(case, rng)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    want_loss, want_grad = ref.cross_entropy(shifted(x), y64, reduction="none")
    loss, grad = fx.softmax_cross_entropy(x64, y64, reduction="none", backend=engine)
    rtol = ref.rtol_for(np.float64, x.shape[1])
    ref.assert_within(
        loss, want_loss, rtol=rtol, scale=ref.loss_scale(x64, y64), what=case
    )
    ref.assert_within(
        grad, want_grad, rtol=rtol, scale=np.max(np.abs(want_grad)), what=case
    )


@pytest.mark.parametrize(("n", "k"), [(2048, 100), (3, 70000)])
@pytest.mark.parametrize("kind", ["int64", "weighted"])
def test_thread_counts_give_identical_results_matching_the_reference(
    engine: str, n: int, k: int, kind: str, rng: np.random.Generator
) -> None:
    """Rows split among threads (many rows) and one row split in blocks (huge K):
    bitwise the same for 1, 2 and 3 threads (backend_info's promise), and right."""
    x = (3 * rng.standard_normal((n, k))).astype(np.float32)
    t = make_targets(kind, (n,), k, -1, rng, np.float32)
    opts = {
        "weight": np.linspace(0.5, 2.0, k),
        "label_smoothing": 0.1,
        "reduction": "mean",
    }
    results = []
    try:
        for threads in (1, 2, 3):
            fx.set_num_threads(threads)
            results.append(fx.softmax_cross_entropy(x, t, backend=engine, **opts))
    finally:
        fx.set_num_threads(None)
    for loss, grad in results[1:]:
        assert loss == results[0][0]
        np.testing.assert_array_equal(grad, results[0][1])
    want_loss, want_grad = ref.cross_entropy(x, t, **opts)
    rtol = ref.rtol_for(np.float32, k)
    dense = dense_of(t, k, -1)
    scale = ref.loss_scale(x, dense).sum() / n * 2.0  # weights up to 2
    ref.assert_within(results[0][0], want_loss, rtol=rtol, scale=scale, what="loss")
    ref.assert_within(
        results[0][1],
        want_grad,
        rtol=rtol,
        scale=np.max(np.abs(want_grad)),
        what="grad",
    )
