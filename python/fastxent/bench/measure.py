"""How the benchmark measures: timing, warm-up, medians, peak memory, loss agreement.

Every case times its contenders round-robin (repeat r runs them all, starting at a
rotating position), so a noisy neighbour slows every contender of a case alike, with
the garbage collector off, and reports medians. In its turn a contender gets a pause
(other frameworks' worker threads fall asleep), one call timed as the COLD sample
(after the pause), then `burst` back-to-back calls timed as WARM samples: what
`timeit` of the same call measures, and what a training loop calling the loss step
after step sees. The tables report the warm median; the cold one is in the CSV/JSON
(`cold_ms`) and in the fx_alloc cold column. Each contender is also checked to
compute the same loss as the case's reference call (exit status 1 if one does not):
a speedup is only worth printing when both sides compute the same thing.

Extra peak memory of one call: for the NumPy-based contenders (fastxent, floor,
numpy) the tracemalloc peak, which sees every NumPy array allocation (NumPy reports
them in its tracemalloc domain) and nothing else; for PyTorch and JAX, whose
allocators tracemalloc cannot see, the rise of the process's peak resident memory
(VmHWM, reset before the call), a lower bound since memory an allocator kept from an
earlier call is reused without showing. "extra N x K" = that peak / (N K itemsize).

The `adapters` mode uses the same round-robin loop, in a fixed order, without the
pause and with the collector on (`time_round_robin`'s options).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

import fastxent as fx

from . import cases
from .cases import Case, Contender, loaded

CHILD_TIMEOUT_S = 1800.0  # one case's isolated contenders, compile included
SETTLE_S = 0.05  # pause before each contender's turn in a round: see time_warm_cold
BURST = 3  # warm (back-to-back) calls timed per contender per round
# Loss agreement between contenders: different summation orders give a relative
# difference of a few eps * log(K) for the mean loss; these bounds are far above that
# and far below any real disagreement (a wrong normalisation is a factor, not 1e-4).
# (16-bit: PyTorch and JAX return their loss rounded to the dtype, fastxent in float32)
LOSS_RTOL = {"float32": 1e-4, "float64": 1e-9, "bfloat16": 2e-2, "float16": 4e-3}


def set_threads(n: int) -> None:
    """fastxent's thread count, and PyTorch's when a case has imported it."""
    fx.set_num_threads(n)
    torch = loaded("torch")
    if torch is not None:
        torch.set_num_threads(n)


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def time_round_robin(calls: Mapping[str, Callable[[], object]], repeats: int, warmup: int, *,
                     rotate: bool, settle_s: float) -> dict[str, list[float]]:
    """Seconds of each call, `repeats` times: `warmup` untimed rounds of every call
    first, then round r runs them all, starting at call r when `rotate` (so the
    order's own effects fall on every call alike), each after a `settle_s` pause."""
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    for r in range(repeats):
        start = r % len(names) if rotate and names else 0
        for name in names[start:] + names[:start]:
            if settle_s:
                # PyTorch's OpenMP and JAX's Eigen workers keep spinning for a while
                # after their call; timed right after them, fastxent's second thread
                # shares its core with a spinner (+15% at 2048x32000). Let them sleep.
                time.sleep(settle_s)
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def time_warm_cold(calls: Mapping[str, Callable[[], object]], repeats: int, warmup: int, *, burst: int = BURST,
                   settle_s: float = SETTLE_S) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(warm, cold) seconds of each call: `warmup` untimed rounds of every call first,
    then `repeats` rounds, round r starting at call r; in a round each call gets a
    `settle_s` pause, one timed call (cold: after the pause) and `burst` timed calls
    back to back (warm)."""
    names = list(calls)
    warm: dict[str, list[float]] = {name: [] for name in names}
    cold: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    for r in range(repeats):
        start = r % len(names) if names else 0
        for name in names[start:] + names[:start]:
            fn = calls[name]
            if settle_s:
                # PyTorch's OpenMP and JAX's Eigen workers keep spinning for a while
                # after their calls; timed right after them, fastxent's second thread
                # would share its core with a spinner. Let them sleep.
                time.sleep(settle_s)
            t0 = time.perf_counter()
            fn()
            cold[name].append(time.perf_counter() - t0)
            for _ in range(burst):
                t0 = time.perf_counter()
                fn()
                warm[name].append(time.perf_counter() - t0)
    return warm, cold


def median_ms(seconds: list[float]) -> float:
    return 1e3 * float(np.median(seconds))


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def _peak_bytes(c: Contender) -> tuple[float | None, Any, str]:
    """(extra peak bytes of one call or None, the call's loss, method)."""
    assert c.fn is not None
    if c.mem == "tracemalloc":
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        loss = c.fn()
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        return float(peak), loss, "tracemalloc"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        before = _status_kb("VmRSS")
        loss = c.fn()
        return 1024.0 * max(0, _status_kb("VmHWM") - before), loss, "rss_hwm"
    except (OSError, KeyError):
        return None, c.fn(), "n/a"


def _time_in_child(case: Case, names: list[str], repeats: int, warmup: int, burst: int) -> dict[str, Any]:
    """Times the contenders `names` of a main case in a new Python process (the same
    round-robin, pauses and memory measure): {name: {"warm", "cold", "peak", "loss",
    "method", "note"}}, or {name: {"note": why}} when it could not run there."""
    spec = {"n": case.n, "k": case.k, "dtype": case.dtype, "target": case.target, "threads": case.threads,
            "names": names, "repeats": repeats, "warmup": warmup, "burst": burst}
    code = "import sys; from fastxent.bench.measure import isolated_child; sys.exit(isolated_child(sys.argv[1]))"
    try:
        done = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result
    except (OSError, RuntimeError, ValueError, IndexError, subprocess.TimeoutExpired) as e:
        return {name: {"note": f"its own process failed: {e}"} for name in names}


def isolated_child(spec_json: str) -> int:
    """The child of _time_in_child: prints one JSON line of results."""
    spec = json.loads(spec_json)
    cases.IN_CHILD = True
    case = cases.main_case(spec["n"], spec["k"], spec["dtype"], spec["target"], spec["threads"])
    contenders = [c for c in case.build() if c.name in spec["names"]]
    set_threads(case.threads)
    live = [c for c in contenders if c.fn is not None]
    with _no_gc():
        warm, cold = time_warm_cold({c.name: c.fn for c in live if c.fn is not None}, spec["repeats"],
                                    spec["warmup"], burst=spec["burst"])
    out: dict[str, Any] = {c.name: {"note": c.note} for c in contenders}
    for c in live:
        peak, loss, method = _peak_bytes(c)
        out[c.name].update(warm=warm[c.name], cold=cold[c.name], peak=peak,
                           loss=None if loss is None else float(loss), method=method)
    print(json.dumps(out))
    return 0


def run_case(case: Case, repeats: int, warmup: int, burst: int = BURST) -> list[dict[str, Any]]:
    """One result row per contender of `case` (n/a contenders included, untimed).
    Contenders that would disturb the others (Contender.isolated) are timed after
    them, in a process of their own."""
    contenders = case.build()  # first: it imports torch, whose threads are set next
    set_threads(case.threads)
    live = [c for c in contenders if c.fn is not None]
    with _no_gc():
        times, cold = time_warm_cold({c.name: c.fn for c in live if c.fn is not None}, repeats, warmup, burst=burst)
    mem: dict[str, tuple[float | None, Any, str]] = {c.name: _peak_bytes(c) for c in live}
    isolated = [c.name for c in contenders if c.isolated]
    if isolated:
        child = _time_in_child(case, isolated, repeats, warmup, burst)
        for i, c in enumerate(contenders):
            if not c.isolated:
                continue
            got = child.get(c.name, {"note": "its own process returned nothing"})
            if "warm" in got:
                times[c.name], cold[c.name] = got["warm"], got["cold"]
                mem[c.name] = (got["peak"], got["loss"], got["method"])
            note = "; ".join(x for x in ["own process" if "warm" in got else "", got["note"]] if x)
            contenders[i] = dataclasses.replace(c, note=note)
    medians = {name: median_ms(ts) for name, ts in times.items()}
    np_same = {"fastxent": medians.get("np_floor"), "fastxent_alloc": medians.get("np_alloc")}
    losses = {name: (None if m[1] is None else float(m[1])) for name, m in mem.items()}
    ref_ms, floor_ms, ref_loss = medians.get(case.reference), medians.get("floor"), losses.get(case.reference)
    nk_bytes = case.n * case.k * case.itemsize
    rows = []
    for c in contenders:
        row: dict[str, Any] = {
            "case": case.name, "group": case.group, "n": case.n, "k": case.k, "dtype": case.dtype,
            "target": case.target, "threads": case.threads, "contender": c.name, "label": c.label,
            "median_ms": None, "min_ms": None, "cold_ms": None, "repeats": 0, "vs_floor": None, "vs_numpy": None,
            "fastxent_speedup": None,
            "peak_bytes": None, "extra_nk_arrays": None, "mem_method": None, "loss": None,
            "loss_rel_diff": None, "note": "; ".join(x for x in [c.note, *case.notes] if x) or "",
        }
        if c.name in medians:  # timed here, or in its own process
            ms = medians[c.name]
            peak, _, method = mem[c.name]
            loss = losses[c.name]
            row.update(
                median_ms=ms, min_ms=1e3 * min(times[c.name]), cold_ms=median_ms(cold[c.name]),
                repeats=len(times[c.name]), vs_floor=None if floor_ms is None else ms / floor_ms,
                vs_numpy=None if (np_ms := np_same.get(c.name)) is None else ms / np_ms,
                fastxent_speedup=None if ref_ms is None else ms / ref_ms,
                peak_bytes=peak, extra_nk_arrays=None if peak is None else peak / nk_bytes,
                mem_method=method, loss=loss,
            )
            if loss is not None and ref_loss is not None:
                row["loss_rel_diff"] = abs(loss - ref_loss) / max(abs(ref_loss), 1e-30)
        rows.append(row)
    del contenders, live
    return rows


def loss_mismatches(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["loss_rel_diff"] is not None and r["loss_rel_diff"] > LOSS_RTOL[r["dtype"]]]
