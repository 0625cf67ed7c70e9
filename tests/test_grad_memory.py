"""The gradient arrays fastxent allocates (docs/spec.md#gradient-memory): large ones
come from a bounded cache of freed blocks (python/_core.cpp). What must hold, whatever
the timings: no returned array shares memory with a live one, recycled memory holds
the right values (the kernel writes every element, whatever was there before), the
cache never keeps more than its limit, and the limit can turn it off (0, also from the
FASTXENT_GRAD_CACHE_MB environment variable)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import reference as ref
import torch

import fastxent as fx
import fastxent.torch as fxt
from fastxent import _core

MIN = _core.grad_cache_info()["min_bytes"]
MIB = 1 << 20


@pytest.fixture
def limit() -> Iterator[int]:
    """Runs the test with an empty 16 MiB cache (blocks earlier tests freed are
    dropped first), then restores the limit."""
    before = _core.grad_cache_info()["limit_bytes"]
    _core.set_grad_cache_limit(0)
    _core.set_grad_cache_limit(16 * MIB)
    try:
        yield 16 * MIB
    finally:
        _core.set_grad_cache_limit(before)


def rows_for(nbytes: int, k: int = 1000) -> int:
    return -(-nbytes // (4 * k))


def test_large_gradients_come_from_the_cache_and_small_ones_do_not(limit: int) -> None:
    k = 1000
    x = np.random.default_rng(0).standard_normal((rows_for(3 * MIB), k)).astype(np.float32)
    t = np.arange(x.shape[0]) % k
    _, g = fx.softmax_cross_entropy(x, t)
    assert g.base is not None  # owned by a capsule (the block), not by NumPy
    addr = g.__array_interface__["data"][0]
    assert addr % (2 * MIB) == 0  # a huge-page-aligned block
    hits = _core.grad_cache_info()["hits"]
    del g
    assert _core.grad_cache_info()["cached_blocks"] >= 1
    _, g2 = fx.softmax_cross_entropy(x, t)  # same shape: the freed block comes back
    assert _core.grad_cache_info()["hits"] == hits + 1
    assert g2.__array_interface__["data"][0] == addr
    small = np.zeros((4, 10), np.float32)
    _, gs = fx.softmax_cross_entropy(small, np.zeros(4, np.int64))
    assert gs.nbytes < MIN
    assert gs.base is None


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_recycled_blocks_hold_the_new_gradient_and_are_never_shared(limit: int, backend: str) -> None:
    rng = np.random.default_rng(1)
    n, k = rows_for(2 * MIB, 700), 700
    live = []
    for step in range(8):
        x = rng.standard_normal((n, k)) * (1 + step)
        x = x.astype(np.float32 if step % 2 else np.float64)
        y = rng.random((n, k)).astype(x.dtype) if step % 3 == 0 else rng.integers(0, k, n)
        loss, g = fx.softmax_cross_entropy(x, y, reduction="sum", backend=backend)
        want_loss, want_g = ref.cross_entropy(x, y, reduction="sum")
        tol = 1e-5 if x.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(g, want_g, rtol=tol, atol=tol * np.abs(want_g).max())
        np.testing.assert_allclose(loss, want_loss, rtol=tol)
        for other in live:
            assert not np.shares_memory(g, other)
        if step % 2:
            live.append(g)  # kept alive: its block must not be handed out again
        else:
            del g  # freed: its block may come back for a later step
        info = _core.grad_cache_info()
        assert info["cached_bytes"] <= info["limit_bytes"]


def test_the_cache_never_holds_more_than_its_limit(limit: int) -> None:
    rng = np.random.default_rng(2)
    arrays = []
    for mib in (3, 5, 2, 7, 4, 9, 1, 6):
        n = rows_for(mib * MIB)
        arrays.append(fx.softmax_cross_entropy(rng.standard_normal((n, 1000)).astype(np.float32),
                                               rng.integers(0, 1000, n))[1])
    while arrays:  # free them in an order that fills and overflows the 16 MiB cache
        arrays.pop(len(arrays) // 2)
        info = _core.grad_cache_info()
        assert info["cached_bytes"] <= limit
        assert info["cached_bytes"] % (2 * MIB) == 0
    assert _core.grad_cache_info()["cached_bytes"] > 0
    _core.set_grad_cache_limit(4 * MIB)  # a lower limit trims at once
    assert _core.grad_cache_info()["cached_bytes"] <= 4 * MIB
    _core.set_grad_cache_limit(0)  # off: nothing kept
    assert _core.grad_cache_info()["cached_bytes"] == 0
    assert _core.grad_cache_info()["cached_blocks"] == 0
    _, g = fx.softmax_cross_entropy(np.ones((rows_for(2 * MIB), 1000), np.float32), np.zeros(rows_for(2 * MIB), int))
    del g
    assert _core.grad_cache_info()["cached_bytes"] == 0


def test_a_block_larger_than_the_limit_goes_back_to_the_system(limit: int) -> None:
    n = rows_for(limit + 4 * MIB)
    _, g = fx.softmax_cross_entropy(np.zeros((n, 1000), np.float32), np.zeros(n, int))
    before = _core.grad_cache_info()["cached_bytes"]
    del g
    assert _core.grad_cache_info()["cached_bytes"] == before


def test_views_keep_the_block_alive(limit: int) -> None:
    """A view (a row, a transposed layout, a torch tensor over it) keeps its block from
    being recycled while it lives."""
    n, k = rows_for(2 * MIB, 512), 512
    x = np.random.default_rng(3).standard_normal((n, k)).astype(np.float32)
    _, g = fx.softmax_cross_entropy(x, np.zeros(n, int))
    row = g[3].copy()
    view = g[3]
    del g
    _, g2 = fx.softmax_cross_entropy(x * 2, np.zeros(n, int))
    assert not np.shares_memory(view, g2)
    np.testing.assert_array_equal(view, row)  # untouched by the second call
    # classes on axis 0: the gradient is a moved view of a fresh block
    _, gt = fx.softmax_cross_entropy(np.ascontiguousarray(x.T), np.zeros(n, int), axis=0)
    assert not np.shares_memory(gt, g2)
    assert not np.shares_memory(gt, view)


def test_tracemalloc_sees_the_gradient(limit: int) -> None:
    """The benchmark's memory column reads tracemalloc: a cached block counts as the
    one N x K array it is while an array owns it."""
    import tracemalloc

    n, k = rows_for(4 * MIB), 1000
    x = np.zeros((n, k), np.float32)
    fx.softmax_cross_entropy(x, np.zeros(n, int))  # the block is now cached
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        _, g = fx.softmax_cross_entropy(x, np.zeros(n, int))
        assert tracemalloc.get_traced_memory()[0] - base >= g.nbytes
        del g
        assert tracemalloc.get_traced_memory()[0] - base < MIB
    finally:
        tracemalloc.stop()


def test_torch_gradients_are_never_shared(limit: int) -> None:
    n, k = rows_for(2 * MIB, 600), 600
    gen = torch.Generator().manual_seed(4)
    grads = []
    for step in range(5):
        x = torch.randn(n, k, generator=gen, requires_grad=True)
        t = torch.randint(0, k, (n,), generator=gen)
        fxt.cross_entropy(x, t).backward()
        xr = x.detach().clone().requires_grad_()
        torch.nn.functional.cross_entropy(xr, t).backward()
        torch.testing.assert_close(x.grad, xr.grad)
        for other in grads:
            assert not np.shares_memory(x.grad.numpy(), other.numpy())
        if step % 2 == 0:
            grads.append(x.grad)


def test_the_environment_variable_sets_the_limit() -> None:
    code = ("import warnings; warnings.simplefilter('always'); import fastxent; from fastxent import _core; "
            "print(_core.grad_cache_info()['limit_bytes'])")
    for value, want, warned in (("0", 0, False), ("64", 64 * MIB, False), ("-5", 1024 * MIB, True),
                                ("1e3", 1024 * MIB, True)):
        # The rest of the environment kept: under the sanitizers the child needs LD_PRELOAD.
        env = dict(os.environ, FASTXENT_GRAD_CACHE_MB=value)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        assert int(out.stdout) == want, value
        assert ("FASTXENT_GRAD_CACHE_MB=" in out.stderr) == warned, out.stderr
