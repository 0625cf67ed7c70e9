"""Issue 16 item 2: what a fresh gradient array costs, per memory source (one run).

For an N x K float32 gradient written by fastxent's threaded floor (g = -x, the
bytes of an integer-target call), the time of the write into:
  reused       an array allocated once (the out= case: no allocation at all)
  np.empty     a fresh np.empty each call (NumPy advises huge pages for it: madvise)
  np.empty 4K  the same with NumPy's huge-page advice off (4 KiB pages)
  first-touch  a fresh np.empty first touched by the pool's threads (the floor writes
               it in parallel, so its pages fault on both cores: that IS this row,
               the rows above fault them as the same threads write)
  cache        fastxent._core.empty_grad: the bounded block cache of freed blocks
and fastxent's allocating call against out=, with the cache on and off. Medians of
warm back-to-back calls.

    python bench/alloc_candidates.py [--sizes 2048x32000,64x262144] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numpy._core.multiarray import _set_madvise_hugepage

import fastxent as fx
from fastxent import _core
from fastxent.bench.report import machine_line


def med(f, repeats: int = 11) -> float:
    f()
    f()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2048x32000,64x262144")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    fx.set_num_threads(args.threads)
    print(machine_line(), f"threads={args.threads}")
    for part in args.sizes.split(","):
        n, k = (int(v) for v in part.split("x"))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, k), dtype=np.float32)
        t = rng.integers(0, k, n)
        g = np.empty_like(x)
        limit = _core.grad_cache_info()["limit_bytes"]
        rows = {"reused (out=)": med(lambda: _core.memory_floor(x, None, g))}
        rows["np.empty (huge-page advice)"] = med(lambda: _core.memory_floor(x, None, np.empty_like(x)))
        _set_madvise_hugepage(False)
        rows["np.empty 4 KiB pages"] = med(lambda: _core.memory_floor(x, None, np.empty_like(x)))
        _set_madvise_hugepage(True)
        _core.set_grad_cache_limit(0)
        rows["2 MiB-aligned block, madvise, no cache"] = med(
            lambda: _core.memory_floor(x, None, _core.empty_grad(x.shape, x.dtype)))
        _core.set_grad_cache_limit(limit)
        rows["block cache (fastxent._core.empty_grad)"] = med(
            lambda: _core.memory_floor(x, None, _core.empty_grad(x.shape, x.dtype)))
        rows["fx out="] = med(lambda: fx.softmax_cross_entropy(x, t, out=g))
        rows["fx allocating, cache on"] = med(lambda: fx.softmax_cross_entropy(x, t))
        _core.set_grad_cache_limit(0)
        rows["fx allocating, cache off"] = med(lambda: fx.softmax_cross_entropy(x, t))
        _core.set_grad_cache_limit(limit)
        base = rows["reused (out=)"]
        print(f"\n{n}x{k} float32, g = -x on fastxent's threads, ms (x reused)")
        for name, ms in rows.items():
            print(f"  {name:<42}{ms:9.2f}  {ms / base:5.2f}x")


if __name__ == "__main__":
    main()
