"""Loss options (issue 4): weight, ignore_index and label_smoothing with exactly
PyTorch's semantics (values and autograd gradients, every reduction, index and dense
targets, float32/float64), refusals where PyTorch refuses, and z_loss / softcap
against an autograd reference built from PyTorch ops and against tests/reference.py."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import torch
import torch.nn.functional as F

import fastxent as fx

N, K, D = 6, 5, 3  # logits (N, K, D), classes on axis 1 as PyTorch lays them out
REDUCTIONS = ["none", "sum", "mean"]


def make_case(
    kind: str, ignore_index: int, dtype: type, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    x = (2 * rng.standard_normal((N, K, D))).astype(dtype)
    if kind == "index":
        t = rng.integers(0, K, size=(N, D))
        t[0, 0] = t[3, 2] = (
            ignore_index  # some ignored rows (or class `ignore_index`'s rows)
        )
        t[1, 1] = 2
    else:
        y = rng.random((N, K, D))
        t = (y / y.sum(axis=1, keepdims=True)).astype(dtype)
        t[2, :, 1] = 0  # a row with no target mass
        t[4, :, 0] *= 3  # a row with mass 3
    return x, t


def check_against(
    got: tuple[object, np.ndarray | None],
    want: tuple[object, np.ndarray],
    dtype: type,
    what: str,
    factor: float = 2.0,
) -> None:
    loss, grad = got
    want_loss, want_grad = want
    assert grad is not None
    rtol = factor * ref.rtol_for(dtype, K)
    # losses are O(log K) per row times weights <= 2: an absolute scale of 10 per row covers what cancels
    ref.assert_within(loss, want_loss, rtol=rtol, scale=10.0, what=f"{what}: loss")
    ref.assert_within(
        grad,
        want_grad,
        rtol=rtol,
        scale=max(1e-300, float(np.max(np.abs(want_grad)))),
        what=f"{what}: grad",
    )


WEIGHTS = {
    "none": None,
    "w": np.array([0.5, 2.0, 1.0, 0.0, 1.5]),
    "w_neg": np.array([1.0, -0.5, 2.0, 1.0, 0.25]),
}


def check_against_both(
    got: tuple[object, np.ndarray | None],
    x: np.ndarray,
    t: np.ndarray,
    reduction: str,
    opts: dict[str, object],
    dtype: type,
    what: str,
    factor: float = 2.0,
) -> None:
    """got against PyTorch's autograd and against the float64 reference (class axis 1)."""
    for name, reference in (
        ("torch", ref.torch_cross_entropy),
        ("reference", ref.cross_entropy),
    ):
        check_against(
            got,
            reference(x, t, axis=1, reduction=reduction, **opts),
            dtype,
            f"{name} {what}",
            factor,
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("kind", "ignore_index"),
    [("index", -100), ("index", 2), ("dense", -100), ("dense", -3)],
)
@pytest.mark.parametrize("weight", list(WEIGHTS))
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15, 1.0])
def test_weight_ignore_index_smoothing_match_torch(
    backend: str,
    dtype: type,
    kind: str,
    ignore_index: int,
    weight: str,
    label_smoothing: float,
    rng: np.random.Generator,
) -> None:
    x, t = make_case(kind, ignore_index, dtype, rng)
    w = WEIGHTS[weight]
    opts = {
        "weight": w,
        "ignore_index": ignore_index,
        "label_smoothing": label_smoothing,
    }
    x0, t0 = x.copy(), t.copy()
    for reduction in REDUCTIONS:
        got = fx.softmax_cross_entropy(
            x, t, axis=1, reduction=reduction, backend=backend, **opts
        )
        check_against_both(
            got, x, t, reduction, opts, dtype, f"{kind} {reduction} {opts}"
        )
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(t, t0)


