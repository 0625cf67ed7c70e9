"""Sparse multi-label targets: fastxent.SparseTargets and scipy.sparse CSR (matrix and
array) give what the same targets given densely give, in both backends, with every
reduction and the options that apply; duplicates are summed (as sparse.py and scipy
say); malformed CSR raises a clear error."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import reference as ref
import scipy.sparse as sp

import fastxent as fx

K = 37


def random_csr(
    n: int, k: int, rng: np.random.Generator, *, weighted: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """CSR rows with 0..5 labels each (row 1 empty), unsorted within rows."""
    counts = rng.integers(0, 6, size=n)
    counts[1] = 0
    indptr = np.concatenate([[0], np.cumsum(counts)])
    indices = np.concatenate([rng.choice(k, size=c, replace=False) for c in counts])
    values = rng.uniform(0.1, 2.0, size=indices.size) if weighted else None
    return indptr, indices.astype(np.int64), values


def as_kind(
    form: str,
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray | None,
    k: int,
) -> Any:
    if form == "SparseTargets":
        return fx.SparseTargets(indptr, indices, values)
    data = np.ones(indices.size) if values is None else values
    n = indptr.size - 1
    if form == "csr_matrix":
        return sp.csr_matrix((data, indices, indptr), shape=(n, k))
    if form == "csr_array":
        return sp.csr_array((data, indices, indptr), shape=(n, k))
    if form == "coo_array":  # any scipy.sparse format is converted to CSR
        return sp.csr_array((data, indices, indptr), shape=(n, k)).tocoo()
    raise AssertionError(form)


OPTIONS = [
    {},
    {"weight": np.linspace(0.2, 2.0, K)},
    {"label_smoothing": 0.2},
    {"weight": np.linspace(0.2, 2.0, K), "label_smoothing": 0.2, "z_loss": 1e-2},
    {"softcap": 4.0},
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "form", ["SparseTargets", "csr_matrix", "csr_array", "coo_array"]
)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("options", range(len(OPTIONS)))
def test_sparse_equals_dense(
    backend: str,
    dtype: type,
    form: str,
    weighted: bool,
    options: int,
    rng: np.random.Generator,
) -> None:
    n = 11
    x = (2 * rng.standard_normal((n, K))).astype(dtype)
    indptr, indices, values = random_csr(n, K, rng, weighted=weighted)
    t = as_kind(form, indptr, indices, values, K)
    dense = ref.sparse_to_dense(fx.SparseTargets(indptr, indices, values), K).astype(
        dtype
    )
    opts = OPTIONS[options]
    snapshot = [
        a.copy() for a in (x, indptr, indices) + (() if values is None else (values,))
    ]
    rtol = ref.rtol_for(dtype, K, factor=4)
    for reduction in ("none", "sum", "mean"):
        loss, grad = fx.softmax_cross_entropy(
            x, t, reduction=reduction, backend=backend, **opts
        )
        want_loss, want_grad = fx.softmax_cross_entropy(
            x, dense, reduction=reduction, backend=backend, **opts
        )
        # the same math over a different target layout: only summation order differs
        ref.assert_within(
            loss, want_loss, rtol=rtol, scale=10.0, what=f"loss {reduction}"
        )
        ref.assert_within(
            grad,
            want_grad,
            rtol=rtol,
            scale=float(np.max(np.abs(want_grad))),
            what=f"grad {reduction}",
        )
        ref_loss, ref_grad = ref.cross_entropy(x, t, reduction=reduction, **opts)
        ref.assert_within(
            loss,
            ref_loss,
            rtol=4 * rtol,
            scale=10.0,
            what=f"reference loss {reduction}",
        )
        ref.assert_within(
            grad,
            ref_grad,
            rtol=4 * rtol,
            scale=float(np.max(np.abs(ref_grad))),
            what="reference grad",
        )
    for before, after in zip(
        snapshot,
        (x, indptr, indices) + (() if values is None else (values,)),
        strict=True,
    ):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_sparse_rows_follow_the_leading_dims_in_order(
    backend: str, axis: int, rng: np.random.Generator
) -> None:
    """Logits (2, 3, K) (class axis anywhere): sparse row r is lead index np.unravel_index(r, (2, 3))."""
    lead = (2, 3)
    shape = list(lead)
    shape.insert(axis % 3, K)
    x = rng.standard_normal(shape)
    indptr, indices, values = random_csr(6, K, rng, weighted=True)
    t = fx.SparseTargets(indptr, indices, values)
    dense = np.moveaxis(ref.sparse_to_dense(t, K).reshape(*lead, K), -1, axis % 3)
    loss, grad = fx.softmax_cross_entropy(
        x, t, axis=axis, reduction="none", backend=backend
    )
    want_loss, want_grad = fx.softmax_cross_entropy(
        x, dense, axis=axis, reduction="none", backend=backend
    )
    assert loss.shape == lead
    np.testing.assert_allclose(loss, want_loss, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-13, atol=1e-15)


def test_duplicates_within_a_row_are_summed(backend: str) -> None:
    """sparse.py: "A class listed twice in a row counts twice (its values are summed)",
    also for a scipy matrix that keeps duplicates (non-canonical CSR)."""
    x = np.array([[1.0, 0.0, -1.0, 2.0], [0.5, 0.5, 0.5, 0.5]])
    indptr, indices, values = (
        np.array([0, 3, 5]),
        np.array([1, 3, 1, 0, 0]),
        np.array([0.5, 1.0, 0.25, 2.0, 1.0]),
    )
    summed = np.array([[0, 0.75, 0, 1.0], [3.0, 0, 0, 0]])
    want = fx.softmax_cross_entropy(x, summed, reduction="none", backend=backend)
    m = sp.csr_matrix((values, indices, indptr), shape=(2, 4))
    assert not m.has_canonical_format
    for t in (fx.SparseTargets(indptr, indices, values), m):
        loss, grad = fx.softmax_cross_entropy(x, t, reduction="none", backend=backend)
        np.testing.assert_allclose(loss, want[0], rtol=1e-14)
        np.testing.assert_allclose(grad, want[1], rtol=1e-14, atol=1e-16)
    loss, _ = fx.softmax_cross_entropy(
        x[:1], fx.SparseTargets([0, 2], [2, 2]), reduction="none", backend=backend
    )
    np.testing.assert_allclose(
        loss, 2 * (np.log(np.exp(x[0]).sum()) - x[0, 2]), rtol=1e-14
    )


def test_special_values_with_sparse_targets(backend: str) -> None:
    """A NaN label value makes only its row NaN; a masked (-inf) class that is not
    listed adds nothing; a listed one gives +inf; an empty row has loss 0, grad 0."""
    x = np.array(
        [[0.0, -np.inf, 1.0], [0.0, 1.0, 2.0], [0.0, -np.inf, 1.0], [3.0, 2.0, 1.0]]
    )
    t = fx.SparseTargets([0, 1, 2, 3, 3], [0, 1, 1], [1.0, np.nan, 1.0])
    loss, grad = fx.softmax_cross_entropy(x, t, reduction="none", backend=backend)
    want_loss, want_grad = ref.cross_entropy(x, t, reduction="none")
    ref.assert_within(loss, want_loss, rtol=1e-14, scale=1.0)
    ref.assert_within(grad, want_grad, rtol=1e-14, scale=1.0)
    assert np.isfinite(loss[0])
    assert np.isnan(loss[1])
    assert np.isnan(grad[1]).all()
    assert loss[2] == np.inf
    assert loss[3] == 0
    assert np.all(grad[3] == 0)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (
            lambda: fx.SparseTargets([0, 2, 1, 3], [0, 1, 2]),
            ValueError,
            "indptr.*non-decreasing",
        ),
        (lambda: fx.SparseTargets([1, 3], [0, 1]), ValueError, "indptr.*start at 0"),
        (lambda: fx.SparseTargets([0, 3], [0, 1]), ValueError, "indptr.*end at len"),
        (lambda: fx.SparseTargets([[0, 1]], [0]), ValueError, "indptr.*1-D"),
        (lambda: fx.SparseTargets([0.0, 1.0], [0]), ValueError, "indptr.*integer"),
        (lambda: fx.SparseTargets([0, 1], [0.5]), ValueError, "indices.*integer"),
        (
            lambda: fx.SparseTargets([0, 1], [0], values=[1.0, 2.0]),
            ValueError,
            "values.*length",
        ),
        (lambda: fx.SparseTargets([0, 1], [0], values=["a"]), ValueError, "values"),
    ],
)
def test_malformed_csr_is_rejected_on_construction(
    make: Any, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(
    ("targets", "error", "match"),
    [
        (fx.SparseTargets([0, 1, 2], [0, 1]), ValueError, "rows"),  # N+1 = 3 != 4 + 1
        (fx.SparseTargets([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 0]), ValueError, "rows"),
        (
            fx.SparseTargets([0, 1, 2, 3, 4], [0, 1, 5, 3]),
            IndexError,
            "5 is out of range",
        ),
        (
            fx.SparseTargets([0, 1, 2, 3, 4], [0, -1, 2, 3]),
            IndexError,
            "-1 is out of range",
        ),
        (sp.csr_matrix(np.eye(4, 6)), ValueError, "shape"),
        (sp.csr_array(np.eye(3, 5)), ValueError, "shape"),
    ],
)
def test_csr_that_does_not_fit_the_logits_is_rejected(
    backend: str, targets: Any, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        fx.softmax_cross_entropy(np.zeros((4, 5)), targets, backend=backend)


def test_ignore_index_is_refused_with_sparse_targets(backend: str) -> None:
    with pytest.raises(ValueError, match="ignore_index"):
        fx.softmax_cross_entropy(
            np.zeros((1, 3)),
            fx.SparseTargets([0, 1], [2]),
            ignore_index=2,
            backend=backend,
        )


def test_to_dense_and_repr(rng: np.random.Generator) -> None:
    indptr, indices, values = random_csr(7, K, rng, weighted=True)
    indices[1:3] = indices[
        0
    ]  # duplicates within row 0 if it has them, else across rows
    t = fx.SparseTargets(indptr, indices, values)
    np.testing.assert_array_equal(t.to_dense(K), ref.sparse_to_dense(t, K))
    assert t.to_dense(K, np.float32).dtype == np.float32
    np.testing.assert_array_equal(
        fx.SparseTargets(indptr, indices).to_dense(K),
        ref.sparse_to_dense(fx.SparseTargets(indptr, indices), K),
    )
    assert repr(t) == f"SparseTargets(rows=7, nnz={indices.size})"
