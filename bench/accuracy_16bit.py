"""The 16-bit accuracy table of README.md (issue 13): fastxent, fastxent.torch and
PyTorch's own F.cross_entropy on the same bfloat16 / float16 logits, against the
float64 loss and gradient of those 16-bit values (class-index targets, mean).

    python bench/accuracy_16bit.py

Columns: loss relative error; the worst gradient error in ULPs of the dtype (distance
to the exact gradient rounded to the dtype, counted in representable values); the
share of elements more than 1 ULP off; max |error| / max |gradient|.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import torch
import torch.nn.functional as F

import fastxent as fx
import fastxent.torch as fxt

BF16 = np.dtype(ml_dtypes.bfloat16)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ia, ib = (v.view(np.uint16).astype(np.int64) for v in (a, b))
    oa = np.where(ia & 0x8000, -(ia & 0x7FFF), ia)
    ob = np.where(ib & 0x8000, -(ib & 0x7FFF), ib)
    return np.abs(oa - ob)


def as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if a.dtype == BF16 else torch.from_numpy(a)


def as_array(t: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    return t.view(torch.int16).numpy().view(BF16) if dtype == BF16 else t.numpy()


def main() -> None:
    print("| logits | dtype | who | loss rel. error | worst ULP | > 1 ULP | max err / max|grad| |")
    print("|---|---|---|---|---|---|---|")
    for dtype in (BF16, np.dtype(np.float16)):
        for n, k, scale in ((256, 32000, 2.0), (64, 262144, 4.0), (512, 1000, 8.0)):
            rng = np.random.default_rng(1)
            x = (rng.standard_normal((n, k)) * scale).astype(dtype)
            t = torch.from_numpy(rng.integers(0, k, n))
            x64 = torch.from_numpy(x.astype(np.float64)).requires_grad_()
            l64 = F.cross_entropy(x64, t)
            l64.backward()
            assert x64.grad is not None
            g64 = x64.grad.numpy()
            want = g64.astype(dtype)
            for who in ("fastxent", "fastxent.torch", "torch"):
                if who == "fastxent":
                    loss, g = fx.softmax_cross_entropy(x, t.numpy())
                    assert g is not None
                    lv = float(loss)
                else:
                    xt = as_tensor(x).clone().requires_grad_()
                    lt = (fxt.cross_entropy if who == "fastxent.torch" else F.cross_entropy)(xt, t)
                    lt.backward()
                    assert xt.grad is not None
                    lv, g = float(lt.detach().float()), as_array(xt.grad, dtype)
                d = ulp_distance(np.ascontiguousarray(g), np.ascontiguousarray(want))
                rel = np.abs(g.astype(np.float64) - g64).max() / np.abs(g64).max()
                print(f"| {n}x{k} randn*{scale:g} | {dtype.name} | {who} | {abs(lv - l64.item()) / abs(l64.item()):.1e} "
                      f"| {int(d.max())} | {100 * float((d > 1).mean()):.2f}% | {rel:.1e} |")


if __name__ == "__main__":
    main()
