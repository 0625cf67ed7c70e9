"""Fused linear + cross-entropy (issue 14): time and extra peak memory of each contender.

    python bench/bench_linear.py                       # N=4096 D=1024 K=32000 float32, 2 threads
    python bench/bench_linear.py --n 1024 --d 512 --k 8000 --rounds 5
    python bench/bench_linear.py --quick               # tiny sizes, a smoke test
    python bench/bench_linear.py --accuracy --n 1024 --d 512 --k 8000   # worst float32 errors vs float64

Memory: every contender runs in a fresh subprocess: inputs are made, a small call of
the same contender warms up its libraries and threads, the RSS high-water mark is
reset (``/proc/self/clear_refs``), one full forward + backward runs, and its extra
peak memory is ``VmHWM - VmRSS before - the returned gradients' bytes`` (the resident
high-water mark of the process, so it counts every allocator: NumPy, PyTorch, BLAS).

Time: all contenders in one process (warmed up), called in turn, ``--rounds`` times:
the calls compared run side by side, so a burst of load from elsewhere (this machine
is shared) hits single calls, which the minimum discards. The minimum and the median
per contender are reported. Class-index targets, reduction "mean", no bias.

Contenders:
  fx_numpy[c]      fx.linear_cross_entropy (NumPy's matmul), chunk c rows (default: the memory budget)
  fx_torch[c]      fastxent.torch.linear_cross_entropy (torch.mm / addmm), chunk c
  gemm3_numpy      the three products alone, unchunked, NumPy: X = h @ W.T, X @ W, X.T @ h
  gemm3_torch      the same with torch.mm
  gemm3c_numpy[c]  the three products alone, chunked as fx_numpy[c] (no loss): what fx_numpy adds beyond the GEMMs
  gemm3c_torch[c]  the same with torch (addmm_ accumulation), as fx_torch[c]
  torch_unfused    F.cross_entropy(h @ W.T, t) forward + backward
  torch_lce[m]     F.linear_cross_entropy(..., options=LinearCrossEntropyOptions(m)): m = "default"
                   (its CPU default: aspect_ratio:2), "aspect_ratio", or a batch_chunk_size
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

from fastxent.bench.report import cpu_model


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@functools.cache
def _inputs(n: int, d: int, k: int) -> tuple[Any, Any, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    h_np = rng.standard_normal((n, d), dtype=np.float32)
    w_np = (rng.standard_normal((k, d), dtype=np.float32) * (1 / d**0.5)).astype(np.float32)
    return h_np, w_np, rng.integers(0, k, n)


@functools.cache
def _torch_leaves(n: int, d: int, k: int) -> tuple[Any, Any]:
    import torch

    h_np, w_np, _ = _inputs(n, d, k)
    return torch.from_numpy(h_np.copy()).requires_grad_(), torch.from_numpy(w_np.copy()).requires_grad_()


def _contender(name: str, n: int, d: int, k: int, threads: int) -> tuple[Callable[[int], Any], Callable[[Any], int]]:
    """(run(rows) -> result kept alive until measured, bytes of the returned gradients)."""
    import numpy as np

    h_np, w_np, t_np = _inputs(n, d, k)
    base, _, arg = name.partition("[")
    arg = arg.rstrip("]")
    chunk = int(arg) if arg.isdigit() else None

    def nbytes(res: Any) -> int:
        return sum(int(getattr(a, "nbytes", 0) or (a.numel() * a.element_size() if hasattr(a, "numel") else 0)) for a in res)

    if base in ("fx_numpy", "gemm3_numpy", "gemm3c_numpy"):
        import fastxent as fx

        fx.set_num_threads(threads)
        if base == "fx_numpy":
            def run(m: int) -> Any:
                return fx.linear_cross_entropy(h_np[:m], w_np, t_np[:m], chunk_size=chunk)[1]
        elif base == "gemm3_numpy":
            def run(m: int) -> Any:
                x = h_np[:m] @ w_np.T
                return (x @ w_np, x.T @ h_np[:m])
        else:
            from fastxent import linear as fl

            def run(m: int) -> Any:
                c = chunk or fl.default_chunk_size(m, k, 4)
                buf = np.empty((c, k), np.float32)
                d_in = np.empty((m, d), np.float32)
                d_w = np.empty((k, d), np.float32)
                block = max(1, min(k, fl._ACCUMULATE_BYTES // (d * 4)))
                acc = np.empty((block, d), np.float32)
                for r0 in range(0, m, c):
                    r1 = min(m, r0 + c)
                    g = buf[: r1 - r0]
                    np.matmul(h_np[r0:r1], w_np.T, out=g)
                    np.matmul(g, w_np, out=d_in[r0:r1])
                    if r0 == 0:
                        np.matmul(g.T, h_np[r0:r1], out=d_w)
                    else:
                        for k0 in range(0, k, block):
                            k1 = min(k, k0 + block)
                            np.matmul(g[:, k0:k1].T, h_np[r0:r1], out=acc[: k1 - k0])
                            d_w[k0:k1] += acc[: k1 - k0]
                return (d_in, d_w)
        return run, nbytes

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    h0 = torch.from_numpy(h_np)
    w0 = torch.from_numpy(w_np)
    t0 = torch.from_numpy(t_np)

    # The leaves are inputs: made once, before the measurement (their .grad is the result).
    h_leaf, w_leaf = _torch_leaves(n, d, k)

    if base == "gemm3_torch":
        def run(m: int) -> Any:
            x = h0[:m] @ w0.T
            return (x @ w0, x.T @ h0[:m])
        return run, nbytes
    if base == "gemm3c_torch":
        from fastxent import linear as fl

        def run(m: int) -> Any:
            c = chunk or fl.default_chunk_size(m, k, 4)
            buf = torch.empty((c, k))
            d_in = torch.empty((m, d))
            d_w = torch.empty((k, d))
            for r0 in range(0, m, c):
                r1 = min(m, r0 + c)
                g = buf[: r1 - r0]
                torch.mm(h0[r0:r1], w0.t(), out=g)
                torch.mm(g, w0, out=d_in[r0:r1])
                if r0 == 0:
                    torch.mm(g.t(), h0[r0:r1], out=d_w)
                else:
                    d_w.addmm_(g.t(), h0[r0:r1])
            return (d_in, d_w)
        return run, nbytes

    if base == "fx_torch":
        import fastxent
        import fastxent.torch as ft

        fastxent.set_num_threads(threads)

        def loss_fn(h: Any, w: Any, t: Any) -> Any:
            return ft.linear_cross_entropy(h, w, t, chunk_size=chunk)
    elif base == "torch_unfused":
        def loss_fn(h: Any, w: Any, t: Any) -> Any:
            return F.cross_entropy(h @ w.T, t)
    elif base == "torch_lce":
        if arg == "default":
            opts = torch.nn.LinearCrossEntropyOptions()
        elif arg.isdigit():
            opts = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=int(arg), chunking_method=None)
        else:
            opts = torch.nn.LinearCrossEntropyOptions(chunking_method=arg)

        def loss_fn(h: Any, w: Any, t: Any) -> Any:
            return F.linear_cross_entropy(h, w, t, options=opts)
    else:
        raise SystemExit(f"unknown contender {name!r}")

    def run(m: int) -> Any:
        h_leaf.grad = w_leaf.grad = None
        h = h_leaf if m == n else h_leaf[:m].detach().requires_grad_()
        loss_fn(h, w_leaf, t0[:m]).backward()
        res = (h.grad, w_leaf.grad)
        w_leaf.grad = None  # the caller holds the result as long as it keeps it, not the leaf
        return res

    def torch_nbytes(res: Any) -> int:
        return sum(a.numel() * a.element_size() for a in res)

    return run, torch_nbytes


def child(name: str, n: int, d: int, k: int, threads: int, repeat: int) -> dict[str, Any]:
    run, nbytes = _contender(name, n, d, k, threads)
    warm = run(min(n, 64))
    del warm
    inputs_rss = _status("VmRSS")
    reset = _reset_peak()
    t0 = time.perf_counter()
    res = run(n)
    first = time.perf_counter() - t0
    peak = _status("VmHWM")
    extra = peak - inputs_rss - nbytes(res)
    del res
    times = [first]
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = run(n)
        times.append(time.perf_counter() - t0)
        del res
    return {
        "contender": name, "median_s": statistics.median(times[1:]) if repeat else first, "times_s": times,
        "extra_peak_mib": extra / 2**20, "peak_reset": reset,
    }


def accuracy(n: int, d: int, k: int) -> None:
    """Worst float32 errors against the float64 unfused composition, relative to the
    largest reference value of each output (loss, d_input, d_linear_weight)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    import fastxent as fx
    import fastxent.torch as ft

    rng = np.random.default_rng(1)
    h = rng.standard_normal((n, d)).astype(np.float32)
    w = (rng.standard_normal((k, d)) / d**0.5 * 4).astype(np.float32)  # logits of spread ~4
    t = rng.integers(0, k, n)
    h64, w64 = h.astype(np.float64), w.astype(np.float64)
    ref_loss, g = fx.softmax_cross_entropy(h64 @ w64.T, t)
    ref = [np.float64(ref_loss), g @ w64, g.T @ h64]

    def torch_run(fn: Callable[[Any, Any], Any]) -> list[Any]:
        ht = torch.from_numpy(h).requires_grad_()
        wt = torch.from_numpy(w).requires_grad_()
        loss = fn(ht, wt)
        loss.backward()
        return [loss.detach().numpy(), ht.grad.numpy(), wt.grad.numpy()]

    tt = torch.from_numpy(t)
    opts = torch.nn.LinearCrossEntropyOptions()
    runs = {
        "fx.linear_cross_entropy": lambda: [fx.linear_cross_entropy(h, w, t)[0], *fx.linear_cross_entropy(h, w, t)[1][:2]],
        "fastxent.torch.linear_cross_entropy": lambda: torch_run(lambda a, b: ft.linear_cross_entropy(a, b, tt)),
        "torch unfused F.cross_entropy(h @ W.T)": lambda: torch_run(lambda a, b: F.cross_entropy(a @ b.T, tt)),
        "F.linear_cross_entropy(options=default)": lambda: torch_run(lambda a, b: F.linear_cross_entropy(a, b, tt, options=opts)),
    }
    print(f"# worst float32 error vs float64, relative to max |reference|: N={n} D={d} K={k}, {cpu_model()}")
    print(f"{'contender':42s} {'loss':>9s} {'d_input':>9s} {'d_weight':>9s}")
    for name, run in runs.items():
        got = run()
        errs = [float(np.max(np.abs(np.asarray(a, np.float64) - e)) / max(float(np.max(np.abs(e))), 1e-300))
                for a, e in zip(got, ref)]
        print(f"{name:42s} " + " ".join(f"{x:9.2e}" for x in errs))


