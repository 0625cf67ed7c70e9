"""PyTorch adapter: ``cross_entropy`` and ``CrossEntropyLoss`` with fastxent's fused kernel.

A drop-in for ``torch.nn.functional.cross_entropy`` / ``torch.nn.CrossEntropyLoss``
(same arguments, defaults and results)::

    from fastxent.torch import CrossEntropyLoss
    criterion = CrossEntropyLoss(label_smoothing=0.1)
    loss = criterion(model(x), y)      # y: class indices (N, d1...) or probabilities (N, C, d1...)
    loss.backward()

The forward pass runs the fused kernel on the CPU tensors' own memory (no copy when
the class dimension is contiguous, e.g. (N, C) row-major or channels-last) and keeps
only the gradient ``softmax * sum(y) - y`` of the reduced loss; the backward pass
multiplies it by the incoming gradient. Anything the kernel does not cover falls back
to ``torch.nn.functional.cross_entropy``: tensors on another device, dtypes other than
float32/float64, a target or weight that requires grad, targets of another dtype,
empty inputs, and calls under ``torch.func`` transforms or ``torch.compile``.

Importing this module imports torch; ``import fastxent`` alone does not.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import api
from ._checks import check_reduction

__all__ = ["CrossEntropyLoss", "cross_entropy"]

_KERNEL_DTYPES = (torch.float32, torch.float64)


def _plain_cpu(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.layout == torch.strided and not t.is_neg() and not t.is_conj()


def _kernel_applies(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int) -> bool:
    """True when the fused kernel computes exactly what F.cross_entropy would."""
    if not (isinstance(input, torch.Tensor) and isinstance(target, torch.Tensor)):
        return False
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    if input.dtype not in _KERNEL_DTYPES or input.dim() < 1 or input.numel() == 0:
        return False
    if not (_plain_cpu(input) and _plain_cpu(target)) or target.requires_grad:
        return False
    class_shape = input.shape[1:2] if input.dim() > 1 else input.shape
    lead_shape = input.shape[:1] + input.shape[2:] if input.dim() > 1 else torch.Size()
    if target.dtype == torch.int64:
        if target.shape != lead_shape:
            return False
    elif target.dtype != input.dtype or target.shape != input.shape or ignore_index >= 0:
        return False  # (PyTorch rejects ignore_index >= 0 with probability targets)
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or not _plain_cpu(weight) or weight.requires_grad:
            return False
        if weight.dtype != input.dtype or weight.shape != class_shape:
            return False
    return True


def _numpy(t: torch.Tensor) -> np.ndarray:
    """The tensor's memory as a NumPy array (a view: no copy, strides kept)."""
    return t.detach().numpy()


class _FusedCrossEntropy(torch.autograd.Function):
    """Forward: fused loss + gradient; saves only the gradient. Backward: one multiply."""

    @staticmethod
    def forward(
        ctx: Any,
        input: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        ignore_index: int,
        reduction: str,
        label_smoothing: float,
    ) -> torch.Tensor:
        want_grad = bool(ctx.needs_input_grad[0])
        index_targets = target.dtype == torch.int64
        loss, grad = api.softmax_cross_entropy(
            _numpy(input),
            _numpy(target),
            axis=1 if input.dim() > 1 else 0,
            reduction=reduction,  # type: ignore[arg-type]  # checked by check_reduction
            weight=None if weight is None else _numpy(weight),
            # a negative ignore_index means nothing for probability targets (and a
            # non-negative one never gets here); fastxent rejects any but the default.
            ignore_index=ignore_index if index_targets else -100,
            label_smoothing=label_smoothing,
            return_grad=want_grad,
        )
        ctx.reduction = reduction
        ctx.class_dim = 1 if input.dim() > 1 else None
        if grad is not None:
            ctx.save_for_backward(torch.from_numpy(grad))
        if reduction == "none":
            return torch.from_numpy(np.asarray(loss))
        return torch.tensor(float(loss), dtype=input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None, None]:
        (grad,) = ctx.saved_tensors
        if ctx.reduction != "none" and grad_loss.item() == 1.0:
            # loss.backward(): hand over the saved gradient itself. Autograd copies it
            # before anyone writes to it while the graph keeps it (retain_graph=True),
            # and takes it over without a copy once the graph is freed.
            return grad, None, None, None, None, None
        if ctx.reduction == "none" and ctx.class_dim is not None:
            grad_loss = grad_loss.unsqueeze(ctx.class_dim)  # one upstream value per row, broadcast over classes
        return grad * grad_loss, None, None, None, None, None


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
        input: logits (C,), (N, C) or (N, C, d1, d2, ...).
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
    out = _FusedCrossEntropy.apply(  # type: ignore[no-untyped-call]
        input, target, weight, int(ignore_index), reduction, float(label_smoothing)
    )
    assert isinstance(out, torch.Tensor)
    return out


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
