"""PyTorch adapter: ``cross_entropy`` and ``CrossEntropyLoss`` with fastxent's fused kernel.

A drop-in for ``torch.nn.functional.cross_entropy`` / ``torch.nn.CrossEntropyLoss``
(same arguments, defaults and results)::

    from fastxent.torch import CrossEntropyLoss
    criterion = CrossEntropyLoss(label_smoothing=0.1)
    loss = criterion(model(x), y)      # y: class indices (N, d1...) or probabilities (N, C, d1...)
    loss.backward()

The kernel is the PyTorch custom operator ``torch.ops.fastxent.cross_entropy``
(registered with ``torch.library``: a fake kernel for tracing and an autograd
formula), so ``torch.compile(..., fullgraph=True)`` keeps it in the graph. Its
forward pass runs the fused kernel on the CPU tensors' own memory (no copy when
the class dimension is contiguous, e.g. (N, C) row-major or channels-last) and
returns the loss and the gradient ``softmax * sum(y) - y`` of that loss; autograd
keeps only that gradient, and the backward pass scales it by the incoming gradient.
Probability targets that require grad get ``-log_softmax(input)`` times the
weights and the reduction's scale (``torch.ops.fastxent.log_softmax``). Eager
calls run the same implementation and formula without the dispatcher (an
autograd.Function); traced calls (torch.compile, export) go through the operator.

bfloat16 and float16 tensors run natively, without a copy: a bfloat16 tensor is
viewed as int16 and that NumPy view reinterpreted as ml_dtypes' bfloat16 (the
gradient comes back the same way); the kernel computes in float32 and rounds the
gradient to nearest even. The loss follows PyTorch: the input's dtype. (bfloat16
needs the ``ml_dtypes`` package for its NumPy dtype; without it bfloat16 calls go
to PyTorch.)

Anything the kernel does not cover goes to ``torch.nn.functional.cross_entropy``:
tensors on another device or with another layout, dtypes other than
float32/float64/bfloat16/float16, a weight that requires grad, targets of another
dtype, empty inputs, and calls under ``torch.func`` transforms (grad, vmap, jvp, ...).

Importing this module imports torch and registers the operators; ``import
fastxent`` alone does neither.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import api
from ._checks import check_reduction, is_bfloat16
from ._torch_linear import LinearCrossEntropyLoss, linear_cross_entropy
from ._torch_vocab_parallel import vocab_parallel_cross_entropy

__all__ = [
    "CrossEntropyLoss",
    "LinearCrossEntropyLoss",
    "cross_entropy",
    "linear_cross_entropy",
    "vocab_parallel_cross_entropy",
]

_KERNEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_BFLOAT16: list[np.dtype | None] = []  # ml_dtypes' bfloat16, looked up on first use


def _bfloat16_dtype() -> np.dtype | None:
    """NumPy's bfloat16 dtype (ml_dtypes), or None when ml_dtypes is not installed."""
    if not _BFLOAT16:
        try:
            import ml_dtypes
        except ImportError:
            _BFLOAT16.append(None)
        else:
            _BFLOAT16.append(np.dtype(ml_dtypes.bfloat16))
    return _BFLOAT16[0]


def _plain_cpu(t: Tensor) -> bool:
    return t.device.type == "cpu" and t.layout == torch.strided


def _kernel_applies(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int) -> bool:
    """True when the fused kernel computes exactly what F.cross_entropy would."""
    if not (isinstance(input, Tensor) and isinstance(target, Tensor)):
        return False
    if torch._C._are_functorch_transforms_active():
        return False  # the operator has no torch.func rules: PyTorch's own formula composes with them
    if input.dtype not in _KERNEL_DTYPES or input.dim() < 1 or input.numel() == 0:
        return False
    if input.dtype == torch.bfloat16 and _bfloat16_dtype() is None:
        return False
    if not (_plain_cpu(input) and _plain_cpu(target)):
        return False
    class_shape = input.shape[1:2] if input.dim() > 1 else input.shape
    lead_shape = input.shape[:1] + input.shape[2:] if input.dim() > 1 else torch.Size()
    if target.dtype == torch.int64:
        if target.shape != lead_shape:
            return False
    elif target.dtype != input.dtype or target.shape != input.shape or ignore_index >= 0:
        return False  # (PyTorch rejects ignore_index >= 0 with probability targets)
    if weight is not None:
        if not isinstance(weight, Tensor) or not _plain_cpu(weight) or weight.requires_grad:
            return False
        if weight.dtype != input.dtype or weight.shape != class_shape:
            return False
    return True


