"""The robustness contract beyond the error table (docs/bad_inputs.md): inputs the
call refuses are left byte for byte as they were, SparseTargets cannot be changed
under the kernels, options of odd types parse the same on both backends and both
validation paths, and ndarray subclasses are plain ndarrays to fastxent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import fastxent as fx
from fastxent._problem import prepare_loss

f = fx.softmax_cross_entropy
N, K = 4, 5
_RNG = np.random.default_rng(11)
X = _RNG.standard_normal((N, K)).astype(np.float32)
Y = np.array([0, 1, 2, 3])


def _snapshot(*arrays: np.ndarray) -> list[bytes]:
    """The bytes of every array's whole base buffer (a view's neighbours count too)."""
    out = []
    for a in arrays:
        base = a
        while isinstance(base.base, np.ndarray):
            base = base.base
        out.append(base.tobytes())
    return out


def _aliased_calls() -> dict[str, tuple[Callable[[str], Any], list[np.ndarray]]]:
    """id -> (a call that must be refused, the arrays it must leave untouched)."""
    calls: dict[str, tuple[Callable[[str], Any], list[np.ndarray]]] = {}

    y = np.full((1, K), 0.2)
    calls["out-in-float64-targets"] = (
        lambda b: f(np.zeros((1, K), np.float32), y, out=y.view(np.float32)[:, :K], backend=b), [y]
    )
    w = np.ones(N * K)
    calls["out-in-float64-weight"] = (
        lambda b: f(X.copy(), Y, weight=w[:K], out=w.view(np.float32)[: N * K].reshape(N, K), backend=b), [w]
    )
    swapped = X.astype(">f4")
    calls["out-in-byteswapped-logits"] = (lambda b: f(swapped, Y, out=swapped.view(np.float32), backend=b), [swapped])
    logits = X.copy()
    labels = logits.view(np.int16)[0, :N]
    labels[:] = [0, 1, 2, 3]
    calls["inplace-int16-labels-in-logits"] = (lambda b: f(logits, labels, inplace=True, backend=b), [logits])
    shared = np.zeros(N * K, np.float32)  # logits, and a float64 weight read from their first rows
    calls["inplace-float64-weight-in-logits"] = (
        lambda b: f(shared.reshape(N, K), Y, weight=shared[: 2 * K].view(np.float64), inplace=True, backend=b), [shared]
    )
    d = np.zeros((N, K), np.float64)
    calls["inplace-dense-targets-in-logits"] = (
        lambda b: f(d.view(np.float32)[:, :K], d, inplace=True, backend=b), [d]
    )
    import scipy.sparse

    csr = scipy.sparse.csr_matrix(np.eye(N, K, dtype=np.float64))
    calls["out-in-scipy-data"] = (
        lambda b: f(X.copy(), csr, out=np.lib.stride_tricks.as_strided(csr.data.view(np.float32), (N, K), (0, 4)), backend=b),
        [csr.data],
    )
    return calls


ALIASED = _aliased_calls()


@pytest.mark.parametrize("case", list(ALIASED))
def test_refused_aliasing_leaves_every_input_unchanged(case: str, backend: str) -> None:
    call, arrays = ALIASED[case]
    before = _snapshot(*arrays)
    with pytest.raises(ValueError, match=r"^(out|inplace):"):
        call(backend)
    assert _snapshot(*arrays) == before


def test_inplace_weight_from_logits_row_is_refused(backend: str) -> None:
    a = X.copy()
    with pytest.raises(ValueError, match=r"^inplace: logits shares memory"):
        f(a, Y, weight=a[0], inplace=True, backend=backend)
    np.testing.assert_array_equal(a, X)


# ---- SparseTargets: checked once, then immutable ------------------------------------


def test_sparse_targets_cannot_be_changed_after_construction() -> None:
    src_indices = np.array([1, 2, 3, 4])
    t = fx.SparseTargets([0, 1, 2, 3, 4], src_indices, values=[1.0, 2.0, 3.0, 4.0])
    for name in ("indptr", "indices", "values"):
        with pytest.raises(AttributeError, match="^SparseTargets is immutable"):
            setattr(t, name, np.array([0.5, 3.7]))
        with pytest.raises(AttributeError, match="^SparseTargets is immutable"):
            delattr(t, name)
        arr = getattr(t, name)
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 10**6
        with pytest.raises(ValueError, match="WRITEABLE"):
            arr.flags.writeable = True  # no writable alias of its memory exists
    with pytest.raises(AttributeError):
        t.extra = 1  # type: ignore[attr-defined]
    src_indices[0] = 10**6  # the caller's array is not the one the call reads
    loss, _ = f(X, t, backend="cpp")
    assert np.isfinite(loss)


def test_sparse_targets_copy_leaves_the_callers_arrays_writable() -> None:
    indptr, indices = np.array([0, 1, 2]), np.array([1, 2])
    fx.SparseTargets(indptr, indices)
    assert indptr.flags.writeable
    assert indices.flags.writeable


def test_sparse_targets_from_unsigned_beyond_int64_are_refused() -> None:
    with pytest.raises(ValueError, match="^indices: values must fit in int64"):
        fx.SparseTargets(np.array([0, 1], np.uint64), np.array([2**63], np.uint64))


# ---- options: one parser, both paths, both backends -----------------------------------


NUMERIC_SPELLINGS: list[Callable[[float], Any]] = [
    float, np.float64, np.float32, lambda v: np.array(v), lambda v: np.array(v, np.float32),
]


@pytest.mark.parametrize("spell", NUMERIC_SPELLINGS)
def test_numeric_options_accept_numpy_scalars_and_0d_arrays(spell: Callable[[float], Any], backend: str) -> None:
    want = f(X, Y, label_smoothing=0.25, z_loss=0.5, softcap=4.0, backend=backend)
    got = f(X, Y, label_smoothing=spell(0.25), z_loss=spell(0.5), softcap=spell(4.0), backend=backend)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("ignore_index", [1, np.int8(1), np.uint64(1), np.array(1), np.int64(1)])
def test_ignore_index_accepts_numpy_integers(ignore_index: Any, backend: str) -> None:
    loss, grad = f(X, Y, ignore_index=ignore_index, reduction="none", backend=backend)
    assert loss[1] == 0
    assert np.all(grad[1] == 0)
    assert loss[0] > 0


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"label_smoothing": np.array([0.1])}, TypeError, "^label_smoothing: expected a float"),
        ({"z_loss": True}, TypeError, "^z_loss: expected a float"),
        ({"z_loss": "0.1"}, TypeError, "^z_loss: expected a float"),
        ({"softcap": 2**1100}, ValueError, "^softcap: expected a value in"),
        ({"ignore_index": np.array([1])}, TypeError, "^ignore_index: expected an int"),
        ({"ignore_index": -(2**63) - 1}, ValueError, "^ignore_index: expected a value in the int64 range"),
        ({"axis": True}, TypeError, "^axis: expected an int"),
        ({"axis": np.array([1])}, TypeError, "^axis: expected an int"),
        ({"reduction": b"mean"}, TypeError, "^reduction: expected a str"),
        ({"reduction": ["mean"]}, TypeError, "^reduction: expected a str"),
        ({"backend": np.array(["cpp"])}, ValueError, "^backend: expected None"),
        ({"return_grad": np.array(True)}, TypeError, "^return_grad: expected True or False"),
    ],
)
def test_odd_option_types_are_refused_by_name(kwargs: dict[str, Any], exc: type[Exception], match: str) -> None:
    # both the fast path (plain arrays, int targets) and the general path (a weight)
    for extra in ({}, {"weight": np.ones(K, np.float32)}):
        with pytest.raises(exc, match=match):
            f(X, Y, **extra, **kwargs)


def test_fast_and_general_path_parse_options_alike() -> None:
    """The same odd option spelled for the fast path (no weight) and the general one."""
    for reduction in ("none", "sum", "mean", np.str_("mean")):
        fast = f(X, Y, reduction=reduction)
        general = f(X, Y, reduction=reduction, weight=np.ones(K, np.float32))
        np.testing.assert_allclose(fast[0], general[0], rtol=1e-6)
        np.testing.assert_allclose(fast[1], general[1], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softcap_at_the_ends_of_the_dtype_range_is_finite(dtype: Any, backend: str) -> None:
    info = np.finfo(dtype)
    x = (X * 3).astype(dtype)
    for cap in (float(info.smallest_subnormal), float(info.tiny), float(info.max)):
        loss, grad = f(x, Y, softcap=cap, reduction="none", backend=backend)
        assert np.isfinite(loss).all(), cap
        assert np.isfinite(grad).all(), cap
    # A cap far below every |x|: each logit becomes +-cap, so the loss is log K.
    loss, _ = f(x, Y, softcap=float(info.smallest_subnormal), reduction="none", backend=backend)
    np.testing.assert_allclose(loss, np.log(K), rtol=10 * info.eps)
    # A cap far above every |x|: no effect.
    np.testing.assert_allclose(
        f(x, Y, softcap=float(info.max), backend=backend)[0], f(x, Y, backend=backend)[0], rtol=10 * info.eps
    )


# ---- ndarray subclasses are plain ndarrays ------------------------------------------------


def _subclass_cases() -> dict[str, tuple[Callable[[np.ndarray], Any], bool]]:
    """id -> (wrap an array in the subclass, whether it can wrap 1-D class indices)."""
    return {
        "matrix": (np.asmatrix, False),
        "masked": (lambda a: np.ma.MaskedArray(a, mask=np.zeros(a.shape, bool)), True),
        "masked-with-mask": (lambda a: np.ma.MaskedArray(a, mask=np.ones(a.shape, bool)), True),
        "recarray-free-subclass": (lambda a: a.view(type("Sub", (np.ndarray,), {})), True),
    }


SUBCLASSES = _subclass_cases()


MATRIX_WARNING = "ignore:the matrix subclass:PendingDeprecationWarning"


@pytest.mark.filterwarnings(MATRIX_WARNING)
@pytest.mark.parametrize("case", list(SUBCLASSES))
def test_subclasses_give_the_result_of_their_plain_view(case: str, backend: str) -> None:
    wrap, one_d = SUBCLASSES[case]
    dense = np.eye(N, K, dtype=np.float32) * 2
    for targets in ([dense, Y] if one_d else [dense]):
        want = f(X, targets, backend=backend)
        got = f(wrap(X.copy()), wrap(targets), backend=backend)
        np.testing.assert_array_equal(np.asarray(got[0]), want[0])
        np.testing.assert_array_equal(np.asarray(got[1]), want[1])
        if one_d:  # (a matrix is 2-D: a (1, K) weight is refused by its shape)
            got_w = f(X, targets, weight=wrap(np.ones(K, np.float32)), backend=backend)
            np.testing.assert_array_equal(np.asarray(got_w[1]), want[1])
    for op in (fx.logsumexp, fx.softmax, fx.log_softmax):
        np.testing.assert_array_equal(np.asarray(op(wrap(X.copy()), backend=backend)), op(X, backend=backend))


def test_masked_all_neginf_row_is_nan_on_both_backends() -> None:
    x = X.copy()
    x[1] = -np.inf
    masked = np.ma.MaskedArray(x, mask=np.isinf(x))
    for backend in ("cpp", "numpy"):
        loss, _ = f(masked, Y, reduction="none", backend=backend)
        assert np.isnan(loss[1])
        assert np.isfinite(np.asarray(loss)[[0, 2, 3]]).all()


@pytest.mark.filterwarnings(MATRIX_WARNING)
def test_matrix_class_indices_are_refused_by_shape(backend: str) -> None:
    with pytest.raises(ValueError, match=r"^targets: integer class indices must have shape \(4,\)"):
        f(X, np.asmatrix(Y), backend=backend)


@pytest.mark.filterwarnings(MATRIX_WARNING)
def test_subclass_out_receives_the_gradient(backend: str) -> None:
    out = np.asmatrix(np.empty((N, K), np.float32))
    _, grad = f(X, Y, out=out, backend=backend)
    assert grad is out
    np.testing.assert_array_equal(np.asarray(out), f(X, Y, backend=backend)[1])


@pytest.mark.filterwarnings(MATRIX_WARNING)
def test_the_record_holds_plain_arrays_for_subclasses() -> None:
    p = prepare_loss(
        np.asmatrix(X), np.ma.MaskedArray(np.eye(N, K, dtype=np.float32)), axis=-1, reduction="mean",
        weight=np.asmatrix(np.ones(K, np.float32)).A1, ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
        softcap=None, return_grad=True, out=None, inplace=False,
    )
    for a in (p.logits, p.dense_targets, p.weight, p.grad, p.row_loss):
        assert type(a) is np.ndarray
