"""An older fastxent beside this one, in ONE process and one run (issue 16's closing
table): the same inputs, timed round-robin with the benchmark's own loop
(fastxent.bench.measure.time_warm_cold: a pause, one cold call, then warm calls back
to back), float32, against this build's multi-threaded floor, NumPy moving the same
bytes, and PyTorch's F.cross_entropy forward + backward.

    # an older build's installed package directory (the directory holding fastxent/):
    python bench/before_after.py --before /work/builds/speed-before \
        [--sizes 256x1000,2048x32000,64x262144] [--threads 1,2] [--repeats 5] [--burst 3]

The older package is imported under another name (fastxent_before) with its own
compiled extension and thread pool; both pools are set to the case's thread count.
Warm medians (ms) are printed, the cold median of the allocating calls beside them.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np

import fastxent as fx
from fastxent import _core
from fastxent.bench.measure import median_ms, time_warm_cold
from fastxent.bench.report import machine_line


def load_before(path: Path) -> Any:
    pkg = path / "fastxent"
    spec = importlib.util.spec_from_file_location("fastxent_before", pkg / "__init__.py",
                                                  submodule_search_locations=[str(pkg)])
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fastxent_before"] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--sizes", default="256x1000,2048x32000,64x262144")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--targets", default="dense,int")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--burst", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    old = load_before(args.before)
    torch = None
    if not args.no_torch:
        import torch
        import torch.nn.functional as F
    print(machine_line(), f"| before: {args.before} | repeats {args.repeats} x burst {args.burst}")
    head = ("case", "old out=", "old alloc", "new out=", "new alloc", "floor", "np out=", "np alloc",
            "old out=/floor", "new out=/floor", "old alloc/floor", "new alloc/floor", "new alloc/np alloc",
            "old alloc cold", "new alloc cold", "torch", "torch/new alloc")
    print(" | ".join(head))
    gc_was = __import__("gc").isenabled()
    for part in args.sizes.split(","):
        n, k = (int(v) for v in part.split("x"))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, k), dtype=np.float32) * 2
        for target in args.targets.split(","):
            if target == "int":
                y: np.ndarray = rng.integers(0, k, n)
                fy = None
            else:
                y = np.zeros((n, k), np.float32)
                y[np.arange(n)[:, None], rng.integers(0, k, (n, max(1, round(0.001 * k))))] = 1
                fy = y
            g = np.empty_like(x)
            calls = {
                "old out=": lambda: old.softmax_cross_entropy(x, y, out=g),
                "old alloc": lambda: old.softmax_cross_entropy(x, y),
                "new out=": lambda: fx.softmax_cross_entropy(x, y, out=g),
                "new alloc": lambda: fx.softmax_cross_entropy(x, y),
                "floor": lambda: _core.memory_floor(x, fy, g),
                "np out=": (lambda: np.add(x, fy, out=g)) if fy is not None else (lambda: np.negative(x, out=g)),
                "np alloc": (lambda: np.add(x, fy)) if fy is not None else (lambda: np.negative(x)),
            }
            if torch is not None:
                xt, yt = torch.from_numpy(x), torch.from_numpy(y)

                def torch_call() -> None:
                    a = xt.detach().requires_grad_()
                    F.cross_entropy(a, yt).backward()

                calls["torch"] = torch_call
            for threads in (int(t) for t in args.threads.split(",")):
                fx.set_num_threads(threads)
                old.set_num_threads(threads)
                if torch is not None:
                    torch.set_num_threads(threads)
                __import__("gc").disable()
                warm, cold = time_warm_cold(calls, args.repeats, 1, burst=args.burst)
                if gc_was:
                    __import__("gc").enable()
                m = {name: median_ms(ts) for name, ts in warm.items()}
                c = {name: median_ms(ts) for name, ts in cold.items()}
                f = m["floor"]
                cells = [f"{n}x{k} {target} t{threads}"] + [f"{m[h]:.3f}" for h in head[1:8]] + [
                    f"{m['old out='] / f:.2f}", f"{m['new out='] / f:.2f}", f"{m['old alloc'] / f:.2f}",
                    f"{m['new alloc'] / f:.2f}", f"{m['new alloc'] / m['np alloc']:.2f}",
                    f"{c['old alloc']:.3f}", f"{c['new alloc']:.3f}"]
                cells += [f"{m['torch']:.2f}", f"{m['torch'] / m['new alloc']:.1f}"] if "torch" in m else ["", ""]
                print(" | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