# target kind -> (targets for 4 rows over 3 classes, each row's weight w_c, "mean" denominator)
MEAN_DENOMINATORS = {
    "index": (np.array([0, 2, -100, 2]), [1.0, 4.0, 0.0, 4.0], 9.0),  # weights of the non-ignored rows
    "dense": (np.eye(3)[[0, 2, 1, 2]], [1.0, 4.0, 2.0, 4.0], 4.0),  # N, whatever the weights
    "sparse": (fx.SparseTargets([0, 1, 2, 3, 4], [0, 2, 1, 2]), [1.0, 4.0, 2.0, 4.0], 4.0),  # N, as dense
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", list(MEAN_DENOMINATORS))
def test_mean_denominators_are_torchs(backend: str, kind: str, reduction: str) -> None:
    """The divisions spelled out on a tiny case: index targets divide by the weights of
    the non-ignored rows' classes, dense (and sparse) targets by N, whatever the weights."""
    x = np.zeros((4, 3))  # uniform softmax: every row's NLL is log 3
    w = np.array([1.0, 2.0, 4.0])
    targets, row_weights, denominator = MEAN_DENOMINATORS[kind]
    loss, _ = fx.softmax_cross_entropy(
        x, targets, weight=w, reduction=reduction, backend=backend
    )
    per_row = np.log(3) * np.array(row_weights)
    want = {"none": per_row, "sum": per_row.sum(), "mean": per_row.sum() / denominator}[
        reduction
    ]
    np.testing.assert_allclose(loss, want, rtol=1e-14)


def test_smoothing_with_weights_on_index_targets_is_torchs_formula(
    backend: str,
) -> None:
    """(1 - eps) * weighted NLL + eps/K * sum_j w_j (-log p_j), the smoothing term
    divided by the same sum of target weights under "mean" (PyTorch's choice; a
    dense one-hot target with the same options divides by N instead)."""
    x = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    w = np.array([2.0, 1.0, 0.5])
    eps = 0.3
    logp = x - np.log(np.exp(x).sum(1, keepdims=True))
    idx = np.array([1, 0])
    rows = (1 - eps) * -w[idx] * logp[[0, 1], idx] + eps / 3 * -(w * logp).sum(1)
    loss, _ = fx.softmax_cross_entropy(
        x, idx, weight=w, label_smoothing=eps, backend=backend
    )
    np.testing.assert_allclose(loss, rows.sum() / w[idx].sum(), rtol=1e-14)
    loss_dense, _ = fx.softmax_cross_entropy(
        x, np.eye(3)[idx], weight=w, label_smoothing=eps, backend=backend
    )
    np.testing.assert_allclose(loss_dense, rows.sum() / 2, rtol=1e-14)


def test_all_rows_ignored(backend: str) -> None:
    """As PyTorch: "mean" is 0/0 = NaN with a zero gradient; "sum" is 0."""
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    t = np.full(3, -100)
    for reduction in REDUCTIONS:
        got = fx.softmax_cross_entropy(x, t, reduction=reduction, backend=backend)
        want = ref.torch_cross_entropy(x, t, reduction=reduction)
        np.testing.assert_array_equal(
            np.asarray(got[0]), np.asarray(want[0], np.float32)
        )
        np.testing.assert_array_equal(got[1], want[1])
    assert np.all(fx.softmax_cross_entropy(x, t, backend=backend)[1] == 0)


# ---- z_loss and softcap -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["index", "dense"])
@pytest.mark.parametrize(
    ("z_loss", "softcap"),
    [(1e-3, None), (0.5, None), (0.0, 2.0), (0.0, 30.0), (0.1, 3.0)],
)
@pytest.mark.parametrize("others", ["plain", "weight+smoothing"])
def test_z_loss_and_softcap_match_torch_autograd(
    backend: str,
    dtype: type,
    kind: str,
    z_loss: float,
    softcap: float | None,
    others: str,
    rng: np.random.Generator,
) -> None:
    x, t = make_case(kind, -100, dtype, rng)
    x *= 3  # so that the cap bends: |x| up to ~20 against caps of 2 and 3
    opts: dict[str, object] = {"z_loss": z_loss, "softcap": softcap}
    if others != "plain":
        opts.update(weight=WEIGHTS["w"], label_smoothing=0.1)
    for reduction in REDUCTIONS:
        got = fx.softmax_cross_entropy(
            x, t, axis=1, reduction=reduction, backend=backend, **opts
        )
        # z-loss grows like lse^2 and the cap adds tanh's rounding: a looser factor
        check_against_both(
            got, x, t, reduction, opts, dtype, f"{kind} {reduction} {opts}", 8
        )


def test_softcap_bounds_the_logits(backend: str) -> None:
    """With a cap c, logits of +-1e30 act as +-c: the loss is finite and huge logits get
    (almost) no gradient, since d/dx c*tanh(x/c) -> 0."""
    x = np.array([[1e30, 0.0, -1e30]])
    loss, grad = fx.softmax_cross_entropy(
        x, np.array([2]), softcap=5.0, backend=backend
    )
    capped = np.array([5.0, 0.0, -5.0])
    np.testing.assert_allclose(loss, np.log(np.exp(capped).sum()) + 5.0, rtol=1e-14)
    assert grad is not None
    np.testing.assert_array_equal(grad[0, [0, 2]], 0.0)


def test_z_loss_adds_lse_squared(backend: str) -> None:
    x = np.array([[3.0, 1.0, -2.0], [0.0, 0.0, 0.0]])
    t = np.array([0, 1])
    base, gbase = fx.softmax_cross_entropy(x, t, reduction="none", backend=backend)
    loss, grad = fx.softmax_cross_entropy(
        x, t, reduction="none", z_loss=0.25, backend=backend
    )
    lse = np.log(np.exp(x).sum(1))
    np.testing.assert_allclose(loss - base, 0.25 * lse**2, rtol=1e-13)
    s = np.exp(x - lse[:, None])
    np.testing.assert_allclose(
        grad - gbase, 0.5 * lse[:, None] * s, rtol=1e-12, atol=1e-15
    )


# ---- refusals ------------------------------------------------------------------------


def torch_refuses(**kwargs: object) -> bool:
    x = torch.zeros(2, 3)
    t = kwargs.pop("target")
    try:
        F.cross_entropy(x, t, **kwargs)  # type: ignore[arg-type]
    except (RuntimeError, ValueError, IndexError):
        return True
    return False


@pytest.mark.parametrize(
    ("kwargs", "target", "error", "match"),
    [
        ({"ignore_index": 1}, "dense", ValueError, "ignore_index"),
        ({"ignore_index": 0}, "dense", ValueError, "ignore_index"),
        ({"label_smoothing": 1.5}, "index", ValueError, "label_smoothing"),
        ({"label_smoothing": 1.5}, "dense", ValueError, "label_smoothing"),
        ({"weight": np.ones(4)}, "index", ValueError, "weight"),
        ({"weight": np.ones((3, 1))}, "dense", ValueError, "weight"),
        ({}, "index_out_of_range", IndexError, "targets"),
        ({}, "index_negative", IndexError, "targets"),
        ({"ignore_index": 5}, "index_negative", IndexError, "targets"),
    ],
)
def test_combinations_torch_refuses_are_refused(
    backend: str, kwargs: dict[str, object], target: str, error: type, match: str
) -> None:
    targets = {
        "dense": np.full((2, 3), 1 / 3),
        "index": np.array([0, 2]),
        "index_out_of_range": np.array([0, 3]),
        "index_negative": np.array([-1, 2]),
    }[target]
    tk = {
        k: torch.tensor(v) if isinstance(v, np.ndarray) else v
        for k, v in kwargs.items()
    }
    tt = torch.tensor(
        targets.astype(np.float32) if targets.dtype.kind == "f" else targets
    )
    if "weight" in tk:
        tk["weight"] = tk["weight"].float()  # type: ignore[union-attr]
    assert torch_refuses(target=tt, **tk)
    with pytest.raises(error, match=match):
        fx.softmax_cross_entropy(np.zeros((2, 3)), targets, backend=backend, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        # PyTorch silently treats a negative label_smoothing as 0 (its range check only
        # runs when smoothing > 0); a negative value is surely a mistake: refused here
        ({"label_smoothing": -0.1}, "label_smoothing"),
        (
            {"label_smoothing": -0.1, "targets": np.full((2, 3), 1 / 3)},
            "label_smoothing",
        ),
        ({"z_loss": -1.0}, "z_loss"),
        ({"z_loss": float("nan")}, "z_loss"),
        ({"softcap": 0.0}, "softcap"),
        ({"softcap": -2.0}, "softcap"),
        ({"weight": np.array([1.0, np.nan, 1.0])}, "weight"),
        ({"reduction": "avg"}, "reduction"),
    ],
)
def test_invalid_option_values_raise_clear_errors(
    backend: str, kwargs: dict[str, object], match: str
) -> None:
    kwargs = dict(kwargs)
    targets = kwargs.pop("targets", np.array([0, 1]))
    with pytest.raises(ValueError, match=match):
        fx.softmax_cross_entropy(np.zeros((2, 3)), targets, backend=backend, **kwargs)  # type: ignore[arg-type]


