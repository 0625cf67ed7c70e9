"""Concurrency and determinism of the C++ backend.

- 8 Python threads calling at once (the binding releases the GIL, so the calls
  really overlap in the kernels and share the thread pool) get bitwise the results
  of the same calls made one after another.
- Results are bitwise identical for every kernel thread count, including a few
  rows with very large K, where one row's classes are split across threads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import fastxent as fx


@pytest.fixture
def restore_threads() -> Iterator[None]:
    try:
        yield
    finally:
        fx.set_num_threads(None)


def targets_of(kind: str, n: int, k: int, rng: np.random.Generator, dtype: Any) -> Any:
    if kind == "index":
        y = rng.integers(0, k, n)
        y[:: max(1, n // 3)] = -100 if n > 2 else y[:: max(1, n // 3)]
        return y
    if kind == "dense":
        y = np.zeros((n, k), dtype)
        for i in range(n):
            y[i, rng.integers(0, k, 5)] = rng.random(5).astype(dtype)
        return y
    per_row = 5
    indptr = np.arange(n + 1) * per_row
    return fx.SparseTargets(indptr, rng.integers(0, k, n * per_row), rng.random(n * per_row))


def run(x: np.ndarray, y: Any, opts: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    loss, grad = fx.softmax_cross_entropy(x, y, backend="cpp", **opts)
    assert grad is not None
    return np.asarray(loss), grad


def assert_bitwise(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> None:
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v, strict=True)


OPTIONS = [
    {"reduction": "mean"},
    {"reduction": "none", "label_smoothing": 0.1},
    {"reduction": "sum", "z_loss": 1e-4, "softcap": 20.0},
]


def test_eight_python_threads_at_once_match_sequential_calls(rng: np.random.Generator) -> None:
    jobs = []
    for t in range(8):
        kind = ("index", "dense", "sparse")[t % 3]
        dtype = (np.float32, np.float64)[t % 2]
        n, k = (64, 3000) if t % 4 else (2, 70000)  # some calls split a row across threads
        x = (rng.standard_normal((n, k)) * 4).astype(dtype)
        jobs.append((x, targets_of(kind, n, k, rng, dtype), OPTIONS[t % 3]))
    expected = [run(*job) for job in jobs]

    rounds = 5
    results: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in jobs]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def worker(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(rounds):
                results[i].append(run(*jobs[i]))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread by the assert
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for i, got in enumerate(results):
        assert len(got) == rounds
        for r in got:
            assert_bitwise(r, expected[i])


def test_rowwise_functions_from_many_threads(rng: np.random.Generator) -> None:
    xs = [rng.standard_normal((16, 5000)) for _ in range(8)]
    expected = [(fx.logsumexp(x), fx.softmax(x), fx.log_softmax(x)) for x in xs]
    got: list[Any] = [None] * 8
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        got[i] = [(fx.logsumexp(xs[i]), fx.softmax(xs[i]), fx.log_softmax(xs[i])) for _ in range(3)]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for i in range(8):
        assert got[i] is not None
        for triple in got[i]:
            for a, b in zip(triple, expected[i]):
                np.testing.assert_array_equal(a, b, strict=True)


SHAPES = [(2, 262144), (1, 300000), (3, 100003), (1000, 67), (0, 10)]


@pytest.mark.usefixtures("restore_threads")
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
@pytest.mark.parametrize("kind", ["index", "dense", "sparse"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_are_bitwise_identical_for_every_thread_count(
    shape: tuple[int, int], kind: str, dtype: Any, rng: np.random.Generator
) -> None:
    n, k = shape
    x = (rng.standard_normal((n, k)) * 5).astype(dtype)
    y = targets_of(kind, n, k, rng, dtype)
    results = {}
    for threads in (1, 2, 3, 4):
        fx.set_num_threads(threads)
        assert fx.backend_info()["num_threads"] == threads
        results[threads] = [run(x, y, opts) for opts in OPTIONS]
    for threads in (2, 3, 4):
        for a, b in zip(results[threads], results[1]):
            assert_bitwise(a, b)


@pytest.mark.usefixtures("restore_threads")
@pytest.mark.parametrize("shape", [(2, 262144), (1, 300000), (500, 129)], ids=["2x262144", "1x300000", "500x129"])
def test_rowwise_functions_are_bitwise_identical_for_every_thread_count(
    shape: tuple[int, int], rng: np.random.Generator
) -> None:
    x = rng.standard_normal(shape).astype(np.float32) * 5
    results = {}
    for threads in (1, 2, 3, 4):
        fx.set_num_threads(threads)
        results[threads] = (fx.logsumexp(x), fx.softmax(x), fx.log_softmax(x))
    for threads in (2, 3, 4):
        for a, b in zip(results[threads], results[1]):
            np.testing.assert_array_equal(a, b, strict=True)
