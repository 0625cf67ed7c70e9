"""`python -m fastxent bench`: fastxent side by side with the memory floor, plain
NumPy, PyTorch and JAX, in one run.

Every case times its contenders round-robin (repeat r runs them all, starting at a
rotating position), so a noisy neighbour slows every contender of a case alike,
and reports medians. Each contender is also checked to compute the same loss as
the case's fastxent call (exit status 1 if one does not): a speedup is only worth
printing when both sides compute the same thing.

Contenders of the main cases (N x K logits, mean reduction, loss + gradient):
  fastxent        fx.softmax_cross_entropy(x, y, out=g): gradient into a preallocated g
  fastxent_alloc  fx.softmax_cross_entropy(x, y): allocates the gradient (the reference
                  for the speedups: every other contender allocates its gradient too)
  floor           the bytes the fused kernel must move, moved by NumPy: dense targets
                  np.add(x, y, out=g) (read x, read y, write g); integer and sparse
                  targets np.negative(x, out=g) (read x, write g)
  numpy           a straightforward NumPy version: max shift, exp, sum, log, gradient
  torch           F.cross_entropy forward + backward (probability targets / class indices)
  jax             jax.jit(jax.value_and_grad(optax.softmax_cross_entropy(...).mean()))
                  (softmax_cross_entropy_with_integer_labels for integer targets)

Dense targets are multi-hot with 0.1% of the classes set per row (at least one):
1 label of 1000, 32 of 32000, 262 of 262144 -- a large multi-label tagging density.
JAX sizes its thread pool once, at import, to all cores; it cannot follow the
thread count of a case, so its 1-thread rows use all cores (marked in the notes).

Extra peak memory of one call: for the NumPy-based contenders (fastxent, floor,
numpy) the tracemalloc peak, which sees every NumPy array allocation (NumPy reports
them in its tracemalloc domain) and nothing else; for PyTorch and JAX, whose
allocators tracemalloc cannot see, the rise of the process's peak resident memory
(VmHWM, reset before the call), a lower bound since memory an allocator kept from an
earlier call is reused without showing. "extra N x K" = that peak / (N K itemsize).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import importlib
import json
import os
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import fastxent as fx

DEFAULT_SIZES = "256x1000,4096x1000,512x32000,2048x32000,64x262144"
QUICK_SIZES = "64x1000"
SETTLE_S = 0.05  # pause before every timed call: see run_case
DENSE_DENSITY = 0.001
SPARSE_DENSITY = 0.01
MULTILABEL_LABELS = 10
# Loss agreement between contenders: different summation orders give a relative
# difference of a few eps * log(K) for the mean loss; these bounds are far above that
# and far below any real disagreement (a wrong normalisation is a factor, not 1e-4).
LOSS_RTOL = {"float32": 1e-4, "float64": 1e-9}

CSV_COLUMNS = [
    "case",
    "group",
    "n",
    "k",
    "dtype",
    "target",
    "threads",
    "contender",
    "label",
    "median_ms",
    "min_ms",
    "repeats",
    "vs_floor",
    "fastxent_speedup",
    "peak_bytes",
    "extra_nk_arrays",
    "mem_method",
    "loss",
    "loss_rel_diff",
    "note",
]


# ---- optional frameworks ----------------------------------------------------------


_modules: dict[str, Any] = {}


def _optional(name: str) -> tuple[Any, str]:
    """(module, "") when importable, else (None, why): frameworks are imported lazily."""
    if name not in _modules:
        try:
            mod = importlib.import_module(name)
            if name == "jax":
                mod.config.update("jax_enable_x64", True)  # else float64 inputs become float32
            _modules[name] = (mod, "")
        except Exception as exc:  # noqa: BLE001 - any import failure means "n/a"
            _modules[name] = (None, f"{name} unavailable: {type(exc).__name__}: {exc}"[:160])
    mod_reason: tuple[Any, str] = _modules[name]
    return mod_reason


# ---- cases ------------------------------------------------------------------------


@dataclass
class Contender:
    name: str
    label: str
    fn: Callable[[], Any] | None  # returns the loss (or None for the floor); None: n/a
    mem: str = "tracemalloc"  # or "rss"
    note: str = ""


@dataclass
class Case:
    name: str
    group: str
    n: int
    k: int
    dtype: str
    target: str
    threads: int
    reference: str  # the contender speedups are relative to
    build: Callable[[], list[Contender]]
    itemsize: int = 4
    notes: list[str] = field(default_factory=list)


def _logits(rng: np.random.Generator, n: int, k: int, dtype: str) -> np.ndarray:
    x = rng.standard_normal((n, k), dtype=np.dtype(dtype).type)
    x *= 2
    return x


def _multi_hot(rng: np.random.Generator, n: int, k: int, labels: int, dtype: str) -> np.ndarray:
    """n x k multi-hot rows with `labels` classes drawn per row (duplicates collapse)."""
    y = np.zeros((n, k), dtype=dtype)
    y[np.arange(n)[:, None], rng.integers(0, k, size=(n, labels))] = 1
    return y


def _to_sparse(y: np.ndarray) -> fx.SparseTargets:
    rows, cols = np.nonzero(y)
    indptr = np.zeros(y.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=y.shape[0]), out=indptr[1:])
    return fx.SparseTargets(indptr, cols)


def plain_numpy_dense(x: np.ndarray, y: np.ndarray) -> tuple[Any, np.ndarray]:
    """What a user writes by hand for soft / multi-hot targets (mean over rows)."""
    n = x.shape[0]
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    s = e.sum(axis=1, keepdims=True)
    logp = x - (m + np.log(s))
    loss = -(y * logp).sum() / n
    grad = (e / s * y.sum(axis=1, keepdims=True) - y) / n
    return loss, grad


def plain_numpy_index(x: np.ndarray, t: np.ndarray) -> tuple[Any, np.ndarray]:
    """What a user writes by hand for class indices (mean over rows)."""
    n = x.shape[0]
    r = np.arange(n)
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    s = e.sum(axis=1, keepdims=True)
    loss = ((m + np.log(s))[:, 0] - x[r, t]).mean()
    grad = e / s
    grad[r, t] -= 1
    grad /= n
    return loss, grad


def _torch_contender(x: np.ndarray, y: np.ndarray, label: str) -> Contender:
    torch, why = _optional("torch")
    if torch is None:
        return Contender("torch", label, None, "rss", why)
    import torch.nn.functional as F

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)  # shares the arrays' memory

    def run() -> Any:
        xg = xt.detach().requires_grad_()
        loss = F.cross_entropy(xg, yt)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss.detach()

    return Contender("torch", label, run, "rss")


def _jax_contender(x: np.ndarray, y: np.ndarray, integer: bool, threads: int) -> Contender:
    jax, why = _optional("jax")
    optax, why2 = _optional("optax")
    label = "jax jit(value_and_grad(optax " + ("..._with_integer_labels" if integer else "softmax_cross_entropy") + "))"
    if jax is None or optax is None:
        return Contender("jax", label, None, "rss", why or why2)
    ce = optax.softmax_cross_entropy_with_integer_labels if integer else optax.softmax_cross_entropy
    f = jax.jit(jax.value_and_grad(lambda a, b: ce(a, b).mean()))
    xj, yj = jax.device_put(x), jax.device_put(y)  # copied to JAX's buffers once, outside the timing

    def run() -> Any:
        loss, grad = f(xj, yj)
        grad.block_until_ready()
        return loss

    note = "jax uses all cores (thread count fixed at import)" if threads < _all_threads() else ""
    return Contender("jax", label, run, "rss", note)


def _fx_contenders(x: np.ndarray, targets: Any, name: str = "fastxent", what: str = "") -> list[Contender]:
    g = np.empty_like(x)
    return [
        Contender(name, f"fastxent{what} out=g", lambda: fx.softmax_cross_entropy(x, targets, out=g)[0]),
        Contender(name + "_alloc", f"fastxent{what}", lambda: fx.softmax_cross_entropy(x, targets)[0]),
    ]


def _floor(x: np.ndarray, y: np.ndarray | None) -> Contender:
    g = np.empty_like(x)

    def add() -> None:
        assert y is not None
        np.add(x, y, out=g)

    def negative() -> None:
        np.negative(x, out=g)

    if y is not None:
        return Contender("floor", "floor np.add(x, y, out=g)", add)
    return Contender("floor", "floor np.negative(x, out=g)", negative)


def main_case(n: int, k: int, dtype: str, target: str, threads: int) -> Case:
    def build() -> list[Contender]:
        rng = np.random.default_rng(0)
        x = _logits(rng, n, k, dtype)
        if target == "dense":
            y = _multi_hot(rng, n, k, max(1, round(DENSE_DENSITY * k)), dtype)
            return [
                *_fx_contenders(x, y),
                _floor(x, y),
                Contender("numpy", "plain NumPy", lambda: plain_numpy_dense(x, y)[0]),
                _torch_contender(x, y, "torch F.cross_entropy fwd+bwd (probability targets)"),
                _jax_contender(x, y, False, threads),
            ]
        t = rng.integers(0, k, size=n, dtype=np.int64)
        return [
            *_fx_contenders(x, t),
            _floor(x, None),
            Contender("numpy", "plain NumPy", lambda: plain_numpy_index(x, t)[0]),
            _torch_contender(x, t, "torch F.cross_entropy fwd+bwd (class indices)"),
            _jax_contender(x, t, True, threads),
        ]

    return Case(f"{n}x{k}/{dtype}/{target}/t{threads}", "main", n, k, dtype, target, threads,
                "fastxent_alloc", build, np.dtype(dtype).itemsize)


def sparse_vs_dense_case(n: int, k: int, threads: int) -> Case:
    labels = max(1, round(SPARSE_DENSITY * k))

    def build() -> list[Contender]:
        rng = np.random.default_rng(1)
        x = _logits(rng, n, k, "float32")
        y = _multi_hot(rng, n, k, labels, "float32")
        sp = _to_sparse(y)
        return [
            _fx_contenders(x, sp, what=" SparseTargets")[0],
            _fx_contenders(x, y, "fastxent_dense", " same targets dense")[0],
            _floor(x, None),
        ]

    return Case(f"sparse1%/{n}x{k}/float32/t{threads}", "sparse_vs_dense", n, k, "float32", "sparse",
                threads, "fastxent", build, 4, [f"{labels} labels per row, 1% density; both out=g"])


def multilabel_case(n: int, k: int, threads: int) -> Case:
    def build() -> list[Contender]:
        rng = np.random.default_rng(2)
        x = _logits(rng, n, k, "float32")
        y = _multi_hot(rng, n, k, MULTILABEL_LABELS, "float32")
        sp = _to_sparse(y)
        return [
            *_fx_contenders(x, sp, what=" SparseTargets"),
            _floor(x, None),
            _torch_contender(x, y, "torch F.cross_entropy fwd+bwd (dense probability targets)"),
        ]

    return Case(f"multilabel{MULTILABEL_LABELS}/{n}x{k}/float32/t{threads}", "multilabel", n, k, "float32",
                "sparse", threads, "fastxent_alloc", build, 4,
                [f"{MULTILABEL_LABELS} labels per row; fastxent sparse vs torch with the same targets dense"])


def train_step_case(batch: int, d: int, k: int, threads: int) -> Case:
    def build() -> list[Contender]:
        torch, why = _optional("torch")
        label_fx, label_t = "fastxent.torch.CrossEntropyLoss step", "torch.nn.CrossEntropyLoss step"
        if torch is None:
            return [Contender("fastxent", label_fx, None, "rss", why), Contender("torch", label_t, None, "rss", why)]
        gen = torch.Generator().manual_seed(3)
        lin = torch.nn.Linear(d, k)
        with torch.no_grad():
            lin.weight.normal_(0.0, d**-0.5, generator=gen)
        inp = torch.randn(batch, d, generator=gen)
        tgt = torch.randint(0, k, (batch,), generator=gen)

        def step(loss_fn: Any) -> Callable[[], Any]:
            def run() -> Any:
                lin.zero_grad(set_to_none=True)
                loss = loss_fn(lin(inp), tgt)
                loss.backward()
                return loss.detach()

            return run

        try:
            fxt = importlib.import_module("fastxent.torch")
            fx_step = Contender("fastxent", label_fx, step(fxt.CrossEntropyLoss()), "rss")
        except Exception as exc:  # noqa: BLE001 - the adapter may not exist in this build
            fx_step = Contender("fastxent", label_fx, None, "rss", f"fastxent.torch unavailable: {exc}"[:160])
        return [fx_step, Contender("torch", label_t, step(torch.nn.CrossEntropyLoss()), "rss")]

    return Case(f"train-step/{batch}x{d}->{k}/float32/t{threads}", "train_step", batch, k, "float32", "int",
                threads, "fastxent", build, 4,
                [f"nn.Linear({d}, {k}) forward + loss + backward (zero_grad, no optimizer update)"])


# ---- measuring --------------------------------------------------------------------


def _all_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _set_threads(n: int) -> None:
    fx.set_num_threads(n)
    torch = _modules.get("torch", (None, ""))[0]
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


def run_case(case: Case, repeats: int, warmup: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    contenders = case.build()  # first: it imports torch, whose threads are set next
    _set_threads(case.threads)
    live = [c for c in contenders if c.fn is not None]
    times: dict[str, list[float]] = {c.name: [] for c in live}
    with _no_gc():
        for _ in range(warmup):
            for c in live:
                assert c.fn is not None
                c.fn()
        for r in range(repeats):
            order = live[r % len(live):] + live[: r % len(live)] if live else []
            for c in order:
                assert c.fn is not None
                # PyTorch's OpenMP and JAX's Eigen workers keep spinning for a while
                # after their call; timed right after them, fastxent's second thread
                # shares its core with a spinner (+15% at 2048x32000). Let them sleep.
                time.sleep(SETTLE_S)
                t0 = time.perf_counter()
                c.fn()
                times[c.name].append(time.perf_counter() - t0)
    medians = {name: 1e3 * float(np.median(ts)) for name, ts in times.items()}
    mem: dict[str, tuple[float | None, Any, str]] = {c.name: _peak_bytes(c) for c in live}
    losses = {name: (None if m[1] is None else float(m[1])) for name, m in mem.items()}
    ref_ms, floor_ms, ref_loss = medians.get(case.reference), medians.get("floor"), losses.get(case.reference)
    nk_bytes = case.n * case.k * case.itemsize
    rows = []
    for c in contenders:
        row: dict[str, Any] = {
            "case": case.name, "group": case.group, "n": case.n, "k": case.k, "dtype": case.dtype,
            "target": case.target, "threads": case.threads, "contender": c.name, "label": c.label,
            "median_ms": None, "min_ms": None, "repeats": 0, "vs_floor": None, "fastxent_speedup": None,
            "peak_bytes": None, "extra_nk_arrays": None, "mem_method": None, "loss": None,
            "loss_rel_diff": None, "note": "; ".join(x for x in [c.note, *case.notes] if x) or "",
        }
        if c.fn is not None:
            ms = medians[c.name]
            peak, _, method = mem[c.name]
            loss = losses[c.name]
            row.update(
                median_ms=ms, min_ms=1e3 * min(times[c.name]), repeats=len(times[c.name]),
                vs_floor=None if floor_ms is None else ms / floor_ms,
                fastxent_speedup=None if ref_ms is None else ms / ref_ms,
                peak_bytes=peak, extra_nk_arrays=None if peak is None else peak / nk_bytes,
                mem_method=method, loss=loss,
            )
            if loss is not None and ref_loss is not None:
                row["loss_rel_diff"] = abs(loss - ref_loss) / max(abs(ref_loss), 1e-30)
        rows.append(row)
    del contenders, live
    log("  " + ", ".join(f"{r['contender']} {_fmt_ms(r['median_ms'])}" for r in rows))
    return rows


def loss_mismatches(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["loss_rel_diff"] is not None and r["loss_rel_diff"] > LOSS_RTOL[r["dtype"]]]


# ---- reporting --------------------------------------------------------------------


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "n/a"
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def _fmt_x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


_SHORT = {"fastxent": "fx", "fastxent_alloc": "fx_alloc", "fastxent_dense": "fx_dense"}


def _short(name: str) -> str:
    return _SHORT.get(name, name)


def _speedup_names(names: list[str], ref: str) -> list[str]:
    """The contenders fastxent's speedup is shown over: the other implementations, not
    the floor (a ratio column of its own) nor the reference's out=/allocating twin."""
    return [c for c in names if c != "floor" and c not in (ref, ref + "_alloc", ref.removesuffix("_alloc"))]


