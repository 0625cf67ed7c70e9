"""Runs fastxent.jax's vocab-parallel functions under jax.shard_map on 3 host CPU
devices (XLA_FLAGS must be set before jax starts, hence a process of its own), for
tests/test_vocab_parallel_jax.py:  python vocab_parallel_jax_worker.py CASES.pkl OUT.pkl

Per case: the loss of every shard (the output is replicated: out_specs P()), the
gradient of the mean for the logits (and the labels, for dense labels) assembled
from the shards, and for the first case the lowered HLO of the jitted call.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from typing import Any

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=3"

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import fastxent.jax as fj

shard_map: Any = getattr(jax, "shard_map", None)
if shard_map is None:  # jax < 0.6
    from jax.experimental.shard_map import shard_map


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    shards, integer = case["shards"], case["target"].dtype.kind in "iu"
    mesh = Mesh(np.array(jax.devices()[:shards]), ("v",))
    x, t = jnp.asarray(case["logits"]), jnp.asarray(case["target"])
    starts = case.get("starts")

    def local(xs: jax.Array, ts: jax.Array) -> jax.Array:
        kw: dict[str, Any] = {"axis_name": "v", "num_classes": case.get("num_classes")}
        if starts is not None:
            kw["vocab_start"] = jnp.asarray(starts)[jax.lax.axis_index("v")]
        if integer:
            return fj.vocab_parallel_softmax_cross_entropy_with_integer_labels(xs, ts, **kw)
        return fj.vocab_parallel_softmax_cross_entropy(xs, ts, **kw)

    f = shard_map(local, mesh=mesh, in_specs=(P(None, "v"), P() if integer else P(None, "v")), out_specs=P())
    try:
        loss = jax.jit(f)(x, t)
        argnums = (0,) if integer else (0, 1)
        vg = jax.jit(jax.value_and_grad(lambda a, b: f(a, b).mean(), argnums=argnums))
        value, grads = vg(x, t)
        out = {"loss": np.asarray(loss), "mean": float(value), "grad": np.asarray(grads[0])}
        if not integer:
            out["label_grad"] = np.asarray(grads[1])
        if case.get("hlo"):
            out["hlo"] = vg.lower(x, t).compile().as_text()
        return out
    except Exception as exc:  # noqa: BLE001 - the test judges the error
        return {"error": (type(exc).__name__, str(exc))}


def main() -> None:
    with open(sys.argv[1], "rb") as f:
        cases = pickle.load(f)
    results: list[dict[str, Any]] = []
    try:
        for case in cases:
            results.append(run_case(case))
    except BaseException:  # noqa: BLE001
        results.append({"fatal": traceback.format_exc()})
    with open(sys.argv[2], "wb") as f:
        pickle.dump(results, f)


if __name__ == "__main__":
    main()
