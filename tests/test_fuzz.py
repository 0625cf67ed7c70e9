"""A bounded run of the API fuzzer (tests/fuzz_api.py), and checks that its oracles
catch the kinds of bug they exist for.

The long runs are `python tests/fuzz_api.py --seconds N` (CI: .ci/run)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import fuzz_api
import numpy as np

FUZZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_api.py")


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, FUZZER, *args], check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_fixed_seed_run_finds_nothing() -> None:
    """Every section for a few seconds at seed 0: no finding (exit 0), and every
    section ran cases."""
    proc = _run("--seconds", "9", "--seed", "0", "--slice", "0.4")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    for section in fuzz_api.ENTRY_POINTS:
        line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith(section + " "))
        assert int(line.split()[1]) > 0, line


def test_planted_bugs_are_reported_with_reproducers() -> None:
    """The selftest section's stand-ins: a segfault (reported by the parent with the
    case that killed the child), an OverflowError, a write into an input."""
    proc = _run("--seconds", "3", "--section", "selftest", "--seed", "0", env={"FUZZ_API_SELFTEST": "1"})
    out = proc.stdout
    assert proc.returncode == 1, out
    # SIGSEGV, or SIGABRT under AddressSanitizer (.ci/sanitize.sh: abort_on_error=1)
    assert re.search(r"crash: child killed by signal SIG(SEGV|ABRT)", out), out
    assert "ctypes.string_at(0)" in out  # the crashing case's reproducer
    assert "error-contract: OverflowError" in out
    assert "memory: " in out
    assert "byte(s) changed outside the writable memory" in out


def test_snapshot_allows_writes_only_into_handed_over_memory() -> None:
    buf = np.zeros(64, np.uint8)
    logits = buf[:32].view(np.float32)
    out = buf[32:].view(np.float32)
    snap = fuzz_api.Snapshot([logits, out, buf])
    out[:] = 1.0
    assert snap.changed_outside([out], [logits, out]) == []
    logits[3] = 2.0
    problems = snap.changed_outside([out], [logits, out])
    assert len(problems) == 1
    assert "float32[8]" in problems[0]


def test_error_oracle_wants_named_value_errors() -> None:
    entry = fuzz_api.ENTRY_POINTS["loss"]
    good = fuzz_api.Outcome("cpp", "error", "ValueError", "targets: class index 5 is out of range", "call")
    overflow = fuzz_api.Outcome("cpp", "error", "OverflowError", "int too large to convert to float", "call")
    unnamed = fuzz_api.Outcome("cpp", "error", "TypeError", "loss(): incompatible function arguments", "call")
    assert fuzz_api.check_error(entry, good) == []
    assert fuzz_api.check_error(entry, overflow)
    assert fuzz_api.check_error(entry, unnamed)


def test_reference_oracle_rejects_absorbed_softmax_and_accepts_rounding() -> None:
    """softmax([1e30, 1e30]) must be [.5, .5]: [1, 1] is caught, one-ulp rounding is not."""
    entry = fuzz_api.ENTRY_POINTS["rowwise"]
    spec = {"op": "softmax"}
    x = np.full(2, 1e30)
    args = {"x": x, "axis": 0}
    wrong = fuzz_api.Outcome("cpp", "ok", result=np.array([1.0, 1.0]), args=args)
    close = fuzz_api.Outcome("cpp", "ok", result=np.array([0.5, np.nextafter(0.5, 1)]), args=args)
    assert fuzz_api.check_rowwise(entry, spec, [wrong])
    assert fuzz_api.check_rowwise(entry, spec, [close]) == []


def test_every_known_input_kind_is_drawn() -> None:
    """The strategies reach the odd inputs the fuzzer is for (a drawn sample of the loss,
    sparse and alias sections' cases, searched for each kind)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    kinds = ("SparseTargets", "scipy.sparse", "masked_array", "asmatrix", "memmap", "newbyteorder", "as_strided", "offset=1",
             "writeable = False", "out=", "inplace=True", "softcap=", "z_loss=", "label_smoothing=", "ignore_index=", "weight=",
             "nan", "inf", "tolist()", "buffer=buf", "indptr = np.array([0, 1, 10**6])")
    seen: set[str] = set()
    sections = [fuzz_api.ENTRY_POINTS[n] for n in ("loss", "sparse", "alias")]

    # (500: the 16-bit dtypes widened the draws; 300 no longer reached the rare attr-indptr mutation)
    @settings(max_examples=500, database=None, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.one_of(*[e.strategy for e in sections]))
    def draw(spec: dict) -> None:  # type: ignore[type-arg]
        src = fuzz_api.ENTRY_POINTS[spec["entry"]].build(spec).source()
        seen.update(kind for kind in kinds if kind in src)

    draw()
    assert seen == set(kinds), sorted(set(kinds) - seen)