def test_torch_ignores_negative_label_smoothing_which_fastxent_refuses() -> None:
    """Pins the PyTorch behaviour the refusal above departs from, so a change shows up."""
    x, t = (
        torch.randn(2, 3, generator=torch.Generator().manual_seed(0)),
        torch.tensor([0, 1]),
    )
    assert F.cross_entropy(x, t, label_smoothing=-0.1) == F.cross_entropy(x, t)


@pytest.mark.parametrize("k", [4, 3, 11])
def test_softcap_caps_infinities_too(backend: str, k: int) -> None:
    """The softmax is taken of the capped logits, so with a cap, +inf acts as +cap and
    an all -inf row as a uniform one (finite loss; zero gradient, since the cap is flat
    there); NaN stays NaN. Same in both backends and the reference."""
    x = np.zeros((4, k))
    x[:, -1] = 1.0
    x[0, 0], x[1, 0], x[2, :], x[3, 0] = np.inf, -np.inf, -np.inf, np.nan
    y = np.zeros((4, k))
    y[:, 0] = 1.0
    loss, grad = fx.softmax_cross_entropy(
        x, y, softcap=5.0, reduction="none", backend=backend
    )
    want_loss, want_grad = ref.cross_entropy(x, y, softcap=5.0, reduction="none")
    ref.assert_within(loss, want_loss, rtol=1e-14, scale=1.0)
    ref.assert_within(grad, want_grad, rtol=1e-14, scale=1.0)
    assert np.isfinite(loss[:3]).all()
    assert np.isnan(loss[3])
    np.testing.assert_allclose(loss[2], np.log(k), rtol=1e-14)


