"""A classifier head split over 2 processes (vocab-parallel), trained with
fastxent.torch.vocab_parallel_cross_entropy over torch.distributed (gloo, on this
machine), against the same model trained in one process: the loss curves agree
step for step.

    python examples/torch_vocab_parallel.py            # launches 2 ranks, then compares

Each rank holds the whole trunk (replicated) and the rows [v_r, v_r + K_r) of the
head's weight. Forward: every rank computes the same hidden states and its shard of
the logits; the loss combines the shards' row statistics (two all-reduces of O(N)).
Backward: each rank gets its head shard's gradient with no communication; the
hidden states' gradient is the sum of the ranks' parts (one all-reduce of N x D, as
in Megatron-LM's column-parallel linear layer), so the replicated trunk stays equal.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.distributed as dist

import fastxent.torch as fxt

N, D, K, STEPS = 256, 32, 1000, 15
CUTS = [0, 600, K]  # uneven shards: 600 and 400 classes


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 16, generator=g)
    y = torch.randint(0, K, (N,), generator=g)
    return x, y


def init_params() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(1)
    trunk = torch.nn.Sequential(torch.nn.Linear(16, D), torch.nn.Tanh())
    head = torch.randn(K, D) * 0.1
    return trunk, head


class _SumGradAcrossRanks(torch.autograd.Function):
    """Identity forward; backward adds the ranks' gradients (each rank's head shard
    contributes its part of d loss / d hidden)."""

    @staticmethod
    def forward(ctx: object, h: torch.Tensor) -> torch.Tensor:
        return h.view_as(h)

    @staticmethod
    def backward(ctx: object, g: torch.Tensor) -> torch.Tensor:
        g = g.clone()
        dist.all_reduce(g)
        return g


def train(rank: int | None) -> list[float]:
    """rank None: one process with the whole head; else this rank's shard."""
    x, y = data()
    trunk, head = init_params()
    start, stop = (0, K) if rank is None else (CUTS[rank], CUTS[rank + 1])
    w = torch.nn.Parameter(head[start:stop].clone())
    opt = torch.optim.AdamW([*trunk.parameters(), w], lr=1e-2)
    curve = []
    for _ in range(STEPS):
        opt.zero_grad()
        h = trunk(x)
        if rank is None:
            loss = fxt.cross_entropy(h @ w.T, y, label_smoothing=0.1)
        else:
            logits_shard = _SumGradAcrossRanks.apply(h) @ w.T
            loss = fxt.vocab_parallel_cross_entropy(logits_shard, y, vocab_start=start, label_smoothing=0.1)
        loss.backward()
        opt.step()
        curve.append(loss.item())
    return curve


def rank_main(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        np.save(out, np.array(train(rank)))
    finally:
        dist.destroy_process_group()


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        outs = [os.path.join(tmp, f"rank{r}.npy") for r in range(2)]
        procs = [subprocess.Popen([sys.executable, __file__, "--rank", str(r), store, outs[r]]) for r in range(2)]
        try:
            codes = [p.wait(timeout=300) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        if any(codes):
            print(f"a rank failed: exit codes {codes}")
            return 1
        curves = [np.load(o) for o in outs]
    single = np.array(train(None))
    print("step  one process   2 ranks (rank 0)   rank 1")
    for i, (a, b, c) in enumerate(zip(single, curves[0], curves[1])):
        print(f"{i:4d}  {a:.7f}   {b:.7f}          {c:.7f}")
    worst = float(np.max(np.abs(curves[0] - single) / single))
    same = bool(np.array_equal(curves[0], curves[1]))
    print(f"largest relative difference from one process: {worst:.2e}; both ranks equal: {same}")
    return 0 if worst < 1e-5 and same and single[-1] < single[0] else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rank":
        rank_main(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        sys.exit(main())
