"""The validation fast path and the general path build the same record.

prepare_loss takes a shortcut for the common call (_fast_problem: plain C-contiguous
arrays, class indices in range or same-dtype dense targets, default options). Every
input the shortcut accepts, the general path accepts too: both must produce the
same LossProblem, field for field, and so bitwise the same results on both
backends. Inputs near the shortcut's edges (labels at K - 1, ignore_index values,
out= buffers, reductions, odd integer spellings) are drawn on purpose.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastxent import _backend, numpy_backend
from fastxent._problem import LossProblem, _fast_problem, _general_problem

FIELDS = [name for name in LossProblem.__slots__ if name != "grad_result"]


@st.composite
def fast_calls(draw: st.DrawFn) -> tuple[Any, ...]:
    n = draw(st.integers(1, 6))
    k = draw(st.integers(2, 9))
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = (rng.standard_normal((n, k)) * draw(st.sampled_from([1.0, 30.0]))).astype(dtype)
    if draw(st.booleans()):
        targets: np.ndarray = rng.integers(0, k, n).astype(draw(st.sampled_from([np.int32, np.int64])))
        targets[rng.random(n) < 0.3] = k - 1  # the top label, at the shortcut's bound check
    else:
        targets = rng.random((n, k)).astype(dtype) * draw(st.sampled_from([1.0, 3.0]))
    reduction = draw(st.sampled_from(["none", "sum", "mean"]))
    ignore_index = draw(st.sampled_from([-100, -1, -(2**63), k, 2**63 - 1]))
    if targets.ndim == 2:
        ignore_index = min(ignore_index, -1)  # ignore_index >= 0 with dense targets is an error on both paths
    out = np.empty((n, k), dtype) if draw(st.booleans()) else None
    axis = draw(st.sampled_from([-1, 1]))
    label_smoothing = draw(st.sampled_from([0.0, 0]))
    z_loss = draw(st.sampled_from([0.0, 0]))
    return (x, targets, axis, reduction, None, ignore_index, label_smoothing, z_loss, None, True, out, False)


def _fresh_outputs(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The same call with its own out= buffer (each path writes its own)."""
    out = args[10]
    return args[:10] + (None if out is None else np.empty_like(out),) + args[11:]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype is b.dtype
            and a.shape == b.shape and a.strides == b.strides
        )
    return bool(type(a) is type(b) and a == b)


@settings(max_examples=300, deadline=None)
@given(fast_calls())
def test_fast_path_builds_the_general_paths_record(args: tuple[Any, ...]) -> None:
    fast = _fast_problem(*args)
    assert fast is not None, "the strategy draws only calls the shortcut takes"
    general = _general_problem(*_fresh_outputs(args))
    for name in FIELDS:
        a, b = getattr(fast, name), getattr(general, name)
        assert _same(a, b), (name, a, b)
        if name in ("logits", "dense_targets", "class_index", "weight"):
            assert a is None or np.shares_memory(a, b), f"{name}: read in place on both paths"
    core = _backend.require_core()
    for compute in (core.loss, numpy_backend.softmax_cross_entropy):
        fast_reduced, general_reduced = compute(fast), compute(general)
        np.testing.assert_array_equal(fast_reduced, general_reduced)
        np.testing.assert_array_equal(fast.row_loss, general.row_loss)
        np.testing.assert_array_equal(fast.grad, general.grad)


@settings(max_examples=100, deadline=None)
@given(fast_calls(), st.sampled_from(["label", "ignore", "option"]))
def test_what_the_fast_path_declines_the_general_path_decides(args: tuple[Any, ...], change: str) -> None:
    """Off-path inputs (an out-of-range label, an ignored row, a nonzero option) go to
    the general path, never through the shortcut with a wrong record."""
    x, targets = args[0], args[1]
    if change == "option":
        args = args[:6] + (0.1,) + args[7:]
    elif targets.ndim == 1:
        targets = targets.copy()
        targets[0] = x.shape[1] if change == "label" else -1
        args = (x, targets) + args[2:5] + (-1,) + args[6:]  # ignore_index=-1
    else:
        return  # dense targets have no labels to change
    assert _fast_problem(*args) is None
    if change == "label":
        with pytest.raises(IndexError, match="^targets: class index"):
            _general_problem(*args)
    else:
        assert _general_problem(*args).target_kind == ("index" if targets.ndim == 1 else "dense")
