"""The vocabulary-shard functions of the NumPy API (docs/spec.md#vocabulary-shards),
on the NumPy twin and every SIMD variant: a row's classes cut into shards at random
places (one-class shards and multi-block shards too), each shard's statistics, the
combine (gathered, and the two-all-reduce protocol), the loss from the combined
statistics and each shard's gradient equal the single-process loss and gradient, for
every target kind, option and dtype, with special rows (masked shards, NaN, +inf,
ignored rows). The multi-process wrappers are tested in test_vocab_parallel_*.py."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest

import fastxent as fx

KINDS = ["index", "dense", "sparse"]
OPTIONS: list[dict[str, Any]] = [
    {},
    {"label_smoothing": 0.1},
    {"z_loss": 1e-3},
    {"softcap": 5.0},
    {"weight": True, "label_smoothing": 0.2, "z_loss": 1e-4, "softcap": 30.0},
]


def _problem(kind: str, n: int, k: int, dtype: Any, rng: np.random.Generator) -> tuple[np.ndarray, Any]:
    x = (rng.standard_normal((n, k)) * 4).astype(dtype)
    x[0, ::3] = -np.inf  # masked classes
    x[1, : k // 2] = -np.inf  # the first shards' part of the row all -inf
    x[2, :] = -np.inf  # no softmax at all
    x[3, k // 3] = np.nan
    x[4, -1] = np.inf
    if kind == "index":
        t = rng.integers(0, k, n)
        t[5] = -100  # ignored
        t[1] = k - 1  # on a finite logit of the half-masked row
        return x, t
    if kind == "dense":
        t = (rng.random((n, k)) < 3 / k).astype(np.float32) * 2  # multi-hot, sum(y) > 1
        t[:, 0] = 0.5
        t[1, : k // 2] = 0
        t[0, ::3] = 0
        return x, t.astype(dtype if dtype != ml_dtypes.bfloat16 else np.float32)
    rows = [sorted(set(rng.integers(0, k, int(rng.integers(0, 4))).tolist())) for _ in range(n)]
    rows[1] = [k - 1]
    rows[0] = [j for j in rows[0] if j % 3]
    return x, rows


def _shard_targets(kind: str, t: Any, a: int, b: int) -> Any:
    if kind == "index":
        return t
    if kind == "dense":
        return t[:, a:b]
    indptr, indices = [0], []
    for row in t:
        local = [j - a for j in row if a <= j < b]
        indices += local
        indptr.append(len(indices))
    return fx.SparseTargets(indptr, np.asarray(indices, np.int64))


def _whole_targets(kind: str, t: Any) -> Any:
    if kind != "sparse":
        return t
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in t])])
    return fx.SparseTargets(indptr, np.asarray([j for r in t for j in r], np.int64))


def _cuts(k: int, rng: np.random.Generator) -> list[int]:
    inner = sorted(set(rng.integers(1, k, 3).tolist()) | {1})  # a one-class shard first
    return [0, *inner, k]


def _sharded(engine: str, x: np.ndarray, kind: str, t: Any, cuts: list[int], opts: dict[str, Any],
             weight: np.ndarray | None, grad_scale: Any, protocol: str) -> tuple[np.ndarray, np.ndarray]:
    k = x.shape[1]
    stat_opts = {o: v for o, v in opts.items() if o in ("label_smoothing", "softcap")}
    stats = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        stats.append(fx.vocab_shard_statistics(
            x[:, a:b], _shard_targets(kind, t, a, b), vocab_start=a, num_classes=k,
            weight=None if weight is None else weight[a:b], backend=engine, **stat_opts))
    if protocol == "gathered":
        row_stats = fx.combine_vocab_shard_statistics(stats)
    else:  # what the two all-reduces compute
        row_max = np.max([s[:, 0] for s in stats], axis=0)
        sums = np.sum([fx.vocab_shard_partial_sums(s, row_max) for s in stats], axis=0)
        row_stats = fx.row_statistics_from_sums(row_max, sums, dtype=stats[0].dtype)
    ignored = (t == -100) if kind == "index" else None
    loss = fx.loss_from_row_statistics(row_stats, z_loss=opts.get("z_loss", 0.0), ignored=ignored)
    grads = [
        fx.vocab_shard_gradient(
            x[:, a:b], _shard_targets(kind, t, a, b), row_stats, vocab_start=a, num_classes=k, grad_scale=grad_scale,
            weight=None if weight is None else weight[a:b], z_loss=opts.get("z_loss", 0.0), backend=engine,
            **stat_opts)
        for a, b in zip(cuts[:-1], cuts[1:])
    ]
    return loss, np.concatenate(grads, axis=1)


def _compare(got: np.ndarray, want: np.ndarray, rtol: float) -> None:
    got, want = got.astype(np.float64), want.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    size = np.where(ok & np.isfinite(want), np.abs(want), 0)
    # per element, relative to the element and its row's largest entry (a gradient
    # entry where softmax cancels the target has no relative accuracy of its own)
    scale = np.max(size, axis=-1, keepdims=True) if size.ndim == 2 else size
    with np.errstate(invalid="ignore"):  # inf - inf where both are +inf (a target on a masked class)
        err = np.where(ok & np.isfinite(want), np.abs(got - want), 0)
    assert np.all(err <= rtol * (size + scale)), np.max(err / (size + scale + 1e-300))
    np.testing.assert_array_equal(got[ok & ~np.isfinite(want)], want[ok & ~np.isfinite(want)])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("opt", range(len(OPTIONS)))
@pytest.mark.parametrize("protocol", ["gathered", "all-reduce"])
def test_shards_equal_one_pass(engine: str, kind: str, opt: int, protocol: str) -> None:
    rng = np.random.default_rng(100 * opt + len(kind))
    n, k = 12, 5000  # shards of several 2048-column blocks and of one column
    x, t = _problem(kind, n, k, np.float32, rng)
    opts = dict(OPTIONS[opt])
    weight = np.linspace(0.5, 2.0, k).astype(np.float32) if opts.pop("weight", False) else None
    upstream = np.linspace(0.5, 1.5, n).astype(np.float32)
    with np.errstate(all="ignore"):
        want_loss, want_grad = fx.softmax_cross_entropy(x, _whole_targets(kind, t), reduction="none", weight=weight,
                                                        backend=engine, **opts)
    loss, grad = _sharded(engine, x, kind, t, _cuts(k, rng), opts, weight, upstream, protocol)
    # float32: statistics rounded once to float32 (docs/spec.md#vocabulary-shards): 2e-6
    _compare(loss, want_loss, 2e-6)
    _compare(grad, want_grad * upstream[:, None], 2e-6)
    # no softmax: every logit -inf, a NaN, a +inf (a soft cap makes the infinities finite)
    no_softmax = [3] if "softcap" in opts else [2, 3, 4]
    assert np.all(np.isnan(loss[no_softmax])), loss
    if kind == "index":
        assert loss[5] == 0
        assert np.all(grad[5] == 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, ml_dtypes.bfloat16])
def test_other_dtypes(engine: str, dtype: Any) -> None:
    rng = np.random.default_rng(5)
    n, k = 10, 300
    x, t = _problem("index", n, k, dtype, rng)
    want_loss, want_grad = fx.softmax_cross_entropy(x, t, reduction="none", label_smoothing=0.1, backend=engine)
    loss, grad = _sharded(engine, x, "index", t, [0, 1, 100, 300], {"label_smoothing": 0.1}, None, 1.0, "gathered")
    assert grad.dtype == x.dtype
    if dtype == np.float64:
        _compare(loss, want_loss, 1e-13)
        _compare(grad, want_grad, 1e-13)
    else:  # computed in float32, the gradient rounded to 16 bits: one rounding apart
        _compare(loss, want_loss, 2e-6)
        _compare(grad, want_grad, 2.0 ** -(8 if dtype == ml_dtypes.bfloat16 else 11))


def test_statistics_of_one_shard(engine: str) -> None:
    x = np.array([[-np.inf, -np.inf], [0.0, np.nan], [1.0, 2.0], [3.0, 3.0]], np.float32)
    t = np.array([5, 0, 7, -100])  # global classes of a 10-class vocabulary; this shard is [4, 6)
    st = fx.vocab_shard_statistics(x, t, vocab_start=4, num_classes=10, backend=engine)
    assert st.dtype == np.float32
    assert st.shape == (4, 4)
    np.testing.assert_array_equal(st[0], [-np.inf, -np.inf, 1.0, -np.inf])  # masked shard with the target
    assert st[1, 0] == 0
    assert np.all(np.isnan(st[1, 1:]))
    np.testing.assert_allclose(st[2], [2.0, np.log1p(np.exp(-1.0)), 0.0, 0.0], rtol=1e-6)  # class 7 elsewhere
    np.testing.assert_array_equal(st[3], 0)  # ignored
    # label smoothing counts the whole vocabulary: eps / 10 on each of the 2 classes
    st = fx.vocab_shard_statistics(x[2:3], t[2:3], vocab_start=4, num_classes=10, label_smoothing=0.5,
                                   backend=engine)
    np.testing.assert_allclose(st[0, 2], 2 * 0.05, rtol=1e-6)
    np.testing.assert_allclose(st[0, 3], 0.05 * (1.0 - 2.0), rtol=1e-6)


def test_every_shard_masked_is_a_nan_row_and_huge_maxima_cancel() -> None:
    masked = np.full((1, 3), -np.inf, np.float32)
    stats = [fx.vocab_shard_statistics(masked, np.array([1]), vocab_start=3 * r, num_classes=6) for r in range(2)]
    row = fx.combine_vocab_shard_statistics(stats)
    assert row[0, 0] == 0
    assert np.all(np.isnan(row[0, 1:]))
    assert np.isnan(fx.loss_from_row_statistics(row))[0]
    # equal huge maxima on both shards: exactly log 2 - 0 for the target at one of them
    huge = np.full((1, 1), 1e30, np.float32)
    stats = [fx.vocab_shard_statistics(huge, np.array([0]), vocab_start=r, num_classes=2) for r in range(2)]
    loss = fx.loss_from_row_statistics(fx.combine_vocab_shard_statistics(stats))
    np.testing.assert_allclose(loss, [np.log(2)], rtol=1e-7)


def test_inputs_unchanged_and_out(rng: np.random.Generator) -> None:
    x = rng.standard_normal((6, 40)).astype(np.float32)
    t = rng.integers(0, 100, 6)
    x0, t0 = x.copy(), t.copy()
    st = fx.vocab_shard_statistics(x, t, vocab_start=30, num_classes=100)
    row = fx.combine_vocab_shard_statistics([st])  # (this shard alone: its own softmax)
    row0 = row.copy()
    out = np.empty_like(x)
    g = fx.vocab_shard_gradient(x, t, row, vocab_start=30, num_classes=100, out=out)
    assert g is out
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(t, t0)
    np.testing.assert_array_equal(row, row0)
    with pytest.raises(ValueError, match="^out:"):
        fx.vocab_shard_gradient(x, t, row, vocab_start=30, num_classes=100, out=x)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x, t: fx.vocab_shard_statistics(x, t, vocab_start=-1, num_classes=100), "^vocab_start:"),
        (lambda x, t: fx.vocab_shard_statistics(x, t, vocab_start=70, num_classes=100), "^vocab_start:"),
        (lambda x, t: fx.vocab_shard_statistics(x, t, vocab_start=0, num_classes=0), "^num_classes:"),
        (lambda x, t: fx.vocab_shard_statistics(x, t, vocab_start=1.5, num_classes=100), "^vocab_start:"),
        (lambda x, t: fx.vocab_shard_statistics(x, t + 100, vocab_start=0, num_classes=100), "^targets:"),
        (lambda x, t: fx.vocab_shard_gradient(x, t, np.zeros((6, 3)), vocab_start=0, num_classes=100), "^row_stats:"),
        (lambda x, t: fx.vocab_shard_gradient(x, t, np.zeros((6, 4)), vocab_start=0, num_classes=100,
                                              grad_scale=np.ones(5)), "^grad_scale:"),
        (lambda x, t: fx.vocab_shard_partial_sums(np.zeros((6, 4)), np.zeros(5)), "^row_max:"),
        (lambda x, t: fx.row_statistics_from_sums(np.zeros(6), np.zeros((6, 4))), "^sums:"),
        (lambda x, t: fx.loss_from_row_statistics(np.zeros((6, 4)), ignored=np.zeros(6)), "^ignored:"),
    ],
)
def test_bad_arguments_name_themselves(call: Any, match: str) -> None:
    x = np.zeros((6, 40), np.float32)
    t = np.arange(6)
    with pytest.raises((ValueError, TypeError, IndexError), match=match):
        call(x, t)
