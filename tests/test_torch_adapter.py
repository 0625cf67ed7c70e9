"""fastxent.torch against PyTorch's own cross_entropy: values and gradients (with an
upstream gradient that is not 1), every reduction and option, gradcheck, and the
cases that fall back to PyTorch. The operator itself (torch.compile, opcheck,
gradients for probability targets): tests/test_torch_op.py."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastxent.api
from fastxent.torch import CrossEntropyLoss, cross_entropy

K = 7
SHAPES = [(K,), (5, K), (3, K, 2, 4)]  # unbatched, (N, C), (N, C, d1, d2)
OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "smoothing": {"label_smoothing": 0.15},
    "all": {"weight": True, "label_smoothing": 0.3, "ignore_index": 2},
}


def _lead(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[:1] + shape[2:] if len(shape) > 1 else ()


def _class_dim(shape: tuple[int, ...]) -> int:
    return 1 if len(shape) > 1 else 0


def _problem(
    shape: tuple[int, ...], kind: str, option: str, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    k = shape[_class_dim(shape)]
    x = (3 * torch.randn(shape, generator=g)).to(dtype)
    if kind == "index":
        t = torch.randint(0, k, _lead(shape), generator=g)
        if t.dim():
            t.view(-1)[::3] = 2  # some positions hit ignore_index=2 when it is set
    else:
        t = torch.softmax(torch.randn(shape, generator=g), dim=_class_dim(shape)).to(dtype)
    opts: dict[str, Any] = dict(OPTIONS[option])
    if opts.pop("weight", False):
        opts["weight"] = (0.5 + torch.rand(k, generator=g)).to(dtype)
    return x, t, opts


def _loss_and_grad(fn: Any, x: torch.Tensor, t: torch.Tensor, upstream_seed: int = 1, **kw: Any) -> tuple[Any, Any]:
    """Loss and d(loss . u)/dx for an upstream gradient u that is not 1."""
    xg = x.detach().clone().requires_grad_()
    loss = fn(xg, t, **kw)
    if loss.dim() == 0:
        upstream = torch.tensor(3.7, dtype=loss.dtype)
    else:
        upstream = torch.randn(loss.shape, generator=torch.Generator().manual_seed(upstream_seed)).to(loss.dtype)
    loss.backward(upstream)
    return loss.detach(), xg.grad


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_matches_torch_float64(shape: tuple[int, ...], kind: str, reduction: str, option: str) -> None:
    x, t, opts = _problem(shape, kind, option, torch.float64)
    if kind == "probs" and opts.get("ignore_index", -100) >= 0:
        with pytest.raises(RuntimeError, match="ignore_index is not supported"):  # as PyTorch does
            cross_entropy(x, t, reduction=reduction, **opts)
        opts["ignore_index"] = -7  # a negative one is allowed and means nothing here
    loss, grad = _loss_and_grad(cross_entropy, x, t, reduction=reduction, **opts)
    ref_loss, ref_grad = _loss_and_grad(F.cross_entropy, x, t, reduction=reduction, **opts)
    assert loss.shape == ref_loss.shape
    assert loss.dtype == torch.float64
    # Both in float64 over 7 classes: a few hundred ulps of headroom.
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_matches_torch_float32(kind: str, reduction: str) -> None:
    shape = (64, 1000, 2)
    x, t, opts = _problem(shape, kind, "all", torch.float32)
    if kind == "probs":
        del opts["ignore_index"]
    loss, grad = _loss_and_grad(cross_entropy, x, t, reduction=reduction, **opts)
    ref_loss, ref_grad = _loss_and_grad(F.cross_entropy, x.double(), t if kind == "index" else t.double(),
                                        reduction=reduction, **{**opts, "weight": opts["weight"].double()})
    assert loss.dtype == torch.float32
    assert grad.dtype == torch.float32
    # float32 kernel vs a float64 PyTorch: logsumexp over 1000 classes and a sum over
    # 128 rows lose a few eps * log(K) each (eps = 1.2e-7).
    torch.testing.assert_close(loss.double(), ref_loss, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "kind", "reduction", "option"),
    [
        ((4, K), "index", "mean", "all"),
        ((4, K), "probs", "sum", "weight"),
        ((2, K, 3), "index", "none", "weight"),
        ((2, K, 3), "probs", "none", "smoothing"),
        ((K,), "index", "mean", "smoothing"),
    ],
)
def test_gradcheck_float64(shape: tuple[int, ...], kind: str, reduction: str, option: str) -> None:
    x, t, opts = _problem(shape, kind, option, torch.float64, seed=3)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: cross_entropy(a, t, reduction=reduction, **opts), (x,))


def test_runs_the_kernel_on_the_tensors_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []
    real = fastxent.api.softmax_cross_entropy

    def spy(logits: np.ndarray, targets: np.ndarray, **kw: Any) -> Any:
        seen.append((logits.__array_interface__["data"][0], targets.__array_interface__["data"][0]))
        return real(logits, targets, **kw)

    monkeypatch.setattr(fastxent.api, "softmax_cross_entropy", spy)
    x = torch.randn(6, K, requires_grad=True)
    t = torch.randint(0, K, (6,))
    loss = cross_entropy(x, t)
    # channels-last: the class dimension is the contiguous one, so also no copy
    x4 = torch.randn(2, K, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    t4 = torch.randint(0, K, (2, 3, 3))
    loss4 = cross_entropy(x4, t4)
    assert seen == [(x.data_ptr(), t.data_ptr()), (x4.data_ptr(), t4.data_ptr())]
    # only the gradient is kept for backward, not the logits or the softmax
    saved = loss.grad_fn.saved_tensors  # type: ignore[union-attr]
    assert len(saved) == 1
    assert saved[0].shape == x.shape
    loss4.backward()
    torch.testing.assert_close(x4.grad, torch.autograd.grad(F.cross_entropy(x4, t4), x4)[0], rtol=1e-6, atol=1e-7)


def test_strided_input_is_correct() -> None:
    base = torch.randn(K, 5, dtype=torch.float64)
    x = base.t()  # classes not contiguous: the kernel needs one copy
    t = torch.randint(0, K, (5,))
    loss, grad = _loss_and_grad(cross_entropy, x, t, reduction="sum")
    ref_loss, ref_grad = _loss_and_grad(F.cross_entropy, x, t, reduction="sum")
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)


def test_backward_twice_with_retain_graph() -> None:
    x = torch.randn(4, K, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, K, (4,))
    loss = cross_entropy(x, t, reduction="none")
    u = torch.arange(4, dtype=torch.float64)
    (g1,) = torch.autograd.grad(loss, x, u, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x, u)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    torch.testing.assert_close(g1, torch.autograd.grad(F.cross_entropy(x, t, reduction="none"), x, u)[0])


def test_saved_gradient_handed_over_safely() -> None:
    # With upstream 1 the backward returns the saved gradient itself: autograd must
    # copy it while the graph keeps it, whatever happens to x.grad or to other
    # gradients summed into the same node (h feeds two losses).
    def run(fn: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(5, K, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).requires_grad_()
        t = torch.tensor([0, 1, 2, 3, 4])
        h = x * 2.0
        loss = fn(h, t) + fn(h, t, label_smoothing=0.2)
        loss.backward(retain_graph=True)
        first = x.grad.clone()  # type: ignore[union-attr]
        x.grad.mul_(10.0)  # type: ignore[union-attr]
        loss.backward()
        return first, x.grad  # type: ignore[return-value]

    first, second = run(cross_entropy)
    ref_first, ref_second = run(F.cross_entropy)
    torch.testing.assert_close(first, ref_first)
    torch.testing.assert_close(second, ref_second)
    torch.testing.assert_close(second, 11.0 * first)
    x = torch.randn(3, K, requires_grad=True)
    loss = cross_entropy(x, torch.tensor([1, 2, 3]))
    saved_ptr = loss.grad_fn.saved_tensors[0].data_ptr()  # type: ignore[union-attr]
    loss.backward()
    assert x.grad is not None
    assert x.grad.data_ptr() == saved_ptr  # taken over without a copy once the graph is freed


def test_double_backward_is_refused() -> None:
    x = torch.randn(3, K, dtype=torch.float64, requires_grad=True)
    loss = cross_entropy(x, torch.tensor([0, 1, 2]))
    # The saved gradient is a constant to autograd: a second derivative would be
    # silently wrong, so it must raise instead.
    upstream = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(loss, x, upstream, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once only"):
        g.sum().backward()


def test_no_grad_needed() -> None:
    x = torch.randn(3, K)
    t = torch.tensor([0, 1, 6])
    loss = cross_entropy(x, t)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, F.cross_entropy(x, t))
    with torch.no_grad():
        xg = x.clone().requires_grad_()
        torch.testing.assert_close(cross_entropy(xg, t, reduction="none"), F.cross_entropy(x, t, reduction="none"))


def test_all_rows_ignored_gives_torchs_nan() -> None:
    x = torch.randn(3, K, requires_grad=True)
    t = torch.full((3,), -100)
    loss, grad = _loss_and_grad(cross_entropy, x, t)
    ref_loss, ref_grad = _loss_and_grad(F.cross_entropy, x, t)
    assert torch.isnan(loss)
    assert torch.isnan(ref_loss)
    torch.testing.assert_close(grad, ref_grad, equal_nan=True)


# ---- fallbacks -------------------------------------------------------------------



@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_the_kernel(dtype: torch.dtype, api_calls: list[int]) -> None:
    """16-bit tensors are no fallback: the kernel runs (parity: tests/test_low_precision.py)."""
    x, t, opts = _problem((6, K), "index", "all", dtype)
    loss, grad = _loss_and_grad(cross_entropy, x, t, **opts)
    assert api_calls == [1]
    assert loss.dtype == dtype
    assert grad.dtype == dtype


def test_bfloat16_without_ml_dtypes_falls_back_to_torch(api_calls: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    import fastxent.torch as ft

    monkeypatch.setattr(ft, "_BFLOAT16", [None])  # as if ml_dtypes were not installed
    x, t, opts = _problem((6, K), "index", "all", torch.bfloat16)
    loss, grad = _loss_and_grad(cross_entropy, x, t, **opts)
    ref_loss, ref_grad = _loss_and_grad(F.cross_entropy, x, t, **opts)
    assert api_calls == []
    assert torch.equal(loss, ref_loss)
    assert torch.equal(grad, ref_grad)


def test_other_devices_and_transforms_fall_back(api_calls: list[int]) -> None:
    meta = cross_entropy(torch.empty(4, K, device="meta"), torch.empty(4, dtype=torch.int64, device="meta"))
    assert meta.device.type == "meta"
    assert meta.shape == ()
    x = torch.randn(4, K, dtype=torch.float64)
    t = torch.tensor([1, 2, 3, 4])
    g = torch.func.grad(lambda a: cross_entropy(a, t) * 3.0)(x)
    torch.testing.assert_close(g, torch.func.grad(lambda a: F.cross_entropy(a, t) * 3.0)(x))
    empty = cross_entropy(torch.empty(0, K), torch.empty(0, dtype=torch.int64), reduction="sum")
    assert empty.item() == 0.0
    assert api_calls == []


def test_errors_match_torch() -> None:
    x = torch.randn(3, K)
    with pytest.raises(IndexError):
        cross_entropy(x, torch.tensor([0, K, 1]))
    with pytest.raises(IndexError):
        F.cross_entropy(x, torch.tensor([0, K, 1]))
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(x, torch.tensor([0, 1, 1]), reduction="avg")
    with pytest.raises(RuntimeError):  # int32 class indices: PyTorch's own error
        cross_entropy(x, torch.tensor([0, 1, 1], dtype=torch.int32))


# ---- the module ------------------------------------------------------------------


def test_module_matches_torch_module() -> None:
    w = torch.rand(K) + 0.5
    ours = CrossEntropyLoss(w, ignore_index=1, reduction="sum", label_smoothing=0.2)
    theirs = torch.nn.CrossEntropyLoss(w, ignore_index=1, reduction="sum", label_smoothing=0.2)
    assert "weight" in ours.state_dict()
    assert "reduction='sum'" in repr(ours)
    x = torch.randn(8, K, 3, dtype=torch.float64)
    t = torch.randint(0, K, (8, 3))
    ours.double()
    theirs.double()
    assert ours.weight is not None
    assert ours.weight.dtype == torch.float64
    loss, grad = _loss_and_grad(ours, x, t)
    ref_loss, ref_grad = _loss_and_grad(theirs, x, t)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-11, atol=1e-14)


def test_import_fastxent_imports_neither_torch_nor_jax() -> None:
    code = "import sys, fastxent; print(sorted(m for m in ('torch', 'jax') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    code = "import sys, fastxent.torch; print('torch' in sys.modules, 'jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True False"
