"""PyTorch's ``F.linear_cross_entropy`` with fastxent's chunked, fused implementation
(re-exported by fastxent.torch): ``linear_cross_entropy`` and ``LinearCrossEntropyLoss``.

The chunk loop, checks and plan are fastxent.linear's; the matrix products are
PyTorch's own (``torch.mm`` / ``addmm`` with ``out=``, the BLAS and threads the
caller's model already uses), the fused kernel works on NumPy views of the chunk
buffer (no copy). Gradients for "mean"/"sum" are computed in the forward pass and
scaled by the incoming gradient in backward; for "none" the forward pass computes
the row losses only and backward runs the chunks again with each row's incoming
gradient (d loss / d linear_weight depends on it row by row).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._checks import check_reduction
from .linear import LinearPlan, prepare_linear, run_chunks
from .sparse import SparseTargets, is_scipy_sparse

__all__ = ["LinearCrossEntropyLoss", "linear_cross_entropy"]

_KERNEL_DTYPES = (torch.float32, torch.float64)


def _plain_cpu(t: Any) -> bool:
    return isinstance(t, Tensor) and t.device.type == "cpu" and t.layout == torch.strided


def _numpy(t: Tensor) -> np.ndarray:
    t = t.detach()
    return (t.resolve_neg() if t.is_neg() else t).numpy()


def _kernel_applies(input: Any, linear_weight: Any, target: Any, linear_bias: Any, weight: Any) -> bool:
    """True when the fused path computes what the composition would (else the composition runs)."""
    if torch._C._are_functorch_transforms_active():
        return False
    if not (_plain_cpu(input) and _plain_cpu(linear_weight)) or input.dtype not in _KERNEL_DTYPES:
        return False
    if linear_weight.dtype != input.dtype or (linear_bias is not None and not _plain_cpu(linear_bias)):
        return False
    if linear_bias is not None and linear_bias.dtype != input.dtype:
        return False
    if weight is not None and (not _plain_cpu(weight) or weight.requires_grad or weight.dtype != input.dtype):
        return False
    if isinstance(target, SparseTargets) or is_scipy_sparse(target):
        return True
    if not _plain_cpu(target):
        return False
    if target.dtype.is_floating_point:
        return bool(target.dtype == input.dtype and not target.requires_grad)
    return target.dtype not in (torch.bool, torch.complex64, torch.complex128)


class _TorchGemm:
    """The products with torch.mm / addmm into preallocated tensors (out=, in place)."""

    def __init__(
        self, plan: LinearPlan, input: Tensor, linear_weight: Tensor, linear_bias: Tensor | None,
        needs: tuple[bool, bool, bool],
    ) -> None:
        self.plan = plan
        self.h = input.detach().reshape(plan.n, plan.d)
        self.w = linear_weight.detach()
        self.b = None if linear_bias is None else linear_bias.detach()
        self.buf = self.h.new_empty((plan.chunk if plan.n else 0, plan.k))
        self.buf_np = _numpy(self.buf)
        self.d_input = self.h.new_empty((plan.n, plan.d)) if needs[0] else None
        self.d_weight = (self.w.new_empty if plan.n else self.w.new_zeros)((plan.k, plan.d)) if needs[1] else None
        self.d_bias = self.w.new_zeros((plan.k,)) if needs[2] and linear_bias is not None else None

    def logits(self, r0: int, r1: int) -> np.ndarray:
        out = self.buf[: r1 - r0]
        if self.b is None:
            torch.mm(self.h[r0:r1], self.w.t(), out=out)
        else:
            torch.addmm(self.b, self.h[r0:r1], self.w.t(), out=out)
        return self.buf_np[: r1 - r0]

    def backward(self, r0: int, r1: int, g_np: np.ndarray, row_scale: np.ndarray | None) -> None:
        g = self.buf[: r1 - r0]
        rs = None if row_scale is None else torch.from_numpy(row_scale).to(g.dtype)
        if self.d_input is not None:
            d_in = self.d_input[r0:r1]
            torch.mm(g, self.w, out=d_in)
            if rs is not None:
                d_in.mul_(rs[:, None])
        if self.d_weight is not None:
            h = self.h[r0:r1] if rs is None else self.h[r0:r1] * rs[:, None]
            if r0 == 0:
                torch.mm(g.t(), h, out=self.d_weight)
            else:
                self.d_weight.addmm_(g.t(), h)
        if self.d_bias is not None:
            if rs is None:
                self.d_bias.add_(g.sum(0))
            else:
                self.d_bias.addmv_(g.t(), rs)


def _plan(input: Tensor, linear_weight: Tensor, target: Any, linear_bias: Tensor | None, opts: dict[str, Any]) -> LinearPlan:
    tgt = target if isinstance(target, SparseTargets) or is_scipy_sparse(target) else _numpy(target)
    kw = {k: v for k, v in opts.items() if k != "grad_enabled"}
    return prepare_linear(
        _numpy(input), _numpy(linear_weight), tgt, linear_bias=None if linear_bias is None else _numpy(linear_bias),
        backend=None, blas_copy=False, **kw,
    )


def _upstream_is_one(grad: Tensor) -> bool:
    return type(grad) is Tensor and grad.numel() == 1 and grad.item() == 1.0


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, input: Tensor, linear_weight: Tensor, linear_bias: Tensor | None, target: Any, opts: dict[str, Any],
    ) -> Tensor:
        plan = _plan(input, linear_weight, target, linear_bias, opts)
        grad_mode = bool(opts["grad_enabled"])  # (forward itself runs without grad)
        want = [grad_mode and bool(ctx.needs_input_grad[i]) for i in range(3)]
        needs = (want[0], want[1], want[2])
        with_grad = any(needs) and plan.reduction != "none"
        ops = _TorchGemm(plan, input, linear_weight, linear_bias, needs)
        total, row_loss = run_chunks(plan, ops, with_grad=with_grad)
        ctx.reduction = plan.reduction
        ctx.input_shape = input.shape
        if plan.reduction == "none":
            if any(needs):  # backward runs the chunks again with the incoming gradient per row
                ctx.plan, ctx.needs = plan, needs
                ctx.save_for_backward(input, linear_weight, linear_bias)
            return torch.from_numpy(row_loss).reshape(plan.lead_shape)
        # Saved (not kept on ctx) so that autograd frees them after backward when the
        # graph is not retained, and can take them over as .grad without a copy.
        ctx.save_for_backward(ops.d_input, ops.d_weight, ops.d_bias)
        return torch.tensor(total, dtype=input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.reduction == "none":
            input, linear_weight, linear_bias = ctx.saved_tensors
            plan = ctx.plan
            v = np.ascontiguousarray(_numpy(grad_loss.reshape(-1)), dtype=plan.dtype)
            ops = _TorchGemm(plan, input, linear_weight, linear_bias, ctx.needs)
            run_chunks(plan, ops, with_grad=True, row_scale=v)
            grads: tuple[Tensor | None, ...] = (ops.d_input, ops.d_weight, ops.d_bias)
        else:
            grads = ctx.saved_tensors
            if not _upstream_is_one(grad_loss):  # (out of place: the graph may be retained)
                grads = tuple(None if g is None else g * grad_loss for g in grads)
        d_input, d_weight, d_bias = grads
        if d_input is not None:
            d_input = d_input.reshape(ctx.input_shape)
        return d_input, d_weight, d_bias, None, None


def _composed(
    input: Tensor, linear_weight: Tensor, target: Any, linear_bias: Tensor | None, weight: Tensor | None,
    reduction: str, ignore_index: int, label_smoothing: float, z_loss: float, softcap: float | None,
) -> Tensor:
    """The unfused composition (PyTorch's own ops and autograd): for calls the fused
    path does not cover (other devices, dtypes, a weight or target that requires grad,
    torch.func transforms)."""
    logits = F.linear(input, linear_weight, linear_bias)
    k = logits.shape[-1]
    flat = logits.reshape(-1, k)
    if isinstance(target, SparseTargets) or is_scipy_sparse(target):
        st = target if isinstance(target, SparseTargets) else SparseTargets.from_scipy(target)
        target = torch.from_numpy(st.to_dense(k)).to(device=logits.device, dtype=logits.dtype)
    index = not target.dtype.is_floating_point
    tflat = target.reshape(-1) if index else target.reshape(-1, k)
    if softcap is not None:
        flat = softcap * torch.tanh(flat / softcap)
    if z_loss == 0:
        loss = F.cross_entropy(
            flat, tflat, weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing
        )
        return loss.reshape(input.shape[:-1]) if reduction == "none" else loss
    rows = F.cross_entropy(flat, tflat, weight, ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing)
    z = z_loss * torch.logsumexp(flat, -1) ** 2
    if index:
        keep = tflat != ignore_index
        z = torch.where(keep, z, torch.zeros_like(z))
        denom = keep.sum().to(flat.dtype) if weight is None else weight[tflat[keep]].sum()
    else:
        denom = torch.tensor(float(flat.shape[0]), dtype=flat.dtype)
    rows = rows + z
    if reduction == "none":
        return rows.reshape(input.shape[:-1])
    return rows.sum() if reduction == "sum" else rows.sum() / denom


def _fused_impl(input: Tensor, linear_weight: Tensor, target: Any, linear_bias: Tensor | None, opts: dict[str, Any]) -> Tensor:
    loss = _FusedLinearCrossEntropy.apply(input, linear_weight, linear_bias, target, opts)  # type: ignore[no-untyped-call]
    assert isinstance(loss, Tensor)
    return loss


# (not traced: torch.compile runs it eagerly, a graph break, instead of tracing into NumPy)
_fused: Callable[..., Tensor] = torch.compiler.disable(_fused_impl)  # type: ignore[no-untyped-call]


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Any,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """``torch.nn.functional.linear_cross_entropy`` (PyTorch 2.13's signature, without
    ``options``) computed a chunk of rows at a time with fastxent's fused kernel: the
    N x K logits never exist whole, for every target kind and option.

    ``cross_entropy(input @ linear_weight.T + linear_bias, target, ...)`` with the
    classes last: input (..., D), linear_weight (K, D), linear_bias (K,); target is
    class indices of input's leading shape, probabilities of shape (..., K), or
    ``fastxent.SparseTargets`` / a scipy.sparse CSR matrix (multi-label rows, never
    made dense). ``z_loss`` and ``softcap`` as in ``fastxent.softmax_cross_entropy``;
    ``chunk_size`` rows per chunk (None: from fastxent.linear.DEFAULT_CHUNK_BYTES).

    Gradients flow to input, linear_weight and linear_bias. Calls the fused path does
    not cover (non-CPU tensors, other dtypes, a class weight or probabilities that
    require grad, torch.func transforms) run the unfused composition instead.

    Example:
        >>> import torch
        >>> from fastxent.torch import linear_cross_entropy
        >>> h = torch.randn(8, 16, requires_grad=True); W = torch.randn(100, 16, requires_grad=True)
        >>> loss = linear_cross_entropy(h, W, torch.randint(0, 100, (8,)))
        >>> loss.backward()
    """
    check_reduction(reduction)
    if not _kernel_applies(input, linear_weight, target, linear_bias, weight):
        return _composed(
            input, linear_weight, target, linear_bias, weight, reduction, ignore_index, label_smoothing, z_loss, softcap
        )
    opts = {
        "grad_enabled": torch.is_grad_enabled(),
        "weight": None if weight is None else _numpy(weight), "reduction": reduction, "ignore_index": ignore_index,
        "label_smoothing": label_smoothing, "z_loss": z_loss, "softcap": softcap, "chunk_size": chunk_size,
    }
    return _fused(input, linear_weight, target, linear_bias, opts)


class LinearCrossEntropyLoss(torch.nn.Module):
    """A loss module for :func:`linear_cross_entropy`: ``criterion(input, linear_weight,
    target, linear_bias=None)``. ``weight`` is a buffer (follows ``.to()``, in
    ``state_dict()``).

    Example:
        >>> import torch
        >>> from fastxent.torch import LinearCrossEntropyLoss
        >>> head = torch.nn.Linear(16, 100)
        >>> criterion = LinearCrossEntropyLoss(label_smoothing=0.1)
        >>> loss = criterion(torch.randn(8, 16), head.weight, torch.randint(0, 100, (8,)), head.bias)
    """

    weight: Tensor | None

    def __init__(
        self,
        weight: Tensor | None = None,
        *,
        reduction: str = "mean",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.register_buffer("weight", weight)
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.chunk_size = chunk_size

    def forward(self, input: Tensor, linear_weight: Tensor, target: Any, linear_bias: Tensor | None = None) -> Tensor:
        loss: Tensor = linear_cross_entropy(
            input, linear_weight, target, linear_bias=linear_bias, weight=self.weight, reduction=self.reduction,
            ignore_index=self.ignore_index, label_smoothing=self.label_smoothing, z_loss=self.z_loss,
            softcap=self.softcap, chunk_size=self.chunk_size,
        )
        return loss

    def extra_repr(self) -> str:
        return (
            f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, "
            f"z_loss={self.z_loss}, softcap={self.softcap}, chunk_size={self.chunk_size}"
        )
