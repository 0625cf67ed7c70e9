"""`python -m fastxent bench frameworks`: fastxent inside the frameworks' own training
calls, against the frameworks' own losses, each framework in a process of its own.

Rows (N x K float32 logits, mean reduction, loss and gradient, warm back-to-back calls):
  jax     jit(value_and_grad(lambda x, y: loss(x, y).mean())) with loss =
          fastxent.jax.softmax_cross_entropy[_with_integer_labels] or optax's
  torch   loss(x, y).backward() with loss = fastxent.torch.cross_entropy or
          F.cross_entropy, eager and under torch.compile(fullgraph=True)
for dense (multi-hot) and integer targets. A process per framework: JAX's thread
pool must not share the cores with PyTorch's, nor either with fastxent's, while
another is timed. The child prints one JSON line; the parent prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

FRAMEWORKS = ("jax", "torch")


def _inputs(n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, k), dtype=np.float32)
    y = (rng.random((n, k)) < 0.001).astype(np.float32)
    y[np.arange(n), rng.integers(0, k, n)] = 1  # at least one label per row
    t = rng.integers(0, k, n)
    return x, y, t


def _jax_rows(n: int, k: int) -> dict[str, Callable[[], Any]]:
    import importlib

    import fastxent.jax as fxj

    jax: Any = importlib.import_module("jax")  # (jax's and optax's calls are untyped)
    optax: Any = importlib.import_module("optax")

    x, y, t = _inputs(n, k)
    xj, yj, tj = jax.numpy.asarray(x), jax.numpy.asarray(y), jax.numpy.asarray(t.astype(np.int32))

    def step(loss: Callable[..., Any], target: Any) -> Callable[[], Any]:
        f = jax.jit(jax.value_and_grad(lambda a, b: loss(a, b).mean()))
        return lambda: jax.block_until_ready(f(xj, target))

    return {
        "fastxent.jax dense": step(fxj.softmax_cross_entropy, yj),
        "optax dense": step(optax.softmax_cross_entropy, yj),
        "fastxent.jax integer": step(fxj.softmax_cross_entropy_with_integer_labels, tj),
        "optax integer": step(optax.softmax_cross_entropy_with_integer_labels, tj),
    }


def _torch_rows(n: int, k: int) -> dict[str, Callable[[], Any]]:
    import torch
    import torch.nn.functional as F

    import fastxent.torch as fxt

    x, y, t = _inputs(n, k)
    xt, yt, tt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(t)

    def step(loss: Callable[..., Any], target: Any) -> Callable[[], Any]:
        def run() -> Any:
            a = xt.detach().requires_grad_()
            loss(a, target).backward()
            return a.grad

        return run

    def compiled(loss: Callable[..., Any]) -> Callable[..., Any]:
        return torch.compile(lambda a, b: loss(a, b), fullgraph=True)

    rows = {}
    for kind, target in (("dense", yt), ("integer", tt)):
        rows[f"fastxent.torch {kind}"] = step(fxt.cross_entropy, target)
        rows[f"fastxent.torch compiled {kind}"] = step(compiled(fxt.cross_entropy), target)
        rows[f"F.cross_entropy {kind}"] = step(F.cross_entropy, target)
        rows[f"F.cross_entropy compiled {kind}"] = step(compiled(F.cross_entropy), target)
    return rows


def child(framework: str, n: int, k: int, repeats: int, threads: int) -> dict[str, float]:
    """Times every row of one framework, interleaved, in this process; medians in ms."""
    import fastxent as fx

    fx.set_num_threads(threads)
    if framework == "torch":
        import torch

        torch.set_num_threads(threads)
    rows = _jax_rows(n, k) if framework == "jax" else _torch_rows(n, k)
    for run in rows.values():  # compile and warm up
        run()
        run()
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(repeats):
        for name, run in rows.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(v) * 1e3) for name, v in times.items()}


def run(n: int, k: int, repeats: int, threads: int, frameworks: tuple[str, ...] = FRAMEWORKS) -> dict[str, float]:
    results: dict[str, float] = {}
    for fw in frameworks:
        # (XLA sizes its own pool to the cores at import; fastxent's follows --threads.)
        env = {**os.environ, "FASTXENT_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "fastxent.bench.frameworks", "--child", fw, "--size", f"{n}x{k}",
               "--repeats", str(repeats), "--threads", str(threads)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, check=False)
        if out.returncode != 0:
            print(f"{fw}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        results.update(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def table(results: dict[str, float]) -> str:
    pairs = [
        ("optax dense", "fastxent.jax dense"),
        ("optax integer", "fastxent.jax integer"),
        ("F.cross_entropy dense", "fastxent.torch dense"),
        ("F.cross_entropy integer", "fastxent.torch integer"),
        ("F.cross_entropy compiled dense", "fastxent.torch compiled dense"),
        ("F.cross_entropy compiled integer", "fastxent.torch compiled integer"),
        ("fastxent.torch dense", "fastxent.torch compiled dense"),
        ("fastxent.torch integer", "fastxent.torch compiled integer"),
    ]
    lines = [f"{'row':36s} {'ms':>9s}"] + [f"{name:36s} {ms:9.1f}" for name, ms in results.items()]
    lines.append("")
    for base, other in pairs:
        if base in results and other in results:
            lines.append(f"{base} / {other}: {results[base] / results[other]:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastxent bench frameworks", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="2048x32000", help="NxK (default 2048x32000)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=FRAMEWORKS, action="append", help="one framework (repeatable)")
    p.add_argument("--child", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    n, k = (int(v) for v in a.size.lower().split("x"))
    if a.child:
        print(json.dumps(child(a.child, n, k, a.repeats, a.threads)))
        return 0
    results = run(n, k, a.repeats, a.threads, tuple(a.only or FRAMEWORKS))
    print(table(results))
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
