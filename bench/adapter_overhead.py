"""What the framework adapters cost over calling the kernel directly (not a test).

For each size, on the same float32 memory with int64 class targets, mean reduction:
  raw          fastxent.softmax_cross_entropy(x, t)              -> loss and gradient
  torch        fastxent.torch.cross_entropy(x, t).backward()     -> the same, through autograd
  torch native torch.nn.functional.cross_entropy(x, t).backward() (for scale)
  jax          jit(value_and_grad(mean of fastxent.jax's losses)) (for scale; its
               callback copies the outputs into JAX buffers)
Medians of interleaved repeats; the adapter's overhead = torch - raw.

    python bench/adapter_overhead.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

import fastxent as fx
import fastxent.jax as fxj
import fastxent.torch as fxt


def measure(n: int, k: int, repeats: int) -> dict[str, float]:
    """Median milliseconds per case at n rows x k classes."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, k), dtype=np.float32)
    t = rng.integers(0, k, n)
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)
    xj, tj = jnp.asarray(x), jnp.asarray(t.astype(np.int32))
    jax_step = jax.jit(jax.value_and_grad(lambda a, b: fxj.softmax_cross_entropy_with_integer_labels(a, b).mean()))

    def raw() -> None:
        fx.softmax_cross_entropy(x, t)

    def adapter() -> None:
        a = xt.detach().requires_grad_()
        fxt.cross_entropy(a, tt).backward()

    def adapter_scaled() -> None:
        a = xt.detach().requires_grad_()
        (fxt.cross_entropy(a, tt) * 3.7).backward()

    def native() -> None:
        a = xt.detach().requires_grad_()
        F.cross_entropy(a, tt).backward()

    def jax_adapter() -> None:
        jax.block_until_ready(jax_step(xj, tj))

    cases: dict[str, Callable[[], None]] = {
        "raw kernel": raw,
        "fastxent.torch fwd+bwd": adapter,
        "  same, loss*3.7": adapter_scaled,
        "torch native fwd+bwd": native,
        "fastxent.jax jit(v&g)": jax_adapter,
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for f in cases.values():
        f()  # warm up (jit compile, allocator)
    for _ in range(repeats):
        for name, f in cases.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) * 1e3 for name, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--sizes", default="256x1000,2048x32000")
    args = ap.parse_args()
    print(f"fastxent {fx.backend_info()}, torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__}")
    for size in args.sizes.split(","):
        n, k = map(int, size.split("x"))
        med = measure(n, k, args.repeats)
        base = med["raw kernel"]
        print(f"\n{n}x{k} float32 (median of {args.repeats}, ms)")
        for name, ms in med.items():
            print(f"  {name:<26}{ms:9.3f}  ({ms / base:4.2f}x raw, +{ms - base:.3f} ms)")


if __name__ == "__main__":
    main()
