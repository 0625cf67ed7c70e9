"""fastxent.torch.linear_cross_entropy / LinearCrossEntropyLoss against PyTorch 2.13's
F.linear_cross_entropy and the unfused F.cross_entropy(h @ W.T + b, t) with autograd,
values and gradients (input, linear_weight, linear_bias), for the features they share;
and fastxent's extras (z_loss, softcap, multi-hot and sparse targets) against the
float64 reference of tests/test_linear.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_linear import check, make, reference

import fastxent
import fastxent.torch as ft

N, D, K = 10, 6, 7


def leaves(dtype: Any = torch.float64, seed: int = 0, n: int = N, bias: bool = True) -> list[Any]:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, D, dtype=dtype, generator=g)
    w = torch.randn(K, D, dtype=dtype, generator=g) * 0.7
    b = torch.randn(K, dtype=dtype, generator=g) if bias else None
    return [None if t is None else t.requires_grad_() for t in (h, w, b)]


def grads_of(loss: Any, tensors: list[Any], upstream: Any = None) -> list[Any]:
    (loss if upstream is None else (loss * upstream).sum()).backward()
    return [None if t is None else t.grad for t in tensors]


def targets(kind: str, dtype: Any = torch.float64, n: int = N) -> Any:
    g = torch.Generator().manual_seed(1)
    if kind == "index":
        t = torch.randint(0, K, (n,), generator=g)
        t[[2, 3, 8]] = -100
        return t
    return torch.softmax(torch.randn(n, K, dtype=dtype, generator=g), -1)


@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", [{}, {"weight": True}, {"weight": True, "label_smoothing": 0.2}])
@pytest.mark.parametrize("chunk", [1, 3, None])
def test_matches_pytorch(kind: str, reduction: str, opts: dict[str, Any], chunk: int | None) -> None:
    t = targets(kind)
    kw = dict(opts)
    if kw.get("weight"):
        kw["weight"] = torch.rand(K, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 0.2
    upstream = (torch.randn(N, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) if reduction == "none"
                else torch.tensor(1.7, dtype=torch.float64))
    ours_in = leaves()
    ours = ft.linear_cross_entropy(ours_in[0], ours_in[1], t, linear_bias=ours_in[2], reduction=reduction, chunk_size=chunk, **kw)
    ours_g = grads_of(ours, ours_in, upstream)
    unf_in = leaves()
    unfused = F.cross_entropy(unf_in[0] @ unf_in[1].T + unf_in[2], t, reduction=reduction, **kw)
    unf_g = grads_of(unfused, unf_in, upstream)
    lce_in = leaves()
    theirs = F.linear_cross_entropy(lce_in[0], lce_in[1], t, linear_bias=lce_in[2], reduction=reduction, **kw)
    lce_g = grads_of(theirs, lce_in, upstream)
    torch.testing.assert_close(ours, unfused, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    for a, b, c in zip(ours_g, unf_g, lce_g):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
        torch.testing.assert_close(a, c, rtol=1e-11, atol=1e-12)


def test_float32_against_pytorch_chunked_options() -> None:
    t = targets("index")
    a = leaves(torch.float32)
    ours = ft.linear_cross_entropy(a[0], a[1], t, linear_bias=a[2], chunk_size=4)
    ga = grads_of(ours, a)
    b = leaves(torch.float32)
    opts = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=4, chunking_method=None)
    theirs = F.linear_cross_entropy(b[0], b[1], t, linear_bias=b[2], options=opts)
    gb = grads_of(theirs, b)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    assert ours.dtype == torch.float32


@pytest.mark.parametrize("kind", ["multihot", "sparse", "scipy", "dense"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_fastxent_extras_against_the_reference(kind: str, reduction: str) -> None:
    h, w, b, t, cw = make(kind, np.float64)
    kw = {"weight": cw, "label_smoothing": 0.1, "z_loss": 0.05, "softcap": 3.0}
    ref = reference(h, w, b, t, reduction=reduction, **kw)
    tt = torch.from_numpy(t.astype(np.float64)) if isinstance(t, np.ndarray) else t
    a = [torch.from_numpy(x.copy()).requires_grad_() for x in (h, w, b)]
    loss = ft.linear_cross_entropy(a[0], a[1], tt, linear_bias=a[2], reduction=reduction, chunk_size=3,
                                   weight=torch.from_numpy(cw), label_smoothing=0.1, z_loss=0.05, softcap=3.0)
    loss.sum().backward()
    check((loss.detach().numpy(), [x.grad.numpy() for x in a]), ref, np.float64)


def test_the_composition_fallback_matches_the_fused_path() -> None:
    """Probabilities that require grad run the unfused composition (PyTorch's autograd,
    which differentiates them), with z_loss and softcap too: the same values and
    gradients for input, linear_weight and linear_bias."""
    t = targets("probs")
    cw = torch.rand(K, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) + 0.2
    kw = {"weight": cw, "label_smoothing": 0.1, "z_loss": 0.05, "softcap": 3.0}
    for reduction in ("mean", "sum", "none"):
        up = torch.ones(()) if reduction != "none" else torch.arange(N, dtype=torch.float64)
        a = leaves()
        fused = ft.linear_cross_entropy(a[0], a[1], t, linear_bias=a[2], reduction=reduction, **kw)
        assert "Fused" in type(fused.grad_fn).__name__
        ga = grads_of(fused, a, up)
        b = leaves()
        tg = t.clone().requires_grad_()
        composed = ft.linear_cross_entropy(b[0], b[1], tg, linear_bias=b[2], reduction=reduction, **kw)
        assert "Fused" not in type(composed.grad_fn).__name__
        gb = grads_of(composed, b, up)
        assert tg.grad is not None
        torch.testing.assert_close(fused, composed, rtol=1e-12, atol=1e-12)
        for x, y in zip(ga, gb):
            torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-12)


def test_only_the_gradients_asked_for() -> None:
    h, w, _ = leaves(bias=False)
    w.requires_grad_(False)
    loss = ft.linear_cross_entropy(h, w, targets("index"))
    loss.backward()
    assert h.grad is not None
    assert w.grad is None
    with torch.no_grad():
        loss = ft.linear_cross_entropy(h, w, targets("index"))
    assert loss.grad_fn is None


def test_retain_graph_and_upstream_scaling() -> None:
    h, w, b = leaves()
    loss = ft.linear_cross_entropy(h, w, targets("index"), linear_bias=b)
    loss.backward(retain_graph=True)
    first = h.grad.clone()
    (loss * 3).backward()
    torch.testing.assert_close(h.grad, 4 * first)


def test_second_derivative_raises() -> None:
    h, w, b = leaves()
    loss = ft.linear_cross_entropy(h, w, targets("index"), linear_bias=b)
    (gh,) = torch.autograd.grad(loss, h, create_graph=True)
    with pytest.raises(RuntimeError):
        gh.sum().backward()


def test_empty_batch_and_leading_dimensions() -> None:
    h, w, b = leaves(n=12)
    t = targets("index", n=12)
    loss = ft.linear_cross_entropy(h.reshape(3, 4, D), w, t.reshape(3, 4), linear_bias=b, reduction="none", chunk_size=5)
    assert loss.shape == (3, 4)
    ref = F.cross_entropy(h @ w.T + b, t, reduction="none").reshape(3, 4)
    torch.testing.assert_close(loss, ref)
    e = ft.linear_cross_entropy(h[:0], w, t[:0], linear_bias=b, reduction="sum")
    e.backward()
    assert e.item() == 0
    assert torch.all(w.grad == 0)


def test_module_and_bad_inputs() -> None:
    crit = ft.LinearCrossEntropyLoss(reduction="sum", label_smoothing=0.1, chunk_size=3)
    h, w, b = leaves()
    t = targets("index")
    torch.testing.assert_close(crit(h, w, t, b), F.cross_entropy(h @ w.T + b, t, reduction="sum", label_smoothing=0.1))
    assert "chunk_size=3" in repr(crit)
    with pytest.raises(ValueError, match=r"^linear_weight: expected shape \(K, 6\)"):
        ft.linear_cross_entropy(h, w[:, :5], t)
    with pytest.raises(ValueError, match=r"^linear_bias: expected shape \(7,\)"):
        ft.linear_cross_entropy(h, w, t, linear_bias=b[:3])
    with pytest.raises(ValueError, match=r"^chunk_size: expected a positive int"):
        ft.linear_cross_entropy(h, w, t, chunk_size=0)
    with pytest.raises(ValueError, match=r"^reduction: expected one of"):
        ft.LinearCrossEntropyLoss(reduction="avg")
    with pytest.raises(IndexError, match=r"^targets: class index 7 is out of range"):
        ft.linear_cross_entropy(h, w, torch.full((N,), 7))


def test_example_docstring_objects_are_exported() -> None:
    assert ft.linear_cross_entropy is fastxent._torch_linear.linear_cross_entropy  # type: ignore[attr-defined]
    assert ft.LinearCrossEntropyLoss.__module__ == "fastxent._torch_linear"
