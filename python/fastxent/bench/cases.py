"""What the benchmark measures: its cases, their inputs and their contenders.

Contenders of the main cases (N x K logits, mean reduction, loss + gradient):
  fastxent        fx.softmax_cross_entropy(x, y, out=g): gradient into a preallocated g
  fastxent_alloc  fx.softmax_cross_entropy(x, y): allocates the gradient (the reference
                  for the speedups: every other contender allocates its gradient too)
  floor           the bytes the fused kernel must move, moved on fastxent's own thread
                  pool (fastxent._core.memory_floor: the same rows split the same way,
                  the kernel's store policy): dense targets g = x + y (read x, read y,
                  write g); integer and sparse targets g = -x (read x, write g). Every
                  fastxent timing is reported as a ratio to it.
  np_floor        the same bytes moved by NumPy: np.add(x, y, out=g) / np.negative(x, out=g)
                  (one thread)
  np_alloc        np.add(x, y) / np.negative(x), allocating g: what fastxent_alloc is
                  compared with
  numpy           a straightforward NumPy version: max shift, exp, sum, log, gradient
  torch           F.cross_entropy forward + backward (probability targets / class indices)
  jax             jax.jit(jax.value_and_grad(optax.softmax_cross_entropy(...).mean()))
                  (softmax_cross_entropy_with_integer_labels for integer targets)
16-bit cases (--dtypes bfloat16,float16): logits, dense targets and the gradient in
that dtype; the floor moves the same bytes as int16 (NumPy has no fast bfloat16
arithmetic); plain NumPy computes in float32 (it converts first: what a user does);
PyTorch and JAX run in the same dtype; `fastxent_torch` is fastxent.torch.cross_entropy
forward + backward on the same tensors (no copy), against PyTorch's in that dtype.
bfloat16 needs ml_dtypes (JAX's dependency) for its NumPy dtype.
Extra float32 cases: sparse targets against the same targets dense, a multi-label
batch (fastxent sparse vs PyTorch dense), and a PyTorch training step with each loss.
The `adapters` mode's contenders (what fastxent.torch / fastxent.jax cost over the raw
kernel) are here too.

Dense targets are multi-hot with 0.1% of the classes set per row (at least one):
1 label of 1000, 32 of 32000, 262 of 262144 -- a large multi-label tagging density.
JAX sizes its thread pool once, at import, to all cores; it cannot follow the
thread count of a case, so its 1-thread rows use all cores (marked in the notes).
Its workers keep spinning after each call and slowed every other contender of a
case when JAX ran beside them (fastxent's 256x1000 calls 1.5-2x), so it is timed in
a process of its own, per case (Contender.isolated; measure.run_case).

PyTorch, JAX and optax are optional and imported only when a case is built
(`optional`): importing this module imports none of them.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import fastxent as fx

DEFAULT_SIZES = "256x1000,4096x1000,512x32000,2048x32000,64x262144"
QUICK_SIZES = "64x1000"
DENSE_DENSITY = 0.001
SPARSE_DENSITY = 0.01
MULTILABEL_LABELS = 10


# ---- optional frameworks and the machine ------------------------------------------


_modules: dict[str, tuple[Any, str]] = {}


def optional(name: str) -> tuple[Any, str]:
    """(module, "") when importable, else (None, why): frameworks are imported lazily."""
    if name not in _modules:
        try:
            _modules[name] = (importlib.import_module(name), "")
        except Exception as exc:  # noqa: BLE001 - any import failure means "n/a"
            _modules[name] = (None, f"{name} unavailable: {type(exc).__name__}: {exc}"[:160])
    return _modules[name]


def loaded(name: str) -> Any:
    """The module if a case has already imported it, else None (never imports it)."""
    return _modules.get(name, (None, ""))[0]


def all_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---- cases ------------------------------------------------------------------------


@dataclass
class Contender:
    name: str
    label: str
    fn: Callable[[], Any] | None  # returns the loss (or None for the floor); None: n/a
    mem: str = "tracemalloc"  # or "rss"
    note: str = ""
    # Timed in a process of its own (measure.run_case), where it is built for real
    # (IN_CHILD): it would disturb the others. JAX's thread pool spins on every core
    # after each call, which slows every other contender of a case, fastxent's small
    # calls most; the suite's own process then never imports JAX.
    isolated: bool = False


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


SIXTEEN_BIT = ("bfloat16", "float16")


def np_dtype(name: str) -> np.dtype:
    """NumPy's dtype of that name (bfloat16: ml_dtypes', imported here on first use)."""
    if name == "bfloat16":
        ml_dtypes, why = optional("ml_dtypes")
        if ml_dtypes is None:
            raise RuntimeError(why)
        bf16: np.dtype = np.dtype(ml_dtypes.bfloat16)
        return bf16
    return np.dtype(name)


def _logits(rng: np.random.Generator, n: int, k: int, dtype: str) -> np.ndarray:
    if dtype in SIXTEEN_BIT:
        return (rng.standard_normal((n, k), dtype=np.float32) * 2).astype(np_dtype(dtype))
    x = rng.standard_normal((n, k), dtype=np.dtype(dtype).type)
    x *= 2
    return x


def _multi_hot(rng: np.random.Generator, n: int, k: int, labels: int, dtype: str) -> np.ndarray:
    """n x k multi-hot rows with `labels` classes drawn per row (duplicates collapse)."""
    y = np.zeros((n, k), dtype=np_dtype(dtype))
    y[np.arange(n)[:, None], rng.integers(0, k, size=(n, labels))] = 1
    return y


def _to_sparse(y: np.ndarray) -> fx.SparseTargets:
    rows, cols = np.nonzero(y)
    indptr = np.zeros(y.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=y.shape[0]), out=indptr[1:])
    return fx.SparseTargets(indptr, cols)


def _multi_label_inputs(seed: int, n: int, k: int, labels: int) -> tuple[np.ndarray, np.ndarray, fx.SparseTargets]:
    """float32 logits and multi-hot targets, dense and the same as SparseTargets."""
    rng = np.random.default_rng(seed)
    x = _logits(rng, n, k, "float32")
    y = _multi_hot(rng, n, k, labels, "float32")
    return x, y, _to_sparse(y)


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


def _tensor(torch: Any, a: np.ndarray) -> Any:
    """The array's memory as a tensor (bfloat16 through an int16 view)."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _torch_contender(x: np.ndarray, y: np.ndarray, label: str, name: str = "torch") -> Contender:
    """F.cross_entropy forward + backward, or (name "fastxent_torch") fastxent.torch's."""
    torch, why = optional("torch")
    if torch is None:
        return Contender(name, label, None, "rss", why)
    import torch.nn.functional as F

    ce = F.cross_entropy
    if name == "fastxent_torch":
        fxt, why = optional("fastxent.torch")
        if fxt is None:
            return Contender(name, label, None, "rss", why)
        ce = fxt.cross_entropy
    xt, yt = _tensor(torch, x), _tensor(torch, y)  # shares the arrays' memory

    def run() -> Any:
        xg = xt.detach().requires_grad_()
        loss = ce(xg, yt)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss.detach()

    return Contender(name, label, run, "rss")


