"""fastxent.torch as a PyTorch custom operator (torch.ops.fastxent.cross_entropy):
torch.compile traces it with no graph break and gives eager's values and gradients,
torch.library.opcheck passes, probability targets that require grad get PyTorch's
gradient from the kernel path, torch.func transforms and what the kernel does not
cover go to torch.nn.functional.cross_entropy (docs/spec.md, "PyTorch")."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import fastxent.torch as ft

K = 5
OP = torch.ops.fastxent.cross_entropy.default
LOG_SOFTMAX = torch.ops.fastxent.log_softmax.default


def _lead(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[:1] + shape[2:] if len(shape) > 1 else ()


def _class_dim(shape: tuple[int, ...]) -> int:
    return 1 if len(shape) > 1 else 0


def _inputs(
    shape: tuple[int, ...], kind: str, dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, targets (class indices with some = 2, or probabilities) and class weights."""
    g = torch.Generator().manual_seed(seed)
    k = shape[_class_dim(shape)]
    x = (3 * torch.randn(shape, generator=g)).to(dtype)
    if kind == "index":
        t = torch.randint(0, k, _lead(shape), generator=g)
        if t.dim():
            t.view(-1)[::3] = 2  # hit by ignore_index=2
    else:
        t = torch.softmax(torch.randn(shape, generator=g), dim=_class_dim(shape)).to(dtype)
    w = (0.5 + torch.rand(k, generator=g)).to(dtype)
    return x, t, w