def timing_child(names: list[str], n: int, d: int, k: int, threads: int, rounds: int) -> dict[str, list[float]]:
    """Every contender in this one process, called in turn, `rounds` times: the calls
    being compared run side by side, so a burst of load from elsewhere hits single
    calls (the minimum discards them), not whole contenders."""
    runs = {}
    for name in names:
        run, _ = _contender(name, n, d, k, threads)
        run(min(n, 64))  # warm-up: libraries, threads, BLAS buffers (the result is dropped)
        runs[name] = run
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            res = run(n)
            times[name].append(time.perf_counter() - t0)
            del res
            print(f"  round {r}: {name:28s} {times[name][-1]:8.3f} s", file=sys.stderr, flush=True)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--k", type=int, default=32000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=3, help="timed calls per contender, in turn with the others")
    ap.add_argument("--sweep", default="64,128,256,512,1024,2048", help="chunk sizes for fx_numpy[c] / fx_torch[c]")
    ap.add_argument("--contenders", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--json", default=None, help="write the rows here too")
    ap.add_argument("--quick", action="store_true", help="N=256 D=64 K=1000, one round: a smoke test")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--timing-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--accuracy", action="store_true", help="worst float32 errors against float64 instead of timings")
    a = ap.parse_args()
    if a.accuracy:
        accuracy(a.n, a.d, a.k)
        return
    if a.quick:
        a.n, a.d, a.k, a.rounds, a.sweep = 256, 64, 1000, 1, "64,512"
    if a.child:
        print(json.dumps(child(a.child, a.n, a.d, a.k, a.threads, a.repeat)))
        return
    if a.timing_child:
        print(json.dumps(timing_child(a.timing_child.split(","), a.n, a.d, a.k, a.threads, a.rounds)))
        return
    sweep = [int(c) for c in a.sweep.split(",") if c]
    names = a.contenders.split(",") if a.contenders else (
        ["fx_numpy", "fx_torch", "gemm3_numpy", "gemm3_torch", "gemm3c_numpy", "gemm3c_torch", "torch_unfused",
         "torch_lce[default]", "torch_lce[aspect_ratio]"]
        + [f"torch_lce[{c}]" for c in sweep if c >= 256]
        + [f"fx_numpy[{c}]" for c in sweep] + [f"fx_torch[{c}]" for c in sweep]
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OPENBLAS_NUM_THREADS=str(a.threads),
               MKL_NUM_THREADS=str(a.threads), FASTXENT_NUM_THREADS=str(a.threads))
    print(f"# N={a.n} D={a.d} K={a.k} float32, {a.threads} threads, {cpu_model()}, {os.cpu_count()} CPUs; "
          f"time: min/median of {a.rounds} calls per contender, all contenders in one process, in turn; "
          "extra peak = RSS high-water - inputs - returned grads, a fresh process per contender", flush=True)
    results: dict[str, dict[str, Any]] = {}
    base_cmd = [sys.executable, __file__, "--n", str(a.n), "--d", str(a.d), "--k", str(a.k), "--threads", str(a.threads)]
    for name in names:  # memory: a fresh process per contender, one full call after a small warm-up
        proc = subprocess.run([*base_cmd, "--child", name, "--repeat", "0"], capture_output=True, text=True, env=env,
                              check=False)
        if proc.returncode != 0:
            print(f"{name:28s} failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        results[name] = {"contender": name, "extra_peak_mib": row["extra_peak_mib"], "alone_s": row["times_s"][0]}
        print(f"  memory: {name:28s} {row['extra_peak_mib']:8.1f} MiB ({row['times_s'][0]:.3f} s alone)", file=sys.stderr,
              flush=True)
    proc = subprocess.run([*base_cmd, "--timing-child", ",".join(results), "--rounds", str(a.rounds)], stdout=subprocess.PIPE,
                          text=True, env=env, check=True)
    for name, ts in json.loads(proc.stdout.strip().splitlines()[-1]).items():
        results[name]["times_s"] = ts
    print(f"{'contender':28s} {'min s':>8s} {'median s':>9s} {'extra MiB':>10s}")
    for name, acc in results.items():
        acc["min_s"] = min(acc["times_s"])
        acc["median_s"] = statistics.median(acc["times_s"])
        print(f"{name:28s} {acc['min_s']:8.3f} {acc['median_s']:9.3f} {acc['extra_peak_mib']:10.1f}")
    if a.json:
        meta = {"n": a.n, "d": a.d, "k": a.k, "threads": a.threads, "cpu": cpu_model(), "rounds": a.rounds}
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "rows": list(results.values())}, f, indent=1)


if __name__ == "__main__":
    main()