IN_CHILD = False  # set in the process that times the isolated contenders (Contender.isolated)


def _jax_contender(x: np.ndarray, y: np.ndarray, integer: bool, threads: int) -> Contender:
    label = "jax jit(value_and_grad(optax " + ("..._with_integer_labels" if integer else "softmax_cross_entropy") + "))"
    if not IN_CHILD:
        return Contender("jax", label, None, "rss", isolated=True)
    jax, why = optional("jax")
    optax, why2 = optional("optax")
    if jax is None or optax is None:
        return Contender("jax", label, None, "rss", why or why2)
    jax.config.update("jax_enable_x64", True)  # else float64 inputs become float32
    ce = optax.softmax_cross_entropy_with_integer_labels if integer else optax.softmax_cross_entropy
    f = jax.jit(jax.value_and_grad(lambda a, b: ce(a, b).mean()))
    xj, yj = jax.device_put(x), jax.device_put(y)  # copied to JAX's buffers once, outside the timing

    def run() -> Any:
        loss, grad = f(xj, yj)
        grad.block_until_ready()
        return loss

    note = "jax uses all cores (thread count fixed at import)" if threads < all_threads() else ""
    return Contender("jax", label, run, "rss", note)


def _fx_contenders(x: np.ndarray, targets: Any, name: str = "fastxent", what: str = "") -> list[Contender]:
    g = np.empty_like(x)
    return [
        Contender(name, f"fastxent{what} out=g", lambda: fx.softmax_cross_entropy(x, targets, out=g)[0]),
        Contender(name + "_alloc", f"fastxent{what}", lambda: fx.softmax_cross_entropy(x, targets)[0]),
    ]


