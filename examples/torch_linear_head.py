"""Train a small language-model head with fastxent's fused linear + cross-entropy.

The head's logits ``hidden @ head.weight.T + head.bias`` over the vocabulary are
never built whole: ``fastxent.torch.linear_cross_entropy`` takes the hidden states
and the head's parameters, computes the loss a chunk of tokens at a time, and gives
autograd the gradients of the hidden states, the weight and the bias::

    logits = head(hidden); loss = F.cross_entropy(logits, targets)                   # before
    loss = fastxent.torch.linear_cross_entropy(hidden, head.weight, targets,
                                               linear_bias=head.bias)                # after

To show the change is safe, two copies of the same model (token embedding, a causal
mixing layer, an MLP, the head) train from the same weights on the same batches of a
synthetic next-token task with torch.optim.AdamW, one with each loss, and both loss
curves are printed; they agree to float32 rounding. Padding positions are ignored
(ignore_index), and label smoothing is on.

    python examples/torch_linear_head.py           # default sizes
    python examples/torch_linear_head.py --quick   # small and fast (used by the tests)
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F

import fastxent.torch

PAD = -100


class TinyLM(torch.nn.Module):
    """tokens (batch, positions) -> hidden states (batch, positions, width); the head is separate."""

    def __init__(self, vocab: int, width: int, positions: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.pos = torch.nn.Parameter(torch.randn(positions, width) * 0.02)
        self.mix = torch.nn.Linear(width, width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width))
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, vocab)
        causal = torch.tril(torch.ones(positions, positions))
        self.register_buffer("avg", causal / causal.sum(1, keepdim=True))  # mean over the prefix

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        x = x + self.mix(self.avg[: tokens.shape[1], : tokens.shape[1]] @ x)
        return self.norm(x + self.mlp(x))


def make_data(g: torch.Generator, n: int, positions: int, vocab: int) -> torch.Tensor:
    """Sequences from a random sparse bigram table, so the next token is learnable."""
    nxt = torch.randint(0, vocab, (vocab, 4), generator=g)
    seq = torch.empty(n, positions + 1, dtype=torch.long)
    seq[:, 0] = torch.randint(0, vocab, (n,), generator=g)
    for p in range(positions):
        choice = torch.randint(0, 4, (n,), generator=g)
        seq[:, p + 1] = nxt[seq[:, p], choice]
    return seq


def train(*, n: int, positions: int, vocab: int, width: int, steps: int, batch: int, seed: int) -> tuple[list[float], list[float]]:
    g = torch.Generator().manual_seed(seed)
    data = make_data(g, n, positions, vocab)
    torch.manual_seed(seed)
    models = {"fastxent": TinyLM(vocab, width, positions)}
    models["torch"] = copy.deepcopy(models["fastxent"])
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-2) for k, m in models.items()}
    curves: dict[str, list[float]] = {"fastxent": [], "torch": []}
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        tokens, targets = data[idx, :-1], data[idx, 1:].clone()
        lengths = torch.randint(positions // 2, positions + 1, (batch,), generator=g)
        targets[torch.arange(positions)[None, :] >= lengths[:, None]] = PAD  # padded tails
        for name, model in models.items():
            opts[name].zero_grad()
            h = model.hidden(tokens)  # (batch, positions, width)
            if name == "fastxent":
                loss = fastxent.torch.linear_cross_entropy(
                    h, model.head.weight, targets, linear_bias=model.head.bias, ignore_index=PAD, label_smoothing=0.1
                )
            else:
                logits = model.head(h)  # (batch, positions, vocab): the array fastxent never builds
                loss = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1), ignore_index=PAD, label_smoothing=0.1)
            loss.backward()
            opts[name].step()
            curves[name].append(loss.item())
    return curves["fastxent"], curves["torch"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        sizes = {"n": 512, "positions": 16, "vocab": 256, "width": 32, "steps": 30, "batch": 16}
    else:
        sizes = {"n": 8192, "positions": 64, "vocab": 8000, "width": 128, "steps": 200, "batch": 32}
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(f"fastxent {fastxent.__version__}, torch {torch.__version__}, sizes {sizes}")
    ours, theirs = train(seed=args.seed, **sizes)
    worst = 0.0
    print(f"{'step':>5} {'fastxent':>12} {'torch':>12} {'rel diff':>10}")
    for step, (a, b) in enumerate(zip(ours, theirs)):
        rel = abs(a - b) / abs(b)
        worst = max(worst, rel)
        print(f"{step:5d} {a:12.6f} {b:12.6f} {rel:10.2e}")
    print(f"worst relative difference over {len(ours)} steps: {worst:.2e}")
    # float32: the two paths round differently (chunked sums, another GEMM split) and
    # AdamW carries it forward; anything beyond ~1e-4 would be a real difference.
    return 0 if worst < 1e-4 and ours[-1] < 0.9 * ours[0] else 1


if __name__ == "__main__":
    raise SystemExit(main())
