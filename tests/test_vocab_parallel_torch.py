"""fastxent.torch.vocab_parallel_cross_entropy on real torch.distributed (gloo)
groups of 2 and 3 processes on this machine (a file store, spawned processes,
bounded timeouts): the loss equals the single-process one on every rank, the
concatenated gradient shards equal the single-process gradient, every call makes
one tiny all_gather and two all-reduces of O(N), backward none, and ranks whose
arguments disagree all get the same error instead of a hang.
(docs/spec.md#vocabulary-shards)"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastxent as fx

WORKER = Path(__file__).with_name("vocab_parallel_worker.py")
TIMEOUT = 240  # seconds for a whole group: every process is killed after it


def run_group(cases: list[dict[str, Any]], world: int, tmp: Path) -> list[list[dict[str, Any]]]:
    """Runs the cases on `world` processes; per rank, per case, what the worker recorded."""
    cases_path, store = tmp / "cases.pkl", tmp / "store"
    with open(cases_path, "wb") as f:
        pickle.dump(cases, f)
    env = dict(os.environ, OMP_NUM_THREADS="1", FASTXENT_NUM_THREADS="1")
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), str(cases_path), str(store), str(r), str(world),
                          str(tmp / f"rank{r}.pkl")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for r in range(world)
    ]
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT)
            outputs.append(out.decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} exited with {p.returncode}:\n{outputs[r][-3000:]}"
        with open(tmp / f"rank{r}.pkl", "rb") as f:
            got = pickle.load(f)
        assert not any("fatal" in g for g in got), got[-1].get("fatal")
        results.append(got)
    return results


def shard_ranges(cuts: list[int]) -> list[tuple[int, int]]:
    return list(zip(cuts[:-1], cuts[1:]))


def problem(rng: np.random.Generator, n: int, k: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    x = (rng.standard_normal((n, k)) * 4).astype(np.float32)
    x[0, ::3] = -np.inf  # masked classes
    x[1, : k // 2] = -np.inf  # the first shards' part of the row all -inf
    if kind == "index":
        t = rng.integers(0, k, n)
        t[2] = -100  # ignored
        t[1] = k - 1  # a class that is not masked
    elif kind == "dense":
        t = rng.dirichlet(np.ones(k), n).astype(np.float32)
        t[0, ::3] = 0  # no mass on the masked classes
        t[1, : k // 2] = 0
    else:  # multi-hot: several labels per row, sum(y) > 1
        t = (rng.random((n, k)) < 0.2).astype(np.float32)
        t[:, -1] = 1
        t[0, ::3] = 0
        t[1, : k // 2] = 0
    return x, t


def case(x: np.ndarray, t: np.ndarray, cuts: list[int], dtype: str = "float32", weight: np.ndarray | None = None,
         **options: Any) -> dict[str, Any]:
    return {"logits": x, "target": t, "ranges": shard_ranges(cuts), "dtype": dtype, "weight": weight,
            "options": options}


def reference(c: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The single-process fastxent loss and gradient (of the upstream the worker uses)."""
    opts = dict(c["options"])
    opts.pop("num_classes", None)
    x = c["logits"].astype(np.float64 if c["dtype"] == "float64" else np.float32)
    loss, grad = fx.softmax_cross_entropy(x, c["target"], weight=c["weight"], **opts)
    if opts.get("reduction") == "none":
        grad = grad * np.linspace(0.5, 1.5, x.shape[0], dtype=grad.dtype)[:, None]
    return np.asarray(loss, np.float64), grad.astype(np.float64)


def check_against_reference(c: dict[str, Any], per_rank: list[dict[str, Any]], rtol: float) -> None:
    want_loss, want_grad = reference(c)
    for r, got in enumerate(per_rank):
        assert "error" not in got, got["error"]
        np.testing.assert_allclose(got["loss"], want_loss, rtol=rtol, atol=0, err_msg=f"rank {r}")
    grad = np.concatenate([got["grad"] for got in per_rank], axis=1)
    assert np.array_equal(np.isnan(grad), np.isnan(want_grad))
    # Elementwise, relative to each row's largest entry: where softmax cancels the
    # target (s_c * sum(q) - q_c near 0) an element's own relative error is unbounded.
    ok = ~np.isnan(want_grad)
    size = np.where(ok, np.abs(want_grad), 0)
    bound = rtol * (size + np.max(size, axis=1, keepdims=True))
    err = np.where(ok, np.abs(grad - want_grad), 0)
    assert np.all(err <= bound), np.max(err / (bound / rtol + 1e-300))


