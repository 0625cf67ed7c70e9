"""Vocab-parallel cross-entropy: R processes of one thread each on (N x K/R) shards
against one process with R threads on the whole (N x K), forward + backward as a
training step runs them (fastxent.torch, loss.backward()), and the bytes each rank
communicates per call.

    python bench/bench_vocab_parallel.py [--size 2048x32000] [--ranks 2] [--repeats 15]

Each rank times its own calls (warm, back to back; a barrier before each so the
ranks start together) and the slowest rank's median is the call's time. The
single-process row runs in a process of its own after the ranks have exited.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from fastxent.bench.report import cpu_model


def rank_main(rank: int, ranks: int, n: int, k: int, repeats: int, store: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    import fastxent as fx
    import fastxent.torch as fxt

    torch.set_num_threads(1)
    fx.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=ranks,
                            timeout=datetime.timedelta(seconds=120))
    cuts = [k * r // ranks for r in range(ranks + 1)]
    g = torch.Generator().manual_seed(rank)
    x = (torch.randn(n, cuts[rank + 1] - cuts[rank], generator=g) * 3).requires_grad_(True)
    y = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(99))
    sent = []
    reduce, gather = dist.all_reduce, dist.all_gather

    def counting_reduce(t, *a, **kw):  # type: ignore[no-untyped-def]
        sent.append(t.numel() * t.element_size())
        return reduce(t, *a, **kw)

    def counting_gather(ts, t, *a, **kw):  # type: ignore[no-untyped-def]
        sent.append(t.numel() * t.element_size())
        return gather(ts, t, *a, **kw)

    times = []
    for i in range(repeats + 3):
        dist.barrier()
        dist.all_reduce, dist.all_gather = counting_reduce, counting_gather  # type: ignore[assignment]
        sent.clear()
        t0 = time.perf_counter()
        loss = fxt.vocab_parallel_cross_entropy(x, y, vocab_start=cuts[rank])
        loss.backward()
        elapsed = time.perf_counter() - t0
        dist.all_reduce, dist.all_gather = reduce, gather  # type: ignore[assignment]
        x.grad = None
        if i >= 3:
            times.append(elapsed)
    with open(out, "w") as f:
        json.dump({"median": statistics.median(times), "bytes": sum(sent), "collectives": len(sent)}, f)
    dist.destroy_process_group()


def single_main(threads: int, n: int, k: int, repeats: int, out: str) -> None:
    import torch

    import fastxent as fx
    import fastxent.torch as fxt

    torch.set_num_threads(threads)
    fx.set_num_threads(threads)
    x = (torch.randn(n, k, generator=torch.Generator().manual_seed(0)) * 3).requires_grad_(True)
    y = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(99))
    times = []
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        fxt.cross_entropy(x, y).backward()
        elapsed = time.perf_counter() - t0
        x.grad = None
        if i >= 3:
            times.append(elapsed)
    with open(out, "w") as f:
        json.dump({"median": statistics.median(times)}, f)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="2048x32000")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    n, k = map(int, args.size.lower().split("x"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        outs = [os.path.join(tmp, f"rank{r}.json") for r in range(args.ranks)]
        procs = [
            subprocess.Popen([sys.executable, __file__, "--rank", str(r), str(args.ranks), str(n), str(k),
                              str(args.repeats), os.path.join(tmp, "store"), outs[r]], env=env)
            for r in range(args.ranks)
        ]
        try:
            codes = [p.wait(timeout=600) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        if any(codes):
            print(f"a rank failed: {codes}")
            return 1
        ranks = []
        for o in outs:
            with open(o) as f:
                ranks.append(json.load(f))
        single_out = os.path.join(tmp, "single.json")
        subprocess.run([sys.executable, __file__, "--single", str(args.ranks), str(n), str(k), str(args.repeats),
                        single_out], check=True, timeout=600)
        with open(single_out) as f:
            single = json.load(f)
    par = max(r["median"] for r in ranks)
    each = ", ".join(f"{r['median'] * 1e3:.1f}" for r in ranks)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; float32, class-index targets, forward + backward")
    print(f"{args.ranks} ranks x ({n} x {k // args.ranks}), 1 thread each: {par * 1e3:8.1f} ms per call "
          f"(slowest rank's median; each rank: {each} ms)")
    print(f"1 process  x ({n} x {k}), {args.ranks} threads:   {single['median'] * 1e3:8.1f} ms per call")
    print(f"ratio: {par / single['median']:.2f}x; per rank and call: {ranks[0]['collectives']} collectives, "
          f"{ranks[0]['bytes']} bytes sent ({ranks[0]['bytes'] / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rank":
        a = sys.argv[2:]
        rank_main(int(a[0]), int(a[1]), int(a[2]), int(a[3]), int(a[4]), a[5], a[6])
    elif len(sys.argv) > 1 and sys.argv[1] == "--single":
        a = sys.argv[2:]
        single_main(int(a[0]), int(a[1]), int(a[2]), int(a[3]), a[4])
    else:
        sys.exit(main())