def _numpy(t: Tensor) -> np.ndarray:
    """The tensor's memory as a NumPy array (a view: no copy, strides kept; a lazy
    negation view, rare for real dtypes, is materialised first). bfloat16, which
    NumPy lacks: the int16 view of the same memory, reinterpreted as ml_dtypes'
    bfloat16."""
    t = t.detach()
    t = t.resolve_neg() if t.is_neg() else t
    if t.dtype == torch.bfloat16:
        bf16 = _bfloat16_dtype()
        assert bf16 is not None  # (_kernel_applies sent bfloat16 to PyTorch otherwise)
        return t.view(torch.int16).numpy().view(bf16)
    return t.numpy()


def _torch(a: np.ndarray) -> Tensor:
    """A NumPy array's memory as a tensor (no copy; bfloat16 through int16)."""
    if is_bfloat16(a.dtype):
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _class_dim(input: Tensor) -> int:
    return 1 if input.dim() > 1 else 0


def _empty_classes_last(input: Tensor, dim: int) -> Tensor:
    """An empty tensor of input's shape laid out as fastxent returns a gradient or a
    log-softmax: dimension dim contiguous, the others in order (for (N, C): C-order)."""
    lead = input.shape[:dim] + input.shape[dim + 1 :]
    return input.new_empty((*lead, input.shape[dim])).movedim(-1, dim)


# ---- the operators ------------------------------------------------------------------
# Their implementations call the package's public function (fastxent.api), which checks
# the arguments and builds the record the kernels read: nothing is checked twice here.


def _loss_and_grad(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor],  # noqa: UP045 (torch.library reads the annotation at runtime, on Python 3.9 too)
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    compute_grad: bool,
) -> tuple[Tensor, Tensor]:
    """(loss, d loss / d input) as F.cross_entropy defines them; the gradient is an
    empty (0,) tensor when ``compute_grad`` is False (the loss alone reads input once)."""
    loss, grad = api.softmax_cross_entropy(
        _numpy(input),
        _numpy(target),
        axis=_class_dim(input),
        reduction=reduction,  # type: ignore[arg-type]  # fastxent checks it
        weight=None if weight is None else _numpy(weight),
        ignore_index=ignore_index,  # (with probabilities: negative and unused, or refused, as in PyTorch)
        label_smoothing=label_smoothing,
        return_grad=compute_grad,
    )
    # (a reduced loss is a NumPy scalar: a 0-d tensor of it; float32 for 16-bit input,
    # rounded to input's dtype as PyTorch returns it)
    loss_t = torch.from_numpy(np.asarray(loss))
    if loss_t.dtype != input.dtype:
        loss_t = loss_t.to(input.dtype)
    return loss_t, input.new_empty(0) if grad is None else _torch(grad)


_cross_entropy_op = torch.library.custom_op("fastxent::cross_entropy", _loss_and_grad, mutates_args=())


@_cross_entropy_op.register_fake
def _cross_entropy_fake(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    compute_grad: bool,
) -> tuple[Tensor, Tensor]:
    dim = _class_dim(input)
    lead = input.shape[:dim] + input.shape[dim + 1 :]
    loss = input.new_empty(lead if reduction == "none" else ())
    return loss, _empty_classes_last(input, dim) if compute_grad else input.new_empty(0)


@torch.library.custom_op("fastxent::log_softmax", mutates_args=())
def _log_softmax_op(input: Tensor, dim: int) -> Tensor:
    """log_softmax(input) along dim, by fastxent's row-wise kernel."""
    return _torch(api.log_softmax(_numpy(input), axis=dim))


