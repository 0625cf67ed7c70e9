"""Train a PyTorch model with fastxent's loss: a one-line change from torch.nn.CrossEntropyLoss.

    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)    # before
    criterion = fastxent.torch.CrossEntropyLoss(label_smoothing=0.1)  # after

To show the change is safe, this script trains two copies of the same model from the
same initial weights on the same batches, one with each loss, and prints both loss
curves step by step; they agree to float32 rounding. The task is next-token style:
a small MLP reads a window of features per position and predicts one of `classes`
labels at every position, so the logits are (batch, classes, positions), the layout
nn.CrossEntropyLoss expects for sequences; some positions are padding (ignore_index).

    python examples/torch_training.py           # default sizes
    python examples/torch_training.py --quick   # small and fast (used by the tests)
"""

from __future__ import annotations

import argparse
import copy

import torch

import fastxent.torch

PAD = -100


class Tagger(torch.nn.Module):
    """Per-position MLP: (batch, positions, features) -> logits (batch, classes, positions)."""

    def __init__(self, features: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(features, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).transpose(1, 2)


def make_data(
    g: torch.Generator, n: int, positions: int, features: int, classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, positions, features, generator=g)
    teacher = torch.randn(features, classes, generator=g)
    y = (x @ teacher + 0.5 * torch.randn(n, positions, classes, generator=g)).argmax(-1)
    lengths = torch.randint(positions // 2, positions + 1, (n,), generator=g)
    y[torch.arange(positions)[None, :] >= lengths[:, None]] = PAD  # padded tails
    return x, y


def train(
    *, n: int, positions: int, features: int, hidden: int, classes: int, steps: int, batch: int, seed: int
) -> tuple[list[float], list[float]]:
    g = torch.Generator().manual_seed(seed)
    x, y = make_data(g, n, positions, features, classes)
    torch.manual_seed(seed)
    model_fx = Tagger(features, hidden, classes)
    model_pt = copy.deepcopy(model_fx)
    criteria = {
        "fastxent": fastxent.torch.CrossEntropyLoss(ignore_index=PAD, label_smoothing=0.1),
        "torch": torch.nn.CrossEntropyLoss(ignore_index=PAD, label_smoothing=0.1),
    }
    models = {"fastxent": model_fx, "torch": model_pt}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=3e-3) for k, m in models.items()}
    curves: dict[str, list[float]] = {"fastxent": [], "torch": []}
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        xb, yb = x[idx], y[idx]
        for name, model in models.items():
            opts[name].zero_grad()
            loss = criteria[name](model(xb), yb)
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
        sizes = {"n": 512, "positions": 12, "features": 16, "hidden": 64, "classes": 100, "steps": 40, "batch": 32}
    else:
        sizes = {"n": 4096, "positions": 64, "features": 64, "hidden": 256, "classes": 2000, "steps": 200, "batch": 64}
    print(f"fastxent {fastxent.__version__}, torch {torch.__version__}, sizes {sizes}")
    ours, theirs = train(seed=args.seed, **sizes)
    worst = 0.0
    print(f"{'step':>5} {'fastxent':>12} {'torch':>12} {'rel diff':>10}")
    for step, (a, b) in enumerate(zip(ours, theirs)):
        rel = abs(a - b) / abs(b)
        worst = max(worst, rel)
        print(f"{step:5d} {a:12.6f} {b:12.6f} {rel:10.2e}")
    print(f"worst relative difference over {len(ours)} steps: {worst:.2e}")
    # float32 rounding differs between the two losses (different summation orders) and
    # the optimiser carries it forward; anything beyond ~1e-4 would be a real difference.
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