def format_table(rows: list[dict[str, Any]], references: dict[str, str]) -> str:
    """One table per group: medians (ms), fastxent vs the floor, speedups, memory."""
    out: list[str] = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    for group, grows in groups.items():
        names = list(dict.fromkeys(r["contender"] for r in grows))
        by = {(r["case"], r["contender"]): r for r in grows}
        ref = references[group]
        fx_names = [c for c in names if c.startswith("fastxent")] if "floor" in names else []
        others = _speedup_names(names, ref)
        mem_names = [c for c in names if c != "floor"]
        head = (["case"] + [f"{_short(c)} ms" for c in names] + [f"{_short(c)}/floor" for c in fx_names]
                + [f"x{_short(c)}" for c in others] + [f"{_short(c)} NxK" for c in mem_names])
        table = [head]
        for case in dict.fromkeys(r["case"] for r in grows):
            cells = [by.get((case, c)) for c in names]
            line = [case + (" LOSS MISMATCH" if loss_mismatches([r for r in cells if r]) else "")]
            line += [_fmt_ms(by[(case, c)]["median_ms"]) if (case, c) in by else "" for c in names]
            line += [_fmt_x(by[(case, c)]["vs_floor"]) for c in fx_names]
            line += [_fmt_x(by[(case, c)]["fastxent_speedup"]) for c in others]
            line += [_fmt_nk(by[(case, c)]) for c in mem_names]
            table.append(line)
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        out.append(f"== {group}: medians (ms); xC = C's time / {_short(ref)}'s time; "
                   "NxK = extra peak memory of one call, in N x K arrays")
        for row in table:
            out.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                 for i, (cell, w) in enumerate(zip(row, widths))))
        out.append("")
    return "\n".join(out)