@_log_softmax_op.register_fake
def _log_softmax_fake(input: Tensor, dim: int) -> Tensor:
    return _empty_classes_last(input, dim % input.dim())


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    input, _target, weight, _ignore_index, reduction, label_smoothing, compute_grad = inputs
    ctx.mark_non_differentiable(output[1])
    # The gradient output takes no gradient: without this, autograd would fill a
    # zero tensor of input's size for it on every backward.
    ctx.set_materialize_grads(False)
    ctx.reduction = reduction
    ctx.label_smoothing = label_smoothing
    ctx.class_dim = _class_dim(input)
    ctx.grad_computed = compute_grad
    saved = [output[1]]
    if ctx.needs_input_grad[1]:
        # d loss / d target needs log_softmax(input): keep input (not a copy) only then.
        saved += [input] if weight is None else [input, weight]
    ctx.save_for_backward(*saved)


def _upstream_is_one(grad_loss: Tensor) -> bool:
    """True for loss.backward() on a reduced loss, checked only when running eagerly
    (a trace, e.g. under torch.compile, has no values to look at)."""
    return (
        type(grad_loss) is Tensor
        and not torch.compiler.is_compiling()
        and not torch.utils._python_dispatch.is_in_torch_dispatch_mode()
        and grad_loss.item() == 1.0
    )


def _backward(ctx: Any, grad_loss: Tensor | None, _grad_of_grad: Tensor | None) -> tuple[Tensor | None, ...]:
    if grad_loss is None:  # no gradient reaches the loss (grads are not materialised)
        return (None,) * 7
    with torch.no_grad():
        results = _first_derivatives(ctx, grad_loss)
    if torch.is_grad_enabled() and grad_loss.requires_grad and not torch.compiler.is_compiling():
        # create_graph=True: a second derivative would take the saved gradient for a
        # constant and be silently wrong, so taking one raises instead.
        return _delay_error(results)
    return results


