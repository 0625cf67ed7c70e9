"""The main job's demo: correctness check and a small timing table."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

import fastxent as fx


def _median_ms(fn: Callable[[], object], repeat: int = 7) -> float:
    fn()  # warm-up (and JIT compile for JAX)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def plain_numpy(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """What a user writes by hand: log_softmax, loss, gradient."""
    m = x.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    logp = x - lse
    loss = -(y * logp).sum() / x.shape[0]
    grad = (np.exp(logp) * y.sum(axis=1, keepdims=True) - y) / x.shape[0]
    return float(loss), grad


def main(argv: list[str]) -> int:
    n, k = 1024, 8192
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, k), dtype=np.float32) * 3
    y = (rng.random((n, k)) < 5 / k).astype(np.float32)  # ~5 labels per row: multi-label
    info = fx.backend_info()
    print(f"fastxent {info['version']}: backend={info['backend']} simd={info.get('simd')} "
          f"threads={info.get('num_threads')}")
    print(f"multi-label batch: {n} rows x {k} classes, float32, {y.sum(1).mean():.1f} labels per row on average")

    loss, grad = fx.softmax_cross_entropy(x, y)
    loss_np, grad_np = fx.softmax_cross_entropy(x, y, backend="numpy")
    assert grad is not None
    assert grad_np is not None
    dl = abs(float(loss) - float(loss_np)) / abs(float(loss_np))
    dg = float(np.max(np.abs(grad - grad_np)) / np.max(np.abs(grad_np)))
    print(f"loss = {float(loss):.6f}; vs NumPy backend: loss rel diff {dl:.1e}, grad max diff {dg:.1e} (of max |grad|)")
    ok = dl < 1e-5 and dg < 1e-5

    rows: list[tuple[str, float]] = [
        ("fastxent", _median_ms(lambda: fx.softmax_cross_entropy(x, y))),
        ("plain NumPy", _median_ms(lambda: plain_numpy(x, y))),
    ]
    try:
        import torch
        import torch.nn.functional as F

        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step() -> None:
            xg = xt.detach().requires_grad_()
            F.cross_entropy(xg, yt).backward()  # type: ignore[no-untyped-call]

        rows.append((f"PyTorch {torch.__version__} fwd+bwd", _median_ms(torch_step)))
    except ImportError:
        pass
    try:
        import jax
        import jax.numpy as jnp

        def jax_loss(a: jax.Array, b: jax.Array) -> jax.Array:
            return -jnp.mean(jnp.sum(b * jax.nn.log_softmax(a), axis=-1))

        f = jax.jit(jax.value_and_grad(jax_loss))
        xj, yj = jnp.asarray(x), jnp.asarray(y)
        rows.append((f"JAX {jax.__version__} jit(value_and_grad)",
                     _median_ms(lambda: jax.block_until_ready(f(xj, yj)))))  # type: ignore[no-untyped-call]
    except ImportError:
        pass
    base = rows[0][1]
    print(f"\n{'implementation':<34}{'median ms':>10}{'vs fastxent':>13}")
    for name, ms in rows:
        print(f"{name:<34}{ms:>10.2f}{ms / base:>12.1f}x")
    print("\n(full suite: python -m fastxent bench)")
    print("check: " + ("OK" if ok else "MISMATCH"))
    return 0 if ok else 1