FLOORS = ("floor", "np_floor", "np_alloc")  # the contenders that move bytes and compute no loss


def _mt_floor() -> Any:
    """fastxent's multi-threaded floor (_core.memory_floor), or None with the NumPy twin."""
    try:
        from fastxent import _core
    except ImportError:
        return None
    return getattr(_core, "memory_floor", None)


def _floor(x: np.ndarray, y: np.ndarray | None) -> list[Contender]:
    """The floors of the case's bytes (dense: read x, read y, write g; else read x,
    write g): `floor` on fastxent's thread pool with the kernel's split and store policy
    (the limit every fastxent timing is a ratio to), `np_floor` NumPy's ufunc into g
    (one thread), `np_alloc` the same ufunc allocating g (what an allocating call is
    compared with)."""
    sixteen = x.dtype.itemsize == 2
    if sixteen:
        # 16-bit: NumPy computes float16 through float32 and bfloat16 in a slow cast loop;
        # the floor is the bytes moved, so they move as int16
        x = x.view(np.int16)
        y = None if y is None else y.view(np.int16)
    g = np.empty_like(x)
    mt = None if sixteen else _mt_floor()
    what = "x + y" if y is not None else "-x"
    np_name = "add" if y is not None else "negative"

    def np_out() -> None:
        if y is not None:
            np.add(x, y, out=g)
        else:
            np.negative(x, out=g)

    def np_new() -> None:
        if y is not None:
            np.add(x, y)
        else:
            np.negative(x)

    def floor() -> None:
        assert mt is not None
        mt(x, y, g)

    if mt is not None:
        first = Contender("floor", f"floor g = {what} on fastxent's threads (fastxent._core.memory_floor)", floor)
    else:
        why = "16-bit" if sixteen else "no compiled extension"
        first = Contender("floor", f"floor np.{np_name}(..., out=g) (one thread: {why})", np_out)
    return [
        first,
        Contender("np_floor", f"np.{np_name}(..., out=g)", np_out),
        Contender("np_alloc", f"np.{np_name}(...) allocating", np_new),
    ]


def main_case(n: int, k: int, dtype: str, target: str, threads: int) -> Case:
    def build() -> list[Contender]:
        rng = np.random.default_rng(0)
        x = _logits(rng, n, k, dtype)
        integer = target != "dense"
        if integer:
            y = rng.integers(0, k, size=n, dtype=np.int64)
        else:
            y = _multi_hot(rng, n, k, max(1, round(DENSE_DENSITY * k)), dtype)
        plain_numpy = plain_numpy_index if integer else plain_numpy_dense
        torch_targets = "class indices" if integer else "probability targets"
        if dtype in SIXTEEN_BIT:  # a user's NumPy converts to float32 first
            numpy = Contender("numpy", "plain NumPy (converted to float32)",
                              lambda: plain_numpy(x.astype(np.float32), y if integer else y.astype(np.float32))[0])
        else:
            numpy = Contender("numpy", "plain NumPy", lambda: plain_numpy(x, y)[0])
        contenders = [
            *_fx_contenders(x, y),
            *_floor(x, None if integer else y),
            numpy,
            _torch_contender(x, y, f"torch F.cross_entropy fwd+bwd ({torch_targets})"),
            _jax_contender(x, y, integer, threads),
        ]
        if dtype in SIXTEEN_BIT:
            contenders.append(_torch_contender(x, y, f"fastxent.torch.cross_entropy fwd+bwd ({torch_targets})",
                                               "fastxent_torch"))
        return contenders

    return Case(f"{n}x{k}/{dtype}/{target}/t{threads}", "main", n, k, dtype, target, threads,
                "fastxent_alloc", build, 2 if dtype in SIXTEEN_BIT else np.dtype(dtype).itemsize)


def sparse_vs_dense_case(n: int, k: int, threads: int) -> Case:
    labels = max(1, round(SPARSE_DENSITY * k))

    def build() -> list[Contender]:
        x, y, sp = _multi_label_inputs(1, n, k, labels)
        return [
            _fx_contenders(x, sp, what=" SparseTargets")[0],
            _fx_contenders(x, y, "fastxent_dense", " same targets dense")[0],
            _floor(x, None)[0],
        ]

    return Case(f"sparse1%/{n}x{k}/float32/t{threads}", "sparse_vs_dense", n, k, "float32", "sparse",
                threads, "fastxent", build, 4, [f"{labels} labels per row, 1% density; both out=g"])