def check_collectives(per_rank: list[dict[str, Any]], n: int, world: int) -> None:
    for got in per_rank:
        forward = [(kind, size) for phase, kind, size in got["calls"] if phase == "forward"]
        backward = [c for c in got["calls"] if c[0] == "backward"]
        assert backward == []  # no communication in backward
        assert forward == [("all_gather", 12 * world), ("all_reduce", n + 1), ("all_reduce", 3 * n + 1)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """Every 2-rank case in one group (one process start per rank)."""
    rng = np.random.default_rng(7)
    n, k = 24, 37
    cuts = [0, 30, 37]  # uneven
    w = (rng.random(k) + 0.5).astype(np.float32)
    cases = []
    for kind in ("index", "dense", "multihot"):
        x, t = problem(rng, n, k, kind)
        for reduction in ("mean", "sum", "none"):
            cases.append(case(x, t, cuts, reduction=reduction))
        cases.append(case(x, t, cuts, weight=w, label_smoothing=0.1, z_loss=1e-3, reduction="mean",
                          num_classes=k))
    x, t = problem(rng, n, k, "index")
    cases.append(case(x.astype(np.float64), t, cuts, dtype="float64", weight=w, label_smoothing=0.2))
    xs = x.copy()
    xs[3, 5] = np.nan  # a NaN row: NaN loss and gradient for that row only
    cases.append(case(xs, t, cuts, reduction="none"))
    cases.append(case(x, np.full(n, -100), cuts))  # every row ignored: mean is 0/0 = NaN, as in PyTorch
    finite = np.where(np.isinf(x), -30.0, x).astype(np.float32)  # a finite loss to compare
    cases.append(case(finite, t, cuts, dtype="bfloat16", reduction="sum"))
    # Arguments that disagree: every rank raises (in this order in `bad`).
    bad = [
        dict(case(x, t, cuts), override={1: {"rows": n - 1}}),
        dict(case(x, t, [0, 30, 37]), override={1: {"vocab_start": 20}}),  # overlapping ranges
        dict(case(x, t, [0, 20, 37]), override={1: {"vocab_start": 25}}),  # a gap
        dict(case(x, t, cuts), override={0: {"options": {"reduction": "sum"}}}),
        dict(case(x, t, cuts, num_classes=k), override={1: {"options": {"num_classes": k + 1}}}),
        dict(case(x, t, cuts), override={1: {"target": np.where(t == 5, k + 3, t)}}),  # a label beyond K
        dict(case(x, t, cuts), override={0: {"dtype": "float64"}}),
        dict(case(x, t, cuts), override={1: {"weight": np.ones(3, np.float32)}}),  # refused by rank 1's own checks
    ]
    t_bad = t.copy()
    t_bad[4] = k + 3
    bad[5] = dict(case(x, t, cuts), override={1: {"target": t_bad}})
    cases += bad
    cases.append(case(x, t, cuts))  # the group still works after the errors
    return cases, run_group(cases, 2, tmp_path_factory.mktemp("vp2"))


def per_case(results: list[list[dict[str, Any]]], i: int) -> list[dict[str, Any]]:
    return [rank_results[i] for rank_results in results]


def test_two_ranks_match_single_process(two_ranks: Any) -> None:
    cases, results = two_ranks
    good = [i for i, c in enumerate(cases) if "override" not in c]
    for i in good:
        c = cases[i]
        rtol = {"float32": 2e-6, "float64": 1e-12, "bfloat16": 1e-2}[c["dtype"]]
        if c["dtype"] == "bfloat16":  # compare with the single-process bfloat16 call through fastxent.torch
            continue
        check_against_reference(c, per_case(results, i), rtol)
        check_collectives(per_case(results, i), c["logits"].shape[0], 2)


def test_two_ranks_bfloat16_matches_single_process_fastxent_torch(two_ranks: Any) -> None:
    import fastxent.torch as fxt

    cases, results = two_ranks
    i = next(j for j, c in enumerate(cases) if c["dtype"] == "bfloat16")
    c = cases[i]
    x = torch.from_numpy(c["logits"]).to(torch.bfloat16).requires_grad_(True)
    loss = fxt.cross_entropy(x, torch.from_numpy(c["target"]), reduction="sum")
    loss.backward()
    got = per_case(results, i)
    for g in got:
        # The losses are both float32 sums rounded to bfloat16 once: equal, or one bfloat16 step apart.
        assert np.isfinite(g["loss"])
        np.testing.assert_allclose(g["loss"], loss.item(), rtol=2 ** -7, atol=0)
    grad = np.concatenate([g["grad"] for g in got], axis=1)
    want = x.grad.to(torch.float64).numpy()
    assert np.array_equal(np.isnan(grad), np.isnan(want))
    np.testing.assert_allclose(grad, want, rtol=2 ** -7, atol=2 ** -7 * np.nanmax(np.abs(want)))


def test_two_ranks_match_pytorch(two_ranks: Any) -> None:
    """Class indices with weight and label smoothing, and probability targets: the
    same loss as F.cross_entropy on the whole logits."""
    cases, results = two_ranks
    for i, c in enumerate(cases):
        if "override" in c or c["dtype"] != "float32" or c["options"].get("z_loss"):
            continue
        x = torch.from_numpy(c["logits"].astype(np.float64))
        t = torch.from_numpy(c["target"].astype(np.float64) if c["target"].dtype.kind == "f" else c["target"])
        if c["target"].dtype.kind == "f" and np.isinf(c["logits"]).any():
            continue  # PyTorch's probability loss computes 0 * -inf = NaN at masked classes (docs/spec.md#conventions)
        w = None if c["weight"] is None else torch.from_numpy(c["weight"].astype(np.float64))
        opts = {k: v for k, v in c["options"].items() if k != "num_classes"}
        want = F.cross_entropy(x, t, weight=w, **opts).numpy()
        for g in per_case(results, i):
            np.testing.assert_allclose(g["loss"], want, rtol=2e-6, atol=0)


def test_disagreeing_ranks_all_raise(two_ranks: Any) -> None:
    cases, results = two_ranks
    expected = [
        "rows differs between ranks",
        "overlap at class",
        "leave a gap at class",
        "reduction differs between ranks",
        "num_classes",
        "out of range for 37 classes",
        "dtype differs between ranks",
        "weight: expected this shard's 7 class weights",
    ]
    bad = [i for i, c in enumerate(cases) if "override" in c]
    assert len(bad) == len(expected)
    for i, text in zip(bad, expected):
        got = per_case(results, i)
        for r, g in enumerate(got):
            assert "error" in g, (text, r)
            kind, message = g["error"]
            assert kind in ("ValueError", "IndexError"), (kind, message)
        # The rank that holds the bad argument names it; the others point at that rank.
        assert any(text in g["error"][1] for g in got), (text, [g["error"] for g in got])
    last = per_case(results, len(cases) - 1)
    assert all("loss" in g for g in last)  # the group works after all those errors


def test_three_ranks_with_a_one_class_shard(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    n, k = 16, 50
    cuts = [0, 1, 20, 50]  # rank 0 holds one class
    cases = []
    for kind in ("index", "dense", "multihot"):
        x, t = problem(rng, n, k, kind)
        w = (rng.random(k) + 0.5).astype(np.float32)
        cases.append(case(x, t, cuts))
        cases.append(case(x, t, cuts, weight=w, label_smoothing=0.05, z_loss=1e-2, reduction="none"))
    results = run_group(cases, 3, tmp_path)
    for i, c in enumerate(cases):
        check_against_reference(c, per_case(results, i), 2e-6)
        check_collectives(per_case(results, i), n, 3)


@pytest.fixture
def group_of_one(tmp_path: Path) -> Any:
    """A real gloo group of this process alone (world size 1), destroyed after the test."""
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


# inductor's own import uses torch.jit.script_method, deprecated in this torch
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_one_rank_is_the_plain_loss_eager_and_compiled(group_of_one: Any) -> None:
    import fastxent.torch as fxt

    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 13, generator=g, dtype=torch.float64)
    y = torch.randint(0, 13, (9,), generator=g)
    y[2] = -100
    w = torch.rand(13, generator=g, dtype=torch.float64) + 0.5
    opts = {"weight": w, "label_smoothing": 0.1, "reduction": "mean"}

    def step(fn: Any) -> tuple[Any, Any]:
        xx = x.clone().requires_grad_(True)
        loss = fn(xx)
        loss.backward()
        return loss.detach(), xx.grad

    want = step(lambda a: F.cross_entropy(a, y, **opts))
    eager = step(lambda a: fxt.vocab_parallel_cross_entropy(a, y, vocab_start=0, group=group_of_one, **opts))
    # (vocab_parallel_cross_entropy is torch.compiler.disable'd: the compiled function
    # runs it eagerly, between graphs)
    compiled = step(torch.compile(lambda a: fxt.vocab_parallel_cross_entropy(a, y, vocab_start=0, **opts)))
    for got in (eager, compiled):
        torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=0)
        torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-15)
    # and arguments refused by the only rank raise (the agreement has nobody to wait for)
    with pytest.raises(ValueError, match="leave a gap at class 0"):
        fxt.vocab_parallel_cross_entropy(x, y, vocab_start=1, **opts)
    with pytest.raises(IndexError, match="^targets: class index 20 is out of range for 13 classes"):
        fxt.vocab_parallel_cross_entropy(x, torch.full((9,), 20), vocab_start=0, **opts)
    # an object that is no process group is refused by name, before any collective
    # (torch.distributed's own AttributeError otherwise; found by tests/fuzz_api.py)
    with pytest.raises(TypeError, match="^group: expected a torch.distributed ProcessGroup or None, got str"):
        fxt.vocab_parallel_cross_entropy(x, y, vocab_start=0, group="world", **opts)
