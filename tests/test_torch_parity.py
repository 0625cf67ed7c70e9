"""fastxent against torch.nn.functional.cross_entropy (CPU, autograd for the
gradient): class-index and probability targets, every reduction, float32/float64,
PyTorch's own layouts (classes on dim 1 with extra spatial dims, and 1-D input)."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import torch
import torch.nn.functional as F

import fastxent as fx

LAYOUTS = [
    (6, 5),
    (4, 7, 3),
    (2, 5, 3, 2),
    (8,),
]  # PyTorch layout: classes on dim 1 (or dim 0 for 1-D)


def torch_layout_targets(
    kind: str, shape: tuple[int, ...], rng: np.random.Generator, dtype: type
) -> np.ndarray:
    cdim = 1 if len(shape) >= 2 else 0
    k = shape[cdim]
    if kind == "index":
        return rng.integers(0, k, size=shape[:cdim] + shape[cdim + 1 :])
    y = rng.random(shape)
    if kind == "prob":
        return (y / y.sum(axis=cdim, keepdims=True)).astype(dtype)
    return (y < 0.4).astype(
        dtype
    )  # multi-hot: PyTorch accepts any non-negative target rows


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", LAYOUTS)
@pytest.mark.parametrize("kind", ["index", "prob", "multihot"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_matches_torch_cross_entropy(
    backend: str,
    dtype: type,
    shape: tuple[int, ...],
    kind: str,
    reduction: str,
    rng: np.random.Generator,
) -> None:
    x = (2 * rng.standard_normal(shape)).astype(dtype)
    t = torch_layout_targets(kind, shape, rng, dtype)
    axis = 1 if len(shape) >= 2 else 0
    want_loss, want_grad = ref.torch_cross_entropy(x, t, axis=axis, reduction=reduction)
    loss, grad = fx.softmax_cross_entropy(
        x, t, axis=axis, reduction=reduction, backend=backend
    )
    k = shape[axis]
    # both sides round in `dtype`: twice one kernel's bound
    rtol = 2 * ref.rtol_for(dtype, k)
    dense = ref.one_hot(t, k, axis) if kind == "index" else t
    row_scale = ref.loss_scale(x, dense, axis).reshape(
        np.shape(want_loss) if reduction == "none" else -1
    )
    n = max(1, row_scale.size)
    scale = {"none": row_scale, "sum": row_scale.sum(), "mean": row_scale.sum() / n}[
        reduction
    ]
    assert np.shape(loss) == np.shape(want_loss)
    ref.assert_within(loss, want_loss, rtol=rtol, scale=scale, what="loss")
    ref.assert_within(
        grad, want_grad, rtol=rtol, scale=np.max(np.abs(want_grad)), what="grad"
    )


def test_torch_tensors_give_the_same_results_as_arrays(
    backend: str, rng: np.random.Generator
) -> None:
    """CPU tensors go in as they are (via DLPack / __array__), results match the NumPy input's."""
    xt = torch.randn(5, 6, dtype=torch.float64)
    tt = torch.randint(0, 6, (5,))
    loss_t, grad_t = fx.softmax_cross_entropy(xt, tt, backend=backend)
    loss_n, grad_n = fx.softmax_cross_entropy(xt.numpy(), tt.numpy(), backend=backend)
    assert loss_t == loss_n
    np.testing.assert_array_equal(grad_t, grad_n)
    want = F.cross_entropy(xt, tt)
    np.testing.assert_allclose(loss_t, want.item(), rtol=1e-13)


def test_masked_class_with_prob_targets_is_finite_unlike_torch(backend: str) -> None:
    """Documented difference: with probability targets PyTorch computes y * log_softmax,
    so a masked class (-inf) with y = 0 makes its loss NaN (0 * -inf); fastxent gives
    the finite loss (docs/spec.md#conventions). Gradients agree."""
    x = np.array([[0.0, -np.inf, 1.0]])
    y = np.array([[1.0, 0.0, 0.0]])
    want_loss, want_grad = ref.torch_cross_entropy(x, y)
    loss, grad = fx.softmax_cross_entropy(x, y, backend=backend)
    assert np.isnan(want_loss)
    np.testing.assert_allclose(loss, np.log1p(np.e), rtol=1e-14)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-14)
