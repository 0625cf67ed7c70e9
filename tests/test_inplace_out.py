"""inplace=True and out= for every target kind (dense, class index, sparse): the same
numbers as the allocating path, written where promised; return_grad=False returns
only the loss and writes nothing; inputs are never modified unless inplace=True."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import fastxent as fx

N, K = 9, 13


def make(
    kind: str, dtype: type, rng: np.random.Generator
) -> tuple[np.ndarray, Any, list[np.ndarray]]:
    """Logits (N, K), targets of `kind`, and the arrays that make up the targets."""
    x = (2 * rng.standard_normal((N, K))).astype(dtype)
    if kind == "dense":
        y = (rng.random((N, K)) < 0.3).astype(dtype)
        return x, y, [y]
    if kind == "int32" or kind == "int64":
        t = rng.integers(0, K, N).astype(kind)
        t[2] = -100  # an ignored row
        return x, t, [t]
    indptr = np.array([0, 2, 2, 5, 6, 6, 8, 9, 11, 12])
    indices = rng.integers(0, K, size=12)
    values = rng.random(12).astype(dtype)
    return x, fx.SparseTargets(indptr, indices, values), [indptr, indices, values]


KINDS = ["dense", "int32", "int64", "sparse"]
OPTS = [
    {},
    {"weight": np.linspace(0.5, 1.5, K), "label_smoothing": 0.1, "z_loss": 1e-3},
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("opts", range(len(OPTS)))
def test_out_and_inplace_give_the_allocated_numbers(
    backend: str,
    dtype: type,
    kind: str,
    reduction: str,
    opts: int,
    rng: np.random.Generator,
) -> None:
    x, t, parts = make(kind, dtype, rng)
    kw: dict[str, Any] = dict(OPTS[opts], reduction=reduction, backend=backend)
    saved = [a.copy() for a in (x, *parts)]
    loss, grad = fx.softmax_cross_entropy(x, t, **kw)
    assert grad is not None

    out = np.full_like(x, 7.0)
    loss_o, grad_o = fx.softmax_cross_entropy(x, t, out=out, **kw)
    assert grad_o is out
    # the same kernel on the same inputs: bit-identical, only the destination differs
    np.testing.assert_array_equal(out, grad)
    np.testing.assert_array_equal(loss_o, loss)

    loss_n, none = fx.softmax_cross_entropy(x, t, return_grad=False, **kw)
    assert none is None
    np.testing.assert_array_equal(loss_n, loss)
    for before, after in zip(
        saved, (x, *parts), strict=True
    ):  # nothing above wrote to an input
        np.testing.assert_array_equal(before, after)

    out2 = np.full_like(x, 7.0)
    with pytest.raises(
        ValueError, match="out.*return_grad"
    ):  # out= asks for a gradient: a contradiction
        fx.softmax_cross_entropy(x, t, return_grad=False, out=out2, **kw)
    assert np.all(out2 == 7.0)

    xi = x.copy()
    loss_i, grad_i = fx.softmax_cross_entropy(xi, t, inplace=True, **kw)
    assert grad_i is xi
    assert np.shares_memory(grad_i, xi)
    np.testing.assert_array_equal(xi, grad)
    np.testing.assert_array_equal(loss_i, loss)
    for before, after in zip(saved[1:], parts, strict=True):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("kind", ["dense", "int64", "sparse"])
def test_out_and_inplace_with_the_class_axis_not_last(
    backend: str, kind: str, rng: np.random.Generator
) -> None:
    """Class axis 1 of (3, K, 3): out= / inplace need the class axis contiguous in
    memory, so such arrays are made by moving the axis of a C-contiguous one."""
    x, t, _ = make(kind, np.float64, rng)
    x3 = np.moveaxis(
        x.reshape(3, 3, K), -1, 1
    )  # a view: class axis 1, contiguous in memory
    t3: Any = t
    if kind == "dense":
        t3 = np.moveaxis(t.reshape(3, 3, K), -1, 1)
    elif kind == "int64":
        t3 = t.reshape(3, 3)
    loss, grad = fx.softmax_cross_entropy(
        x3, t3, axis=1, reduction="none", backend=backend
    )
    assert grad is not None
    assert grad.shape == x3.shape
    assert loss.shape == (3, 3)
    out = np.moveaxis(np.empty((3, 3, K)), -1, 1)
    loss_o, grad_o = fx.softmax_cross_entropy(
        x3, t3, axis=1, reduction="none", out=out, backend=backend
    )
    assert grad_o is out
    np.testing.assert_array_equal(out, grad)
    np.testing.assert_array_equal(loss_o, loss)
    xi = x3.copy(order="K")
    assert np.moveaxis(xi, 1, -1).flags.c_contiguous
    _, grad_i = fx.softmax_cross_entropy(
        xi, t3, axis=1, reduction="none", inplace=True, backend=backend
    )
    assert grad_i is xi
    np.testing.assert_array_equal(xi, grad)


def test_strided_logits_row_view_inplace(
    backend: str, rng: np.random.Generator
) -> None:
    """Every other row of a bigger buffer (a row stride, contiguous classes) works in
    place and leaves the rows in between alone."""
    big = rng.standard_normal((2 * N, K))
    keep = big.copy()
    view = big[::2]
    t = rng.integers(0, K, N)
    loss, grad = fx.softmax_cross_entropy(view.copy(), t, backend=backend)
    loss_i, grad_i = fx.softmax_cross_entropy(view, t, inplace=True, backend=backend)
    assert grad_i is view
    np.testing.assert_array_equal(big[::2], grad)
    np.testing.assert_array_equal(big[1::2], keep[1::2])
    assert loss_i == loss


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda x, t, b: fx.softmax_cross_entropy(
                x, t, backend=b, out=np.empty((N, K), np.float32)
            ),
            ValueError,
            "out",
        ),
        (
            lambda x, t, b: fx.softmax_cross_entropy(
                x, t, backend=b, out=np.empty((N, K + 1))
            ),
            ValueError,
            "out",
        ),
        (
            lambda x, t, b: fx.softmax_cross_entropy(
                x, t, backend=b, out=np.empty((K, N)).T
            ),
            ValueError,
            "out",
        ),
        (
            lambda x, t, b: fx.softmax_cross_entropy(x, t, backend=b, out=x),
            ValueError,
            "out",
        ),
        (
            lambda x, t, b: fx.softmax_cross_entropy(
                x, t, backend=b, out=[[0.0] * K] * N
            ),
            TypeError,
            "out",
        ),
        (
            lambda x, t, b: fx.softmax_cross_entropy(
                x, t, backend=b, out=np.empty((N, K)), inplace=True
            ),
            ValueError,
            "out",
        ),
        (
            lambda x, t, b: fx.softmax_cross_entropy(
                x, t, backend=b, inplace=True, return_grad=False
            ),
            ValueError,
            "inplace",
        ),
        (
            lambda x, t, b: fx.softmax_cross_entropy(
                x.T.copy().T, t, backend=b, inplace=True
            ),
            ValueError,
            "logits",
        ),
        (
            lambda x, t, b: fx.softmax_cross_entropy(
                x.astype(np.int16), t, backend=b, inplace=True
            ),
            TypeError,
            "logits",
        ),
        (
            lambda x, t, b: fx.softmax_cross_entropy(
                x.tolist(), t, backend=b, inplace=True
            ),
            TypeError,
            "logits",
        ),
    ],
)
def test_bad_destinations_are_refused_before_anything_is_written(
    backend: str, call: Any, error: type, match: str, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((N, K))
    t = rng.integers(0, K, N)
    x0 = x.copy()
    with pytest.raises(error, match=match):
        call(x, t, backend)
    np.testing.assert_array_equal(x, x0)


def test_read_only_logits_cannot_be_written_in_place(backend: str) -> None:
    x = np.zeros((2, 3))
    x.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fx.softmax_cross_entropy(x, np.array([0, 1]), inplace=True, backend=backend)
    loss, _ = fx.softmax_cross_entropy(
        x, np.array([0, 1]), backend=backend
    )  # reading is fine
    np.testing.assert_allclose(loss, np.log(3))
