"""fx.linear_cross_entropy against the unfused composition in float64 (tests/reference.py
on input @ W.T + b, then the chain rule), on both backends (the `engine` fixture: the
NumPy twin and every SIMD variant of the C++ kernel), for every target kind, option
and reduction, with chunk sizes that do not divide N, a chunk larger than N, N = 0,
and ignored rows on chunk edges."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.sparse
from reference import cross_entropy

import fastxent as fx
from fastxent import linear as fl

N, D, K = 10, 6, 7
KINDS = ["index", "dense", "multihot", "sparse", "scipy"]
OPTIONS: list[dict[str, Any]] = [
    {},
    {"weight": "w"},
    {"weight": "w", "label_smoothing": 0.15, "z_loss": 0.05, "softcap": 2.5},
]
CHUNKS = [1, 3, 4, N, N + 3, None]


def make(kind: str, dtype: Any, seed: int = 0, n: int = N) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any, np.ndarray]:
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((n, D)).astype(dtype)
    w = (rng.standard_normal((K, D)) * 0.7).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    cw = (rng.random(K) + 0.2).astype(dtype)
    t: Any
    if kind == "index":
        t = rng.integers(0, K, n)
        t[[i for i in (2, 3, 8) if i < n]] = -100  # ignored rows on the edges of 3- and 4-row chunks
    elif kind == "dense":
        t = rng.dirichlet(np.ones(K), n).astype(dtype)
    elif kind == "multihot":
        t = rng.random((n, K)) < 0.3
    else:
        counts = rng.integers(0, 4, n)
        indptr = np.r_[0, np.cumsum(counts)]
        idx = rng.integers(0, K, indptr[-1])
        vals = rng.random(indptr[-1]) + 0.5
        t = fx.SparseTargets(indptr, idx, vals) if kind == "sparse" else scipy.sparse.csr_matrix((vals, idx, indptr), (n, K))
    return h, w, b, t, cw


def reference(h: np.ndarray, w: np.ndarray, b: np.ndarray | None, t: Any, **kw: Any) -> tuple[Any, tuple[np.ndarray, ...]]:
    """The unfused composition in float64: logits, the reference loss, the chain rule."""
    h64 = h.astype(np.float64).reshape(-1, w.shape[1])
    w64 = w.astype(np.float64)
    logits = h64 @ w64.T + (0.0 if b is None else b.astype(np.float64))
    kind_sparse = isinstance(t, fx.SparseTargets) or scipy.sparse.issparse(t)
    tt = t if kind_sparse else np.asarray(t).reshape(logits.shape[0], -1).squeeze(-1) if np.asarray(t).dtype.kind in "iu" else np.asarray(t).reshape(logits.shape)
    loss, g = cross_entropy(logits, tt, **kw)
    if kw.get("reduction") == "none":
        loss = np.asarray(loss).reshape(h.shape[:-1])
    return loss, (g @ w64, g.T @ h64, g.sum(0), np.abs(g) @ np.abs(w64), np.abs(g).T @ np.abs(h64), np.abs(g).sum(0))


def check(actual: Any, ref: tuple[Any, tuple[np.ndarray, ...]], dtype: Any, what: str = "") -> None:
    loss, grads = actual
    ref_loss, (di, dw, db, si, sw, sb) = ref
    rtol = 1e-4 if np.dtype(dtype) == np.float32 else 1e-11
    np.testing.assert_allclose(np.asarray(loss, np.float64), ref_loss, rtol=rtol, atol=rtol, err_msg=what)
    d_input, d_weight, d_bias = grads
    # each entry is a sum of products: its rounding error scales with the sum of |products|
    for a, e, s, name in ((d_input.reshape(-1, D), di, si, "d_input"), (d_weight, dw, sw, "d_weight")):
        assert np.all(np.abs(a - e) <= rtol * (s + 1e-30)), (what, name, np.max(np.abs(a - e) / (s + 1e-30)))
    if d_bias is not None:
        assert np.all(np.abs(d_bias - db) <= rtol * (sb + 1e-30)), (what, "d_bias")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_the_unfused_composition(engine: str, kind: str, reduction: str, dtype: Any) -> None:
    h, w, b, t, cw = make(kind, dtype)
    for opts in OPTIONS:
        kw = {k: (cw if v == "w" else v) for k, v in opts.items()}
        ref = reference(h, w, b, t, reduction=reduction, **kw)
        for chunk in CHUNKS:
            got = fx.linear_cross_entropy(h, w, t, linear_bias=b, reduction=reduction, chunk_size=chunk, backend=engine, **kw)
            check(got, ref, dtype, f"{opts} chunk={chunk}")
            loss, (d_input, d_weight, d_bias) = got
            assert d_input.dtype == d_weight.dtype == d_bias.dtype == np.dtype(dtype)
            assert np.asarray(loss).dtype == np.dtype(dtype)
            assert np.shape(loss) == ((N,) if reduction == "none" else ())


def test_without_bias_and_with_leading_dimensions(engine: str) -> None:
    h, w, _, t, _ = make("index", np.float64, n=12)
    h3, t3 = h.reshape(3, 4, D), t.reshape(3, 4)
    for reduction in ("mean", "none"):
        loss, (d_input, d_weight, d_bias) = fx.linear_cross_entropy(h3, w, t3, reduction=reduction, chunk_size=5, backend=engine)
        assert d_bias is None
        assert d_input.shape == (3, 4, D)
        ref = reference(h3, w, None, t3, reduction=reduction)
        check((loss, (d_input, d_weight, None)), ref, np.float64)
        if reduction == "none":
            assert np.shape(loss) == (3, 4)
    # one row: input (D,), a scalar class index
    loss, (d_input, _, _) = fx.linear_cross_entropy(h[0], w, np.int64(1), backend=engine)
    assert d_input.shape == (D,)
    np.testing.assert_allclose(loss, reference(h[:1], w, None, np.array([1]))[0])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch(engine: str, reduction: str) -> None:
    h, w, b, _, _ = make("index", np.float32)
    loss, (d_input, d_weight, d_bias) = fx.linear_cross_entropy(
        h[:0], w, np.zeros(0, np.int64), linear_bias=b, reduction=reduction, backend=engine
    )
    assert d_input.shape == (0, D)
    assert np.all(d_weight == 0)
    assert d_weight.shape == (K, D)
    assert np.all(d_bias == 0)
    if reduction == "none":
        assert np.shape(loss) == (0,)
    elif reduction == "sum":
        assert loss == 0
    else:
        assert np.isnan(loss)


def test_one_class_gives_zero(engine: str) -> None:
    h, w, b, _, _ = make("index", np.float64)
    loss, grads = fx.linear_cross_entropy(h, w[:1], np.zeros(N, np.int64), linear_bias=b[:1], chunk_size=3, backend=engine)
    assert loss == 0
    assert all(np.all(g == 0) for g in grads)


def test_loss_only(engine: str) -> None:
    h, w, b, t, cw = make("index", np.float32)
    for reduction in ("mean", "sum", "none"):
        full, _ = fx.linear_cross_entropy(h, w, t, linear_bias=b, weight=cw, reduction=reduction, chunk_size=3, backend=engine)
        only, none = fx.linear_cross_entropy(
            h, w, t, linear_bias=b, weight=cw, reduction=reduction, chunk_size=3, return_grad=False, backend=engine
        )
        assert none is None
        np.testing.assert_allclose(only, full, rtol=1e-6)


def test_mean_denominator_is_the_whole_batch(engine: str) -> None:
    """All ignored rows in one chunk, class weights: the chunked mean equals the
    unchunked call's (softmax_cross_entropy on the whole logits)."""
    h, w, b, t, cw = make("index", np.float64, n=12)
    t[:4] = -100  # the first 4-row chunk has no counted row
    logits = h @ w.T + b
    ref_loss, g = fx.softmax_cross_entropy(logits, t, weight=cw, backend=engine)
    loss, (d_input, d_weight, d_bias) = fx.linear_cross_entropy(h, w, t, linear_bias=b, weight=cw, chunk_size=4, backend=engine)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-13)
    np.testing.assert_allclose(d_input, g @ w, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(d_weight, g.T @ h, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(d_bias, g.sum(0), rtol=1e-12, atol=1e-15)
    assert np.all(d_input[:4] == 0)


def test_mean_that_cannot_fold_into_the_weights(engine: str) -> None:
    """w / D overflows float32 (a huge weight on a class no row targets, tiny weights
    on the targeted ones): G is scaled in place instead, same results."""
    h, w, b, _, _ = make("index", np.float32)
    t = np.ones(N, np.int64)
    cw = np.array([3e38, 1e-20, 1, 1, 1, 1, 1], np.float32)
    ref = reference(h, w, b, t, weight=cw)
    for chunk in (3, None):
        check(fx.linear_cross_entropy(h, w, t, linear_bias=b, weight=cw, chunk_size=chunk, backend=engine), ref, np.float32)


def test_mean_without_a_denominator(engine: str) -> None:
    """The counted rows' weights sum to 0: NaN gradient from every counted row, 0 from
    ignored ones, loss NaN (docs/spec.md#reductions), as the unfused call."""
    h, w, b, t, _ = make("index", np.float64)
    cw = np.zeros(K)
    logits = h @ w.T + b
    ref_loss, g = fx.softmax_cross_entropy(logits, t, weight=cw, backend=engine)
    loss, (d_input, d_weight, d_bias) = fx.linear_cross_entropy(h, w, t, linear_bias=b, weight=cw, chunk_size=3, backend=engine)
    assert np.isnan(loss)
    assert np.isnan(ref_loss)
    counted = t != -100
    assert np.isnan(d_input[counted]).all()
    assert np.all(d_input[~counted] == 0)
    assert np.isnan(d_weight).all()
    assert np.isnan(d_bias).all()
    np.testing.assert_array_equal(np.isnan(d_input), np.isnan(g @ w))
    # every row ignored: NaN loss, zero gradients
    loss, grads = fx.linear_cross_entropy(h, w, np.full(N, -100), linear_bias=b, chunk_size=3, backend=engine)
    assert np.isnan(loss)
    assert all(np.all(a == 0) for a in grads)


def test_non_finite_rows_stay_in_their_row(engine: str) -> None:
    h, w, b, t, _ = make("dense", np.float64)
    h[4, 2] = np.nan
    loss, (d_input, d_weight, _) = fx.linear_cross_entropy(h, w, t, linear_bias=b, reduction="none", chunk_size=3, backend=engine)
    assert np.isnan(loss[4])
    assert np.isfinite(np.delete(loss, 4)).all()
    assert np.isnan(d_input[4]).all()
    assert np.isfinite(np.delete(d_input, 4, axis=0)).all()
    assert np.isnan(d_weight).all()  # G.T @ h: row 4's NaN reaches every entry, as unfused


def test_layouts_and_inputs_unchanged(engine: str) -> None:
    """Strided, Fortran-order, aliased and read-only inputs give the contiguous result
    and are not modified."""
    h, w, b, t, cw = make("dense", np.float32)
    want = fx.linear_cross_entropy(h, w, t, linear_bias=b, weight=cw, chunk_size=3, backend=engine)
    big = np.zeros((N, 2 * D), np.float32)
    big[:, ::2] = h
    ts = np.asfortranarray(t.astype(np.float64))
    args = [big[:, ::2], np.asfortranarray(w), ts, b.copy()]
    for a in args:
        a.setflags(write=False)
    before = [a.copy() for a in args]
    got = fx.linear_cross_entropy(args[0], args[1], args[2], linear_bias=args[3], weight=cw, chunk_size=3, backend=engine)
    for a, c in zip(args, before):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    for x, y in zip(got[1], want[1]):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # input and linear_weight in one buffer (read only: no conflict)
    buf = np.random.default_rng(3).standard_normal((N + K, D))
    loss, grads = fx.linear_cross_entropy(buf[:N], buf[N:], np.arange(N) % K, chunk_size=4, backend=engine)
    check((loss, grads), reference(buf[:N], buf[N:], None, np.arange(N) % K), np.float64)


def test_torch_cpu_tensors_are_read_in_place(engine: str) -> None:
    import torch  # (a test requirement)

    h, w, b, t, _ = make("index", np.float32)
    got = fx.linear_cross_entropy(torch.from_numpy(h), torch.from_numpy(w), torch.from_numpy(t), linear_bias=torch.from_numpy(b), backend=engine)
    want = fx.linear_cross_entropy(h, w, t, linear_bias=b, backend=engine)
    assert got[0] == want[0]


def test_default_chunk_size_follows_the_memory_budget() -> None:
    assert fl.default_chunk_size(4096, 32000, 4) * 32000 * 4 <= fl.DEFAULT_CHUNK_BYTES
    assert fl.default_chunk_size(4096, 32000, 4) > fl.DEFAULT_CHUNK_BYTES // (32000 * 4) - 1
    assert fl.default_chunk_size(10, 7, 8) == 10  # a small problem is one chunk
    assert fl.default_chunk_size(0, 7, 8) == 1
    assert fl.default_chunk_size(100, 10**9, 8) == 1  # at least one row


def test_dense_targets_are_converted_a_chunk_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """float64 dense targets for float32 logits: no N x K conversion of the whole
    target (the kernel sees chunk-sized float32 rows)."""
    h, w, b, t, _ = make("dense", np.float32)
    seen: list[tuple[int, ...]] = []
    real = fl.ChunkTargets.fields

    def spy(self: fl.ChunkTargets, r0: int, r1: int, dtype: np.dtype) -> dict[str, Any]:
        out = real(self, r0, r1, dtype)
        seen.append(out["dense_targets"].shape)
        assert out["dense_targets"].dtype == np.float32
        return out

    monkeypatch.setattr(fl.ChunkTargets, "fields", spy)
    fx.linear_cross_entropy(h, w, t.astype(np.float64), linear_bias=b, chunk_size=4)
    assert seen == [(4, K), (4, K), (2, K)]


def test_bench_script_runs_and_reports_memory(tmp_path: Any) -> None:
    """bench/bench_linear.py (a smoke run at tiny sizes): every contender asked for
    gives a time and an extra-peak-memory figure."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "bench_linear.py"
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--contenders", "fx_numpy,fx_numpy[64],gemm3c_numpy", "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["contender"] for r in rows] == ["fx_numpy", "fx_numpy[64]", "gemm3c_numpy"]
    assert all(r["min_s"] > 0 for r in rows)
    assert all(r["extra_peak_mib"] > -1 for r in rows)  # (MiB; page-granular)