def test_vocab_shards_oracle_rejects_a_wrong_combination_and_accepts_rounding() -> None:
    """The vocab_shards section's reference: the shards' combined loss / gradient against
    softmax_cross_entropy on the whole rows; 1e-4 off is caught, one ulp is not."""
    import fastxent as fx

    entry = fuzz_api.ENTRY_POINTS["vocab_shards"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    y = np.array([0, 4, 2])
    args = {"logits": x, "targets": y, "cuts": [0, 1, 5], "num_classes": 5, "split": "index", "path": "list"}
    loss, grad = fx.softmax_cross_entropy(x, y, reduction="none")

    def outcome(loss_: np.ndarray, grad_: np.ndarray) -> fuzz_api.Outcome:
        res = fuzz_api.LossResult((np.asarray(loss_, np.float64), np.asarray(grad_, np.float64)))
        res.types = ""
        return fuzz_api.Outcome("cpp", "ok", result=res, args=args)

    close = outcome(np.nextafter(loss, np.inf), np.nextafter(grad, np.inf))
    assert fuzz_api.check_vocab(entry, {"bad": None}, [close]) == []
    far_loss = fuzz_api.check_vocab(entry, {"bad": None}, [outcome(loss * (1 + 1e-4), grad)])
    assert [f.oracle for f in far_loss] == ["reference"], far_loss
    far_grad = fuzz_api.check_vocab(entry, {"bad": None}, [outcome(loss, grad + 1e-4)])
    assert [f.oracle for f in far_grad] == ["reference"], far_grad
    nan_moved = grad.copy()
    nan_moved[1, 2] = np.nan
    assert fuzz_api.check_vocab(entry, {"bad": None}, [outcome(loss, nan_moved)])


def test_vocab_shards_section_draws_its_cases() -> None:
    """The vocab_shards strategy reaches 1-class shards, all -inf shard rows, NaN, dense
    targets, every combining path, per-row grad_scale, out= and the options."""
    from hypothesis import HealthCheck, given, settings

    kinds = ("'sums'", "'stacked'", "'list'", "split='columns'", "split='index'", "split='csr'", "split='sparse'", "= -np.inf", "nan", "grad_scale=gs", "with_out=True",
             "softcap=", "z_loss=", "label_smoothing=", "ignore_index=", "weight=w", "torch.from_numpy", "1-class shard",
             "several shards", "bad call")
    seen: set[str] = set()
    entry = fuzz_api.ENTRY_POINTS["vocab_shards"]

    @settings(max_examples=400, database=None, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(entry.strategy)
    def draw(spec: dict) -> None:  # type: ignore[type-arg]
        src = entry.build(spec).source()
        seen.update(kind for kind in kinds if kind in src)
        widths = np.diff(spec["cuts"])
        if spec["bad"]:
            seen.add("bad call")
        elif len(widths) > 1:
            seen.add("several shards")
            if (widths == 1).any():
                seen.add("1-class shard")

    draw()
    assert seen == set(kinds), sorted(set(kinds) - seen)