class _GraphRecorder:
    """A torch.compile backend that keeps the FX graphs dynamo hands it and runs them as they are."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
        self.graphs.append(gm)
        return gm.forward

    def targets(self) -> list[Any]:
        return [n.target for gm in self.graphs for n in gm.graph.nodes if n.op == "call_function"]


def _grads(fn: Any, x: torch.Tensor, t: torch.Tensor, **kw: Any) -> tuple[torch.Tensor, ...]:
    """Loss (times 1.5, so the upstream gradient is not 1) and gradients for x (and t if it is float)."""
    xg = x.detach().clone().requires_grad_()
    tg = t.detach().clone().requires_grad_(t.is_floating_point())
    loss = fn(xg, tg, **kw)
    (loss.sum() * 1.5).backward()
    return (loss.detach(), xg.grad) + ((tg.grad,) if tg.is_floating_point() else ())  # type: ignore[operator]


# ---- torch.compile ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "kind", "reduction", "options"),
    [
        ((6, K), "index", "mean", {}),
        ((3, K, 2), "index", "none", {"ignore_index": 2, "label_smoothing": 0.1, "weight": True}),
        ((6, K), "probs", "sum", {"weight": True}),
        ((K,), "probs", "mean", {"label_smoothing": 0.2}),
    ],
)
def test_compiles_into_one_graph_with_the_operator(
    shape: tuple[int, ...], kind: str, reduction: str, options: dict[str, Any]
) -> None:
    x, t, w = _inputs(shape, kind)
    kw = {**options, "reduction": reduction}
    if kw.pop("weight", False):
        kw["weight"] = w

    def step(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ft.cross_entropy(a, b, **kw) * 1.5

    recorder = _GraphRecorder()
    torch._dynamo.reset()
    # fullgraph=True: a graph break (e.g. a fallback to eager Python) is an error
    loss = torch.compile(step, fullgraph=True, backend=recorder)(x, t)
    assert OP in recorder.targets() or torch.ops.fastxent.cross_entropy in recorder.targets()
    assert F.cross_entropy not in recorder.targets()
    assert not any("nll_loss" in str(target) or "log_softmax" in str(target) for target in recorder.targets())
    torch.testing.assert_close(loss, step(x, t), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_aot_autograd_gives_eager_values_and_gradients(kind: str, reduction: str) -> None:
    x, t, w = _inputs((4, K, 3), kind, seed=1)
    torch._dynamo.reset()
    compiled = torch.compile(ft.cross_entropy, fullgraph=True, backend="aot_eager")
    kw: dict[str, Any] = {"weight": w, "reduction": reduction, "label_smoothing": 0.1}
    got = _grads(compiled, x, t, **kw)
    want = _grads(ft.cross_entropy, x, t, **kw)
    assert len(got) == (3 if kind == "probs" else 2)
    for a, b in zip(got, want):
        # the same kernel and the same formula for the backward: the same bits
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# inductor's own import uses torch.jit.script_method, deprecated in this torch
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_inductor_smoke() -> None:
    x, t, _ = _inputs((8, 16), "index", dtype=torch.float32, seed=2)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: ft.cross_entropy(a, b, label_smoothing=0.05), fullgraph=True)
    got = _grads(compiled, x, t)
    want = _grads(lambda a, b: F.cross_entropy(a, b, label_smoothing=0.05), x, t)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_eager_path_and_operator_agree_bitwise() -> None:
    # Eager calls skip the dispatcher (an autograd.Function around the same
    # implementation and formula); the registered operator must give the same bits.
    x, t, w = _inputs((4, K, 2), "index", seed=3)
    xg = x.clone().requires_grad_()
    loss, grad = OP(xg, t, w, 2, "sum", 0.1, True)
    loss.backward()
    eager = _grads(lambda a, b: ft.cross_entropy(a, b, w, ignore_index=2, reduction="sum", label_smoothing=0.1), x, t)
    torch.testing.assert_close(loss.detach(), eager[0], rtol=0, atol=0)
    torch.testing.assert_close(grad, xg.grad, rtol=0, atol=0)  # d loss/dx, returned and handed to autograd
    torch.testing.assert_close(eager[1], 1.5 * xg.grad, rtol=0, atol=0)  # type: ignore[operator]
    assert not grad.requires_grad
    with pytest.raises(RuntimeError, match="compute_grad=False"):
        OP(x.clone().requires_grad_(), t, None, -100, "mean", 0.0, False)[0].backward()
    # the operator's arguments are checked by fastxent itself
    with pytest.raises(ValueError, match="^ignore_index"):
        OP(x, torch.softmax(x, 1), None, 1, "mean", 0.0, False)
    with pytest.raises(ValueError, match="^reduction"):
        OP(x, t, None, -100, "avg", 0.0, False)
    with pytest.raises(IndexError):
        OP(x, torch.full_like(t, K), None, -100, "mean", 0.0, False)


# ---- torch.library.opcheck ------------------------------------------------------------

OPCHECK_SAMPLES = [
    # shape, targets, dtype, weight, ignore_index, reduction, label_smoothing
    ((6, K), "index", torch.float32, False, -100, "mean", 0.0),
    ((6, K), "index", torch.float64, True, 2, "mean", 0.1),
    ((3, K, 2, 2), "index", torch.float64, True, 2, "none", 0.0),
    ((3, K, 2), "index", torch.float32, False, -100, "sum", 0.3),
    ((K,), "index", torch.float64, True, -100, "none", 0.0),
    ((6, K), "probs", torch.float64, False, -100, "sum", 0.0),
    ((6, K), "probs", torch.float32, True, -100, "none", 0.2),
    ((2, K, 3), "probs", torch.float64, True, -5, "mean", 0.1),
    ((K,), "probs", torch.float32, False, -100, "mean", 0.0),
]


# gradients for: input, input and probability targets, nothing (the loss alone)
OPCHECK_CASES = [(*sample, grads) for sample in OPCHECK_SAMPLES for grads in ("input", "none")]
OPCHECK_CASES += [(*sample, "input and target") for sample in OPCHECK_SAMPLES if sample[1] == "probs"]


@pytest.mark.parametrize(
    ("shape", "kind", "dtype", "weighted", "ignore_index", "reduction", "smoothing", "grads"), OPCHECK_CASES
)
def test_opcheck(
    shape: tuple[int, ...], kind: str, dtype: torch.dtype, weighted: bool, ignore_index: int, reduction: str,
    smoothing: float, grads: str,
) -> None:
    x, t, w = _inputs(shape, kind, dtype, seed=4)
    x.requires_grad_(grads != "none")
    t.requires_grad_(grads == "input and target")
    args = (x, t, w if weighted else None, ignore_index, reduction, smoothing, grads != "none")
    torch.library.opcheck(OP, args)


@pytest.mark.parametrize(("shape", "dim"), [((6, K), 1), ((3, K, 2), 1), ((K,), 0), ((3, 4, 2), 2)])
def test_opcheck_log_softmax(shape: tuple[int, ...], dim: int) -> None:
    x = torch.randn(shape, dtype=torch.float64)
    torch.library.opcheck(LOG_SOFTMAX, (x, dim))
    torch.testing.assert_close(LOG_SOFTMAX(x, dim), torch.log_softmax(x, dim), rtol=1e-14, atol=1e-14)


# ---- probability targets that require grad --------------------------------------------


@pytest.mark.parametrize("shape", [(K,), (6, K), (3, K, 2, 2)], ids=str)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("options", [{}, {"weight": True}, {"label_smoothing": 0.25}, {"weight": True, "label_smoothing": 1.0}])
def test_target_gradient_matches_torch(
    shape: tuple[int, ...], reduction: str, options: dict[str, Any], api_calls: list[int]
) -> None:
    x, t, w = _inputs(shape, "probs", seed=5)
    kw = {**options, "reduction": reduction}
    if kw.pop("weight", False):
        kw["weight"] = w
    loss, gx, gt = _grads(ft.cross_entropy, x, t, **kw)
    assert api_calls == [1]  # the kernel, not a fallback
    ref_loss, ref_gx, ref_gt = _grads(F.cross_entropy, x, t, **kw)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(gx, ref_gx, rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(gt, ref_gt, rtol=1e-12, atol=1e-13)


def test_trained_teacher_distillation_float32() -> None:
    # Targets from a teacher that is itself trained: both logits get gradients.
    g = torch.Generator().manual_seed(6)
    student, teacher = torch.randn(32, 100, generator=g), torch.randn(32, 100, generator=g)

    def run(loss_fn: Any) -> tuple[torch.Tensor, ...]:
        s, te = student.clone().requires_grad_(), teacher.clone().requires_grad_()
        loss = loss_fn(s, torch.softmax(te / 2.0, dim=1), label_smoothing=0.1)
        loss.backward()
        return loss.detach(), s.grad, te.grad  # type: ignore[return-value]

    for a, b in zip(run(ft.cross_entropy), run(F.cross_entropy)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_target_gradient_only() -> None:
    x, t, w = _inputs((6, K), "probs", seed=7)
    tg = t.clone().requires_grad_()
    (g,) = torch.autograd.grad(ft.cross_entropy(x, tg, w), tg)
    tr = t.clone().requires_grad_()
    (ref,) = torch.autograd.grad(F.cross_entropy(x, tr, w), tr)
    torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-14)


# ---- torch.func ---------------------------------------------------------------------


def test_torch_func_transforms_use_torchs_formula(api_calls: list[int]) -> None:
    x, t, w = _inputs((6, K), "index", seed=8)
    xb = torch.randn(3, 6, K, dtype=torch.float64)

    def per_sample(fn: Any) -> Any:
        return torch.vmap(torch.func.grad(lambda a, b: fn(a[None], b[None], w)), in_dims=(0, 0))

    for ours, theirs in [
        (torch.func.grad(lambda a: ft.cross_entropy(a, t, w) * 3.0)(x), torch.func.grad(lambda a: F.cross_entropy(a, t, w) * 3.0)(x)),
        (torch.vmap(lambda a: ft.cross_entropy(a, t))(xb), torch.vmap(lambda a: F.cross_entropy(a, t))(xb)),
        (per_sample(ft.cross_entropy)(x, t), per_sample(F.cross_entropy)(x, t)),
        (torch.func.jacrev(lambda a: ft.cross_entropy(a, t, reduction="none"))(x),
         torch.func.jacrev(lambda a: F.cross_entropy(a, t, reduction="none"))(x)),
    ]:
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert api_calls == []


def test_operator_under_torch_func() -> None:
    x, t, _ = _inputs((6, K), "index", seed=9)
    # torch.func.grad through the operator itself: PyTorch refuses (documented);
    # fastxent.torch.cross_entropy never sends it there.
    with pytest.raises(RuntimeError, match="functorch transforms"):
        torch.func.grad(lambda a: OP(a, t, None, -100, "mean", 0.0, True)[0])(x)
    # vmap over the operator: PyTorch's per-sample loop (it may warn that it is slow)
    xb = torch.randn(3, 6, K, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        batched = torch.vmap(lambda a: OP(a, t, None, -100, "sum", 0.0, False)[0])(xb)
    torch.testing.assert_close(batched, torch.stack([F.cross_entropy(a, t, reduction="sum") for a in xb]))


# ---- what falls back -----------------------------------------------------------------


def test_fallbacks(api_calls: list[int]) -> None:
    x, t, _ = _inputs((6, K), "index", seed=10)
    # another device
    meta = ft.cross_entropy(x.to("meta"), t.to("meta"))
    assert meta.device.type == "meta"
    # another layout: sparse probability targets
    probs = torch.softmax(x, 1).to_sparse()
    assert torch.equal(ft.cross_entropy(x, probs), F.cross_entropy(x, probs))
    # a weight that requires grad (PyTorch differentiates it for probability targets)
    y = torch.softmax(x, 1)
    w = torch.rand(K, dtype=torch.float64).requires_grad_()
    w_ref = w.detach().clone().requires_grad_()
    ft.cross_entropy(x, y, w).backward()
    F.cross_entropy(x, y, w_ref).backward()
    assert torch.equal(w.grad, w_ref.grad)  # type: ignore[arg-type]
    assert api_calls == []


def test_fallback_compiles_to_torchs_loss() -> None:
    x, t, _ = _inputs((6, K), "prob", seed=11)
    w = torch.rand(K, dtype=x.dtype).requires_grad_()  # a weight that requires grad: PyTorch's loss
    recorder = _GraphRecorder()
    torch._dynamo.reset()
    loss = torch.compile(lambda a, b, c: ft.cross_entropy(a, b, c), fullgraph=True, backend=recorder)(x, t, w)
    assert F.cross_entropy in recorder.targets()
    assert OP not in recorder.targets()
    torch.testing.assert_close(loss, F.cross_entropy(x, t, w))