@pytest.mark.parametrize("kind", ["index", "dense"])
def test_label_smoothing_over_a_masked_class(backend: str, kind: str) -> None:
    """Smoothing puts mass eps/K on every class, so a masked (-inf) class gives +inf,
    as in PyTorch. With weight 0 on that class its term is 0 * -inf: PyTorch returns
    NaN, fastxent follows docs/spec.md#conventions (a zero-mass term adds nothing)
    and stays finite. The gradients agree in both cases."""
    x = np.array([[0.0, -np.inf, 1.0], [2.0, -np.inf, -1.0]])
    t = np.array([0, 2]) if kind == "index" else np.array([[1.0, 0, 0], [0, 0, 1.0]])
    for w, finite in ((None, False), (np.array([1.0, 0.0, 2.0]), True)):
        loss, grad = fx.softmax_cross_entropy(
            x, t, weight=w, label_smoothing=0.1, backend=backend
        )
        t_loss, t_grad = ref.torch_cross_entropy(x, t, weight=w, label_smoothing=0.1)
        r_loss, _ = ref.cross_entropy(x, t, weight=w, label_smoothing=0.1)
        np.testing.assert_allclose(grad, t_grad, rtol=1e-14, atol=1e-16)
        if finite:
            assert np.isnan(t_loss)
            assert np.isfinite(loss)
            np.testing.assert_allclose(loss, r_loss, rtol=1e-14)
        else:
            assert loss == t_loss == np.inf
