"""Odd memory layouts give the same numbers as contiguous copies of the same values.

Every layout below holds exactly the values of a C-contiguous array; the results must
be *bitwise* equal to those for the contiguous array: each row is still reduced in
the same order, whatever the row stride, so there is no rounding excuse. out= and
inplace=True must write exactly the requested elements and nothing around them, and
never fall back to a copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import fastxent as fx

N, K = 6, 37  # K not a multiple of any SIMD width: heads and tails are exercised


def fortran(a: np.ndarray) -> np.ndarray:
    return np.asfortranarray(a)


def reversed_rows(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a[::-1])[::-1]


def reversed_classes(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a[..., ::-1])[..., ::-1]


def every_other_row(a: np.ndarray) -> np.ndarray:
    buf = np.full((2 * a.shape[0],) + a.shape[1:], 7, a.dtype)
    buf[::2] = a
    return buf[::2]


def every_other_class(a: np.ndarray) -> np.ndarray:
    buf = np.full(a.shape[:-1] + (2 * a.shape[-1],), 7, a.dtype)
    buf[..., ::2] = a
    return buf[..., ::2]


def inside_bigger_buffer(a: np.ndarray) -> np.ndarray:
    buf = np.full(tuple(s + 5 for s in a.shape), 7, a.dtype)
    idx = tuple(slice(2, 2 + s) for s in a.shape)
    buf[idx] = a
    return buf[idx]


def read_only(a: np.ndarray) -> np.ndarray:
    b = a.copy()
    b.setflags(write=False)
    return b


def big_endian(a: np.ndarray) -> np.ndarray:
    b = a.astype(a.dtype.newbyteorder(">"))
    assert not b.dtype.isnative
    return b


def misaligned(a: np.ndarray) -> np.ndarray:
    buf = np.zeros(a.nbytes + 1, np.uint8)
    b = buf[1:].view(a.dtype).reshape(a.shape)
    b[...] = a
    assert not b.flags.aligned
    return b


LAYOUTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    f.__name__: f
    for f in (
        fortran,
        reversed_rows,
        reversed_classes,
        every_other_row,
        every_other_class,
        inside_bigger_buffer,
        read_only,
        big_endian,
        misaligned,
    )
}
# Layouts that keep the class axis contiguous and aligned in native order: the
# kernels can write a gradient there without a copy.
WRITABLE_IN_PLACE = ("reversed_rows", "every_other_row", "inside_bigger_buffer")


def make_targets(kind: str, rng: np.random.Generator, dtype: Any) -> Any:
    if kind == "index":
        return rng.integers(0, K, N)
    if kind == "dense":
        y = (rng.random((N, K)) < 0.2).astype(dtype)
        y[:, 3] += 0.25
        return y
    nnz = rng.integers(0, 4, N)
    indptr = np.concatenate([[0], np.cumsum(nnz)])
    return fx.SparseTargets(indptr, rng.integers(0, K, indptr[-1]), rng.random(indptr[-1]))


def call(logits: Any, targets: Any, backend: str, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    loss, grad = fx.softmax_cross_entropy(logits, targets, backend=backend, **kw)
    assert grad is not None
    return np.asarray(loss), np.asarray(grad)


def assert_same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> None:
    for u, v in zip(a, b):
        assert u.dtype == v.dtype
        np.testing.assert_array_equal(u, v, strict=True)


DTYPES = [np.float32, np.float64]
KINDS = ["index", "dense", "sparse"]
OPTIONS = [{}, {"reduction": "none", "label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 5.0}]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_logits_layout(layout: str, kind: str, dtype: Any, backend: str, rng: np.random.Generator) -> None:
    x = (rng.standard_normal((N, K)) * 3).astype(dtype)
    y = make_targets(kind, rng, dtype)
    odd = LAYOUTS[layout](x)
    np.testing.assert_array_equal(odd, x)
    for opts in OPTIONS:
        assert_same(call(odd, y, backend, **opts), call(x, y, backend, **opts))
    np.testing.assert_array_equal(odd, x)  # inputs are never written


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_targets_layout(layout: str, dtype: Any, backend: str, rng: np.random.Generator) -> None:
    x = rng.standard_normal((N, K)).astype(dtype)
    y = make_targets("dense", rng, dtype)
    assert_same(call(x, LAYOUTS[layout](y), backend), call(x, y, backend))


def _struct_field(y: np.ndarray) -> np.ndarray:
    """int64 labels 12 bytes apart: a stride that is not a multiple of the item size."""
    rec = np.zeros(y.shape[0], dtype=[("label", "<i8"), ("pad", "<i4")])
    rec["label"] = y
    field = rec["label"]
    assert field.strides == (12,)
    return field


INDEX_LAYOUTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "reversed": lambda y: np.ascontiguousarray(y[::-1])[::-1],
    "every_other": every_other_row,
    "inside_bigger_buffer": inside_bigger_buffer,
    "read_only": read_only,
    "big_endian": big_endian,
    "misaligned": misaligned,
    "int32": lambda y: y.astype(np.int32),
    "uint8": lambda y: y.astype(np.uint8),
    "longlong": lambda y: y.astype(np.longlong),  # equal to int64, a different dtype object
    "intc": lambda y: y.astype(np.intc),
    "struct_field": _struct_field,
}


@pytest.mark.parametrize("layout", list(INDEX_LAYOUTS))
def test_index_targets_layout(layout: str, backend: str, rng: np.random.Generator) -> None:
    x = rng.standard_normal((N, K)).astype(np.float32)
    y = rng.integers(0, K, N)
    odd = INDEX_LAYOUTS[layout](y)
    np.testing.assert_array_equal(odd, y)
    weight = rng.random(K) + 0.5
    for opts in ({}, {"reduction": "none"}, {"weight": weight}):
        assert_same(call(x, odd, backend, **opts), call(x, y, backend, **opts))


@pytest.mark.parametrize("layout", ["every_other_row", "reversed_rows", "read_only", "big_endian", "misaligned"])
def test_weight_and_sparse_arrays_layout(layout: str, backend: str, rng: np.random.Generator) -> None:
    x = rng.standard_normal((N, K))
    y = rng.integers(0, K, N)
    w = rng.random(K) + 0.5
    odd_w = LAYOUTS[layout](w)
    assert_same(call(x, y, backend, weight=odd_w), call(x, y, backend, weight=w))
    sp = make_targets("sparse", rng, np.float64)
    odd_sp = fx.SparseTargets(
        LAYOUTS[layout](sp.indptr), LAYOUTS[layout](sp.indices), LAYOUTS[layout](sp.values)
    )
    assert_same(call(x, odd_sp, backend), call(x, sp, backend))


def test_integer_weights_and_bool_targets(backend: str, rng: np.random.Generator) -> None:
    x = rng.standard_normal((N, K)).astype(np.float32)
    y = rng.integers(0, K, N)
    w = rng.integers(1, 4, K)
    assert_same(call(x, y, backend, weight=w), call(x, y, backend, weight=w.astype(np.float32)))
    yb = rng.random((N, K)) < 0.3
    assert_same(call(x, yb, backend), call(x, yb.astype(np.float32), backend))


def test_broadcast_rows_with_zero_stride(backend: str, rng: np.random.Generator) -> None:
    row = rng.standard_normal(K)
    x = np.broadcast_to(row, (N, K))  # read-only, row stride 0
    assert x.strides[0] == 0
    y = rng.integers(0, K, N)
    assert_same(call(x, y, backend), call(np.ascontiguousarray(x), y, backend))


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_class_axis_anywhere_and_unmergeable_leading_dims(axis: int, backend: str, rng: np.random.Generator) -> None:
    shape = [3, 4, 5]
    x = rng.standard_normal(shape)
    lead = [s for i, s in enumerate(shape) if i != axis % 3]
    y = rng.integers(0, shape[axis], lead)
    yd = rng.random(shape)
    # the same values in a layout whose leading dimensions cannot be merged
    odd = inside_bigger_buffer(x)
    for t in (y, yd):
        a = call(odd, t, backend, axis=axis, reduction="none")
        b = call(x, t, backend, axis=axis, reduction="none")
        assert_same(a, b)
        assert a[1].shape == x.shape


@pytest.mark.parametrize("layout", WRITABLE_IN_PLACE)
@pytest.mark.parametrize("dtype", DTYPES)
def test_out_in_odd_layout_gets_exactly_the_gradient(
    layout: str, dtype: Any, backend: str, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((N, K)).astype(dtype)
    y = make_targets("dense", rng, dtype)
    expected = call(x, y, backend)
    sentinel = np.full((2 * N + 4, K + 6), 1234.5, dtype)  # the memory around out
    out = {
        "reversed_rows": sentinel[2 : 2 + N, 3 : 3 + K][::-1],
        "every_other_row": sentinel[2 : 2 + 2 * N : 2, 3 : 3 + K],
        "inside_bigger_buffer": sentinel[2 : 2 + N, 3 : 3 + K],
    }[layout]
    loss, grad = call(x, y, backend, out=out)
    assert grad.base is not None
    assert np.shares_memory(grad, out)
    np.testing.assert_array_equal(out, expected[1], strict=True)
    assert_same((loss, grad), expected)
    untouched = np.ones(sentinel.shape, bool)
    untouched[np.nonzero(np.isin(np.arange(sentinel.size).reshape(sentinel.shape), _addresses(sentinel, out)))] = False
    assert np.all(sentinel[untouched] == 1234.5)


def _addresses(base: np.ndarray, view: np.ndarray) -> np.ndarray:
    """Flat indices into `base` of the elements of `view`."""
    start = (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // base.itemsize
    i, j = np.indices(view.shape)
    return (start + i * (view.strides[0] // base.itemsize) + j * (view.strides[1] // base.itemsize)).ravel()


def test_out_with_class_axis_first_in_fortran_order(backend: str, rng: np.random.Generator) -> None:
    x = rng.standard_normal((K, N))  # classes on axis 0
    y = rng.integers(0, K, N)
    out = np.empty((K, N), order="F")  # axis 0 contiguous: writable as rows of classes
    loss, grad = call(x, y, backend, axis=0, out=out)
    assert grad is out
    assert_same((loss, grad), call(x, y, backend, axis=0))


@pytest.mark.parametrize("layout", WRITABLE_IN_PLACE)
def test_inplace_in_odd_layout_writes_the_callers_memory(layout: str, backend: str, rng: np.random.Generator) -> None:
    x = rng.standard_normal((N, K)).astype(np.float32)
    y = rng.integers(0, K, N)
    expected = call(x, y, backend)
    odd = LAYOUTS[layout](x)
    loss, grad = call(odd, y, backend, inplace=True)
    assert grad is odd
    assert_same((loss, odd), expected)


@pytest.mark.parametrize("layout", ["fortran", "reversed_classes", "every_other_class", "read_only", "big_endian", "misaligned"])
def test_inplace_never_falls_back_to_a_copy(layout: str, backend: str, rng: np.random.Generator) -> None:
    x = rng.standard_normal((N, K)).astype(np.float32)
    odd = LAYOUTS[layout](x)
    before = odd.copy()
    with pytest.raises((ValueError, TypeError), match=r"logits|inplace"):
        fx.softmax_cross_entropy(odd, rng.integers(0, K, N), inplace=True, backend=backend)
    np.testing.assert_array_equal(odd, before, strict=True)  # not even partly written


@pytest.mark.parametrize("op", ["logsumexp", "softmax", "log_softmax"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_rowwise_functions_layout(op: str, layout: str, backend: str, rng: np.random.Generator) -> None:
    x = rng.standard_normal((N, K)).astype(np.float32)
    fn = getattr(fx, op)
    np.testing.assert_array_equal(fn(LAYOUTS[layout](x), backend=backend), fn(x, backend=backend), strict=True)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_arrays_handed_to_the_kernels_are_aligned_with_unit_class_stride(layout: str, rng: np.random.Generator) -> None:
    """x86 forgives misaligned loads, so wrong numbers would never show it: check the
    validated problem itself (UBSan in .ci/sanitize.sh checks the kernels' side)."""
    from fastxent._problem import prepare_loss

    x = rng.standard_normal((N, K)).astype(np.float32)
    odd = LAYOUTS[layout]
    args = {"axis": -1, "reduction": "mean", "ignore_index": -100, "label_smoothing": 0.0, "z_loss": 0.0}
    for targets in (odd(rng.integers(0, K, N)), odd(make_targets("dense", rng, np.float32))):
        p = prepare_loss(
            odd(x), targets, weight=odd(rng.random(K)), softcap=None, return_grad=True, out=None, inplace=False, **args
        )
        for a in (p.logits, p.dense_targets, p.class_index, p.weight, p.grad, p.row_loss):
            if a is None:
                continue
            assert a.flags.aligned
            assert a.dtype.isnative
            assert a.strides[0] % a.itemsize == 0  # 1-D class indices: any whole-item stride
            if a.ndim == 2:
                assert a.strides[1] == a.itemsize
