"""One rank of a torch.distributed (gloo) group running vocab-parallel cases, for
tests/test_vocab_parallel_torch.py: launched as its own process on loopback (a
file store), it runs every case of a pickled list and pickles what it saw.

    python vocab_parallel_worker.py CASES.pkl STORE_FILE RANK WORLD OUT.pkl

Each case holds the whole (N, K) problem and the class ranges of the ranks; this
rank takes its columns, calls fastxent.torch.vocab_parallel_cross_entropy, runs
backward, and records the loss, its gradient shard, the collectives it made
(counted by wrapping torch.distributed's) and any error's type and message. An
error on one case does not stop the others: the function raises on every rank alike.
"""

from __future__ import annotations

import datetime
import pickle
import sys
import traceback
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

import fastxent as fx
import fastxent.torch as fxt


class CollectiveLog:
    """Wraps all_reduce / all_gather to count calls and the values they move."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []  # (phase, kind, numel)
        self.phase = "forward"
        self._reduce, self._gather = dist.all_reduce, dist.all_gather

        def all_reduce(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.calls.append((self.phase, "all_reduce", tensor.numel()))
            return self._reduce(tensor, *args, **kwargs)

        def all_gather(tensors: list[torch.Tensor], tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.calls.append((self.phase, "all_gather", tensor.numel() * len(tensors)))
            return self._gather(tensors, tensor, *args, **kwargs)

        dist.all_reduce, dist.all_gather = all_reduce, all_gather  # type: ignore[assignment]


def to_tensor(a: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.to(getattr(torch, dtype)) if t.is_floating_point() else t


def run_case(case: dict[str, Any], rank: int, log: CollectiveLog) -> dict[str, Any]:
    start, stop = case["ranges"][rank]
    x = case["logits"][:, start:stop]
    t = case["target"] if case["target"].dtype.kind in "iu" else case["target"][:, start:stop]
    w = None if case.get("weight") is None else to_tensor(case["weight"][start:stop], "float32")
    opts = dict(case.get("options", {}))
    over = case.get("override", {}).get(rank, {})
    if "rows" in over:
        x, t = x[: over["rows"]], t[: over["rows"]]
    if "target" in over:
        t = over["target"]
    if "weight" in over:
        w = to_tensor(over["weight"], "float32")
    opts.update(over.get("options", {}))
    logits = to_tensor(x, over.get("dtype", case["dtype"])).requires_grad_(True)
    log.calls.clear()
    log.phase = "forward"
    try:
        loss = fxt.vocab_parallel_cross_entropy(logits, torch.from_numpy(np.ascontiguousarray(t)),
                                                vocab_start=over.get("vocab_start", start), weight=w, **opts)
        log.phase = "backward"
        upstream = torch.ones_like(loss) if loss.dim() == 0 else torch.linspace(0.5, 1.5, loss.numel(),
                                                                                 dtype=loss.dtype)
        loss.backward(upstream)
    except Exception as exc:  # noqa: BLE001 - recorded for the test to judge
        return {"error": (type(exc).__name__, str(exc)), "calls": list(log.calls)}
    assert logits.grad is not None
    return {
        "loss": loss.detach().to(torch.float64).numpy(),
        "grad": logits.grad.to(torch.float64).numpy(),
        "calls": list(log.calls),
    }


def main() -> None:
    cases_path, store, rank, world, out_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    torch.set_num_threads(1)
    fx.set_num_threads(1)
    with open(cases_path, "rb") as f:
        cases = pickle.load(f)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    log = CollectiveLog()
    results = []
    try:
        for case in cases:
            results.append(run_case(case, rank, log))
    except BaseException:  # noqa: BLE001 - the parent reads the traceback
        results.append({"fatal": traceback.format_exc()})
    finally:
        with open(out_path, "wb") as f:
            pickle.dump(results, f)
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
