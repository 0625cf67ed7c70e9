"""A multi-label classifier in plain NumPy, trained with fastxent's loss and fused gradient.

Each example has several correct labels (a multi-hot row y with sum(y) = m > 1). The
model is a one-hidden-layer MLP; the loss is the softmax cross-entropy against the
multi-hot row, whose gradient with respect to the logits is

    softmax(logits) * sum(y) - y

(not softmax - y, which is only right when sum(y) == 1). fastxent returns exactly
that gradient from the same pass over memory that computes the loss, so backprop
starts from it directly. The loss of a row cannot go below m * log(m) (all of the
softmax's mass spread evenly over the m correct labels): that floor is printed too.

    python examples/numpy_multilabel.py            # default sizes
    python examples/numpy_multilabel.py --quick    # small and fast (used by the tests)
"""

from __future__ import annotations

import argparse

import numpy as np

import fastxent as fx


def make_data(
    rng: np.random.Generator, n: int, features: int, labels: int, per_row: int
) -> tuple[np.ndarray, np.ndarray]:
    """Features x and multi-hot targets y: each row's labels are the top `per_row`
    scores of a hidden nonlinear teacher, so an MLP can learn them."""
    x = rng.standard_normal((n, features)).astype(np.float32)
    teacher_hidden = rng.standard_normal((features, 2 * features)) / np.sqrt(features)
    teacher_out = rng.standard_normal((2 * features, labels)) / np.sqrt(2 * features)
    scores = np.tanh(x @ teacher_hidden) @ teacher_out
    top = np.argsort(-scores, axis=1)[:, :per_row]
    y = np.zeros((n, labels), np.float32)
    np.put_along_axis(y, top, 1.0, axis=1)
    return x, y


def train(
    *, n: int, features: int, hidden: int, labels: int, per_row: int, steps: int, batch: int, lr: float, seed: int
) -> tuple[list[float], float]:
    """Training losses per step, and precision@per_row on held-out data."""
    rng = np.random.default_rng(seed)
    x_all, y_all = make_data(rng, n + n // 4, features, labels, per_row)
    x, y, x_test, y_test = x_all[:n], y_all[:n], x_all[n:], y_all[n:]
    w1 = (rng.standard_normal((features, hidden)) * np.sqrt(2.0 / features)).astype(np.float32)
    b1 = np.zeros(hidden, np.float32)
    w2 = (rng.standard_normal((hidden, labels)) * 0.01).astype(np.float32)
    b2 = np.zeros(labels, np.float32)
    params = [w1, b1, w2, b2]
    # Adam state
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    history = []
    for step in range(steps):
        idx = rng.choice(n, size=batch, replace=False)
        xb, yb = x[idx], y[idx]
        h_pre = xb @ w1 + b1
        h = np.maximum(h_pre, 0.0)
        logits = h @ w2 + b2
        # loss = mean over the batch; grad = d loss / d logits (already divided by batch)
        loss, dlogits = fx.softmax_cross_entropy(logits, yb, reduction="mean", inplace=True)
        assert dlogits is not None
        dw2 = h.T @ dlogits
        db2 = dlogits.sum(axis=0)
        dh = (dlogits @ w2.T) * (h_pre > 0)
        dw1 = xb.T @ dh
        db1 = dh.sum(axis=0)
        for i, (p, g) in enumerate(zip(params, [dw1, db1, dw2, db2])):
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat = m[i] / (1 - beta1 ** (step + 1))
            v_hat = v[i] / (1 - beta2 ** (step + 1))
            p -= (lr * m_hat / (np.sqrt(v_hat) + eps)).astype(np.float32)
        history.append(float(loss))

    # How often are the model's top `per_row` labels true ones, on examples it never saw?
    logits = np.maximum(x_test @ w1 + b1, 0.0) @ w2 + b2
    top = np.argsort(-logits, axis=1)[:, :per_row]
    return history, float(np.take_along_axis(y_test, top, axis=1).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        sizes = {
            "n": 2000,
            "features": 32,
            "hidden": 64,
            "labels": 50,
            "per_row": 3,
            "steps": 300,
            "batch": 128,
            "lr": 3e-3,
        }
    else:
        sizes = {
            "n": 10000,
            "features": 64,
            "hidden": 256,
            "labels": 1000,
            "per_row": 5,
            "steps": 800,
            "batch": 256,
            "lr": 2e-3,
        }
    print(f"fastxent {fx.__version__} ({fx.backend_info()['backend']}), sizes {sizes}")
    history, precision = train(seed=args.seed, **sizes)
    for step, loss in enumerate(history):
        if step % max(1, len(history) // 20) == 0 or step == len(history) - 1:
            print(f"step {step:5d}  loss {loss:.5f}")
    per_row, labels = int(sizes["per_row"]), int(sizes["labels"])
    tail = float(np.mean(history[-max(1, len(history) // 10) :]))
    # machine-readable summary (the tests read this line)
    print(
        f"summary first_loss={history[0]:.5f} last_loss={tail:.5f} floor={per_row * np.log(per_row):.5f} "
        f"precision={precision:.4f} chance={per_row / labels:.4f}"
    )
    print("(last_loss: mean of the last 10% of steps; floor: per_row*log(per_row), the lowest possible loss;")
    print(f" precision: held-out precision@{per_row}; chance: what random labels would score)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
