"""`python -m fastxent bench --quick` and `python -m fastxent bench adapters` run end
to end and write what they promise.

No timing is asserted (CI machines are noisy); what is asserted is the shape of the
results and that every contender of a case computed the same loss, which is what
makes the benchmark's ratios meaningful.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastxent as fx
from fastxent import bench
from fastxent.bench import cases, measure, report

MAIN_CONTENDERS = ["fastxent", "fastxent_alloc", "floor", "np_floor", "np_alloc", "numpy", "torch", "jax"]


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m fastxent bench ARGS` in a process of its own, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "fastxent", "bench", *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench")
    return run_bench("--quick", "--threads", "1,2", "--out", str(out)), out


def test_exits_zero_with_progress_and_table(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[1/" in proc.stderr  # progress goes to stderr
    for group in ("main", "sparse_vs_dense", "multilabel", "train_step"):
        assert f"== {group}:" in proc.stdout
    assert "CPU: " in proc.stdout  # the tables name the machine they ran on
    assert "LOSS MISMATCH" not in proc.stdout + proc.stderr


def test_csv_has_every_case_and_contender(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = quick_run
    with (out / "bench.csv").open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == report.CSV_COLUMNS
        rows = list(reader)
    cases = {r["case"] for r in rows}
    expected_main = {f"64x1000/{dt}/{tg}/t{t}" for dt in ("float32", "float64") for tg in ("dense", "int")
                     for t in (1, 2)}
    assert expected_main <= cases
    for t in (1, 2):
        assert f"sparse1%/64x2000/float32/t{t}" in cases
        assert f"multilabel10/16x8192/float32/t{t}" in cases
        assert f"train-step/64x32->1000/float32/t{t}" in cases
    assert len(cases) == len(expected_main) + 6
    by_case: dict[str, dict[str, dict[str, str]]] = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["contender"]] = r
    for case in expected_main:
        assert list(by_case[case]) == MAIN_CONTENDERS
        for c in MAIN_CONTENDERS:  # torch, jax and optax are installed in CI: nothing is n/a
            assert float(by_case[case][c]["median_ms"]) > 0
            assert int(by_case[case][c]["repeats"]) == 2  # --quick: 2 rounds of 1 warm call
            assert float(by_case[case][c]["cold_ms"]) > 0
        assert float(by_case[case]["fastxent_alloc"]["fastxent_speedup"]) == 1.0
        assert by_case[case]["jax"]["note"].startswith("own process")  # its threads spin: timed apart
        assert float(by_case[case]["floor"]["vs_floor"]) == 1.0
        # fastxent's out= and allocating calls beside NumPy moving the same bytes the same way
        for fx_name, np_name in (("fastxent", "np_floor"), ("fastxent_alloc", "np_alloc")):
            r = by_case[case][fx_name]
            assert float(r["vs_numpy"]) == pytest.approx(float(r["median_ms"]) / float(by_case[case][np_name]["median_ms"]))


def test_losses_agree_and_memory_is_one_gradient(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = quick_run
    doc = json.loads((out / "bench.json").read_text())
    assert doc["meta"]["fastxent"]["backend"] == "cpp"
    rows = doc["results"]
    assert measure.loss_mismatches(rows) == []
    checked = 0
    for r in rows:
        if r["loss_rel_diff"] is not None:
            assert r["loss_rel_diff"] <= measure.LOSS_RTOL[r["dtype"]], r
            checked += 1
        if r["mem_method"] == "tracemalloc" and r["contender"] == "fastxent_alloc":
            # tracemalloc sees NumPy's allocations: the gradient (one N x K array) plus
            # the N row losses and small bookkeeping.
            assert 1.0 <= r["extra_nk_arrays"] < 1.2, r
        if r["mem_method"] == "tracemalloc" and r["contender"] in ("fastxent", "floor", "np_floor"):
            assert r["extra_nk_arrays"] < 0.2, r  # out=g: no N x K allocation at all
    # every contender of every case that computes a loss had it compared with fastxent's
    assert checked == sum(1 for r in rows if r["contender"] not in cases.FLOORS)


def test_png_written(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = quick_run
    png = out / "bench.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "12by5"])
    with pytest.raises(SystemExit):
        bench.main(["--dtypes", "int8"])
    assert bench.main(["--only", "no-such-case"]) == 2
    with pytest.raises(SystemExit):
        bench.main(["adapters", "--sizes", "12by5"])
    assert bench.main(["adapters", "--repeats", "0"]) == 2


def test_adapters_mode_without_torch_says_so() -> None:
    code = "import sys; sys.modules['torch'] = None; from fastxent.bench import main; raise SystemExit(main(['adapters']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("adapters: needs torch, jax, fastxent.torch, fastxent.jax; torch unavailable:")


def test_plain_numpy_references_match_fastxent() -> None:
    """The 'plain NumPy' contender is a correct cross-entropy (else its timing means nothing)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 13))
    y = (rng.random((7, 13)) < 0.3).astype(np.float64)
    t = rng.integers(0, 13, size=7)
    for (loss, grad), targets in ((cases.plain_numpy_dense(x, y), y), (cases.plain_numpy_index(x, t), t)):
        fl, fg = fx.softmax_cross_entropy(x, targets)
        # float64 throughout: agreement to a few ulps of the values involved
        np.testing.assert_allclose(loss, fl, rtol=1e-12)
        np.testing.assert_allclose(grad, fg, rtol=1e-10, atol=1e-14)


def test_adapters_mode_times_every_call() -> None:
    proc = run_bench("adapters", "--sizes", "64x1000,32x500", "--repeats", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("fastxent {")  # the versions line: fastxent's backend_info, torch, jax
    assert ", torch " in lines[0]
    assert ", jax " in lines[0]
    for size in ("64x1000", "32x500"):
        block = lines[lines.index(f"{size} float32 (median of 2, ms)") + 1 :][:5]
        names = [line[:28].strip() for line in block]
        assert names == ["raw kernel", "fastxent.torch fwd+bwd", "same, loss*3.7", "torch native fwd+bwd",
                         "fastxent.jax jit(v&g)"]
        assert "(1.00x raw, +0.000 ms)" in block[0]
        assert all(float(line[28:37]) > 0 for line in block)


def test_importing_the_bench_imports_no_framework() -> None:
    """The frameworks are extras: the bench imports them when a case needs them."""
    code = ("import sys, fastxent, fastxent.bench.cases, fastxent.bench.measure, fastxent.bench.report, "
            "fastxent.bench.cli; "
            "print(sorted(m for m in ('torch', 'jax', 'optax', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "[]"


@pytest.mark.slow
def test_frameworks_mode_runs_each_framework_in_its_own_process() -> None:
    from fastxent.bench import frameworks

    results = frameworks.run(16, 50, repeats=1, threads=1)
    want = {"fastxent.jax dense", "optax integer", "fastxent.torch compiled integer", "F.cross_entropy dense"}
    assert want <= set(results), results
    assert all(ms > 0 for ms in results.values())
    assert "optax dense / fastxent.jax dense" in frameworks.table(results)