def _first_derivatives(ctx: Any, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
    grad, *for_target = ctx.saved_tensors
    input, weight = (*for_target, None, None)[:2]
    reduced = ctx.reduction != "none"
    per_position = grad_loss if reduced or ctx.class_dim == 0 else grad_loss.unsqueeze(ctx.class_dim)
    grad_input = grad_target = None
    if ctx.needs_input_grad[0]:
        if not ctx.grad_computed:
            raise RuntimeError(
                "fastxent::cross_entropy: compute_grad=False gives no gradient for input; "
                "pass compute_grad=True when input requires grad"
            )
        # loss.backward(): hand over the saved gradient itself. Autograd copies it
        # before anyone writes to it while the graph keeps it (retain_graph=True),
        # and takes it over without a copy once the graph is freed.
        grad_input = grad if reduced and _upstream_is_one(grad_loss) else grad * per_position
    if ctx.needs_input_grad[1]:
        # PyTorch's probability-target loss: -sum_c w_c ((1 - eps) y_c + eps / C) log_softmax(x)_c,
        # divided by the number of positions for "mean".
        scale = -(1.0 - ctx.label_smoothing)
        if ctx.reduction == "mean":
            scale /= input.numel() // input.shape[ctx.class_dim]
        grad_target = torch.ops.fastxent.log_softmax(input, ctx.class_dim) * scale
        if weight is not None:
            grad_target = grad_target * (weight.view(-1, *[1] * (input.dim() - 2)) if input.dim() > 1 else weight)
        grad_target = grad_target * per_position
    return grad_input, grad_target, None, None, None, None, None


def _delay_error(results: tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...]:
    """The results, computed without a graph, behind a node that raises if differentiated
    (what torch.autograd.function.once_differentiable does)."""
    tensors = [r.detach().requires_grad_() for r in results if r is not None]
    out = torch._C._functions.DelayedError(b"fastxent::cross_entropy is differentiable once only", len(tensors))(*tensors)
    guarded = iter((out,) if isinstance(out, Tensor) else out)  # (one output comes back bare)
    return tuple(None if r is None else next(guarded) for r in results)


_cross_entropy_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerCrossEntropy(torch.autograd.Function):
    """The operator's implementation and autograd formula without the dispatcher: the
    same results, for eager calls, where the operator's Python dispatch costs as much
    as a small problem's kernel."""

    @staticmethod
    def forward(ctx: Any, *args: Any) -> tuple[Tensor, Tensor]:
        # (forward with ctx, not a separate setup_context, which autograd binds with
        # inspect.signature on every call: tens of microseconds)
        output = _loss_and_grad(*args)
        _setup_context(ctx, args, output)
        return output

    backward = staticmethod(_backward)


def _eager(*tensors: Tensor | None) -> bool:
    """True outside any trace (torch.compile, export, make_fx, FakeTensorMode) for plain tensors."""
    return (
        not torch.compiler.is_compiling()
        and not torch.utils._python_dispatch.is_in_torch_dispatch_mode()
        and all(t is None or type(t) is Tensor for t in tensors)
    )


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``torch.nn.functional.cross_entropy`` computed by fastxent's fused kernel.

    For each position, with logits x over the classes (dimension 1, or 0 for an
    unbatched (C,) input) and targets y (one-hot of a class index, or probabilities),
    after label smoothing ``y' = (1 - eps) * y + eps / C``::

        loss = -sum_c weight_c * y'_c * log_softmax(x)_c
        d loss / d x = softmax(x) * sum_c(w_c y'_c) - w * y'      (per row, before reduction)

    Args:
        input: logits (C,), (N, C) or (N, C, d1, d2, ...); float32, float64,
            bfloat16 or float16 (16-bit: computed in float32, the gradient
            rounded to nearest even, the loss returned in input's dtype).
        target: int64 class indices of input's shape without dimension 1, or
            probabilities of input's shape and dtype.
        weight: optional (C,) class weights of input's dtype.
        ignore_index: class index whose positions give 0 loss and gradient and do
            not count in "mean" (index targets only).
        reduction: "none" (per-position losses), "sum" or "mean" (weighted mean
            over non-ignored positions for index targets, mean over N*d1*... for
            probabilities), as in PyTorch.
        label_smoothing: eps in [0, 1].

    Returns:
        The loss: a 0-d tensor, or input's shape without dimension 1 for "none".

    The arguments after ``weight`` are keyword-only: PyTorch's positional slots
    there are the deprecated ``size_average`` / ``reduce``.

    Example:
        >>> import torch
        >>> from fastxent.torch import cross_entropy
        >>> x = torch.randn(4, 10, requires_grad=True)
        >>> loss = cross_entropy(x, torch.tensor([1, 0, 9, 3]))
        >>> loss.backward()
        >>> bool(torch.allclose(loss, torch.nn.functional.cross_entropy(x, torch.tensor([1, 0, 9, 3]))))
        True
    """
    check_reduction(reduction)
    if not _kernel_applies(input, target, weight, ignore_index):
        return F.cross_entropy(
            input, target, weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing
        )
    args = (input, target, weight, int(ignore_index), reduction, float(label_smoothing))
    compute_grad = input.requires_grad and torch.is_grad_enabled()
    if _eager(input, target, weight):
        loss, _ = _EagerCrossEntropy.apply(*args, compute_grad)  # type: ignore[no-untyped-call]
    else:
        loss, _ = torch.ops.fastxent.cross_entropy(*args, compute_grad)
    assert isinstance(loss, Tensor)
    return loss


class CrossEntropyLoss(torch.nn.Module):
    """``torch.nn.CrossEntropyLoss`` computed by fastxent's fused kernel.

    Same arguments and results; see :func:`cross_entropy`. ``weight`` is a buffer,
    so it follows ``.to()`` / ``.double()`` and appears in ``state_dict()``.

    Example:
        >>> import torch
        >>> from fastxent.torch import CrossEntropyLoss
        >>> criterion = CrossEntropyLoss(reduction="sum")
        >>> loss = criterion(torch.zeros(2, 4), torch.tensor([0, 3]))
        >>> round(loss.item(), 4)   # 2 * log(4)
        2.7726
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(
            input,
            target,
            self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, label_smoothing={self.label_smoothing}"
