"""fx.logsumexp / fx.softmax / fx.log_softmax: leading dims and axis against the
float64 reference in the NumPy twin and every SIMD variant, non-contiguous inputs,
special values, empty batches, accuracy against float64 and PyTorch, errors."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import torch

import fastxent as fx

OPS = ["logsumexp", "softmax", "log_softmax"]
INF, NAN = np.inf, np.nan


SHAPES = [  # (x shape, class axis)
    ((5,), 0),
    ((5,), -1),
    ((9,), 0),
    ((1, 1), -1),
    ((7, 5), -1),
    ((4, 6), 0),
    ((3, 1, 7), 1),
    ((3, 4, 6), 0),
    ((3, 4, 6), 1),
    ((2, 3, 4, 5), -3),
    ((2, 3, 4, 5), 2),
    ((2, 3, 4, 5), 3),
    ((2, 3, 4, 33), -1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(("shape", "axis"), SHAPES)
def test_any_axis_and_leading_dims_match_reference(
    engine: str,
    dtype: type,
    op: str,
    shape: tuple[int, ...],
    axis: int,
    rng: np.random.Generator,
) -> None:
    x = (5 * rng.standard_normal(shape)).astype(dtype)
    x0 = x.copy()
    got = getattr(fx, op)(x, axis=axis, backend=engine)
    want = getattr(ref, op)(x, axis=axis)
    assert got.dtype == x.dtype
    assert got.shape == want.shape == (
        x.shape[: axis % x.ndim] + x.shape[axis % x.ndim + 1 :]
        if op == "logsumexp"
        else x.shape
    )
    # logsumexp / log_softmax: error relative to the max shift's size (|x|), softmax: to 1
    scale = 1.0 if op == "softmax" else float(np.max(np.abs(x))) + 1
    ref.assert_within(
        got, want, rtol=ref.rtol_for(dtype, shape[axis]), scale=scale, what=op
    )
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_inputs(backend: str, op: str, rng: np.random.Generator) -> None:
    """Strided rows, strided classes, a transposed array: all read correctly."""
    base = rng.standard_normal((8, 10, 6))
    for view, axis in (
        (base[::2, :, 1], -1),
        (base[:, ::3, 2], 1),
        (base[1].T, 0),
        (base[:, 1:9:2, :], 1),
    ):
        got = getattr(fx, op)(view, axis=axis, backend=backend)
        np.testing.assert_allclose(
            got, getattr(ref, op)(view, axis=axis), rtol=1e-13, atol=1e-15
        )


def test_identities_between_the_three(backend: str, rng: np.random.Generator) -> None:
    x = 3 * rng.standard_normal((16, 33))
    lse = fx.logsumexp(x, backend=backend)
    np.testing.assert_allclose(
        fx.log_softmax(x, backend=backend), x - lse[:, None], rtol=1e-13, atol=1e-13
    )
    np.testing.assert_allclose(
        fx.softmax(x, backend=backend), np.exp(x - lse[:, None]), rtol=1e-13, atol=1e-16
    )
    np.testing.assert_allclose(
        fx.softmax(x, backend=backend).sum(axis=1), 1.0, rtol=1e-14
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values(backend: str, dtype: type) -> None:
    """docs/spec.md#conventions: -inf entries are masked (softmax 0, log_softmax -inf);
    a row with NaN, with +inf, or all -inf has no softmax: NaN everywhere in that row,
    other rows unaffected. (torch.logsumexp gives +inf / -inf for the last two;
    fastxent follows its spec.)"""
    x = np.array(
        [
            [0.0, -INF, 1.0],
            [NAN, 0.0, 1.0],
            [INF, 0.0, 1.0],
            [-INF, -INF, -INF],
            [1e30, 0.0, -1e30],
            [2.0, 2.0, 2.0],
        ],
        dtype,
    )
    lse = fx.logsumexp(x, backend=backend)
    sm = fx.softmax(x, backend=backend)
    lsm = fx.log_softmax(x, backend=backend)
    np.testing.assert_allclose(lse[0], np.log1p(np.e), rtol=1e-6)
    assert sm[0, 1] == 0
    assert lsm[0, 1] == -INF
    assert np.isnan(lse[1:4]).all()
    assert np.isnan(sm[1:4]).all()
    assert np.isnan(lsm[1:4]).all()
    assert lse[4] == dtype(1e30)
    assert sm[4].tolist() == [1.0, 0.0, 0.0]
    np.testing.assert_allclose(lsm[4], [0.0, -1e30, -2e30], rtol=1e-6)
    np.testing.assert_allclose(sm[5], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(lse[5], 2 + np.log(3), rtol=1e-6)


@pytest.mark.parametrize("op", OPS)
def test_empty_batches(backend: str, op: str) -> None:
    for shape in ((0, 4), (2, 0, 4)):
        x = np.zeros(shape, np.float32)
        got = getattr(fx, op)(x, backend=backend)
        assert got.shape == (shape[:-1] if op == "logsumexp" else shape)
        assert got.dtype == np.float32


@pytest.mark.parametrize("op", ["logsumexp", "log_softmax"])
@pytest.mark.parametrize("offset", [1e6, -1e6, 0.0])
def test_float32_accuracy_at_least_pytorchs(
    backend: str, op: str, offset: float, rng: np.random.Generator
) -> None:
    """Large common offsets and K = 262144: error vs float64 no worse than torch's
    float32 result (or a few eps * log2 K of the row's magnitude)."""
    x = (offset + 2 * rng.standard_normal((2, 262144))).astype(np.float32)
    x64 = x.astype(np.float64)
    want = getattr(ref, op)(x64)
    ours = getattr(fx, op)(x, backend=backend).astype(np.float64)
    theirs = getattr(torch, op)(torch.tensor(x), dim=-1).numpy().astype(np.float64)
    scale = np.abs(x64).max() + 1
    err_ours = np.max(np.abs(ours - want)) / scale
    err_theirs = np.max(np.abs(theirs - want)) / scale
    assert err_ours <= max(2 * err_theirs, ref.rtol_for(np.float32, x.shape[1])), (
        err_ours,
        err_theirs,
    )


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(
    ("x", "kwargs", "error", "match"),
    [
        (np.zeros((3, 0)), {}, ValueError, "length 0"),
        (np.zeros((2, 3), np.int64), {}, TypeError, "float32, float64, float16 or bfloat16"),
        (np.zeros((2, 3), np.complex64), {}, TypeError, "float32, float64, float16 or bfloat16"),
        (np.float64(1.0), {}, ValueError, "dimension"),
        (np.zeros((2, 3)), {"axis": 2}, ValueError, "axis"),
        (np.zeros((2, 3)), {"axis": 1.0}, TypeError, "axis"),
        (np.zeros((2, 3)), {"backend": "gpu"}, ValueError, "backend"),
    ],
)
def test_bad_arguments(
    op: str, x: np.ndarray, kwargs: dict[str, object], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        getattr(fx, op)(x, **kwargs)


def test_torch_tensor_input(backend: str) -> None:
    t = torch.randn(4, 5, dtype=torch.float64)
    np.testing.assert_allclose(
        fx.logsumexp(t, backend=backend), torch.logsumexp(t, -1).numpy(), rtol=1e-14
    )
    np.testing.assert_allclose(
        fx.softmax(t, axis=0, backend=backend), torch.softmax(t, 0).numpy(), rtol=1e-14
    )