def _fmt_nk(r: dict[str, Any]) -> str:
    v = r["extra_nk_arrays"]
    if v is None:
        return "n/a"
    return f"{v:.2f}" + ("*" if r["mem_method"] == "rss_hwm" else "")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r[k] is None else r[k] for k in CSV_COLUMNS})


def write_plot(path: Path, rows: list[dict[str, Any]], references: dict[str, str]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cases = list(dict.fromkeys(r["case"] for r in rows))
    group_names: dict[str, list[str]] = {}
    for r in rows:
        group_names.setdefault(r["group"], []).append(r["contender"])
    shown = {g: _speedup_names(list(dict.fromkeys(n)), references[g]) for g, n in group_names.items()}
    bars = [r for r in rows if r["contender"] in shown[r["group"]] and r["fastxent_speedup"] is not None]
    names = list(dict.fromkeys(r["contender"] for r in bars))
    colors = {name: f"C{i}" for i, name in enumerate(names)}
    per_case = {c: [r for r in bars if r["case"] == c] for c in cases}
    slots = max([len(v) for v in per_case.values()] + [1])
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.18 * len(cases) * slots))
    h = 0.8 / slots
    labelled: set[str] = set()
    for i, c in enumerate(cases):
        for j, r in enumerate(per_case[c]):
            name = r["contender"]
            ax.barh(i + (j - (len(per_case[c]) - 1) / 2) * h, r["fastxent_speedup"], height=h, color=colors[name],
                    label=None if name in labelled else name)
            labelled.add(name)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(cases)), cases, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("fastxent speedup (contender time / fastxent time; < 1: the contender is faster)")
    ax.set_title(f"fastxent {fx.__version__} ({fx.backend_info().get('simd')}), medians")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    versions: dict[str, str | None] = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "jax", "optax"):
        mod = _modules.get(name, (None, ""))[0]
        versions[name] = getattr(mod, "__version__", None)
    return {
        "fastxent": fx.backend_info(),
        "versions": versions,
        "cpu": _cpu_model(),
        "cores_available": _all_threads(),
        "argv": sys.argv[1:],
        "repeats": args.repeats,
        "warmup": args.warmup,
        "references": "main and multilabel: speedups vs fastxent_alloc (allocating call); "
                      "sparse_vs_dense and train_step: vs fastxent",
        "floor": "dense targets: np.add(x, y, out=g); integer/sparse targets: np.negative(x, out=g)",
        "dense_targets": f"multi-hot, {DENSE_DENSITY:.1%} of classes per row (at least 1)",
        "jax_threads": "JAX's thread pool is sized at import (all cores) and cannot follow a case's threads",
        "memory": "tracemalloc peak for NumPy-based contenders (sees NumPy allocations only); "
                  "VmHWM rise (lower bound) for torch/jax",
    }