def multilabel_case(n: int, k: int, threads: int) -> Case:
    def build() -> list[Contender]:
        x, y, sp = _multi_label_inputs(2, n, k, MULTILABEL_LABELS)
        return [
            *_fx_contenders(x, sp, what=" SparseTargets"),
            _floor(x, None)[0],
            _torch_contender(x, y, "torch F.cross_entropy fwd+bwd (dense probability targets)"),
        ]

    return Case(f"multilabel{MULTILABEL_LABELS}/{n}x{k}/float32/t{threads}", "multilabel", n, k, "float32",
                "sparse", threads, "fastxent_alloc", build, 4,
                [f"{MULTILABEL_LABELS} labels per row; fastxent sparse vs torch with the same targets dense"])


def train_step_case(batch: int, d: int, k: int, threads: int) -> Case:
    def build() -> list[Contender]:
        torch, why = optional("torch")
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


def make_cases(sizes: list[tuple[int, int]], dtypes: list[str], targets: list[str], threads: list[int],
               quick: bool, extra: bool, only: list[str]) -> list[Case]:
    """The main cases (every size x dtype x target x thread count), then, when `extra`
    and float32 is asked for, the extra float32 cases per thread count (tiny when
    `quick`); only the cases whose name contains one of `only`, if any is given."""
    cases = [main_case(n, k, dt, tg, t) for n, k in sizes for dt in dtypes for tg in targets for t in threads]
    if extra and "float32" in dtypes:  # the extra rows are float32 cases
        for t in threads:
            if quick:
                cases += [sparse_vs_dense_case(64, 2000, t), multilabel_case(16, 8192, t),
                          train_step_case(64, 32, 1000, t)]
            else:
                cases += [sparse_vs_dense_case(2048, 32000, t), multilabel_case(1024, 262144, t),
                          train_step_case(2048, 256, 32000, t)]
    if only:
        cases = [c for c in cases if any(s in c.name for s in only)]
    return cases


# ---- the adapters mode ------------------------------------------------------------

ADAPTER_FRAMEWORKS = ("torch", "jax", "fastxent.torch", "fastxent.jax")


def adapter_contenders(n: int, k: int) -> dict[str, Callable[[], None]]:
    """The `adapters` mode's calls, on the same n x k float32 logits with int64 class
    targets, mean reduction (needs every module of ADAPTER_FRAMEWORKS):
      raw kernel        fastxent.softmax_cross_entropy(x, t) -> loss and gradient
      fastxent.torch    fastxent.torch.cross_entropy(x, t).backward(): the same, through
                        autograd (and once more with the loss scaled, a non-unit cotangent)
      torch native      torch.nn.functional.cross_entropy(x, t).backward() (for scale)
      fastxent.jax      jit(value_and_grad(mean of fastxent.jax's losses)) (for scale; its
                        callback copies the outputs into JAX buffers)
    """
    torch, jax, fxt, fxj = (optional(name)[0] for name in ADAPTER_FRAMEWORKS)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, k), dtype=np.float32)
    t = rng.integers(0, k, n)
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)
    xj, tj = jax.numpy.asarray(x), jax.numpy.asarray(t.astype(np.int32))
    jax_step = jax.jit(jax.value_and_grad(lambda a, b: fxj.softmax_cross_entropy_with_integer_labels(a, b).mean()))

    def raw() -> None:
        fx.softmax_cross_entropy(x, t)

    def adapter() -> None:
        a = xt.detach().requires_grad_()
        fxt.cross_entropy(a, tt).backward()

    def adapter_scaled() -> None:
        a = xt.detach().requires_grad_()
        (fxt.cross_entropy(a, tt) * 3.7).backward()

    def native() -> None:
        a = xt.detach().requires_grad_()
        torch.nn.functional.cross_entropy(a, tt).backward()

    def jax_adapter() -> None:
        jax.block_until_ready(jax_step(xj, tj))

    return {
        "raw kernel": raw,
        "fastxent.torch fwd+bwd": adapter,
        "  same, loss*3.7": adapter_scaled,
        "torch native fwd+bwd": native,
        "fastxent.jax jit(v&g)": jax_adapter,
    }
