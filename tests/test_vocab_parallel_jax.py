"""fastxent.jax's vocab-parallel functions under jax.shard_map on 2 and 3 host CPU
devices (a process of its own, with XLA_FLAGS set): every shard returns the
single-process loss, the gradients assembled from the shards equal the single-process
ones, and the jitted call is one statistics kernel, one pmax and one psum forward and
one gradient kernel backward. (docs/spec.md#vocabulary-shards)"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

WORKER = Path(__file__).with_name("vocab_parallel_jax_worker.py")


def problem(rng: np.random.Generator, n: int, k: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    x = (rng.standard_normal((n, k)) * 4).astype(np.float32)
    x[0, ::3] = -np.inf  # masked classes
    x[1, : k // 2] = -np.inf  # the first shard's part of the row all -inf
    if kind == "index":
        t = rng.integers(0, k, n).astype(np.int32)
        t[0] = 1  # not a masked class
        t[1] = k - 1
        return x, t
    t = rng.dirichlet(np.ones(k), n).astype(np.float32) if kind == "dense" else (
        (rng.random((n, k)) < 0.2).astype(np.float32))
    t[0, ::3] = 0
    t[1, : k // 2] = 0
    return x, t


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = np.random.default_rng(3)
    cases: list[dict[str, Any]] = []
    for shards, k in ((2, 40), (3, 39)):
        for kind in ("index", "dense", "multihot"):
            x, t = problem(rng, 12, k, kind)
            cases.append({"logits": x, "target": t, "shards": shards, "hlo": not cases})
    # Uneven shards: 37 classes over 2 shards, padded to 38 with a -inf column (no
    # label there), explicit starts; and a class index beyond num_classes.
    x, t = problem(rng, 12, 37, "index")
    padded = np.concatenate([x, np.full((12, 1), -np.inf, np.float32)], axis=1)
    cases.append({"logits": padded, "target": t, "shards": 2, "starts": [0, 19], "num_classes": 38, "ref": x})
    bad = t.copy()
    bad[3] = 40
    cases.append({"logits": x[:, :36], "target": bad, "shards": 2, "expect_error": True})
    tmp = tmp_path_factory.mktemp("vpjax")
    with open(tmp / "cases.pkl", "wb") as f:
        pickle.dump(cases, f)
    env = dict(os.environ, FASTXENT_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(WORKER), str(tmp / "cases.pkl"), str(tmp / "out.pkl")], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp / "out.pkl", "rb") as f:
        results = pickle.load(f)
    assert not any("fatal" in r for r in results), results[-1].get("fatal")
    return cases, results


def reference(case: dict[str, Any]) -> tuple[Any, Any, Any]:
    """float64 loss, gradient of the mean, and the labels' gradient (dense labels)."""
    with np.errstate(invalid="ignore", divide="ignore"):  # -inf logits: 0 * -inf where no target
        return _reference(case)


def _reference(case: dict[str, Any]) -> tuple[Any, Any, Any]:
    x, t = case.get("ref", case["logits"]).astype(np.float64), case["target"]
    n, k = x.shape
    y = np.eye(k)[t] if t.dtype.kind in "iu" else t.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    log_softmax = x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    loss = -np.where(y != 0, y * log_softmax, 0).sum(axis=1)
    grad = (np.exp(log_softmax) * y.sum(axis=1, keepdims=True) - y) / n
    return loss, grad, (None if t.dtype.kind in "iu" else -log_softmax / n)


def test_shards_match_the_float64_reference(runs: Any) -> None:
    cases, results = runs
    for case, got in zip(cases, results):
        if case.get("expect_error"):
            continue
        assert "error" not in got, got["error"]
        want_loss, want_grad, want_label_grad = reference(case)
        finite = np.isfinite(want_loss)
        np.testing.assert_array_equal(np.isfinite(got["loss"]), finite)
        np.testing.assert_allclose(got["loss"][finite], want_loss[finite], rtol=2e-6, atol=1e-6)
        grad = got["grad"][:, : want_grad.shape[1]]
        if "ref" in case:
            assert np.all(got["grad"][:, want_grad.shape[1]:] == 0)  # the padding column
        scale = np.max(np.abs(want_grad), axis=1, keepdims=True)
        assert np.all(np.abs(grad - want_grad) <= 2e-6 * (np.abs(want_grad) + scale))
        if want_label_grad is not None:  # -log_softmax / N, finite where the logit is
            ok = np.isfinite(want_label_grad)
            np.testing.assert_array_equal(np.isfinite(got["label_grad"]), ok)
            np.testing.assert_allclose(got["label_grad"][ok], want_label_grad[ok], rtol=2e-6, atol=1e-7)


def test_jitted_call_is_two_kernels_and_two_collectives(runs: Any) -> None:
    _cases, results = runs
    hlo = results[0]["hlo"]
    assert len(re.findall(r"custom_call_target=\"fastxent_loss_stats\"", hlo)) == 1
    assert len(re.findall(r"custom_call_target=\"fastxent_grad_from_stats\"", hlo)) == 1
    reduces = re.findall(r"= [^ ]+ all-reduce(?:-start)?\(", hlo)
    assert len(reduces) == 2, reduces  # pmax of the row maxima, psum of the stacked partial sums
    assert "all-gather" not in hlo
    assert "all-to-all" not in hlo


def test_a_label_beyond_the_vocabulary_is_an_error(runs: Any) -> None:
    _cases, results = runs
    got = results[-1]
    assert "error" in got
    assert re.search(r"labels: class index \d+ is out of range for 36 classes", got["error"][1]), got["error"]


def test_arguments_no_shard_can_hold_are_refused_by_name() -> None:
    """On a mesh of one device (this process): an axis name the enclosing shard_map does
    not have, and num_classes beyond the shards' classes (a label there would be in no
    shard: a silent 0 loss), raise naming the argument at trace time (found by
    tests/fuzz_api.py: JAX's NameError, and a 0 loss, before)."""
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    import fastxent.jax as fj

    shard_map: Any = getattr(jax, "shard_map", None)
    if shard_map is None:  # jax < 0.6
        from jax.experimental.shard_map import shard_map
    mesh = Mesh(np.array(jax.devices()[:1]), ("v",))
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    y = np.array([0, 4, 2], np.int32)

    def run(**kw: Any) -> Any:
        f = shard_map(lambda a, b: fj.vocab_parallel_softmax_cross_entropy_with_integer_labels(a, b, **kw), mesh=mesh,
                      in_specs=(P(None, "v"), P()), out_specs=P())
        return jax.jit(f)(x, y)

    want = np.asarray(fj.softmax_cross_entropy_with_integer_labels(x, y))
    np.testing.assert_allclose(np.asarray(run(axis_name="v", num_classes=5)), want, rtol=1e-6)
    with pytest.raises(TypeError, match="^axis_name: 'w' must name a mesh axis of the enclosing shard_map"):
        run(axis_name="w")
    with pytest.raises(ValueError, match=r"^num_classes: 6 is more than the 1 shard\(s\) of 5 classes hold \(5\)"):
        run(axis_name="v", num_classes=6)