# ---- command line -----------------------------------------------------------------


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        try:
            n, k = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--sizes: expected NxK[,NxK...], got {part!r}") from None
        if n < 1 or k < 1:
            raise argparse.ArgumentTypeError(f"--sizes: N and K must be >= 1, got {part!r}")
        sizes.append((n, k))
    return sizes


def _parse_threads(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        if part == "all":
            out.append(_all_threads())
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"--threads: expected positive ints or 'all', got {part!r}")
    return list(dict.fromkeys(out))


def _parse_list(allowed: tuple[str, ...], opt: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = text.split(",")
        bad = [i for i in items if i not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"{opt}: expected some of {','.join(allowed)}, got {','.join(bad)}")
        return items

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastxent bench",
        description="Times fastxent against the memory floor, plain NumPy, PyTorch and JAX (when installed).",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats (a smoke test, not a measurement)")
    p.add_argument("--sizes", type=_parse_sizes, help=f"main cases, NxK,... (default {DEFAULT_SIZES})")
    p.add_argument("--dtypes", type=_parse_list(("float32", "float64"), "--dtypes"), default=["float32", "float64"])
    p.add_argument("--targets", type=_parse_list(("dense", "int"), "--targets"), default=["dense", "int"])
    p.add_argument("--threads", type=_parse_threads, default=None, help="e.g. 1,all (default)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per contender (default 7; quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 2; quick 1)")
    p.add_argument("--only", action="append", default=[], help="run only cases whose name contains this (repeatable)")
    p.add_argument("--no-extra", action="store_true", help="skip the sparse, multi-label and training-step rows")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--out", type=Path, default=Path("fastxent-bench"), help="directory for CSV/JSON/PNG")
    return p


def make_cases(args: argparse.Namespace) -> list[Case]:
    threads = args.threads or _parse_threads("1,all")
    sizes = args.sizes or _parse_sizes(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    cases = [main_case(n, k, dt, tg, t) for n, k in sizes for dt in args.dtypes for tg in args.targets
             for t in threads]
    if not args.no_extra and "float32" in args.dtypes:  # the extra rows are float32 cases
        for t in threads:
            if args.quick:
                cases += [sparse_vs_dense_case(64, 2000, t), multilabel_case(16, 8192, t),
                          train_step_case(64, 32, 1000, t)]
            else:
                cases += [sparse_vs_dense_case(2048, 32000, t), multilabel_case(1024, 262144, t),
                          train_step_case(2048, 256, 32000, t)]
    if args.only:
        cases = [c for c in cases if any(s in c.name for s in args.only)]
    return cases


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.repeats = args.repeats if args.repeats is not None else (2 if args.quick else 7)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.repeats < 1 or args.warmup < 0:
        print("--repeats must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    cases = make_cases(args)
    if not cases:
        print("no case matches --only " + " ".join(args.only), file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    info = fx.backend_info()
    log(f"fastxent {info['version']} backend={info['backend']} simd={info.get('simd')}; "
        f"{len(cases)} cases, {args.repeats} repeats after {args.warmup} warm-up, round-robin")
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
        for i, case in enumerate(cases, 1):
            log(f"[{i}/{len(cases)}] {case.name} ({time.perf_counter() - start:.0f}s)")
            rows += run_case(case, args.repeats, args.warmup, log)
    finally:
        fx.set_num_threads(None)
    references = {c.group: c.reference for c in cases}

    print(format_table(rows, references))
    print("fx = fastxent with out=g, fx_alloc = fastxent allocating its gradient. floor: dense targets "
          "np.add(x, y, out=g), integer/sparse targets np.negative(x, out=g).\n"
          "* rise of peak resident memory (torch, jax), a lower bound. JAX uses all cores in every row.")
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "bench.csv", rows)
    with (args.out / "bench.json").open("w") as f:
        json.dump({"meta": _meta(args), "results": rows}, f, indent=1)
    written = ["bench.csv", "bench.json"]
    if not args.no_plot and write_plot(args.out / "bench.png", rows, references):
        written.append("bench.png")
    print(f"wrote {', '.join(str(args.out / w) for w in written)} ({time.perf_counter() - start:.0f}s)")
    bad = loss_mismatches(rows)
    for r in bad:
        print(f"LOSS MISMATCH {r['case']} {r['contender']}: {r['loss']} vs reference "
              f"(relative difference {r['loss_rel_diff']:.2e})", file=sys.stderr)
    return 1 if bad else 0
