#!/usr/bin/env python3
"""A property-based fuzzer of fastxent's whole public surface.

    python tests/fuzz_api.py --seconds 60 [--seed 0|random] [--section loss] [--section rowwise]

Hypothesis draws a *spec* per case: a small JSON-able description (shapes, dtypes, a seed
for the values, special values to plant, layout tricks, option values as source text).
`ENTRY_POINTS` turns a spec into a Python program (setup lines + one call), which is both
what runs and the reproducer printed for a finding. Each entry point brings its spec
strategy, its program builder and its oracles; adding one (a 16-bit dtype, a fused linear
head, vocab-sharded passes, FFI targets) is one more `EntryPoint(...)` in that table.

Oracles, applied to every case:
  (a) an exception is TypeError / ValueError / IndexError whose message starts with the
      name of an argument of the entry point ("targets:", "out:", ...); anything else
      (OverflowError, pybind11's "incompatible function arguments", AssertionError, ...)
      is a finding, and so is accepting an input that must be refused (class index out
      of range, broken sparse structure, out=/inplace memory shared with an input);
  (b) a result matches a float64 reference (tests/reference.py) within a bound derived
      per row from the dtype's epsilon and the size of the terms that cancel (see
      `loss_bounds`), and all variants (backend "cpp" at the best ISA, "numpy", every
      ISA on part of the cases, one thread) agree, NaN placement included;
  (c) no input byte changed outside the memory handed over for writing (out=, or logits
      with inplace=True): every input's bytes, and those of the buffers under its views,
      are copied before the call and compared after;
  (d) the cases run in a child process that writes each spec to a file before running
      it; when the child dies by a signal (or hangs), the parent reports that case.

A finding is deduplicated by (entry point, oracle, exception type, message with numbers
and quoted text blanked, plus the backend family and ndarray subclasses / softcap /
z_loss for numerical findings); its reproducer is shrunk greedily (options, weight, out=,
wrappers, special values and layout tricks removed) while the finding stays the same
(a crashing case: while a fresh process still dies on it).
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import ctypes
import functools
import hashlib
import importlib
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import reference

import fastxent as fx

SUPPORTED_SIMD: list[str] = list(fx.backend_info().get("supported_simd") or [])
HAVE_CORE = fx.backend_info()["backend"] == "cpp"

# ---------------------------------------------------------------------------------------
# Specs -> programs
# ---------------------------------------------------------------------------------------

FLOATS = ("float32", "float64")
INT_DTYPES = ("int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64", "intp", "longlong", ">i8", "<i4")


@dataclass
class Program:
    """What one case runs: setup lines, then `func(**args)`.

    setup: (source, mode); mode "plain" must not raise, "api" is a public call whose
    exception is judged by oracle (a) and ends the case, "mutation" may raise (immutable
    objects refuse it) and is then skipped, "scipy" may raise (scipy refusing a broken
    structure: the case is dropped as a setup error).
    args: parameter name -> source expression (positional ones in `positional`).
    writable: expressions whose memory the call may write (out=, inplace logits).
    """

    setup: list[tuple[str, str]]
    func: str
    args: dict[str, str]
    positional: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()

    def call_source(self) -> str:
        parts = [self.args[p] for p in self.positional]
        parts += [f"{k}={v}" for k, v in self.args.items() if k not in self.positional]
        return f"{self.func}({', '.join(parts)})"

    def source(self, variant: str = "") -> str:
        lines = [
            "import numpy as np, scipy.sparse, tempfile",
            "import fastxent as fx",
            "from numpy import nan, inf",
        ]
        if any("bfloat16" in s or "float8" in s for s, _ in self.setup):
            lines.append("import ml_dtypes  # (registers the dtype names 'bfloat16', 'float8_e4m3fn' with NumPy)")
        if "torch" in self.func or any("torch" in s for s, _ in self.setup):
            lines.append("import torch, fastxent.torch")
        if "jax" in self.func or any("jax" in s for s, _ in self.setup):
            lines.append("import jax, jax.numpy as jnp, fastxent.jax")
        if variant.startswith("simd="):
            lines.append(f"fx.set_simd({variant[5:]!r})")
        if variant == "threads=1":
            lines.append("fx.set_num_threads(1)")
        for src, mode in self.setup:
            lines.append(src if mode == "plain" else f"{src}  # {mode}")
        lines.append(f"result = {self.call_source()}")
        lines.append("print(result)")
        return "\n".join(lines)


def _dt(dtype: str) -> str:
    return repr(dtype)


def is_bfloat16(dt: np.dtype[Any]) -> bool:
    """ml_dtypes' bfloat16 (NumPy sees kind 'V')."""
    return dt.kind == "V" and dt.itemsize == 2 and dt.name == "bfloat16"


def rounding16(expected: np.ndarray, store: np.dtype[Any]) -> np.ndarray:
    """What storing a value in a 16-bit dtype may add on top of the float32 result's error:
    up to a half spacing on each side of the comparison (the kernel rounds its float32
    value, _compare rounds the reference), i.e. one spacing at |expected|, doubled for a
    value just below a power of two; plus the subnormal spacing. 0 for float32/float64."""
    if store.itemsize != 2:
        return np.zeros(np.shape(expected))
    mant, sub = (7, 2.0**-133) if is_bfloat16(store) else (10, 2.0**-24)
    e = np.abs(np.nan_to_num(np.asarray(expected, np.float64), posinf=0.0, neginf=0.0))
    return 2 * e * 2.0**-mant + sub


def near_float16_overflow(expected: np.ndarray, store: np.dtype[Any]) -> np.ndarray:
    """Values whose float16 rounding may go either way between 65504 and inf."""
    if store != np.float16:
        return np.zeros(np.shape(expected), bool)
    with np.errstate(invalid="ignore"):
        return np.abs(np.asarray(expected, np.float64)) > 65504 * 0.999


def array_lines(var: str, a: dict[str, Any]) -> list[str]:
    """Source that builds array spec `a` into variable `var`.

    a: dtype, shape, fill [kind, ...], specials [[flat position, value source]],
    layout [op, ...] applied in order, wrap (None or a container/subclass name)."""
    dtype, shape = a["dtype"], tuple(a["shape"])
    fill = a["fill"]
    kind = fill[0]
    rng = f"np.random.default_rng({fill[1]})" if len(fill) > 1 else ""
    if kind == "normal":
        src = f"{var} = (({rng}.standard_normal({shape}) * {fill[2]!r}) + {fill[3]!r}).astype({_dt(dtype)})"
    elif kind == "const":
        src = f"{var} = np.full({shape}, {fill[1]}).astype({_dt(dtype)})"
    elif kind == "labels":
        src = f"{var} = {rng}.integers(0, max(1, {fill[2]}), {shape}).astype({_dt(dtype)})"
    elif kind == "probs":
        src = f"{var} = {rng}.dirichlet(np.ones({shape[-1] if shape else 1}), {shape[:-1]}).astype({_dt(dtype)})"
        if len(shape) == 0:
            src = f"{var} = np.ones(()).astype({_dt(dtype)})"
    elif kind == "multihot":
        src = f"{var} = ({rng}.random({shape}) < {fill[2]!r}).astype({_dt(dtype)})"
    elif kind == "masked":
        src = (f"_r = {rng}; {var} = np.where(_r.random({shape}) < {fill[2]!r}, -np.inf, _r.standard_normal({shape}))"
               f".astype({_dt(dtype)})")
    elif kind == "uniform":
        src = f"{var} = {rng}.uniform({fill[2]!r}, {fill[3]!r}, {shape}).astype({_dt(dtype)})"
    else:
        raise AssertionError(f"fuzzer: unknown fill {kind}")
    lines = [src]
    size = int(np.prod(shape)) if shape else 1
    for pos, val in a.get("specials", []):
        if size:
            lines.append(f"{var}.flat[{pos % size}] = {val}")
    for op in a.get("layout", []):
        lines.extend(layout_lines(var, op, len(shape)))
    wrap = a.get("wrap")
    if wrap:
        lines.append(wrap_line(var, wrap))
    return lines


def layout_lines(var: str, op: list[Any], ndim: int) -> list[str]:
    """Same values, another memory layout (or a read-only / byte-swapped / shifted copy)."""
    name = op[0]
    if name == "fortran":
        return [f"{var} = np.asfortranarray({var})"]
    if name == "strided" and ndim:
        ax, step = op[1] % ndim, op[2]
        sl = f"(slice(None),) * {ax} + (slice(None, None, {step}),)"
        return [
            f"_shape = list({var}.shape); _shape[{ax}] *= {step}",
            f"_buf = np.zeros(_shape, {var}.dtype); _buf[{sl}] = {var}; {var} = _buf[{sl}]",
        ]
    if name == "reversed" and ndim:
        ax = op[1] % ndim
        return [f"{var} = np.flip(np.flip({var}, {ax}).copy(), {ax})"]
    if name == "misaligned":
        return [
            f"_buf = np.zeros({var}.nbytes + 1, np.uint8)",
            f"_m = np.ndarray({var}.shape, {var}.dtype, buffer=_buf, offset=1); _m[...] = {var}; {var} = _m",
        ]
    if name == "byteswap":
        return [f"{var} = {var}.astype({var}.dtype.newbyteorder()) if {var}.dtype.kind in 'iufc' else {var}"]
    if name == "readonly":
        return [f"{var}.flags.writeable = False"]
    if name == "zerostride" and ndim:
        ax = op[1] % ndim
        return [
            f"_st = list({var}.strides); _st[{ax}] = 0",
            f"{var} = np.lib.stride_tricks.as_strided({var}, {var}.shape, _st)",
        ]
    if name == "offset":
        return [
            f"_buf = np.zeros({var}.size + {op[1]}, {var}.dtype); _buf[{op[1]}:] = {var}.ravel()",
            f"{var} = _buf[{op[1]}:].reshape({var}.shape)",
        ]
    if name == "transposed" and ndim >= 2:
        return [f"{var} = np.ascontiguousarray({var}.T).T"]
    return []


WRAPS = ("list", "matrix", "masked", "memmap", "memoryview", "scalar", "torch", "tuple", "subclass")


def wrap_line(var: str, wrap: str) -> str:
    if wrap == "list":
        return f"{var} = {var}.tolist()"
    if wrap == "tuple":
        return f"{var} = tuple({var}.tolist()) if {var}.ndim else {var}"
    if wrap == "matrix":
        return f"{var} = np.asmatrix({var}) if {var}.ndim == 2 else {var}"
    if wrap == "masked":
        return f"{var} = np.ma.masked_array({var}, mask=np.arange({var}.size).reshape({var}.shape) % 2 == 0)"
    if wrap == "memmap":
        return (
            f"_mm = np.memmap(tempfile.TemporaryFile(), dtype={var}.dtype, mode='w+', shape={var}.shape) "
            f"if {var}.size else np.asarray({var}); _mm[...] = {var}; {var} = _mm"
        )
    if wrap == "memoryview":
        return f"{var} = memoryview(np.ascontiguousarray({var})) if {var}.dtype.kind in 'iuf' and {var}.dtype.isnative else {var}"
    if wrap == "scalar":
        return f"{var} = {var}[()] if {var}.ndim == 0 else {var}"
    if wrap == "torch":
        return f"{var} = torch.from_numpy(np.ascontiguousarray({var})) if {var}.dtype.isnative and {var}.dtype.kind in 'iufb' else {var}"
    if wrap == "subclass":
        return f"{var} = {var}.view(type('Sub', (np.ndarray,), {{}}))"
    raise AssertionError(wrap)


# ---------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------

seeds = st.integers(0, 2**16)
SPECIAL_FLOATS = ("nan", "inf", "-inf", "0.0", "-0.0", "1e30", "-1e30", "3e38", "1e-45", "1e300", "-1e300", "5e-324")


@functools.cache
def one_in(n: int) -> st.SearchStrategy[bool]:
    return st.integers(0, n - 1).map(lambda v: v == 0)


@functools.cache
def _index(n: int) -> st.SearchStrategy[int]:
    return st.integers(0, n - 1)


def pick(draw: Any, values: Any) -> Any:
    """draw(st.sampled_from(values)) without building a strategy per draw (hypothesis
    spends most of a case's time building strategies otherwise)."""
    values = list(values)
    return values[draw(_index(len(values)))]


_SCALES = st.sampled_from([1.0, 1.0, 3.0, 30.0, 1e-30, 1e4, 1e20, 1e30, 1e38, 1e300])
_SHIFTS = st.sampled_from([0.0, 0.0, 0.0, 100.0, -1e4, 1e30])
_CONSTS = st.sampled_from(["0.0", "1.0", "1e30", "-1e30", "-inf", "3.4e38", "1e-40"])
_SPECIALS = st.lists(st.tuples(st.integers(0, 10**4), st.sampled_from(SPECIAL_FLOATS)).map(list), max_size=3)
_WRAP = st.sampled_from(("list", "matrix", "masked", "memmap", "memoryview", "scalar", "torch", "tuple", "subclass"))


@functools.cache  # building strategies is what costs in hypothesis: build each once
def layout_ops(ndim: int) -> st.SearchStrategy[list[list[Any]]]:
    op = st.one_of(
        st.just(["fortran"]),
        st.tuples(st.just("strided"), st.integers(0, 3), st.integers(2, 3)).map(list),
        st.tuples(st.just("reversed"), st.integers(0, 3)).map(list),
        st.just(["misaligned"]),
        st.just(["byteswap"]),
        st.just(["readonly"]),
        st.tuples(st.just("zerostride"), st.integers(0, 3)).map(list),
        st.tuples(st.just("offset"), st.integers(1, 3)).map(list),
        st.just(["transposed"]),
    )
    return st.one_of(st.just([]), st.lists(op, max_size=3)) if ndim else st.just([])


@st.composite
def logits_shapes(draw: Any) -> tuple[list[int], int]:
    """(shape, class axis); mostly small, sometimes K large enough for every SIMD tail."""
    ndim = pick(draw, ([1, 2, 2, 2, 3]))
    k = draw(st.one_of(st.integers(1, 9), st.integers(10, 70), st.sampled_from([1, 2, 15, 16, 17, 31, 33, 64, 129, 300])))
    others = draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 5, 7]), min_size=ndim - 1, max_size=ndim - 1))
    axis = draw(st.integers(0, ndim - 1))
    shape = others[:axis] + [k] + others[axis:]
    return shape, axis


@st.composite
def float_array(draw: Any, shape: list[int], dtypes: st.SearchStrategy[str], fills: st.SearchStrategy[Any] | None = None,
                wraps: st.SearchStrategy[Any] | None = None) -> dict[str, Any]:
    dtype = draw(dtypes)
    if fills is None:
        if draw(one_in(5)):
            fill = ["const", draw(_CONSTS)]
        elif draw(one_in(6)):
            fill = ["masked", draw(seeds), pick(draw, [0.3, 0.9, 1.0])]  # -inf where masked out, as attention masks do
        else:
            fill = ["normal", draw(seeds), draw(_SCALES), draw(_SHIFTS)]
    else:
        fill = draw(fills)
    specials = draw(_SPECIALS) if draw(one_in(4)) else []
    wrap = draw(wraps) if wraps is not None else (draw(_WRAP) if draw(one_in(10)) else None)
    return {"dtype": dtype, "shape": shape, "fill": list(fill), "specials": specials,
            "layout": draw(layout_ops(len(shape))), "wrap": wrap}


LOGIT_DTYPES = st.one_of(st.sampled_from(FLOATS), st.sampled_from(["float32", "float64", ">f4", ">f8", "float16", "bfloat16", ">f2",
                                                                   "float8_e4m3fn", "int64", "complex64", "<U4", "object", "bool"]))
# The logits' dtypes a loss / rowwise call draws mostly: a third of them 16-bit (issue 13)
_LOGIT_FLOATS = st.sampled_from(FLOATS + FLOATS + ("float16", "bfloat16"))


@functools.cache
def _label_specials(dtype: str, k: int) -> st.SearchStrategy[list[list[Any]]]:
    values = ["-100", "-1", str(k), str(k - 1), "0", "2**31 - 1", f"np.iinfo({dtype!r}).max", f"np.iinfo({dtype!r}).min"]
    return st.lists(st.tuples(st.integers(0, 10**4), st.sampled_from(values)).map(list), max_size=3)


@functools.cache
def _csr_rows(n: int, k: int) -> st.SearchStrategy[list[list[int]]]:
    return st.lists(st.lists(st.integers(0, max(0, k - 1)), max_size=4), min_size=n, max_size=n)


_DENSE_FILLS = st.one_of(
    st.tuples(st.just("probs"), seeds),
    st.tuples(st.just("multihot"), seeds, st.sampled_from([0.1, 0.5, 1.0])),
    st.tuples(st.just("normal"), seeds, st.sampled_from([1.0, 1e-3, 100.0]), st.just(0.0)),
    st.tuples(st.just("const"), st.sampled_from(["0.0", "1.0", "-1.0"])),
)
_DENSE_DTYPES = st.one_of(st.sampled_from(FLOATS), st.sampled_from(["float32", "float64", "bool", "float16", "bfloat16", ">f8", ">f4"]))
_WEIGHT_FILLS = st.one_of(st.tuples(st.just("uniform"), seeds, st.just(0.0), st.just(2.0)),
                          st.tuples(st.just("uniform"), seeds, st.just(-1.0), st.just(1.0)),
                          st.tuples(st.just("const"), st.sampled_from(["1.0", "0.0", "1e39", "1e-40"])))
_WEIGHT_DTYPES = st.sampled_from(["float32", "float64", "float64", "int64", "bool", "float16", "bfloat16", ">f8", "complex128"])
_FLOATS = st.sampled_from(FLOATS)


@st.composite
def index_targets(draw: Any, lead: list[int], k: int) -> dict[str, Any]:
    dtype = pick(draw, ["int64", "int32"]) if draw(st.booleans()) else pick(draw, INT_DTYPES)
    specials = draw(_label_specials(dtype, k)) if draw(one_in(3)) else []
    return {"dtype": dtype, "shape": lead, "fill": ["labels", draw(seeds), k], "specials": specials,
            "layout": draw(layout_ops(len(lead))),
            "wrap": pick(draw, (WRAPS)) if draw(one_in(8)) else None}


@st.composite
def dense_targets(draw: Any, shape: list[int]) -> dict[str, Any]:
    a = draw(float_array(shape, _DENSE_DTYPES, _DENSE_FILLS))
    if a["specials"] and draw(st.booleans()):
        a["specials"] = []
    return a


@st.composite
def sparse_targets(draw: Any, n: int, k: int) -> dict[str, Any]:
    """A CSR structure (valid, or broken on purpose), how it is handed over, and what is
    done to it after construction."""
    rows = draw(_csr_rows(n, k))
    indptr = [0]
    for r in rows:
        indptr.append(indptr[-1] + len(r))
    indices = [c for r in rows for c in r]
    breakage = pick(draw, ([None] * 6 + ["index-k", "index-neg", "indptr-end", "indptr-dec", "indptr-start", "indptr-huge"]))
    if breakage == "index-k" and indices:
        indices[0] = k
    elif breakage == "index-neg" and indices:
        indices[-1] = -1
    elif breakage == "indptr-end":
        indptr[-1] += 1
    elif breakage == "indptr-dec" and len(indptr) > 2:
        indptr[1], indptr[2] = indptr[2] + 1, indptr[1]
    elif breakage == "indptr-start":
        indptr[0] = 1
    elif breakage == "indptr-huge":
        indptr[-1] = 10**6
    values = pick(draw, (["none", "float64", "float32", "int64", "bool", "list", ">f8"]))
    form = pick(draw, (["SparseTargets", "SparseTargets", "csr_matrix", "csr_array", "coo_matrix", "from_scipy"]))
    idx_dtype = pick(draw, (["int64", "int32", "list", "uint8", "float64", ">i8"]))
    mutation = pick(draw, ([None] * 5 + ["attr-indptr", "attr-indices", "attr-values", "src-indptr", "src-indices",
                                                  "src-values", "attr-array-write"]))
    return {"kind": "sparse", "indptr": indptr, "indices": indices, "values": values, "form": form,
            "idx_dtype": idx_dtype, "mutation": mutation, "seed": draw(seeds)}


def sparse_lines(var: str, t: dict[str, Any], k: int) -> list[tuple[str, str]]:
    nnz = len(t["indices"])
    idt = t["idx_dtype"]
    ip = repr(t["indptr"]) if idt == "list" else f"np.array({t['indptr']!r}).astype({idt!r})"
    ix = repr(t["indices"]) if idt == "list" else f"np.array({t['indices']!r}, dtype=np.int64).astype({idt!r})"
    vals = t["values"]
    if vals == "none":
        v = "None"
    elif vals == "list":
        v = f"np.random.default_rng({t['seed']}).uniform(0, 2, {nnz}).tolist()"
    else:
        v = f"np.random.default_rng({t['seed']}).uniform(0, 2, {nnz}).astype({vals!r})"
    out: list[tuple[str, str]] = [(f"_ip = {ip}; _ix = {ix}; _v = {v}", "plain")]
    form = t["form"]
    if form == "SparseTargets":
        out.append((f"{var} = fx.SparseTargets(_ip, _ix, _v)", "api"))
    else:
        # scipy checks the structure itself (its own exceptions are not ours to judge)
        n = len(t["indptr"]) - 1
        dv = f"np.ones({nnz})" if vals == "none" else "_v"
        ctor = "csr_matrix" if form in ("coo_matrix", "from_scipy") else form
        out.append((f"{var} = scipy.sparse.{ctor}(({dv}, np.asarray(_ix), np.asarray(_ip)), shape=({n}, {k}))", "scipy"))
        # scipy trusts a broken structure (and then corrupts the heap itself, e.g. in tocoo):
        # its own check makes such a case a setup error, not a finding
        out.append((f"{var}.check_format(full_check=True)", "scipy"))
        if form == "coo_matrix":
            out.append((f"{var} = {var}.tocoo()", "plain"))
        if form == "from_scipy":
            out.append((f"{var} = fx.SparseTargets.from_scipy({var})", "api"))
    m = t["mutation"]
    if m and form == "SparseTargets":
        mut = {
            "attr-indptr": f"{var}.indptr = np.array([0, 1, 10**6])",
            "attr-indices": f"{var}.indices = np.array([10**6] * len({var}.indices))",
            "attr-values": f"{var}.values = np.array(['x'] * len({var}.indices))",
            "src-indptr": "_ip[-1] = 10**6",
            "src-indices": "_ix[0] = 10**6",
            "src-values": "_v[0] = np.nan",
            "attr-array-write": f"{var}.indptr[-1] = 10**6",
        }[m]
        out.append((mut, "mutation"))
    return out


@st.composite
def odd_targets(draw: Any, lead: list[int], k: int) -> dict[str, Any]:
    expr = pick(draw, ([
        "None", "'abc'", "3.5", "2**70", "np.array(['1', '2'])", f"np.zeros({tuple(lead)!r}, dtype=object)",
        f"np.zeros({tuple(lead)!r}, dtype=complex)", f"np.zeros({tuple(lead)!r}, dtype='datetime64[s]')",
        f"[0] * {x_numel(lead)}", "np.int64(0)", "0", "True", "[[0, 1], [2]]",
        f"np.zeros({tuple(lead)!r}, dtype='V8')", f"np.array({k - 1})", "{'a': 1}",
    ]))
    return {"kind": "odd", "expr": expr}


@functools.cache
def option_values(k: int) -> dict[str, st.SearchStrategy[str]]:
    """Source text for each option: mostly valid, sometimes odd."""
    def mix(valid: list[str], odd: list[str]) -> st.SearchStrategy[str]:
        # one odd value in 8, so that most cases get past the checks to the kernels
        # (st.one_of's choice of branch is not uniform enough for that)
        return st.tuples(one_in(8), st.sampled_from(valid), st.sampled_from(odd)).map(lambda t: t[2] if t[0] else t[1])

    return {
        "reduction": mix(["'none'", "'sum'", "'mean'"], ["'avg'", "np.array(['mean'])", "np.str_('sum')", "None", "1", "'MEAN'",
                                                        "b'sum'", "np.array('none')"]),
        "ignore_index": mix(["-100", "0", str(k - 1), "-1", "np.int64(-100)"],
                            ["2**63 - 1", "2**64 - 1", "-2**63", "10**30", "np.uint64(2**64 - 1)", "1.0", "True", "None", "'1'",
                             "np.array(0)", "np.int8(-1)", "-2**63 - 1"]),
        "label_smoothing": mix(["0.0", "0.1", "1.0", "0.5", "np.float32(0.3)", "1", "0"],
                               ["-0.1", "1.1", "nan", "10**400", "True", "None", "'0.1'", "np.array(0.1)", "np.array([0.1])", "2**70",
                                "np.float64(1e-320)", "1e-320"]),
        "z_loss": mix(["0.0", "1e-4", "1.0", "1e10", "np.float64(0.5)", "3"],
                      ["-1.0", "inf", "nan", "10**400", "1e300", "True", "None", "np.array([1.0])", "np.array(1e-4)", "1e308"]),
        "softcap": mix(["None", "30.0", "1.0", "1e-3", "1e20", "1e30", "np.float32(5.0)", "2"],
                       ["0", "-1.0", "inf", "nan", "True", "10**400", "'30'", "1e39", "1e-40", "1e-300", "3.4028235e38", "1e308",
                        "5e-324", "np.array(30.0)", "np.array([30.0])"]),
        "return_grad": mix(["True", "False"], ["1", "0", "None", "np.bool_(True)", "'yes'", "np.array(True)"]),
        "inplace": mix(["False", "True"], ["1", "None", "np.bool_(True)", "'no'"]),
        "axis_odd": st.sampled_from(["1.0", "'0'", "None", "np.int64(0)", "True", "np.array(1)", "2**70", "-2**70", "(0,)", "99"]),
    }


@st.composite
def loss_specs(draw: Any) -> dict[str, Any]:
    shape, ax = draw(logits_shapes())
    k = shape[ax]
    lead = shape[:ax] + shape[ax + 1:]
    n = int(np.prod(lead)) if lead else 1
    logits = draw(float_array(shape, LOGIT_DTYPES if draw(one_in(10)) else _LOGIT_FLOATS))
    kind = pick(draw, ["index"] * 5 + ["dense"] * 4 + ["sparse"] * 2 + ["odd"])
    if kind == "index":
        targets = {"kind": "index", "array": draw(index_targets(lead, k))}
    elif kind == "dense":
        targets = {"kind": "dense", "array": draw(dense_targets(shape))}
    elif kind == "sparse":
        targets = draw(sparse_targets(n, k))
    else:
        targets = draw(odd_targets(lead, k))
    opts = option_values(k)
    options: dict[str, str] = {}
    for name in ("reduction", "ignore_index", "label_smoothing", "z_loss", "softcap", "return_grad", "inplace"):
        if draw(one_in(3)):
            options[name] = draw(opts[name])
    if draw(one_in(16)):
        options["axis"] = draw(opts["axis_odd"])
    elif ax != len(shape) - 1 or draw(st.booleans()):
        options["axis"] = str(pick(draw, ([ax, ax - len(shape)])))
    weight = None
    if draw(one_in(4)):
        wshape = pick(draw, [[k]] * 15 + [[k + 1], [1, k], []])
        weight = draw(float_array(wshape, _WEIGHT_DTYPES, _WEIGHT_FILLS))
    out = None
    if draw(one_in(5)) and options.get("inplace") != "True":
        oshape = shape if (not draw(one_in(6))) else pick(draw, ([shape[::-1], shape + [1], [0]]))
        odt = logits["dtype"] if (not draw(one_in(6))) else pick(draw, (["float32", "float64", ">f4", "float16", "bfloat16"]))
        out = {"dtype": odt, "shape": oshape, "fill": ["const", "0.0"], "specials": [], "layout": draw(layout_ops(len(oshape))),
               "wrap": pick(draw, ([None, None, None, None, "list", "memoryview", "torch", "masked", "memmap", "matrix"]))}
    backend = None
    if draw(one_in(21)):
        backend = pick(draw, (["'gpu'", "np.str_('cpp')", "'CPP'", "1", "'auto'", "None"]))
    return {"entry": "loss", "logits": logits, "targets": targets, "options": options, "weight": weight, "out": out,
            "backend": backend, "all_isa": draw(one_in(4)), "k": k}


def build_loss(spec: dict[str, Any]) -> Program:
    setup: list[tuple[str, str]] = [(line, "plain") for line in array_lines("x", spec["logits"])]
    t = spec["targets"]
    k = spec["k"]
    if t["kind"] in ("index", "dense"):
        setup += [(line, "plain") for line in array_lines("y", t["array"])]
    elif t["kind"] == "sparse":
        setup += sparse_lines("y", t, k)
    else:
        setup.append((f"y = {t['expr']}", "plain"))
    args = {"logits": "x", "targets": "y"}
    if spec.get("weight") is not None:
        setup += [(line, "plain") for line in array_lines("w", spec["weight"])]
        args["weight"] = "w"
    writable: tuple[str, ...] = ()
    if spec.get("out") is not None:
        setup += [(line, "plain") for line in array_lines("o", spec["out"])]
        args["out"] = "o"
        writable = ("o",)
    args.update(spec["options"])
    if spec["options"].get("inplace") in ("True", "1", "np.bool_(True)"):
        writable += ("x",)
    if spec.get("backend") is not None:
        args["backend"] = spec["backend"]
    return Program(setup, "fx.softmax_cross_entropy", args, positional=("logits", "targets"), writable=writable)


@st.composite
def alias_specs(draw: Any) -> dict[str, Any]:
    """Logits, targets, weight and out as views into ONE byte buffer (or fresh), at drawn
    offsets, dtypes and strides: out= overlapping inputs, targets read from logits' memory,
    byte-swapped logits under a native view, int16 labels inside float logits, ..."""
    n = draw(st.integers(1, 4))
    k = draw(st.integers(1, 9))
    xdt = pick(draw, (["float32", "float64", ">f4", ">f8"]))
    tkind = pick(draw, (["index", "index", "dense"]))
    tdt = pick(draw, (INT_DTYPES[:8])) if tkind == "index" else pick(draw, (["float32", "float64", "bool"]))
    nbytes = 8 * (n * k * 3 + k + 16)
    roles: dict[str, Any] = {}
    for role in ("logits", "targets", "weight", "out"):
        if role == "weight" and draw(st.booleans()):
            continue
        if role == "out" and draw(one_in(3)):
            continue
        dt = {"logits": xdt, "targets": tdt, "weight": pick(draw, (["float32", "float64"])),
              # out: mostly the logits' dtype in native order (a native view of byte-swapped logits)
              "out": pick(draw, [xdt.replace(">", "<")] * 2 + ["float32", "float64"])}[role]
        shape = {"logits": (n, k), "targets": (n,) if tkind == "index" else (n, k), "weight": (k,), "out": (n, k)}[role]
        itemsize = np.dtype(dt).itemsize
        fresh = draw(one_in(4)) and role != "out"
        order = pick(draw, (["C", "C", "F", "rev", "step"]))
        strides = _strides(shape, itemsize, order)
        span = _span(shape, strides, itemsize)
        lo = -min(0, sum((s - 1) * st_ for s, st_ in zip(shape, strides) if st_ < 0))
        offset = draw(st.integers(0, max(0, nbytes - span))) if not fresh else 0
        if (not draw(one_in(3))) and not fresh:
            offset -= offset % itemsize  # mostly aligned
        earlier = [r for r in roles.values() if not r["fresh"]]
        if earlier and not fresh and draw(one_in(3)):
            # start where an earlier view starts: out= as a native view of byte-swapped
            # logits, int16 labels read from the logits' first bytes, ...
            offset = pick(draw, earlier)["start"]
        roles[role] = {"dtype": dt, "shape": list(shape), "strides": list(strides), "offset": offset + lo, "start": offset,
                       "fresh": fresh}
    inplace = "out" not in roles and draw(st.booleans())
    opts = {}
    if draw(st.booleans()):
        opts["reduction"] = pick(draw, (["'none'", "'sum'"]))
    return {"entry": "alias", "n": n, "k": k, "tkind": tkind, "nbytes": nbytes, "roles": roles, "inplace": inplace,
            "seed": draw(seeds), "options": opts, "all_isa": draw(one_in(4))}


def _strides(shape: tuple[int, ...], itemsize: int, order: str) -> tuple[int, ...]:
    if len(shape) == 1:
        return {"rev": (-itemsize,), "step": (2 * itemsize,)}.get(order, (itemsize,))
    n, k = shape
    return {"C": (k * itemsize, itemsize), "F": (itemsize, n * itemsize), "rev": (k * itemsize, -itemsize),
            "step": (2 * k * itemsize, itemsize)}[order]


def _span(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> int:
    return sum((s - 1) * abs(st_) for s, st_ in zip(shape, strides)) + itemsize


def build_alias(spec: dict[str, Any]) -> Program:
    n, k = spec["n"], spec["k"]
    setup = [(f"buf = np.zeros({spec['nbytes']}, np.uint8); rng = np.random.default_rng({spec['seed']})", "plain")]
    names = {"logits": "x", "targets": "y", "weight": "w", "out": "o"}
    fills = {
        "logits": "rng.standard_normal({shape}) * 3",
        "targets": f"rng.integers(0, {k}, {{shape}})" if spec["tkind"] == "index" else "rng.random({shape}) < 0.5",
        "weight": "rng.uniform(0.5, 2, {shape})",
        "out": None,
    }
    for role in ("out", "logits", "targets", "weight"):  # out first: its zeros must not clobber the inputs' values
        r = spec["roles"].get(role)
        var = names[role]
        if r is None:
            if role == "targets":
                setup.append((f"y = rng.integers(0, {k}, ({n},))", "plain"))
            continue
        shape = tuple(r["shape"])
        if r["fresh"]:
            setup.append((f"{var} = np.zeros({shape}, {r['dtype']!r})", "plain"))
        else:
            setup.append((f"{var} = np.ndarray({shape}, {r['dtype']!r}, buffer=buf, offset={r['offset']}, strides={tuple(r['strides'])})",
                          "plain"))
        if fills[role]:
            setup.append((f"{var}[...] = {fills[role].format(shape=shape)}", "plain"))
    args = {"logits": "x", "targets": "y"}
    if "weight" in spec["roles"]:
        args["weight"] = "w"
    writable: tuple[str, ...] = ()
    if "out" in spec["roles"]:
        args["out"] = "o"
        writable = ("o",)
    if spec["inplace"]:
        args["inplace"] = "True"
        writable = ("x",)
    args.update(spec["options"])
    return Program(setup, "fx.softmax_cross_entropy", args, positional=("logits", "targets"), writable=writable)


@st.composite
def rowwise_specs(draw: Any) -> dict[str, Any]:
    shape, ax = draw(logits_shapes())
    x = draw(float_array(shape, LOGIT_DTYPES if draw(one_in(10)) else _LOGIT_FLOATS))
    op = pick(draw, (["logsumexp", "softmax", "log_softmax"]))
    axis = str(ax) if (not draw(one_in(13))) else draw(option_values(2)["axis_odd"])
    return {"entry": "rowwise", "op": op, "x": x, "axis": axis, "all_isa": draw(one_in(4)),
            "backend": None if (not draw(one_in(21))) else "'gpu'"}


def build_rowwise(spec: dict[str, Any]) -> Program:
    setup = [(line, "plain") for line in array_lines("x", spec["x"])]
    args = {"x": "x", "axis": spec["axis"]}
    if spec.get("backend"):
        args["backend"] = spec["backend"]
    return Program(setup, f"fx.{spec['op']}", args, positional=("x",))


@st.composite
def sparse_specs(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(0, 5))
    k = draw(st.integers(1, 12))
    t = draw(sparse_targets(n, k))
    dtype = pick(draw, (FLOATS))
    opts: dict[str, str] = {}
    if draw(st.booleans()):
        opts["reduction"] = pick(draw, (["'none'", "'sum'", "'mean'"]))
    if draw(one_in(4)):
        opts["label_smoothing"] = "0.2"
    if draw(one_in(10)):
        opts["ignore_index"] = pick(draw, (["0", "-1"]))
    return {"entry": "sparse", "n": n, "k": k, "targets": t, "dtype": dtype, "options": opts, "seed": draw(seeds),
            "all_isa": draw(one_in(4)), "weighted": draw(one_in(4))}


def build_sparse(spec: dict[str, Any]) -> Program:
    n, k = spec["n"], spec["k"]
    setup = [(f"x = np.random.default_rng({spec['seed']}).standard_normal(({n}, {k})).astype({spec['dtype']!r})", "plain")]
    setup += sparse_lines("y", spec["targets"], k)
    args = {"logits": "x", "targets": "y", **spec["options"]}
    if spec["weighted"]:
        setup.append((f"w = np.linspace(0.5, 2, {k})", "plain"))
        args["weight"] = "w"
    return Program(setup, "fx.softmax_cross_entropy", args, positional=("logits", "targets"))


@st.composite
def config_specs(draw: Any) -> dict[str, Any]:
    func = pick(draw, (["set_num_threads", "set_simd"]))
    if func == "set_num_threads":
        arg = pick(draw, (["1", "2", "3", "None", "0", "-1", "2**64", "2**31", "1.5", "True", "'2'", "np.int64(2)",
                                    "np.array(2)", "-2**63"]))
    else:
        arg = pick(draw, ([*(repr(s) for s in SUPPORTED_SIMD), "None", "'sse'", "'AVX2'", "b'avx2'", "1", "np.str_('generic')",
                                    "''", "'avx512\\x00'"]))
    return {"entry": "config", "func": func, "arg": arg, "seed": draw(seeds), "k": draw(st.integers(1, 40))}


def build_config(spec: dict[str, Any]) -> Program:
    setup = [
        (f"fx.{spec['func']}({spec['arg']})", "api"),
        (f"x = np.random.default_rng({spec['seed']}).standard_normal((5, {spec['k']})).astype('float32')", "plain"),
        (f"y = np.random.default_rng({spec['seed']}).integers(0, {spec['k']}, 5)", "plain"),
    ]
    return Program(setup, "fx.softmax_cross_entropy", {"logits": "x", "targets": "y", "reduction": "'none'"},
                   positional=("logits", "targets"))


@st.composite
def torch_specs(draw: Any) -> dict[str, Any]:
    c = draw(st.integers(1, 20))
    shape = pick(draw, ([[c], [3, c], [2, c, 3], [0, c], [4, c]]))
    xdt = pick(draw, (["float32", "float32", "float64", "float16", "bfloat16"]))
    index = draw(st.booleans())
    lead = shape[:1] + shape[2:] if len(shape) > 1 else []
    opts: dict[str, str] = {}
    if draw(st.booleans()):
        opts["reduction"] = pick(draw, (["'none'", "'sum'", "'mean'", "'avg'"]))
    if draw(one_in(3)):
        opts["label_smoothing"] = pick(draw, (["0.1", "1.0", "0.0", "-0.1", "1.5"]))
    if draw(one_in(3)):
        opts["ignore_index"] = pick(draw, (["-100", "0", "1", "-1", "2**63 - 1"]))
    return {
        "entry": "torch", "shape": shape, "xdt": xdt, "index": index, "lead": lead, "c": c, "seed": draw(seeds),
        "tdt": pick(draw, (["int64", "int64", "int32", "uint8"])) if index else pick(draw, ([xdt, xdt, "float64"])),
        "bad_label": pick(draw, ([None] * 4 + [str(c), "-1", "-100"])) if index else None,
        "weight": pick(draw, ([None, None, "same", "float64", "short", "grad"])),
        "layout": pick(draw, (["contig", "contig", "transposed", "channels_last", "strided"])),
        "requires_grad": pick(draw, ([True, True, False])),
        "module": draw(st.booleans()), "options": opts, "scale": pick(draw, ([1.0, 30.0, 1e4])),
        "special": pick(draw, ([None] * 4 + ["nan", "inf", "-inf"])),
        # eager autograd.Function, under torch.func (the custom op's autograd formula), or
        # the custom op torch.ops.fastxent.cross_entropy called directly
        "path": pick(draw, ["eager", "eager", "eager", "func", "op"]),
    }


def build_torch(spec: dict[str, Any]) -> Program:
    s, shape = spec["seed"], tuple(spec["shape"])
    c = spec["c"]
    setup = [(f"g = torch.Generator().manual_seed({s})", "plain")]
    xdt = f"torch.{spec['xdt']}"
    if spec["layout"] == "transposed" and len(shape) == 2:
        setup.append((f"x = (torch.randn({shape[::-1]}, generator=g) * {spec['scale']}).to({xdt}).t()", "plain"))
    elif spec["layout"] == "channels_last" and len(shape) == 3:
        setup.append((f"x = (torch.randn(({shape[0]}, {shape[2]}, {shape[1]}), generator=g) * {spec['scale']}).to({xdt}).transpose(1, 2)",
                      "plain"))
    elif spec["layout"] == "strided":
        setup.append((f"x = (torch.randn({shape[:-1] + (shape[-1] * 2,)}, generator=g) * {spec['scale']}).to({xdt})[..., ::2]", "plain"))
    else:
        setup.append((f"x = (torch.randn({shape}, generator=g) * {spec['scale']}).to({xdt})", "plain"))
    if spec["special"] and x_numel(shape):
        setup.append((f"if x.is_contiguous(): x.view(-1)[0] = float('{spec['special']}')", "plain"))
    if spec["requires_grad"]:
        setup.append(("x.requires_grad_(True)", "plain"))
    lead = tuple(spec["lead"])
    if spec["index"]:
        setup.append((f"y = torch.randint(0, {c}, {lead}, generator=g).to(torch.{spec['tdt']})", "plain"))
        if spec["bad_label"] and x_numel(lead):
            setup.append((f"if y.dtype != torch.uint8: y.view(-1)[0] = {spec['bad_label']}", "plain"))
    else:
        setup.append((f"y = torch.softmax(torch.randn({shape}, generator=g), {1 if len(shape) > 1 else 0}).to(torch.{spec['tdt']})",
                      "plain"))
    w = spec["weight"]
    args = {"input": "x", "target": "y"}
    if w:
        wsrc = {"same": f"torch.rand({c}, generator=g).to({xdt})", "float64": f"torch.rand({c}, generator=g).double()",
                "short": f"torch.rand({max(1, c - 1)}, generator=g).to({xdt})",
                "grad": f"torch.rand({c}, generator=g).to({xdt}).requires_grad_(True)"}[w]
        setup.append((f"w = {wsrc}", "plain"))
        args["weight"] = "w"
    args.update(spec["options"])
    path = spec.get("path", "eager")
    if path == "op":
        o = spec["options"]
        pos = {"input": "x", "target": "y", "weight": args.get("weight", "None"), "ignore_index": o.get("ignore_index", "-100"),
               "reduction": o.get("reduction", "'mean'"), "label_smoothing": o.get("label_smoothing", "0.0"), "compute_grad": "True"}
        return Program(setup, "torch.ops.fastxent.cross_entropy", pos, positional=tuple(pos))
    if path == "func":
        kw = "".join(f", {k}={v}" for k, v in args.items() if k not in ("input", "target"))
        setup.append((f"f = lambda input, target: (None, torch.func.grad(lambda x: fastxent.torch.cross_entropy(x, target{kw}).sum())(input))",
                      "plain"))
        return Program(setup, "f", {"input": "x", "target": "y"}, positional=("input", "target"))
    if spec["module"]:
        ctor = ", ".join(f"{k}={v}" for k, v in args.items() if k not in ("input", "target"))
        setup.append((f"crit = fastxent.torch.CrossEntropyLoss({ctor})", "api"))
        return Program(setup, "crit", {"input": "x", "target": "y"}, positional=("input", "target"))
    return Program(setup, "fastxent.torch.cross_entropy", args, positional=("input", "target"))


def x_numel(shape: tuple[int, ...] | list[int]) -> int:
    return int(np.prod(shape)) if len(shape) else 1


@st.composite
def jax_specs(draw: Any) -> dict[str, Any]:
    # few shapes: every new shape costs JAX a trace and a compile
    shape = pick(draw, ([[3, 5], [2, 3, 4], [7], [0, 4], [4, 1]]))
    axis = pick(draw, ([-1, -1, 0, 1, 5, "1.0", "(0, 1)"]))
    return {"entry": "jax", "shape": shape, "axis": axis, "integer": draw(st.booleans()), "seed": draw(seeds),
            "xdt": pick(draw, (["float32", "float32", "float64", "float16", "int32"])),
            "ldt": pick(draw, (["int32", "int32", "int8", "uint32", "float32"])),
            "bad_label": pick(draw, ([None] * 3 + ["-1", "99"])),
            "special": pick(draw, ([None] * 3 + ["nan", "inf", "-inf"])),
            "where": pick(draw, ([None] * 3 + ["rows", "elements"])),
            "transform": pick(draw, ["none", "grad", "jit", "vmap", "jit-grad", "jvp", "jacfwd"])}


# The same transformation of fastxent's function (source, in the reproducer) and of
# optax's (the reference): {name}(f) with f(x, y, axis) -> per-example losses.
JAX_TRANSFORMS = {
    "none": "{f}",
    "grad": "lambda x, y, axis: jax.grad(lambda x: {f}(x, y, axis).sum())(x)",
    "jit": "jax.jit({f}, static_argnums=2)",
    "vmap": "lambda x, y, axis: jax.vmap(lambda a, b: {f}(a, b, axis))(x, y)",
    "jit-grad": "jax.jit(lambda x, y, axis: jax.grad(lambda x: {f}(x, y, axis).sum())(x), static_argnums=2)",
    "jvp": "lambda x, y, axis: jax.jvp(lambda x: {f}(x, y, axis), (x,), (jax.numpy.cos(x),))[1]",
    "jacfwd": "lambda x, y, axis: jax.jacfwd(lambda x: {f}(x, y, axis).sum())(x)",
}


def _jax_transform(spec: dict[str, Any]) -> str:
    t = spec.get("transform", "grad" if spec.get("grad") else "none")
    if ("grad" in t or t in ("jvp", "jacfwd")) and not spec["xdt"].startswith("float"):
        return "none"  # jax.grad and jax.jvp themselves refuse integer inputs
    if t == "vmap" and not (len(spec["shape"]) >= 2 and spec["axis"] in (-1, len(spec["shape"]) - 1)):
        return "none"  # vmap maps the leading axis of logits and labels alike: it must not be the class axis
    return t


def build_jax(spec: dict[str, Any]) -> Program:
    shape = tuple(spec["shape"])
    ax = spec["axis"]
    setup = [(f"rng = np.random.default_rng({spec['seed']}); x = rng.standard_normal({shape}).astype({spec['xdt']!r})", "plain")]
    if spec["special"] and x_numel(shape):
        setup.append((f"x.flat[0] = {spec['special']} if x.dtype.kind == 'f' else 0", "plain"))
    if spec["integer"]:
        iax = ax if isinstance(ax, int) and -len(shape) <= ax < len(shape) else -1
        lead = tuple(d for i, d in enumerate(shape) if i != iax % len(shape))
        kk = shape[iax]
        setup.append((f"y = rng.integers(0, {kk}, {lead}).astype({spec['ldt']!r})", "plain"))
        if spec["bad_label"] and x_numel(lead):
            setup.append((f"y.flat[0] = {spec['bad_label']} if y.dtype.kind == 'i' else 0", "plain"))
        func = "fastxent.jax.softmax_cross_entropy_with_integer_labels"
    else:
        setup.append((f"y = rng.dirichlet(np.ones({shape[-1]}), {shape[:-1]}).astype('float32')", "plain"))
        func = "fastxent.jax.softmax_cross_entropy"
    if spec.get("where") and isinstance(ax, int) and -len(shape) <= ax < len(shape):
        # optax's where: per element (keeping a class label's own class) or per example
        if spec["where"] == "elements":
            setup.append((f"w = rng.random({shape}) < 0.7", "plain"))
            if spec["integer"]:
                setup.append(((f"np.put_along_axis(w, np.expand_dims(np.clip(y, 0, {shape[ax] - 1}), {ax}), True, "
                              f"axis={ax}) if y.dtype.kind in 'iu' and w.size else None"), "plain"))
        else:
            lead = tuple(d for i, d in enumerate(shape) if i != ax % len(shape))
            setup.append((f"w = rng.random({lead}) < 0.7", "plain"))
        func = f"(lambda x, y, axis: {func}(x, y, axis, where=w))"
    transform = _jax_transform(spec)
    if transform != "none":
        setup.append(("f = " + JAX_TRANSFORMS[transform].format(f=func), "plain"))
        func = "f"
    return Program(setup, func, {"logits": "x", "labels": "y", "axis": str(ax)}, positional=("logits", "labels", "axis"))


# ---------------------------------------------------------------------------------------
# Running a program: variants, memory snapshots
# ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    variant: str
    status: str  # "ok" | "error" | "setup-error"
    exc_type: str = ""
    message: str = ""
    where: str = ""  # the setup line or "call"
    result: Any = None  # (loss, grad) as float64 copies, or another entry point's result
    memory: list[str] = field(default_factory=list)  # oracle (c) violations
    args: dict[str, Any] | None = None  # the call's argument objects, before the call (deep copies)
    overlap: str = ""  # memory the call must not accept sharing (found on the real arguments)


def fresh_namespace(needs_torch: bool, needs_jax: bool, needs_ml_dtypes: bool = False) -> dict[str, Any]:
    if needs_ml_dtypes:  # (imported only then: a second a child, which a crash restarts)
        import ml_dtypes  # noqa: F401 - registers the dtype names 'bfloat16', 'float8_e4m3fn' the programs use
    import scipy.sparse
    ns: dict[str, Any] = {"np": np, "fx": fx, "nan": np.nan, "inf": np.inf, "scipy": scipy, "tempfile": tempfile}
    if needs_torch:
        importlib.import_module("fastxent.torch")  # (imports torch)
        ns.update(torch=sys.modules["torch"], fastxent=sys.modules["fastxent"])
    if needs_jax:
        importlib.import_module("fastxent.jax")
        ns.update(jax=sys.modules["jax"], jnp=importlib.import_module("jax.numpy"), fastxent=sys.modules["fastxent"])
    return ns


@contextlib.contextmanager
def variant_context(variant: str) -> Iterator[None]:
    if variant.startswith("simd="):
        fx.set_simd(variant[5:])
    elif variant == "threads=1":
        fx.set_num_threads(1)
    try:
        yield
    finally:
        if HAVE_CORE:
            fx.set_simd(None)
            fx.set_num_threads(None)


def _byte_bounds(a: np.ndarray) -> tuple[int, int]:
    return np.lib.array_utils.byte_bounds(a)  # type: ignore[no-any-return]


def memory_regions(objs: list[Any], bases: bool = True) -> list[np.ndarray]:
    """Every ndarray reachable from the arguments (SparseTargets' and scipy's arrays,
    tensors' memory, and with `bases` the buffers under views)."""
    found: list[np.ndarray] = []

    def visit(o: Any, depth: int = 0) -> None:
        if depth > 6 or o is None:
            return
        if isinstance(o, np.ndarray):
            found.append(o)
            if bases and isinstance(o.base, np.ndarray):
                visit(o.base, depth + 1)
            return
        if isinstance(o, memoryview):
            with contextlib.suppress(Exception):
                visit(np.asarray(o), depth + 1)
            return
        if isinstance(o, fx.SparseTargets):
            for name in ("indptr", "indices", "values"):
                visit(getattr(o, name, None), depth + 1)
            return
        if hasattr(o, "tocsr") and hasattr(o, "nnz"):
            for name in ("data", "indices", "indptr", "row", "col"):
                visit(getattr(o, name, None), depth + 1)
            return
        if type(o).__module__.startswith("torch") and hasattr(o, "untyped_storage"):
            with contextlib.suppress(Exception):
                storage = o.untyped_storage()
                if storage.nbytes():
                    found.append(np.ctypeslib.as_array((ctypes.c_uint8 * storage.nbytes()).from_address(storage.data_ptr())))
            return

    for obj in objs:
        visit(obj)
    return found


class Snapshot:
    """The bytes of every input's memory (merged address ranges), to compare after the call."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        spans = sorted(_byte_bounds(a) for a in arrays if a.size)
        merged: list[list[int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.ranges = [(lo, hi, ctypes.string_at(lo, hi - lo)) for lo, hi in merged]

    def changed_outside(self, writable: list[np.ndarray], arrays: list[np.ndarray]) -> list[str]:
        problems = []
        for lo, hi, before in self.ranges:
            after = ctypes.string_at(lo, hi - lo)
            if after == before:
                continue
            diff = np.flatnonzero(np.frombuffer(after, np.uint8) != np.frombuffer(before, np.uint8))
            allowed = np.zeros(hi - lo, bool)
            for w in writable:
                offs = element_offsets(w) - lo
                for b in range(w.itemsize):
                    inside = (offs + b >= 0) & (offs + b < hi - lo)
                    allowed[(offs + b)[inside]] = True
            bad = diff[~allowed[diff]]
            if bad.size:
                addr = lo + int(bad[0])
                owners = [f"{a.dtype}{list(a.shape)}" for a in arrays if a.size and _byte_bounds(a)[0] <= addr < _byte_bounds(a)[1]]
                problems.append(f"{bad.size} byte(s) changed outside the writable memory, first in {owners[:2]}")
        return problems


def element_offsets(a: np.ndarray) -> np.ndarray:
    start = a.__array_interface__["data"][0]
    offs = np.zeros((), np.int64)
    for n, s in zip(a.shape, a.strides):
        offs = offs[..., None] + np.arange(n, dtype=np.int64) * s
    return (start + offs).ravel()


def as_plain(obj: Any) -> Any:
    """The ndarray view of an argument (subclasses viewed as ndarray: masks ignored)."""
    if isinstance(obj, np.ndarray):
        return obj.view(np.ndarray)
    return obj


def copy_arg(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return np.array(obj.view(np.ndarray), copy=True)
    if isinstance(obj, memoryview):
        return np.array(obj, copy=True)
    if type(obj).__module__.startswith("torch"):
        return obj.detach().clone() if hasattr(obj, "detach") else obj
    return obj


def run_program(prog: Program, variant: str, entry: EntryPoint) -> Outcome:
    ns = fresh_namespace("torch" in prog.func or any("torch" in s for s, _ in prog.setup),
                         "jax" in prog.func or any("jax" in s for s, _ in prog.setup),
                         any("bfloat16" in s or "float8" in s for s, _ in prog.setup))
    with variant_context(variant), np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for src, mode in prog.setup:
            try:
                exec(src, ns)  # noqa: S102 - the fuzzer's own generated source
            except Exception as exc:  # noqa: BLE001 - any exception is a result to judge here
                if mode == "plain" or (mode == "scipy"):
                    return Outcome(variant, "setup-error", type(exc).__name__, str(exc), src)
                if mode == "mutation":
                    continue  # refused: immutable
                return Outcome(variant, "error", type(exc).__name__, str(exc), src)
        args = {name: eval(expr, ns) for name, expr in prog.args.items()}
        func = eval(prog.func, ns)
        arrays = memory_regions(list(args.values()))
        snap = Snapshot(arrays)
        writable = memory_regions([ns[w] for w in prog.writable if w in ns])
        before = {name: copy_arg(v) for name, v in args.items()}
        overlap = entry.overlap(args) if entry.overlap else ""
        pos = [args[p] for p in prog.positional]
        kw = {k: v for k, v in args.items() if k not in prog.positional}
        where = "call"
        try:
            res = func(*pos, **kw)
            where = "result"  # e.g. the adapters' backward pass
            captured = entry.capture(res, args)
        except Exception as exc:  # noqa: BLE001 - any exception is a result to judge here
            out = Outcome(variant, "error", type(exc).__name__, str(exc), where)
            out.memory = snap.changed_outside([], arrays)  # a refused call writes nothing at all
            out.args = before
            return out
        out = Outcome(variant, "ok", result=captured, where="call", overlap=overlap)
        out.memory = snap.changed_outside(writable, arrays)
        out.args = before
        return out


# ---------------------------------------------------------------------------------------
# Oracles
# ---------------------------------------------------------------------------------------


@dataclass
class Finding:
    entry: str
    oracle: str
    detail: str  # shown, and (blanked) part of the dedup key
    variant: str = ""
    spec: dict[str, Any] | None = None
    key_detail: str = ""  # when set, the dedup key uses this instead of detail
    tags: str = ""  # part of the dedup key (see run_case)

    def key(self) -> str:
        text = self.key_detail or self.detail.split(" (at ")[0]
        if self.oracle == "error-contract":
            text = text[:60]  # "set_num_threads: n must be ... got True" and "... got '2'" are one finding
        shape = re.sub(r"'[^']*'|\"[^\"]*\"", "S", text)
        shape = re.sub(r"np\.\w+\(([^()]*)\)", r"\1", shape)
        shape = re.sub(r"[-+]?\b\d[\d.e+-]*|\bnan\b|\binf\b", "N", shape)
        shape = re.sub(r"\[[N, ]*\]|\([N, ]*\)", "[N]", shape)
        return f"{self.entry} | {self.oracle} | {shape[:100]}" + (f" | {self.tags}" if self.tags else "")


ALLOWED_ERRORS = ("TypeError", "ValueError", "IndexError")


def check_error(entry: EntryPoint, out: Outcome) -> list[Finding]:
    """Oracle (a): the exception's type and the argument name its message starts with."""
    if out.status != "error":
        return []
    names = entry.arg_names
    ok_type = out.exc_type in ALLOWED_ERRORS or out.exc_type in entry.extra_errors
    ok_prefix = any(out.message.startswith(n + ":") or out.message.startswith(n + " (") for n in names)
    if entry.foreign_messages and out.where == "call":
        ok_prefix = True  # the adapters pass on the framework's own messages (compared there)
    if ok_type and ok_prefix:
        return []
    if entry.traced_error_ok is not None and entry.traced_error_ok(out):
        return []
    first = out.message.splitlines()[0] if out.message else ""
    return [Finding(entry.name, "error-contract", f"{out.exc_type}: {first[:160]} (at {out.where[:60]})", out.variant)]


def loss_reference(args: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]] | None:
    """float64 (loss, grad) from tests/reference.py on the call's inputs as the kernels read
    them (targets, weight and sparse values rounded to the compute dtype first: the
    logits', float32 for 16-bit logits), plus the per-row quantities the error bound
    needs (info["store"]: the gradient's dtype). None when the reference cannot say."""
    x = np.asarray(as_plain(args["logits"]))
    if not (x.dtype.kind == "f" and x.dtype.itemsize in (2, 4, 8) or is_bfloat16(x.dtype)) or x.ndim == 0:
        return None
    store = x.dtype.newbyteorder("=")
    dtype = np.dtype(np.float32) if store.itemsize == 2 else store  # the compute dtype
    x = x.astype(np.float64)
    ax = int(args.get("axis", -1)) % x.ndim
    k = x.shape[ax]
    t = args["targets"]
    if isinstance(t, fx.SparseTargets) or (hasattr(t, "tocsr") and hasattr(t, "nnz")):
        if isinstance(t, fx.SparseTargets):
            ip, ix, v = (np.asarray(a) for a in (t.indptr, t.indices, t.values if t.values is not None else np.ones(len(t.indices))))
        else:
            csr = t.tocsr()
            ip, ix, v = csr.indptr, csr.indices, csr.data
        n = len(ip) - 1
        if n < 0 or ip[0] != 0 or ip[-1] != len(ix) or np.any(np.diff(ip) < 0) or (ix.size and (ix.min() < 0 or ix.max() >= k)):
            return None
        dense = np.zeros((n, k))
        rows = np.repeat(np.arange(n), np.diff(ip))
        np.add.at(dense, (rows, ix.astype(np.int64)), np.asarray(v).astype(dtype).astype(np.float64))
        lead = x.shape[:ax] + x.shape[ax + 1:]
        if n != int(np.prod(lead)):
            return None
        tt: Any = np.moveaxis(dense.reshape(lead + (k,)), -1, ax)
    else:
        tt = np.asarray(as_plain(t))
        if tt.dtype.kind in "fb" or is_bfloat16(tt.dtype):
            tt = tt.astype(dtype).astype(np.float64)
    w = args.get("weight")
    if w is not None:
        w = np.asarray(as_plain(w)).astype(dtype).astype(np.float64)
    opts = {}
    for name in ("label_smoothing", "z_loss"):
        if name in args:
            opts[name] = float(args[name])
    if args.get("softcap") is not None:
        opts["softcap"] = float(args["softcap"])
    if "ignore_index" in args:
        opts["ignore_index"] = int(args["ignore_index"])
    red = str(args.get("reduction", "mean"))
    with np.errstate(all="ignore"):
        info = bound_terms(x, tt, ax, k, w, dtype, opts, red)
        info["store"] = store
        loss, grad = shifted_reference(x, tt, ax, w, opts, red, info)
    return loss, grad, info


def shifted_reference(x: np.ndarray, t: Any, ax: int, w: Any, opts: dict[str, Any], red: str, info: dict[str, Any]) -> tuple[Any, Any]:
    """reference.cross_entropy on each row's capped logits minus their max.

    The loss and gradient do not change when a row is shifted, but reference.py computes
    log softmax as x - lse, which loses everything once |x| >> 1 (lse == x for x = 3.4e38
    in float64); shifted logits are near 0 there. The soft cap (applied first, float64)
    and z_loss (z * lse^2, gradient 2 z lse softmax) are not shift-invariant, so they are
    added here, with the same row/ignore conventions as reference.py."""
    xr = info["rows_x"]
    cap = opts.get("softcap")
    if cap:
        th = np.tanh(xr / cap)
        xt, dcap = cap * th, 1.0 - th * th
    else:
        xt, dcap = xr, np.ones_like(xr)
    m = np.max(xt, axis=1, keepdims=True, initial=-np.inf) if xt.shape[1] else np.zeros((xt.shape[0], 1))
    m = np.where(np.isfinite(m), m, 0.0)
    lead = x.shape[:ax] + x.shape[ax + 1:]
    shifted = reference._unrows(xt - m, x.shape, ax) if xt.size else x
    base = {n: v for n, v in opts.items() if n in ("ignore_index", "label_smoothing")}
    rows, grad = reference.cross_entropy(shifted, t, axis=ax, reduction="none", weight=w, **base)
    rows = np.asarray(rows, np.float64).reshape(-1)
    g = reference._rows(np.asarray(grad, np.float64), ax)
    z = float(opts.get("z_loss", 0.0))
    kept = info["kept"]
    if z:
        lse = info["lse_exact"]
        s = info["s"]
        rows = rows + np.where(kept, z * lse * lse, 0.0)
        g = g + np.where(kept[:, None], 2 * z * lse[:, None] * s, 0.0)
    g = g * dcap
    if red == "none":
        return rows.reshape(lead), reference._unrows(g, x.shape, ax)
    denom = info["denom"] if red == "mean" else 1.0
    g = np.where(kept[:, None], g / denom, 0.0)  # ignored rows: 0 even when nothing counts (docs/bad_inputs.md)
    return float(np.sum(rows) / denom), reference._unrows(g, x.shape, ax)


def bound_terms(x: np.ndarray, t: np.ndarray, ax: int, k: int, w: Any, dtype: np.dtype[Any], opts: dict[str, Any],
                red: str) -> dict[str, Any]:
    """Per-row sizes for the error bounds of `loss_bounds` (all float64)."""
    xr = reference._rows(x, ax)
    n = xr.shape[0]
    cap = opts.get("softcap")
    xt = cap * np.tanh(xr / cap) if cap else xr
    eps = float(opts.get("label_smoothing", 0.0))
    wv = np.ones(k) if w is None else w
    if t.dtype.kind in "iu":
        idx = t.reshape(-1).astype(np.int64)
        keep = idx != opts.get("ignore_index", -100)
        onehot = np.zeros((n, k))
        onehot[np.flatnonzero(keep), idx[keep]] = 1.0
        q = wv * (onehot * (1 - eps) + eps / k) * keep[:, None]
        denom = float(np.sum(wv[idx[keep]])) if red == "mean" else 1.0
    else:
        q = wv * (reference._rows(t, ax) * (1 - eps) + eps / k)
        denom = float(n) if red == "mean" else 1.0
        keep = np.ones(n, bool)
    fin = np.isfinite(xt)
    m = np.max(np.where(fin, xt, -np.inf), axis=1, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0.0)
    tt = np.where(fin, xt - m[:, None], 0.0)
    s = np.exp(tt) * fin
    ssum = s.sum(axis=1, keepdims=True)
    with np.errstate(all="ignore"):
        s = np.where(ssum > 0, s / ssum, 0.0)
    lse = m + np.log(np.maximum(ssum[:, 0], 1e-300))
    has_softmax = np.isfinite(np.max(xt, axis=1, initial=-np.inf)) & ~np.isnan(xt).any(axis=1)
    return {"kept": keep, "lse_exact": np.where(has_softmax, lse, np.nan),"q": q, "t": tt, "xt": np.where(fin, xt, 0.0), "m": m, "s": s, "lse": lse, "denom": denom,
            "z": float(opts.get("z_loss", 0.0)), "cap": bool(cap), "smoothing": eps, "dtype": dtype, "k": k, "n": n, "rows_x": xr}


def loss_bounds(info: dict[str, Any], red: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Absolute error bounds (row losses, reduced loss, gradient rows) a correct kernel meets.

    With rtol = 32 eps log2(K+1) (reference.rtol_for: a few roundings, times the depth of
    the K-term sums): the loss is Q*log S - sum q_j t_j with t = x - max, so its error is
    rtol*(Q*(log K + 1) + sum |q_j t_j|); a soft cap rounds each capped logit by eps*|xt|
    (added for every term it touches); z_loss adds 2*z*|lse|*err(lse). The gradient is
    s_j*Q' - q_j with s_j = exp(t_j - log S): s_j is off by at most s_j*expm1(delta_j),
    delta_j the exponent's error rtol*(|t_j| + log K + 1) (+ the cap's rounding), which
    stays tiny for huge logits (t is exact near the max) yet allows any s when the
    rounding of huge capped logits makes the exponent itself uncertain.
    Rows whose intermediates reach the dtype's overflow range are "edge" rows: any value
    is accepted there (float32 t = x - max overflows where float64 does not).
    """
    dt = info["dtype"]
    k = info["k"]
    rtol = reference.rtol_for(dt, k, 32.0)
    q, t, xt, m, s, lse, z = info["q"], info["t"], info["xt"], info["m"], info["s"], info["lse"], info["z"]
    aq = np.abs(q)
    qsum = aq.sum(axis=1)
    logk = math.log(k) + 1.0
    capf = 1.0 if info["cap"] else 0.0
    big = float(np.finfo(dt).max)
    row = rtol * (qsum * (logk + capf * np.abs(m)) + (aq * (np.abs(t) + capf * np.abs(xt))).sum(axis=1)
                  + 2 * z * (np.abs(lse) + 1) * (np.abs(lse) + np.abs(m) + logk))
    qprime = np.abs(q.sum(axis=1)) + 2 * z * np.abs(lse)
    delta = rtol * (np.abs(t) + logk + capf * (np.abs(xt) + np.abs(m)[:, None]))
    delta = delta + (s * delta).sum(axis=1, keepdims=True)
    # (+ tiny: exp of a very negative t underflows to 0 or a subnormal in the logits' dtype,
    # an absolute error in s that the factor Q' can lift into the normal range)
    err_s = np.minimum(s * np.expm1(np.minimum(delta, 700.0)) + rtol * s + 4 * float(np.finfo(dt).tiny), 1.0)
    grad = (qprime[:, None] * (err_s + rtol * s) + rtol * aq + 2 * z * s * rtol * (np.abs(lse) + np.abs(m) + logk)[:, None])
    tiny = 4 * float(np.finfo(dt).tiny)
    scale = 1.0
    if red == "mean":
        scale = 1.0 / abs(info["denom"]) if info["denom"] else np.inf
    with np.errstate(invalid="ignore"):
        grad = np.where(info["kept"][:, None], grad * scale, 0.0) + tiny
    edge = ((np.abs(info["rows_x"]) > big / 8) & np.isfinite(info["rows_x"])).any(axis=1) \
        | (np.abs(t) > big / 8).any(axis=1) \
        | (z * lse * lse > big / 8) | (qsum * (np.abs(t).max(axis=1, initial=0) + np.abs(lse)) > big / 8) \
        | (qsum > big / 8)
    if red == "mean":
        # weights that sum to 0 over the counted rows: x / 0 in the kept rows, either inf or NaN
        edge = edge | ((scale > big / 8) & info["kept"])
    if info["smoothing"] == 1.0:
        # eps = 1 with a -inf logit: the loss is +inf (every class has target eps / K), but
        # reference.py's PyTorch form computes 0 * nll = 0 * inf = NaN for it
        edge = edge | (np.isneginf(info["rows_x"]).any(axis=1) & info["kept"])
    reduced = float(np.sum(row)) * (scale if np.isfinite(scale) else 1.0) + tiny
    return row + tiny, np.array(reduced), np.where(edge[:, None], np.inf, grad), edge  # type: ignore[return-value]


def _compare(actual: np.ndarray, expected: np.ndarray, bound: np.ndarray, careless: np.ndarray, dtype: np.dtype[Any]) -> str:
    """'' when actual is within bound of expected (rounded to dtype: overflow to inf
    included), NaN/inf placement equal outside `careless`; else what differs."""
    a = np.asarray(actual, np.float64)
    with np.errstate(all="ignore"):
        e = np.asarray(expected, np.float64).astype(dtype).astype(np.float64)
    if a.shape != e.shape:
        return f"shape {a.shape} != reference {e.shape}"
    b = np.broadcast_to(bound, a.shape)
    c = np.broadcast_to(careless, a.shape)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    bad_nan = (nan_a != nan_e) & ~c
    if bad_nan.any():
        i = tuple(np.argwhere(bad_nan)[0])
        return f"NaN placement differs at {list(i)}: got {a[i]!r}, reference {e[i]!r}"
    inf_bad = (np.isinf(a) | np.isinf(e)) & ~(a == e) & ~c & ~nan_a & ~nan_e
    if inf_bad.any():
        i = tuple(np.argwhere(inf_bad)[0])
        return f"infinity differs at {list(i)}: got {a[i]!r}, reference {e[i]!r}"
    fin = np.isfinite(a) & np.isfinite(e) & ~c
    with np.errstate(all="ignore"):
        err = np.where(fin, np.abs(a - e), 0.0)
    over = fin & (err > b)
    if over.any():
        i = tuple(np.argwhere(over)[np.argmax(err[over] / np.maximum(b[over], 1e-300))])
        return f"off the reference at {list(i)}: got {a[i]!r}, reference {e[i]!r}, |diff| {err[i]:.3g} > bound {b[i]:.3g}"
    return ""


def must_refuse_loss(args: dict[str, Any]) -> str:
    """Memory sharing the loss must refuse (decision 2): out= sharing memory with any
    input, or inplace logits sharing memory with targets / weight / sparse arrays.
    Checked on the caller's own objects, before the call."""
    reads = [(name, a) for name in ("targets", "weight") for a in memory_regions([args.get(name)], bases=False)]
    xs = [("logits", a) for a in memory_regions([args["logits"]], bases=False)]
    o = args.get("out")
    if o is not None:
        for a in memory_regions([o], bases=False):
            for name, r in reads + xs:
                if _overlap(a, r):
                    return f"out= ({_kind(a)}) shares memory with {name} ({_kind(r)}), and was accepted"
    inplace = args.get("inplace")
    if isinstance(inplace, (bool, np.bool_)) and inplace:
        for _, xa in xs:
            for name, r in reads:
                if _overlap(xa, r):
                    return f"inplace=True accepted with logits ({_kind(xa)}) sharing memory with {name} ({_kind(r)})"
    return ""


def _kind(a: np.ndarray) -> str:
    order = "native" if a.dtype.isnative else "byte-swapped"
    return f"{a.dtype.newbyteorder('=')} {order}"


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    if not (a.size and b.size):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=10**5))
    except np.exceptions.TooHardError:
        return True


def _is_number(v: Any, kinds: str) -> bool:
    """docs/decisions: Python int/float, NumPy integer/floating scalars and 0-d arrays of
    such a dtype; never bool, str, or arrays with ndim > 0."""
    if isinstance(v, (bool, np.bool_, str, bytes)):
        return False
    if isinstance(v, np.ndarray):
        return v.ndim == 0 and v.dtype.kind in kinds
    if "f" in kinds and isinstance(v, (float, np.floating)):
        return True
    return isinstance(v, (int, np.integer))


def option_refusal(args: dict[str, Any]) -> str:
    """Option values the lead's decisions (issue 17, items 5 and 6) say must be refused."""
    red = args.get("reduction", "mean")
    if not isinstance(red, str) or red not in ("none", "sum", "mean"):
        return f"reduction={red!r} accepted"
    for name, lo, hi in (("label_smoothing", 0.0, 1.0), ("z_loss", 0.0, math.inf), ("softcap", 0.0, math.inf)):
        if name not in args or (name == "softcap" and args[name] is None):
            continue
        v = args[name]
        if not _is_number(v, "iuf"):
            return f"{name}={v!r} accepted"
        try:
            f = float(v)
        except OverflowError:
            return f"{name}={v!r} accepted (beyond float range)"
        if not (lo <= f <= hi) or math.isinf(f) or (name == "softcap" and f <= 0):
            return f"{name}={v!r} accepted (out of range)"
        if name == "softcap":
            x = np.asarray(as_plain(args["logits"]))
            if x.dtype.kind == "f" or is_bfloat16(x.dtype):
                # the cap must be finite and positive in the compute dtype (float32 for 16-bit logits)
                cdt = np.dtype(np.float32) if x.dtype.itemsize == 2 else x.dtype
                with np.errstate(all="ignore"):
                    c = cdt.type(f)
                if not (np.isfinite(c) and c > 0):
                    return f"softcap={v!r} accepted for {x.dtype} logits (rounds to {c!r} in {cdt})"
    if "ignore_index" in args:
        v = args["ignore_index"]
        if not _is_number(v, "iu") or not -(2**63) <= int(v) < 2**63:
            return f"ignore_index={v!r} accepted"
    for name in ("return_grad", "inplace"):
        if name in args and not isinstance(args[name], (bool, np.bool_)):
            return f"{name}={args[name]!r} accepted"
    if "axis" in args and not _is_number(args["axis"], "iu"):
        return f"axis={args['axis']!r} accepted"
    return ""


def labels_out_of_range(args: dict[str, Any]) -> str:
    x = np.asarray(as_plain(args["logits"]))
    t = args["targets"]
    if isinstance(t, (fx.SparseTargets,)) or hasattr(t, "tocsr") or x.ndim == 0:
        return ""
    try:
        ta = np.asarray(as_plain(t))
        ax = int(args.get("axis", -1)) % x.ndim
    except Exception:  # noqa: BLE001 - targets NumPy cannot read: nothing to check
        return ""
    if ta.dtype.kind not in "iu" or ta.size == 0:
        return ""
    k = x.shape[ax]
    ign = args.get("ignore_index", -100)
    vals = [int(v) for v in ta.reshape(-1).tolist()]
    bad = [v for v in vals if not 0 <= v < k and v != int(ign)]
    return f"class index {bad[0]} accepted with {k} classes" if bad else ""


def check_loss(entry: EntryPoint, spec: dict[str, Any], outs: list[Outcome]) -> list[Finding]:
    found: list[Finding] = []
    oks = [o for o in outs if o.status == "ok"]
    for o in outs:
        found += [Finding(entry.name, "memory", m, o.variant) for m in o.memory]
    found += accept_raise_agreement(entry, outs)
    if not oks:
        return found
    args = oks[0].args or {}
    why = oks[0].overlap or labels_out_of_range(args) or option_refusal(args)
    key_detail = re.sub(r" \((\w+) (native|byte-swapped)\)", lambda m: " (byte-swapped)" if m.group(2) != "native" else "", why)
    key_detail = re.sub(r"=.*? accepted", "= accepted", key_detail) if not oks[0].overlap else key_detail
    if not why and isinstance(args.get("targets"), fx.SparseTargets):
        with contextlib.suppress(Exception):
            if loss_reference(args) is None:
                why = "a SparseTargets with a broken structure (indptr/indices) was accepted"
    if why:
        return found + [Finding(entry.name, "accepted-bad-input", why, oks[0].variant, key_detail=key_detail)]
    try:
        ref = loss_reference(args)
    except Exception:  # noqa: BLE001 - the reference could not read these inputs: nothing to compare
        ref = None
    if ref is None:
        return found
    rloss, rgrad, info = ref
    red = str(args.get("reduction", "mean"))
    row_b, red_b, grad_b, edge = loss_bounds(info, red)
    dt = info["dtype"]
    store = info["store"]  # the gradient's dtype: 16-bit logits' gradients are their float32 value rounded
    x = np.asarray(as_plain(args["logits"]))
    ax = int(args.get("axis", -1)) % x.ndim
    lead = x.shape[:ax] + x.shape[ax + 1:]
    for o in oks:
        loss, grad = o.result
        if getattr(o.result, "types", ""):
            found.append(Finding(entry.name, "result-type", o.result.types, o.variant))
        if red == "none":
            why = _compare(loss, np.asarray(rloss), row_b.reshape(lead), edge.reshape(lead), dt)
        else:
            why = _compare(loss, np.asarray(rloss), red_b, np.array(edge.any()), dt)
        if why:
            found.append(Finding(entry.name, "reference", f"loss ({red}): {why}", o.variant))
        want_grad = args.get("return_grad", True)
        if grad is None:
            if want_grad is True:
                found.append(Finding(entry.name, "reference", "no gradient returned", o.variant))
            continue
        g_rows = reference._rows(np.asarray(grad, np.float64), ax) if grad.ndim == x.ndim else None
        if g_rows is None or grad.shape != x.shape:
            found.append(Finding(entry.name, "reference", f"gradient shape {grad.shape} != logits {x.shape}", o.variant))
            continue
        r_rows = reference._rows(np.asarray(rgrad), ax)
        careless = np.broadcast_to(edge[:, None], r_rows.shape) | (red != "none" and edge.any())
        careless = careless | near_float16_overflow(r_rows, store)
        why = _compare(g_rows, r_rows, grad_b + rounding16(r_rows, store), careless, store)
        if why:
            found.append(Finding(entry.name, "reference", f"gradient ({red}): {why}", o.variant))
    found += check_agreement(entry, oks)
    return found


def accept_raise_agreement(entry: EntryPoint, outs: list[Outcome]) -> list[Finding]:
    """Every variant (backend, ISA, threads) accepts the same inputs and raises the same type."""
    statuses = {o.variant: f"{o.status}{':' + o.exc_type if o.exc_type else ''}" for o in outs if o.status != "setup-error"}
    if len(set(statuses.values())) < 2:
        return []
    detail = "accept/raise differs: " + ", ".join(f"{v}={s}" for v, s in statuses.items())
    return [Finding(entry.name, "variants-disagree", detail, key_detail="accept/raise differs: " + " / ".join(sorted(set(statuses.values()))))]


def check_agreement(entry: EntryPoint, oks: list[Outcome]) -> list[Finding]:
    """Threads must not change a bit; other variants must agree on where NaN is."""
    found = []
    base = next((o for o in oks if o.variant == "cpp"), None)
    for o in oks:
        if base is None or o is base:
            continue
        names = ("loss", "gradient") if isinstance(base.result, tuple) else ("result",)
        for a, b, what in zip(_flat(base.result), _flat(o.result), names):
            if a is None or b is None:
                continue
            if o.variant == "threads=1":
                if not np.array_equal(a, b, equal_nan=True):
                    found.append(Finding(entry.name, "threads", f"{what} differs bitwise between 1 and the default threads"))
            elif a.shape == b.shape and (np.isnan(a) != np.isnan(b)).any():
                i = tuple(np.argwhere(np.isnan(a) != np.isnan(b))[0])
                found.append(Finding(entry.name, "variants-disagree", f"{what}: NaN at {list(i)} in cpp={a[i]!r} vs {o.variant}={b[i]!r}",
                                     o.variant))
    return found


def _flat(result: Any) -> list[Any]:
    if isinstance(result, tuple):
        return [None if r is None else np.asarray(r, np.float64) for r in result]
    return [np.asarray(result, np.float64)]


class LossResult(tuple):  # type: ignore[type-arg]
    """(loss, grad) as float64 copies, with what they were: `types`."""

    types: str


def capture_loss(res: Any, args: dict[str, Any]) -> Any:
    loss, grad = res
    out = LossResult((np.array(np.asarray(as_plain(loss)), np.float64, copy=True),
                      None if grad is None else np.array(np.asarray(as_plain(grad)), np.float64, copy=True)))
    out.types = result_types_problem(loss, grad, args)
    return out


def result_types_problem(loss: Any, grad: Any, args: dict[str, Any]) -> str:
    """'' when loss and grad have the documented types: the logits' dtype (native order);
    loss a NumPy scalar for "sum"/"mean", an array of the logits' shape without axis for
    "none"; grad an ndarray of the logits' shape (None for return_grad=False)."""
    x = np.asarray(as_plain(args["logits"]))
    want_grad = x.dtype.newbyteorder("=")
    want = np.dtype(np.float32) if want_grad.itemsize == 2 else want_grad  # the loss: float32 for 16-bit logits
    red = args.get("reduction", "mean")
    ax = int(args.get("axis", -1)) % x.ndim
    lead = x.shape[:ax] + x.shape[ax + 1:]
    if red == "none":
        if not isinstance(loss, np.ndarray) or loss.shape != lead or loss.dtype != want:
            return f"loss for reduction='none': {type(loss).__name__} {getattr(loss, 'dtype', '')} {np.shape(loss)}, want {want} {lead}"
    elif not isinstance(loss, np.floating) or loss.dtype != want:
        return f"loss for reduction={red!r}: {type(loss).__name__} {getattr(loss, 'dtype', '')}, want a {want} scalar"
    if grad is not None and (not isinstance(grad, np.ndarray) or grad.shape != x.shape or grad.dtype != want_grad):
        return f"grad: {type(grad).__name__} {getattr(grad, 'dtype', '')} {np.shape(grad)}, want {want_grad} {x.shape}"
    return ""


def check_rowwise(entry: EntryPoint, spec: dict[str, Any], outs: list[Outcome]) -> list[Finding]:
    found: list[Finding] = []
    for o in outs:
        found += [Finding(entry.name, "memory", m, o.variant) for m in o.memory]
    oks = [o for o in outs if o.status == "ok"]
    found += accept_raise_agreement(entry, outs)
    if not oks:
        return found
    args = oks[0].args or {}
    x = np.asarray(as_plain(args["x"]))
    if x.dtype.kind != "f" and not is_bfloat16(x.dtype):
        return found
    store = x.dtype.newbyteorder("=")  # the results' dtype
    dt = np.dtype(np.float32) if store.itemsize == 2 else store  # the compute dtype
    ax = int(args["axis"]) % x.ndim
    k = x.shape[ax]
    rtol = reference.rtol_for(dt, k, 32.0)
    op = spec["op"]
    with np.errstate(all="ignore"):
        xr = reference._rows(x.astype(np.float64), ax)
        fin = np.isfinite(xr)
        m = np.max(np.where(fin, xr, -np.inf), axis=1, initial=-np.inf, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        t = np.where(fin, xr - m, 0.0)
        big = float(np.finfo(dt).max)
        edge = (np.abs(t) > big / 8).any(axis=1)
        logk = math.log(k) + 1
        # reference.py's x - lse loses everything for |x| >> 1: give it each row minus its
        # max (softmax and log_softmax do not change; logsumexp moves by the max)
        shifted = reference._unrows(xr - m, x.shape, ax) if xr.size else x.astype(np.float64)
        ref = getattr(reference, op)(shifted, ax)
        if op == "logsumexp":
            ref = ref + m.reshape(np.shape(ref))
        if op == "logsumexp":
            lse = reference._rows(np.expand_dims(ref, ax), ax)[:, 0] if x.ndim > 1 else np.asarray(ref).reshape(1)
            bound = rtol * (np.abs(np.where(np.isfinite(lse), lse, 0)) + logk) + 4 * float(np.finfo(dt).tiny)
            bound, careless = bound.reshape(np.shape(ref)), edge.reshape(np.shape(ref))
        else:
            s = reference._rows(reference.softmax(x.astype(np.float64), ax), ax)
            delta = rtol * (np.abs(t) + logk)
            delta = delta + np.nansum(s * delta, axis=1, keepdims=True)
            if op == "softmax":
                b = np.nan_to_num(s) * np.expm1(delta) + rtol * np.nan_to_num(s) + 4 * float(np.finfo(dt).tiny)
            else:
                b = rtol * (np.abs(t) + logk)
            bound = reference._unrows(b, x.shape, ax)
            careless = reference._unrows(np.broadcast_to(edge[:, None], b.shape).copy(), x.shape, ax)
    bound = bound + rounding16(ref, store)
    careless = careless | near_float16_overflow(ref, store)
    for o in oks:
        why = _compare(o.result, ref, bound, careless, store)
        if why:
            found.append(Finding(entry.name, "reference", f"{op}: {why}", o.variant))
    return found + check_agreement(entry, oks)


def check_config(entry: EntryPoint, spec: dict[str, Any], outs: list[Outcome]) -> list[Finding]:
    found = []
    for o in outs:
        if o.status == "ok":
            x = (o.args or {})["logits"]
            y = (o.args or {})["targets"]
            ref, _ = reference.cross_entropy(x, y, reduction="none")
            why = _compare(o.result[0], ref, reference.rtol_for(np.float32, x.shape[1], 32) * (np.abs(ref) + 10), np.zeros(5, bool),
                           np.dtype(np.float32))
            if why:
                found.append(Finding(entry.name, "reference", f"loss after {spec['func']}({spec['arg']}): {why}", o.variant))
    return found


def torch_reference(spec: dict[str, Any], prog: Program, widen: bool = False) -> tuple[str, Any]:
    """What torch.nn.functional.cross_entropy does with the same inputs: ("ok", (loss,
    grad)) or ("error", type name). widen: 16-bit tensors computed in float32 and the
    results rounded back to their dtype (what fastxent computes)."""
    import torch
    import torch.nn.functional as F

    ns = fresh_namespace(True, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for src, _mode in prog.setup:
            if src.startswith("crit ="):
                continue
            exec(src, ns)  # noqa: S102
    x = ns["x"]
    if spec.get("path", "eager") != "eager" and x.is_floating_point() and not x.requires_grad:
        x.requires_grad_(True)  # (the op and torch.func give the gradient whatever x says)
    kw = {k: eval(v, ns) for k, v in spec["options"].items()}
    y, w, dt16 = ns["y"], ns.get("w"), None
    if widen and x.dtype in (torch.float16, torch.bfloat16):
        dt16 = x.dtype
        x = x.detach().float().requires_grad_(x.requires_grad)
        y = y.float() if y.is_floating_point() else y
        w = w.float() if w is not None and w.is_floating_point() else w
    try:
        loss = F.cross_entropy(x, y, w, **kw)
        grad = None
        if x.requires_grad:
            (grad,) = torch.autograd.grad(loss.sum(), x)
        if dt16 is not None:
            loss, grad = loss.to(dt16), None if grad is None else grad.to(dt16)
        return "ok", (loss.detach().double().numpy().copy(), None if grad is None else grad.double().numpy().copy())
    except Exception as exc:  # noqa: BLE001 - any exception is a result to judge here
        return "error", type(exc).__name__


def capture_torch(res: Any, args: dict[str, Any]) -> Any:
    """(loss, d loss.sum() / d input or None) as float64 arrays; runs the backward pass."""
    import torch
    if isinstance(res, tuple):  # the op's (loss, grad), or (None, grad) under torch.func
        loss, g = res
        return (None if loss is None else loss.detach().double().numpy().copy(),
                None if g is None or (g.numel() == 0 < args["input"].numel()) else g.detach().double().numpy().copy())
    x = args["input"]
    grad = None
    if isinstance(x, torch.Tensor) and x.requires_grad and res.requires_grad:
        (g,) = torch.autograd.grad(res.sum(), x)
        grad = g.double().numpy().copy()
    return res.detach().double().numpy().copy(), grad


def check_torch(entry: EntryPoint, spec: dict[str, Any], outs: list[Outcome], prog: Program) -> list[Finding]:
    import torch
    found: list[Finding] = []
    for o in outs:
        found += [Finding(entry.name, "memory", m, o.variant) for m in o.memory]
    status, ref = torch_reference(spec, prog)
    for o in outs:
        if o.status == "setup-error":
            continue
        if o.status == "error" and o.where != "call" and status == "error":
            continue
        if (o.status == "ok") != (status == "ok") and spec.get("path") == "op":
            continue  # the op is fastxent's own (int32 labels in, float16 out: no F.cross_entropy fallback)
        if (o.status == "ok") != (status == "ok"):
            valid = spec["options"].get("label_smoothing", "0.0") in ("0.1", "1.0", "0.0") and spec["options"].get("reduction") != "'avg'"
            if o.status == "error" and not valid:
                continue  # refusing a value outside PyTorch's documented domain, which PyTorch lets through
            found.append(Finding(entry.name, "torch-parity",
                                 f"fastxent {o.status} {o.exc_type} {o.message[:100]} vs torch {status} {ref if status == 'error' else ''}",
                                 o.variant, key_detail=f"fastxent {o.status} {o.exc_type} vs torch {status}"))
            continue
        if o.status != "ok":
            continue
        loss, grad = o.result
        rloss, rgrad = ref
        x = (o.args or {})["input"]
        dt = {torch.float32: np.float32, torch.float64: np.float64}.get(x.dtype)
        eps16 = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}.get(x.dtype)
        if dt is None and eps16 is None:
            continue
        c = x.shape[1] if x.dim() > 1 else x.shape[0]
        rtol = reference.rtol_for(dt or np.float32, c, 64.0)
        if eps16 is not None:
            # Where PyTorch's own 16-bit arithmetic overflows (a loss beyond the dtype's
            # range on the way, e.g. float16 logits of 1e4) and fastxent's float32-computed
            # result does not, that result is judged against PyTorch's float32 result
            # rounded to the dtype instead. (Where fastxent's is not finite either, e.g.
            # a call it hands to F.cross_entropy, PyTorch's own stays the reference.)
            if not (np.all(np.isfinite(rloss)) and (rgrad is None or np.all(np.isfinite(rgrad)))):
                wstatus, wref = torch_reference(spec, prog, widen=True)
                if wstatus == "ok":
                    wl, wg = wref
                    if loss is not None:
                        rloss = np.where(np.isfinite(rloss) | ~np.isfinite(loss), rloss, wl)
                    if rgrad is not None and wg is not None and grad is not None:
                        rgrad = np.where(np.isfinite(rgrad) | ~np.isfinite(grad), rgrad, wg)
            # Both sides are 16-bit: PyTorch rounds log_softmax to the dtype before exp()
            # in its backward (a relative error up to |log p| eps on each softmax value;
            # p |log p| <= 1/e) and each side rounds its loss and gradient once or twice.
            # So the gradient agrees within a few eps of the row's largest magnitude, the
            # loss within a few eps of its size (plus |logits| eps: PyTorch's logits are
            # rounded the same, but its lse is not)
            rtol = 8 * eps16
            dt = np.float32  # compare unrounded: both results are already 16-bit values
        scale = float(spec["scale"]) * 2 + math.log(c) + 1
        # label_smoothing=1 with a -inf logit: every class has target mass eps/K, so the loss
        # is +inf (docs/spec.md); PyTorch computes 0 * inf = NaN for the one-hot part.
        eps_one_neginf = spec["options"].get("label_smoothing") == "1.0" and bool(torch.isneginf(x).any())
        careless = np.full(np.shape(rloss), eps_one_neginf)
        why = "" if loss is None else _compare(loss, rloss, rtol * (np.abs(np.nan_to_num(rloss)) + scale),
                                               careless, np.dtype(dt))
        if why:
            found.append(Finding(entry.name, "torch-parity", f"loss: {why}", o.variant))
        if spec["special"]:
            continue  # NaN/inf logits: an ignored row's gradient is 0 here by convention, NaN in PyTorch
        if (rgrad is None) != (grad is None):
            found.append(Finding(entry.name, "torch-parity", f"gradient present: fastxent {grad is not None}, torch {rgrad is not None}"))
        elif grad is not None:
            why = _compare(grad, rgrad, rtol * (np.abs(np.nan_to_num(rgrad)) + 1), np.zeros(rgrad.shape, bool), np.dtype(dt))
            if why:
                found.append(Finding(entry.name, "torch-parity", f"gradient: {why}", o.variant))
    return found


def jax_traced_error_ok(out: Outcome) -> bool:
    """Under jax.jit and jax.vmap the labels are tracers, not concrete: a bad label can
    only be refused inside the callback, and reaches the caller as JAX's runtime error
    around fastxent's own named error (a documented limit, docs/spec.md). Outside them
    it must be refused before (oracle a)."""
    if not (out.exc_type in ("JaxRuntimeError", "XlaRuntimeError", "ValueError") and out.where == "call"
            and any(t in out.variant for t in ("jit", "vmap", "grad", "jvp", "jacfwd"))):
        return False
    # The XLA FFI handler's own check: "fastxent: labels: class index ... is out of range"
    if re.search(r"fastxent: (labels|logits): ", out.message):
        return True
    # The pure_callback fallback: JaxRuntimeError, or a plain ValueError "INTERNAL: CpuCallback error ..."
    inner = re.search(r"\n(TypeError|ValueError|IndexError): (\w+)[:( ]", out.message)
    return "CpuCallback error" in out.message and inner is not None and inner.group(2) in (
        "targets", "logits", "labels", "axis")


def check_jax(entry: EntryPoint, spec: dict[str, Any], outs: list[Outcome], prog: Program) -> list[Finding]:
    import jax
    import optax
    found: list[Finding] = []
    for o in outs:
        found += [Finding(entry.name, "memory", m, o.variant) for m in o.memory]
    o = outs[0]
    if o.status == "setup-error":
        return found
    args = o.args or {}
    x, y, axis = args.get("logits"), args.get("labels"), args.get("axis")
    where = None
    if spec.get("where") and any(line.startswith("w = ") for line, _ in prog.setup):
        ns: dict[str, Any] = {"np": np, "inf": np.inf, "nan": np.nan}  # the same mask, from the same seeded setup
        for line, _ in prog.setup:
            if not line.startswith("f = "):
                exec(line, ns)  # noqa: S102 - the fuzzer's own generated setup
        where = jax.numpy.asarray(ns["w"])
    try:
        base = "optax.softmax_cross_entropy_with_integer_labels" if spec["integer"] else "optax.softmax_cross_entropy"
        f = eval(JAX_TRANSFORMS[_jax_transform(spec)].format(f=f"(lambda x, y, axis: {base}(x, y, axis=axis, where=W))"),
                 {"jax": jax, "optax": optax, "W": where})
        ref = np.asarray(f(x, y, axis))
        status = "ok"
    except Exception as exc:  # noqa: BLE001 - any exception is a result to judge here
        status, ref = "error", type(exc).__name__
    if o.status == "error":
        return found  # judged by oracle (a); refusing what optax takes (float16 logits) is documented
    bad = ""
    if spec["integer"] and isinstance(axis, int):
        xa, ya = np.asarray(x), np.asarray(y)
        if xa.ndim and -xa.ndim <= axis < xa.ndim and ya.size:
            k = xa.shape[axis]
            wrong = ya[(ya < 0) | (ya >= k)]
            bad = f"label {wrong[0]} accepted with {k} classes" if wrong.size else ""
    if bad:
        return found + [Finding(entry.name, "accepted-bad-input", bad, o.variant, key_detail="out-of-range label accepted")]
    if status != "ok":
        return found + [Finding(entry.name, "optax-parity", f"fastxent ok vs optax {ref}", o.variant)]
    if o.status == "ok":
        if spec["special"]:
            return found  # rows with inf/NaN: fastxent's convention (NaN row) differs from optax's on purpose
        dt = np.dtype(jax.numpy.asarray(x).dtype)
        k = np.asarray(x).shape[axis] if isinstance(axis, int) and np.asarray(x).ndim else 1
        rtol = reference.rtol_for(np.float32 if dt == np.float32 else np.float64, k, 64.0)
        if dt.itemsize == 2:  # 16-bit logits: fastxent computes in float32, optax in the 16-bit dtype itself
            rtol = 16 * float(np.finfo(dt).eps)
        why = _compare(o.result, ref, rtol * (np.abs(np.nan_to_num(ref)) + 8), np.zeros(np.shape(ref), bool), np.dtype(dt))
        if why:
            found.append(Finding(entry.name, "optax-parity", why, o.variant))
    return found


# ---------------------------------------------------------------------------------------
# fx.linear_cross_entropy: the fused linear head, against the unfused path in float64
# ---------------------------------------------------------------------------------------

LINEAR_ARGS = ("input", "linear_weight", "targets", "linear_bias", "weight", "reduction", "ignore_index", "label_smoothing",
               "z_loss", "softcap", "chunk_size", "return_grad", "backend", "indptr", "indices", "values")
# Each makes the call invalid: it must raise (oracle a) and never be accepted.
LINEAR_BAD = {
    "input-int": "h = h.astype(np.int64)",
    "input-0d": "h = np.float32(1.0)",
    "weight-d": "W = np.zeros((W.shape[0], W.shape[1] + 1), W.dtype)",
    "weight-dtype": "W = W.astype(np.float64 if W.dtype == np.float32 else np.float32)",
    "weight-1d": "W = W[0]",
    "weight-k0": "W = W[:0]",
    "bias-shape": "b = np.zeros(W.shape[0] + 1, W.dtype)",
    "bias-dtype": "b = np.zeros(W.shape[0], np.float64 if W.dtype == np.float32 else np.float32)",
    "targets-shape": "y = np.zeros(h.shape[:-1] + (2,), np.int64) if h.ndim > 1 else np.zeros(3, np.int64)",
    "label-too-big": "y = np.full(h.shape[:-1], W.shape[0], np.int64)",
}


@st.composite
def linear_specs(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(0, 9))
    d = draw(st.integers(1, 5))
    k = draw(st.integers(1, 9))
    lead = pick(draw, [[n], [n], [n], [1, n], [n, 1]] + ([[]] if n == 1 else []))
    opts: dict[str, str] = {}
    if draw(st.booleans()):
        opts["reduction"] = pick(draw, ["'none'", "'sum'", "'mean'"])
    kind = pick(draw, ["index"] * 4 + ["dense", "multihot", "sparse", "scipy", "odd"])
    if kind == "index" and draw(one_in(3)):
        opts["ignore_index"] = pick(draw, ["-100", "0", str(k - 1)])
    if draw(one_in(3)):
        opts["label_smoothing"] = pick(draw, ["0.1", "1.0", "0.5"])
    if draw(one_in(4)):
        opts["z_loss"] = pick(draw, ["1e-4", "0.5"])
    if draw(one_in(4)):
        opts["softcap"] = pick(draw, ["1.0", "30.0"])
    if draw(one_in(6)):
        opts["return_grad"] = "False"
    c_valid = ["None", "1", str(max(n, 1)), str(n + 3), str(draw(st.integers(1, n + 3)))]
    chunk = pick(draw, c_valid) if not draw(one_in(12)) else pick(draw, ["0", "-1", "2.0", "True", "'4'", "np.int64(2)"])
    return {
        "entry": "linear", "n": n, "d": d, "k": k, "lead": lead, "dtype": pick(draw, FLOATS), "seed": draw(seeds),
        "scale": pick(draw, [0.3, 1.0, 1.0, 4.0]), "kind": kind, "options": opts, "chunk": chunk,
        "bias": draw(st.booleans()), "weighted": draw(one_in(4)),
        "alias": draw(one_in(6)),  # input and linear_weight as views into one buffer
        "layout": pick(draw, [None, None, None, "fortran", "strided", "torch"]),
        "nan_row": draw(st.integers(0, max(n - 1, 0))) if n and draw(one_in(8)) else None,
        "bad": pick(draw, sorted(b for b in LINEAR_BAD if n or b != "label-too-big")) if draw(one_in(8)) else None,
        "all_isa": draw(one_in(4)),
    }


def build_linear(spec: dict[str, Any]) -> Program:
    n, d, k, dt, s = spec["n"], spec["d"], spec["k"], spec["dtype"], spec["seed"]
    lead = tuple(spec["lead"])
    setup = [(f"rng = np.random.default_rng({s})", "plain")]
    if spec["alias"]:
        setup += [(f"buf = (rng.standard_normal({n * d + k * d}) * {spec['scale']}).astype({dt!r})", "plain"),
                  (f"h = buf[:{n * d}].reshape({lead + (d,)!r}); W = buf[{n * d}:].reshape({k}, {d})", "plain")]
    else:
        setup += [(f"h = (rng.standard_normal({lead + (d,)!r}) * {spec['scale']}).astype({dt!r})", "plain"),
                  (f"W = (rng.standard_normal(({k}, {d})) * {spec['scale']}).astype({dt!r})", "plain")]
    if spec["nan_row"] is not None:
        setup.append((f"h.reshape(-1, {d})[{spec['nan_row']}, 0] = np.nan", "plain"))
    setup.append((f"b = rng.standard_normal({k}).astype({dt!r})", "plain"))
    kind = spec["kind"]
    if kind == "index":
        setup += [(f"y = rng.integers(0, {k}, {lead!r})", "plain"),
                  (f"y.reshape(-1)[rng.random({n}) < 0.25] = {spec['options'].get('ignore_index', '-100')}", "plain")]
    elif kind == "dense":
        setup.append((f"y = rng.dirichlet(np.ones({k}), {lead!r})", "plain"))
    elif kind == "multihot":
        setup.append((f"y = rng.random({lead + (k,)!r}) < 0.3", "plain"))
    elif kind in ("sparse", "scipy"):
        setup += [(f"ip = np.r_[0, np.cumsum(rng.integers(0, 3, {n}))]", "plain"),
                  (f"ix = rng.integers(0, {k}, ip[-1]); vals = rng.random(ip[-1]) + 0.5", "plain")]
        setup.append(("y = fx.SparseTargets(ip, ix, vals)" if kind == "sparse"
                      else f"y = scipy.sparse.csr_matrix((vals, ix, ip), shape=({n}, {k}))", "plain"))
    else:
        setup.append(("y = " + pick_odd(spec["seed"], lead, k), "plain"))
    if spec["bad"]:
        setup.append((LINEAR_BAD[spec["bad"]], "plain"))
    if spec["layout"] == "fortran":
        setup.append(("W = np.asfortranarray(W)", "plain"))
    elif spec["layout"] == "strided" and spec["bad"] != "input-0d":
        setup.append(("h = np.repeat(h, 2, axis=-1)[..., ::2]", "plain"))
    elif spec["layout"] == "torch":
        setup.append(("h, W = torch.from_numpy(np.asarray(h)), torch.from_numpy(W)", "plain"))
    args = {"input": "h", "linear_weight": "W", "targets": "y"}
    if spec["bias"] or spec["bad"] in ("bias-shape", "bias-dtype"):
        args["linear_bias"] = "b"
    if spec["weighted"]:
        setup.append((f"cw = np.linspace(-0.5, 2.0, {k})", "plain"))
        args["weight"] = "cw"
    args.update(spec["options"])
    args["chunk_size"] = spec["chunk"]
    return Program(setup, "fx.linear_cross_entropy", args, positional=("input", "linear_weight", "targets"))


def pick_odd(seed: int, lead: tuple[int, ...], k: int) -> str:
    odd = ["None", "'abc'", "3.5", f"np.zeros({lead!r}, dtype=complex)", f"np.zeros({lead + (k + 1,)!r})", "[[0, 1], [2]]"]
    return odd[seed % len(odd)]


def capture_linear(res: Any, args: dict[str, Any]) -> Any:
    loss, grads = res
    flat = [loss] + ([] if grads is None else list(grads))
    out = LossResult(tuple(None if a is None else np.array(np.asarray(a), np.float64, copy=True) for a in flat))
    out.types = linear_types_problem(loss, grads, args)
    return out


def linear_types_problem(loss: Any, grads: Any, args: dict[str, Any]) -> str:
    h = np.asarray(args["input"])
    w = np.asarray(args["linear_weight"])
    red = args.get("reduction", "mean")
    if red == "none":
        if not isinstance(loss, np.ndarray) or loss.shape != h.shape[:-1] or loss.dtype != h.dtype:
            return f"loss for 'none': {type(loss).__name__} {np.shape(loss)}, want {h.dtype} {h.shape[:-1]}"
    elif not isinstance(loss, np.floating) or loss.dtype != h.dtype:
        return f"loss for {red!r}: {type(loss).__name__}, want a {h.dtype} scalar"
    if args.get("return_grad", True) is False:
        return "" if grads is None else "return_grad=False returned gradients"
    d_in, d_w, d_b = grads
    if d_in.shape != h.shape or d_w.shape != w.shape or d_in.dtype != h.dtype or d_w.dtype != h.dtype:
        return f"gradients of shapes {d_in.shape} {d_w.shape}, want {h.shape} {w.shape}"
    if (d_b is None) != (args.get("linear_bias") is None):
        return "d_linear_bias is None exactly when linear_bias is"
    return ""


def linear_reference(args: dict[str, Any]) -> tuple[Any, list[np.ndarray], list[np.ndarray]]:
    """The unfused path in float64: logits = input @ W.T + b, softmax_cross_entropy (the
    NumPy twin, float64), the chain rule. Returns the loss and gradients, and per output
    a bound on a correct float32/float64 computation's error (sums of |products|, plus a
    per-row allowance for the logits' own rounding)."""
    h = np.asarray(args["input"], np.float64)
    w = np.asarray(args["linear_weight"], np.float64)
    d = w.shape[1]
    h2 = h.reshape(-1, d)
    b = args.get("linear_bias")
    b64 = np.zeros(w.shape[0]) if b is None else np.asarray(b, np.float64)
    logits = h2 @ w.T + b64
    opts = {n: args[n] for n in ("reduction", "weight", "ignore_index", "label_smoothing", "z_loss", "softcap") if n in args}
    t = args["targets"]
    tt = t if isinstance(t, fx.SparseTargets) or hasattr(t, "tocsr") else np.asarray(t)
    if isinstance(tt, np.ndarray):
        tt = tt.reshape(-1) if tt.dtype.kind in "iu" else tt.reshape(logits.shape)
    loss, g = fx.softmax_cross_entropy(logits, tt, backend="numpy", **opts)
    # |q| per row (the target mass the kernel multiplies), and the logits' size
    _, g_none = fx.softmax_cross_entropy(logits, tt, backend="numpy", **{**opts, "reduction": "none"})
    mag = np.abs(h2) @ np.abs(w.T) + np.abs(b64)
    row_size = np.max(mag, axis=1, initial=0.0) + np.log(w.shape[0]) + 1
    z = float(opts.get("z_loss", 0.0))
    red = opts.get("reduction", "mean")
    scale = 1.0
    if red == "mean" and logits.shape[0]:
        _, g_sum = fx.softmax_cross_entropy(logits, tt, backend="numpy", **{**opts, "reduction": "sum"})
        with np.errstate(all="ignore"):
            ratio = np.abs(g).sum() / np.abs(g_sum).sum() if np.abs(g_sum).sum() else 1.0
        scale = float(ratio) if np.isfinite(ratio) else 1.0
    mass = np.abs(g_none).sum(axis=1) + 1 + 2 * z * row_size  # allowance per row for the logits' rounding
    allow = np.abs(g) + (scale * mass)[:, None]
    grads = [g @ w, g.T @ h2, g.sum(0)]
    bounds = [allow @ np.abs(w), allow.T @ np.abs(h2), allow.sum(0)]
    loss_b = scale * mass * row_size * (1 + z * row_size)
    loss_b = loss_b.reshape(h.shape[:-1]) if red == "none" else np.asarray(loss_b.sum())
    grads[0] = grads[0].reshape(h.shape)
    bounds[0] = bounds[0].reshape(h.shape)
    loss = np.asarray(loss, np.float64).reshape(h.shape[:-1]) if red == "none" else np.asarray(loss, np.float64)
    return loss, [loss] + grads, [loss_b] + bounds


def check_linear(entry: EntryPoint, spec: dict[str, Any], outs: list[Outcome]) -> list[Finding]:
    found: list[Finding] = []
    found += accept_raise_agreement(entry, outs)
    oks = [o for o in outs if o.status == "ok"]
    if spec.get("bad") or spec["kind"] == "odd" or spec["chunk"] in ("0", "-1", "2.0", "True", "'4'"):
        for o in oks:
            what = spec.get("bad") or ("targets " + spec["kind"] if spec["kind"] == "odd" else f"chunk_size={spec['chunk']}")
            found.append(Finding(entry.name, "accepted-bad-input", f"accepted {what}", o.variant))
        return found
    for o in oks:
        for m in o.memory:
            found.append(Finding(entry.name, "memory", m, o.variant))
        if o.result.types:
            found.append(Finding(entry.name, "result-types", o.result.types, o.variant))
        args = {n: as_plain(v) for n, v in (o.args or {}).items()}
        if type(args["input"]).__module__.startswith("torch"):
            args["input"], args["linear_weight"] = args["input"].numpy(), args["linear_weight"].numpy()
        _, ref, bounds = linear_reference(args)
        eps = float(np.finfo(np.dtype(spec["dtype"])).eps)
        rtol = 64 * eps * (spec["d"] + np.log2(spec["k"] + 1) + 2)
        names = ("loss", "d_input", "d_linear_weight", "d_linear_bias")
        for a, e, bnd, name in zip(o.result, ref, bounds, names):
            if a is None:
                continue
            if name == "d_linear_bias" and args.get("linear_bias") is None:
                continue
            why = _compare(a, e, rtol * (np.abs(np.nan_to_num(e)) + bnd), np.zeros(np.shape(e), bool), np.dtype(spec["dtype"]))
            if why:
                found.append(Finding(entry.name, "reference", f"{name}: {why}", o.variant))
    return found + check_agreement(entry, oks)


# ---------------------------------------------------------------------------------------
# fastxent.vocab_shards: the classes of each row split into shards [a, b), each shard's
# statistics combined and each shard's gradient taken, against softmax_cross_entropy
# on the whole rows
# ---------------------------------------------------------------------------------------

VOCAB_ARGS = ("logits", "targets", "row_stats", "shard_stats", "row_max", "sums", "dtype", "ignored", "vocab_start",
              "num_classes", "grad_scale", "weight", "ignore_index", "label_smoothing", "z_loss", "softcap", "out", "backend",
              "indptr", "indices", "values")

# The ranks' calls, written out once per reproducer: every shard's statistics, the
# combination (as one call on the gathered statistics, or as the two all-reduces
# spelled out with the public partial sums), the per-row losses, every shard's gradient.
VOCAB_PIPELINE = '''def vocab_pipeline(logits, targets, *, cuts, num_classes, split, path, with_out=False, weight=None, grad_scale=1.0,
                   z_loss=0.0, backend=None, **opts):
    parts = list(zip(cuts[:-1], cuts[1:]))
    t_of = lambda a, b: {"index": lambda: targets, "columns": lambda: targets[..., a:b],  # noqa: E731
                         "csr": lambda: targets[:, a:b], "sparse": lambda: fx.SparseTargets.from_scipy(targets[:, a:b])}[split]()
    w_of = lambda a, b: None if weight is None else weight[a:b]  # noqa: E731
    stats = [fx.vocab_shard_statistics(logits[..., a:b], t_of(a, b), vocab_start=a, num_classes=num_classes,
                                       weight=w_of(a, b), backend=backend, **opts) for a, b in parts]
    if path == "sums":
        row_max = np.max(np.stack([s[..., 0] for s in stats]), axis=0)
        sums = np.sum(np.stack([fx.vocab_shard_partial_sums(s, row_max) for s in stats]), axis=0)
        row_stats = fx.row_statistics_from_sums(row_max, sums, dtype=stats[0].dtype)
    else:
        row_stats = fx.combine_vocab_shard_statistics(np.stack(stats) if path == "stacked" else stats)
    ignored = np.asarray(targets) == opts.get("ignore_index", -100) if split == "index" else None
    loss = fx.loss_from_row_statistics(row_stats, z_loss=z_loss, ignored=ignored)
    out_of = lambda l: np.empty(np.shape(l), np.asarray(l).dtype.newbyteorder("=")) if with_out else None  # noqa: E731
    grads = [fx.vocab_shard_gradient(logits[..., a:b], t_of(a, b), row_stats, vocab_start=a, num_classes=num_classes,
                                     weight=w_of(a, b), grad_scale=grad_scale, z_loss=z_loss, out=out_of(logits[..., a:b]),
                                     backend=backend, **opts) for a, b in parts]
    return stats, row_stats, loss, grads'''

# Each makes one public call invalid (lines run after x, y, w, lead, n, k and the first
# shard [a, b) are set up): it must raise naming the argument (oracle a), never be accepted.
VOCAB_BAD = {
    "start-negative": "fx.vocab_shard_statistics(x[..., a:b], y, vocab_start=-1, num_classes=k)",
    "start-beyond": "fx.vocab_shard_statistics(x[..., a:b], y, vocab_start=k - (b - a) + 1, num_classes=k)",
    "start-float": "fx.vocab_shard_statistics(x[..., a:b], y, vocab_start=float(a), num_classes=k)",
    "start-none": "fx.vocab_shard_gradient(x[..., a:b], y, np.zeros(lead + (4,)), vocab_start=None, num_classes=k)",
    "classes-zero": "fx.vocab_shard_statistics(x[..., a:b], y, vocab_start=0, num_classes=0)",
    "classes-smaller": "fx.vocab_shard_gradient(x[..., a:b], y, np.zeros(lead + (4,)), vocab_start=0, num_classes=b - a - 1)",
    "classes-str": "fx.vocab_shard_statistics(x[..., a:b], y, vocab_start=a, num_classes=str(k))",
    "label-beyond": "fx.vocab_shard_statistics(x[..., a:b], np.full(lead, k), vocab_start=a, num_classes=k)",
    "weight-whole": "fx.vocab_shard_statistics(x[..., a:b], y, vocab_start=a, num_classes=k, weight=np.ones(b - a + 1))",
    "row-stats-rows": "fx.vocab_shard_gradient(x[..., a:b], y, np.zeros((n + 1, 4)), vocab_start=a, num_classes=k)",
    "row-stats-width": "fx.vocab_shard_gradient(x[..., a:b], y, np.zeros(lead + (3,)), vocab_start=a, num_classes=k)",
    "row-stats-int": "fx.vocab_shard_gradient(x[..., a:b], y, np.zeros(lead + (4,), int), vocab_start=a, num_classes=k)",
    "grad-scale-shape": "fx.vocab_shard_gradient(x[..., a:b], y, np.zeros(lead + (4,)), vocab_start=a, num_classes=k, "
                        "grad_scale=np.ones(n + 1))",
    "grad-scale-complex": "fx.vocab_shard_gradient(x[..., a:b], y, np.zeros(lead + (4,)), vocab_start=a, num_classes=k, "
                          "grad_scale=1j)",
    "out-in-row-stats": "rs = np.zeros(lead + (4 * (b - a),), x.dtype); fx.vocab_shard_gradient(x[..., a:b], y, "
                        "rs.reshape(lead + (b - a, 4))[..., 0, :], vocab_start=a, num_classes=k, out=rs[..., :b - a])",
    "ignored-shape": "fx.loss_from_row_statistics(np.zeros(lead + (4,)), ignored=np.zeros(n + 1, bool))",
    "ignored-int": "fx.loss_from_row_statistics(np.zeros(lead + (4,)), ignored=np.zeros(lead, int))",
    "loss-stats-width": "fx.loss_from_row_statistics(np.zeros(lead + (3,)))",
    "row-max-shape": "fx.vocab_shard_partial_sums(np.zeros(lead + (4,)), np.zeros(n + 1))",
    "row-max-complex": "fx.vocab_shard_partial_sums(np.zeros(lead + (4,)), np.zeros(lead, complex))",
    "row-max-str": "fx.vocab_shard_partial_sums(np.zeros(lead + (4,)), 'abc')",
    "shard-stats-width": "fx.vocab_shard_partial_sums(np.zeros(lead + (5,)), np.zeros(lead))",
    "sums-shape": "fx.row_statistics_from_sums(np.zeros(lead), np.zeros(lead + (4,)))",
    "sums-str": "fx.row_statistics_from_sums(np.zeros(lead), 'abc')",
    "dtype-str": "fx.row_statistics_from_sums(np.zeros(lead), np.zeros(lead + (3,)), dtype='abc')",
    "dtype-int": "fx.row_statistics_from_sums(np.zeros(lead), np.zeros(lead + (3,)), dtype=np.int64)",
    "combine-none": "fx.combine_vocab_shard_statistics([])",
    "combine-rows-differ": "fx.combine_vocab_shard_statistics([np.zeros(lead + (4,)), np.zeros((n + 1, 4))])",
    "combine-not-stats": "fx.combine_vocab_shard_statistics(None)",
}
_VOCAB_WRAPS = [None] * 12 + ["torch", "masked", "memmap", "subclass", "matrix"]


@st.composite
def vocab_specs(draw: Any) -> dict[str, Any]:
    ndim = pick(draw, [1, 2, 2, 2, 3])
    k = draw(st.one_of(st.integers(1, 9), st.integers(10, 70), st.sampled_from([2, 16, 17, 33, 129, 300])))
    lead = draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 5, 7]), min_size=ndim - 1, max_size=ndim - 1))
    n = int(np.prod(lead)) if lead else 1
    shape = lead + [k]
    logits = draw(float_array(shape, LOGIT_DTYPES if draw(one_in(12)) else _LOGIT_FLOATS))
    logits["wrap"] = pick(draw, _VOCAB_WRAPS)
    # cut points: 1 to 4 shards, often a 1-class shard
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, k - 1)), max_size=3)) if k > 1 else []))
    if k > 2 and draw(one_in(3)):
        c = draw(st.integers(0, k - 1))
        cuts = sorted(set(cuts) | {c, c + 1} - {0, k})
    cuts = [0] + cuts + [k]
    kind = pick(draw, ["index"] * 5 + ["dense"] * 4 + ["csr", "sparse"] * (ndim == 2))
    if kind == "index":
        targets = draw(index_targets(lead, k))
    elif kind in ("csr", "sparse"):  # scipy CSR of the whole rows, split by columns (local indices per shard)
        targets = {"rows": draw(_csr_rows(n, k)), "seed": draw(seeds), "nan": draw(one_in(8)),
                   "form": pick(draw, ["csr_matrix", "csr_array"])}
    else:
        targets = draw(dense_targets(shape))
        targets["wrap"] = pick(draw, [None] * 6 + ["torch", "subclass"])
    opts = option_values(k)
    options: dict[str, str] = {}
    for name in ("ignore_index", "label_smoothing", "z_loss", "softcap"):
        if draw(one_in(3 if kind == "index" or name != "ignore_index" else 12)):  # (dense targets refuse any ignore_index)
            options[name] = draw(opts[name])
    weight = None
    if draw(one_in(4)):
        weight = draw(float_array([k], _WEIGHT_DTYPES, _WEIGHT_FILLS))
        weight["wrap"] = None
    # rows whose whole shard is -inf (a shard holding none of a row's finite logits)
    ninf = draw(st.lists(st.tuples(st.integers(0, max(n - 1, 0)), st.integers(0, len(cuts) - 2)).map(list), max_size=3)) \
        if n and draw(one_in(3)) else []
    scale = pick(draw, ["1.0"] * 4 + ["0.5", "-2.0", "0.0", "np.float32(0.25)", "rows", "3"])
    return {"entry": "vocab_shards", "logits": logits, "k": k, "lead": lead, "cuts": cuts, "kind": kind, "targets": targets,
            "options": options, "weight": weight, "ninf": ninf, "grad_scale": scale, "seed": draw(seeds),
            "path": pick(draw, ["list", "stacked", "sums"]), "with_out": draw(one_in(4)),
            # (with no rows there is no label to be out of range, no memory to share)
            "bad": pick(draw, sorted(b for b in VOCAB_BAD if n or b not in ("label-beyond", "out-in-row-stats")))
            if draw(one_in(10)) else None, "all_isa": draw(one_in(4))}


def build_vocab(spec: dict[str, Any]) -> Program:
    k, lead, cuts = spec["k"], tuple(spec["lead"]), spec["cuts"]
    lg = spec["logits"]
    setup: list[tuple[str, str]] = [(line, "plain") for line in array_lines("x", {**lg, "layout": [], "wrap": None})]
    for row, shard in spec["ninf"]:
        a, b = cuts[shard], cuts[shard + 1]
        setup.append((f"x.reshape(-1, {k})[{row}, {a}:{b}] = -np.inf", "plain"))
    for op in lg.get("layout", []):
        setup += [(line, "plain") for line in layout_lines("x", op, len(lg["shape"]))]
    if lg.get("wrap"):
        setup.append((wrap_line("x", lg["wrap"]), "plain"))
    t = spec["targets"]
    if spec["kind"] in ("csr", "sparse"):
        ip = [0] + [int(v) for v in np.cumsum([len(r) for r in t["rows"]])]
        ix = [c for r in t["rows"] for c in r]
        setup.append((f"_v = np.random.default_rng({t['seed']}).uniform(0, 2, {len(ix)})" + ("; _v[:1] = np.nan" if t["nan"] else ""),
                      "plain"))
        setup.append((f"y = scipy.sparse.{t['form']}((_v, {ix!r}, {ip!r}), shape=({len(ip) - 1}, {k}))", "plain"))
    else:
        setup += [(line, "plain") for line in array_lines("y", t)]
    if spec["weight"] is not None:
        setup += [(line, "plain") for line in array_lines("w", spec["weight"])]
    if spec["bad"]:
        setup.append((f"lead, n, k, a, b = {lead!r}, {int(np.prod(lead)) if lead else 1}, {k}, {cuts[0]}, {cuts[1]}", "plain"))
        *pre, call = VOCAB_BAD[spec["bad"]].split("; ")
        setup += [(line, "plain") for line in pre]
        if call.startswith(("fx.vocab_shard_statistics", "fx.vocab_shard_gradient")):
            call = call[:-1] + ", backend=backend)"  # the variant's backend (with_backend passes it)
        return Program(setup, f"(lambda backend=None: {call})", {})
    setup.append((VOCAB_PIPELINE, "plain"))
    args = {"logits": "x", "targets": "y", "cuts": repr(cuts), "num_classes": str(k),
            "split": repr({"index": "index", "dense": "columns"}.get(spec["kind"], spec["kind"])),
            "path": repr(spec["path"])}
    if spec.get("with_out"):
        args["with_out"] = "True"
    if spec["weight"] is not None:
        args["weight"] = "w"
    scale = spec["grad_scale"]
    if scale == "rows":
        setup.append((f"gs = np.random.default_rng({spec['seed']}).uniform(-2, 2, {lead!r})", "plain"))
        args["grad_scale"] = "gs"
    elif scale != "1.0":
        args["grad_scale"] = scale
    args.update(spec["options"])
    return Program(setup, "vocab_pipeline", args, positional=("logits", "targets"))


def capture_vocab(res: Any, args: dict[str, Any]) -> Any:
    """(loss, the shards' gradients side by side) as float64 copies; `types` says what
    is off in the results' shapes and dtypes, or memory they share with an input or
    with each other."""
    if not isinstance(res, tuple):  # a bad-input case that was accepted
        out = LossResult((np.array(np.asarray(res, dtype=object).shape, np.float64), None))
        out.types = ""
        return out
    stats, row_stats, loss, grads = res
    x = np.asarray(as_plain(args["logits"]))
    lead, store = x.shape[:-1], x.dtype.newbyteorder("=")
    cdt = np.dtype(np.float32) if store.itemsize == 2 else store
    cuts = args["cuts"]
    problems = []
    for s in stats:
        if not isinstance(s, np.ndarray) or s.shape != lead + (4,) or s.dtype != cdt:
            problems.append(f"statistics: {type(s).__name__} {getattr(s, 'dtype', '')} {np.shape(s)}, want {cdt} {lead + (4,)}")
    if not isinstance(row_stats, np.ndarray) or row_stats.shape != lead + (4,):
        problems.append(f"row statistics: {type(row_stats).__name__} {np.shape(row_stats)}, want {lead + (4,)}")
    if not isinstance(loss, np.ndarray) or loss.shape != lead:
        problems.append(f"losses: {type(loss).__name__} {np.shape(loss)}, want {lead}")
    for (a, b), g in zip(zip(cuts[:-1], cuts[1:]), grads):
        if not isinstance(g, np.ndarray) or g.shape != lead + (b - a,) or g.dtype != store:
            problems.append(f"gradient of [{a}, {b}): {type(g).__name__} {getattr(g, 'dtype', '')} {np.shape(g)}, "
                            f"want {store} {lead + (b - a,)}")
    outs = [o for o in [*stats, row_stats, loss, *grads] if isinstance(o, np.ndarray)]
    inputs = memory_regions(list(args.values()))
    for i, o in enumerate(outs):
        if any(_overlap(o, r) for r in inputs):
            problems.append(f"a result ({o.dtype}{list(o.shape)}) shares memory with an input")
        if any(_overlap(o, p) for p in outs[:i]):
            problems.append(f"two results ({o.dtype}{list(o.shape)}) share memory")
    with np.errstate(all="ignore"):
        grad = np.concatenate([np.asarray(g, np.float64) for g in grads], axis=-1) if not problems else None
    out = LossResult((np.array(np.asarray(loss), np.float64, copy=True), grad))
    out.types = "; ".join(problems[:2])
    return out


def check_vocab(entry: EntryPoint, spec: dict[str, Any], outs: list[Outcome]) -> list[Finding]:
    found: list[Finding] = []
    for o in outs:
        found += [Finding(entry.name, "memory", m, o.variant) for m in o.memory]
    found += accept_raise_agreement(entry, outs)
    oks = [o for o in outs if o.status == "ok"]
    if spec.get("bad"):
        return found + [Finding(entry.name, "accepted-bad-input", f"accepted {spec['bad']}", o.variant) for o in oks]
    for o in oks:
        if o.result.types:
            found.append(Finding(entry.name, "result-type", o.result.types, o.variant))
    errs = [o for o in outs if o.status == "error"]
    edge_rows: np.ndarray | None = None
    whole_opts = {n: v for n, v in (next(iter(oks + errs)).args or {}).items() if n in (
        "weight", "ignore_index", "label_smoothing", "z_loss", "softcap")} if oks + errs else {}
    for o in oks + errs:
        args = o.args or {}
        be = "numpy" if o.variant == "numpy" else "cpp"
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rloss, rgrad = fx.softmax_cross_entropy(args["logits"], args["targets"], reduction="none", backend=be,
                                                        **whole_opts)
        except Exception as exc:  # noqa: BLE001 - the whole-row call's verdict, compared below
            if o.status == "ok":
                found.append(Finding(entry.name, "accepted-bad-input",
                                     f"the shards accept what softmax_cross_entropy refuses: {type(exc).__name__}: "
                                     f"{str(exc)[:100]}", o.variant))
            continue
        if o.status == "error":
            found.append(Finding(entry.name, "variants-disagree", f"the shards refuse what softmax_cross_entropy accepts: "
                                 f"{o.exc_type}: {o.message[:100]}", o.variant))
            continue
        loss, grad = o.result
        if grad is None:
            continue
        ref = loss_reference({**args, "reduction": "none"})
        if ref is None:
            continue
        _, _, info = ref
        row_b, _, grad_b, edge = loss_bounds(info, "none")
        edge_rows = edge
        dt, store = info["dtype"], info["store"]
        x = np.asarray(as_plain(args["logits"]))
        lead = x.shape[:-1]
        # both sides err by the existing sections' bound (plus the whole-row loss's
        # rounding to its dtype: the combined loss is float64)
        e_loss = np.asarray(rloss, np.float64)
        with np.errstate(all="ignore"):
            lb = (2 * row_b).reshape(lead) + np.abs(np.nan_to_num(e_loss, posinf=0, neginf=0)) * float(np.finfo(dt).eps)
        why = _compare(loss, e_loss, lb, edge.reshape(lead), np.dtype(np.float64))
        if why:
            found.append(Finding(entry.name, "reference", f"loss: {why}", o.variant))
        gs = np.asarray(args.get("grad_scale", 1.0), np.float64)
        rows_scale = np.broadcast_to(gs, lead).reshape(-1, 1)
        k_all = x.shape[-1]
        with np.errstate(all="ignore"):
            e_grad = np.asarray(rgrad, np.float64).reshape(-1, x.shape[-1]) * rows_scale
            e_round = np.abs(np.nan_to_num(e_grad, posinf=0, neginf=0))
            # each shard's target mass Q_r is returned in the compute dtype: where the Q_r of
            # several shards cancel (weights or dense targets of both signs) the combined Q
            # is off by rounding of sum |Q_r| <= sum |q_j|, not of |Q|, times s_j in g_j
            cancel = reference.rtol_for(dt, k_all, 32.0) * np.abs(info["q"]).sum(axis=1, keepdims=True) * info["s"]
            gb = np.abs(rows_scale) * (2 * grad_b + cancel + 2 * rounding16(np.asarray(rgrad, np.float64).reshape(e_grad.shape), store)) \
                + 2 * e_round * float(np.finfo(dt).eps) + 3 * rounding16(e_round, store)
        r_rows = np.asarray(rgrad, np.float64).reshape(e_grad.shape)
        # a 16-bit gradient that overflows (to inf whole-row, then inf * 0 = NaN for a 0
        # grad_scale) can round either way; the shards scale before storing
        careless = np.broadcast_to(edge[:, None], e_grad.shape) | near_float16_overflow(e_grad, store) \
            | near_float16_overflow(r_rows, store) | (np.isinf(r_rows) & (rows_scale != 1))
        why = _compare(grad.reshape(e_grad.shape), e_grad, gb, careless, store)
        if why:
            found.append(Finding(entry.name, "reference", f"gradient: {why}", o.variant))
    return found + vocab_agreement(entry, oks, edge_rows)


def vocab_agreement(entry: EntryPoint, oks: list[Outcome], edge: np.ndarray | None) -> list[Finding]:
    """check_agreement, but NaN placement is compared outside the reference's edge rows
    (float32 intermediates beyond the dtype's range: there softmax_cross_entropy's own
    backends give -inf in one and NaN in the other, on the whole rows too); threads
    must still not change a bit anywhere."""
    found = check_agreement(entry, [o for o in oks if o.variant in ("cpp", "threads=1")])
    if edge is None or not edge.any():
        return found + check_agreement(entry, [o for o in oks if o.variant != "threads=1"])
    masked = []
    for o in oks:
        if o.variant == "threads=1":
            continue
        loss, grad = o.result
        keep = ~edge.reshape(np.shape(loss))
        res = LossResult((np.where(keep, loss, 0.0), None if grad is None else np.where(keep[..., None], grad, 0.0)))
        masked.append(Outcome(o.variant, o.status, result=res))
    return found + check_agreement(entry, masked)


# ---------------------------------------------------------------------------------------
# fastxent.torch.vocab_parallel_cross_entropy: over a real torch.distributed (gloo) group
# of world size 1 (this process alone), the whole vocabulary on the one rank; against
# fastxent's whole-row functions and F.cross_entropy
# ---------------------------------------------------------------------------------------

# The group, created once per process (the fuzzer's child, or a reproducer) and
# destroyed at exit; the reproducer carries these lines too.
TORCH_GROUP_SETUP = (
    "import atexit, datetime, shutil, torch.distributed as dist",
    ("if not dist.is_initialized(): _store = tempfile.mkdtemp(prefix='fuzz_api-gloo-'); "
     "dist.init_process_group('gloo', init_method=f'file://{_store}/store', rank=0, world_size=1, "
     "timeout=datetime.timedelta(seconds=30)); atexit.register(shutil.rmtree, _store, True); "
     "atexit.register(dist.destroy_process_group)"),
)
TVP_ARGS = ("logits_shard", "target", "vocab_start", "num_classes", "group", "weight", "reduction", "ignore_index",
            "label_smoothing", "z_loss",
            # a class index out of range: named as the kernels name it, "targets:" (as
            # fastxent.torch.cross_entropy does: tests/test_vocab_parallel_torch.py)
            "targets",
            # refusals of the group's agreement (ranges that do not tile [0, num_classes), a
            # rank's refusal) start with the function's name and then say which argument
            "vocab_parallel_cross_entropy")
# Each makes the call invalid: it must raise (oracle a) and never be accepted.
TVP_BAD = {
    "vocab_start-1": "vocab_start=1", "vocab_start-neg": "vocab_start=-1", "vocab_start-float": "vocab_start=0.0",
    "vocab_start-none": "vocab_start=None", "vocab_start-huge": "vocab_start=2**64",
    "num_classes-more": "num_classes=C + 1", "num_classes-less": "num_classes=C - 1", "num_classes-0": "num_classes=0",
    "num_classes-float": "num_classes=float(C)",
    "label-beyond": "y.view(-1)[0] = C", "label-far": "y.view(-1)[-1] = torch.iinfo(y.dtype).max",
    "label-neg": "y.view(-1)[0] = -5",
    "x-int": "x = x.detach().to(torch.int64)", "x-0d": "x = torch.tensor(1.0)",
    "x-numpy": "x = np.zeros(tuple(x.shape), np.float32)",
    "target-uint8": "y = y.to(torch.uint8)", "target-shape": "y = y.unsqueeze(-1)",
    "target-numpy": "y = np.zeros(tuple(y.shape), np.int64)",
    "weight-short": "w = torch.ones(C + 1, dtype=x.dtype)", "weight-grad": "w = torch.ones(C, requires_grad=True)",
    "group-bad": "grp = 'world'", "reduction-bad": "red = 'avg'", "label_smoothing-bad": "ls = 1.5",
    "z_loss-bad": "zl = -1.0", "ignore_index-bad": "ii = 0.5",
}


@st.composite
def tvp_specs(draw: Any) -> dict[str, Any]:
    c = draw(st.integers(1, 40))
    shape = pick(draw, ([[c], [3, c], [5, c], [2, 3, c], [0, c]]))
    xdt = pick(draw, (["float32", "float32", "float64", "float16", "bfloat16"]))
    index = draw(st.integers(0, 3)) > 0
    opts: dict[str, str] = {}
    if draw(st.booleans()):
        opts["reduction"] = pick(draw, (["'none'", "'sum'", "'mean'"]))
    if draw(one_in(3)):
        opts["label_smoothing"] = pick(draw, (["0.1", "1.0", "0.0"]))
    if draw(one_in(3)) and index:
        opts["ignore_index"] = pick(draw, (["-100", "0", "1", "-1"]))
    if draw(one_in(3)):
        opts["z_loss"] = pick(draw, (["0.0", "1e-3", "0.5"]))
    lead_n = x_numel(shape[:-1])
    bad = None
    if draw(one_in(5)):
        bad = pick(draw, sorted(b for b in TVP_BAD if (index and lead_n) or not b.startswith("label-")))
        if bad.startswith("label-"):
            opts.pop("ignore_index", None)  # (a label equal to ignore_index is valid)
    return {
        "entry": "torch_vp", "shape": shape, "xdt": xdt, "index": index, "c": c, "seed": draw(seeds),
        "tdt": pick(draw, (["int64", "int64", "int32"])) if index else pick(draw, ([xdt, xdt, "float64"])),
        "weight": pick(draw, ([None, None, None, "same", "float64"])), "options": opts,
        "num_classes": draw(st.booleans()), "scale": pick(draw, ([1.0, 1.0, 30.0])),
        "special": pick(draw, ([None] * 6 + ["-inf", "nan"])), "requires_grad": pick(draw, [True, True, True, False]),
        "bad": bad,
    }


def build_tvp(spec: dict[str, Any]) -> Program:
    s, shape, c = spec["seed"], tuple(spec["shape"]), spec["c"]
    setup = [(line, "plain") for line in TORCH_GROUP_SETUP]
    setup.append((f"g = torch.Generator().manual_seed({s}); C = {c}", "plain"))
    xdt = f"torch.{spec['xdt']}"
    setup.append((f"x = (torch.randn({shape}, generator=g) * {spec['scale']}).to({xdt})", "plain"))
    if spec["special"] and x_numel(shape):
        setup.append((f"x.view(-1)[0] = float('{spec['special']}')", "plain"))
    if spec["index"]:
        setup.append((f"y = torch.randint(0, {c}, {shape[:-1]}, generator=g).to(torch.{spec['tdt']})", "plain"))
    else:
        setup.append((f"y = torch.softmax(torch.randn({shape}, generator=g), -1).to(torch.{spec['tdt']})", "plain"))
    args = {"logits_shard": "x", "target": "y", "vocab_start": "0"}
    if spec["num_classes"]:
        args["num_classes"] = "C"
    if spec["weight"]:
        wdt = xdt if spec["weight"] == "same" else "torch.float64"
        setup.append((f"w = (torch.rand({c}, generator=g) + 0.25).to({wdt})", "plain"))
        args["weight"] = "w"
    args.update(spec["options"])
    bad = spec.get("bad")
    if bad:
        line = TVP_BAD[bad]
        if line.startswith(("vocab_start=", "num_classes=")):
            name, value = line.split("=", 1)
            args[name] = value
        else:
            setup.append((line, "plain"))
            for var, name in (("grp", "group"), ("red", "reduction"), ("ls", "label_smoothing"), ("zl", "z_loss"),
                              ("ii", "ignore_index"), ("w", "weight")):
                if line.startswith(var + " ="):
                    args[name] = var
    if spec["requires_grad"] and not (bad or "").startswith("x-"):
        setup.append(("x.requires_grad_(True)", "plain"))
    return Program(setup, "fastxent.torch.vocab_parallel_cross_entropy", args, positional=("logits_shard", "target"))


def capture_tvp(res: Any, args: dict[str, Any]) -> Any:
    """(loss, d loss.sum() / d logits_shard or None) as float64 arrays; runs the backward pass."""
    import torch
    x = args["logits_shard"]
    grad = None
    if isinstance(x, torch.Tensor) and x.requires_grad and res.requires_grad:
        (g,) = torch.autograd.grad(res.sum(), x)
        grad = g.double().numpy().copy()
    if res.dtype != x.dtype:
        raise ValueError(f"result dtype {res.dtype} for {x.dtype} logits")
    return res.detach().double().numpy().copy(), grad


def tvp_reference(spec: dict[str, Any], args: dict[str, Any], ns_opts: dict[str, Any], use_torch_f: bool) -> tuple[str, Any]:
    """The whole-row result on the same inputs (classes moved to dimension 1):
    fastxent.torch.cross_entropy (or F.cross_entropy with use_torch_f) without z_loss,
    fx.softmax_cross_entropy (the NumPy API, cpp backend) with it; ("ok", (loss, grad))
    or ("error", "Type: message")."""
    import torch
    import torch.nn.functional as F

    import fastxent.torch as fxt

    x, y, w = args["logits_shard"], args["target"], args.get("weight")
    c = x.shape[-1]
    lead = tuple(x.shape[:-1])
    red = ns_opts.get("reduction", "mean")
    z = ns_opts.get("z_loss", 0.0)
    try:
        if z:
            xn = x.detach().float().numpy() if x.dtype in (torch.float16, torch.bfloat16) else x.detach().numpy()
            yn = y.numpy() if not y.is_floating_point() else y.to(torch.float64 if xn.dtype == np.float64 else torch.float32).numpy()
            wn = None if w is None else w.detach().double().numpy()
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loss, grad = fx.softmax_cross_entropy(
                    xn, yn, reduction=red, weight=wn, ignore_index=ns_opts.get("ignore_index", -100),
                    label_smoothing=ns_opts.get("label_smoothing", 0.0), z_loss=z, backend="cpp" if HAVE_CORE else "numpy")
            if red == "mean" and grad is not None:
                pass  # (the NumPy API's gradient is already of the reduced loss)
            loss = np.asarray(loss, np.float64).reshape(lead if red == "none" else ())
            grad = None if grad is None else np.asarray(grad, np.float64)
            if x.dtype in (torch.float16, torch.bfloat16):
                loss = torch.from_numpy(loss).to(x.dtype).double().numpy()
                grad = None if grad is None else torch.from_numpy(grad).to(x.dtype).double().numpy()
            return "ok", (loss, grad)
        xx = x.detach().reshape(-1, c).clone()
        if use_torch_f and x.dtype in (torch.float16, torch.bfloat16):
            xx = xx.float()
        xx.requires_grad_(True)
        yy = y.reshape(-1).long() if not y.is_floating_point() else y.reshape(-1, c).to(xx.dtype)
        ww = None if w is None else w.to(xx.dtype)
        kw = {k: v for k, v in ns_opts.items() if k != "z_loss"}
        fn = F.cross_entropy if use_torch_f else fxt.cross_entropy
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = fn(xx, yy, ww, **kw)
            (g,) = torch.autograd.grad(loss.sum(), xx)
        if red == "none":
            loss = loss.reshape(lead)
        loss, g = loss.to(x.dtype), g.to(x.dtype)
        return "ok", (loss.detach().double().numpy().copy(), g.reshape(x.shape).double().numpy().copy())
    except Exception as exc:  # noqa: BLE001 - any exception is a result to judge here
        return "error", f"{type(exc).__name__}: {str(exc)[:100]}"


def check_tvp(entry: EntryPoint, spec: dict[str, Any], outs: list[Outcome], prog: Program) -> list[Finding]:
    import torch
    found: list[Finding] = []
    for o in outs:
        found += [Finding(entry.name, "memory", m, o.variant) for m in o.memory]
    o = outs[0]
    if o.status == "setup-error":
        return found + [Finding(entry.name, "fuzzer-error", f"setup: {o.exc_type}: {o.message[:120]} (at {o.where[:60]})",
                                o.variant)]
    if spec.get("bad"):
        if o.status == "ok":
            found.append(Finding(entry.name, "accepted-bad-input", f"accepted {spec['bad']}", o.variant))
        return found
    args = o.args or {}
    opts = {k: eval(v) for k, v in spec["options"].items()}  # (the fuzzer's own literals)
    x = args["logits_shard"]
    status, ref = tvp_reference(spec, args, opts, use_torch_f=False)
    if (o.status == "ok") != (status == "ok"):
        mine = f"{o.exc_type}: {o.message[:100]}" if o.status == "error" else "ok"
        return found + [Finding(entry.name, "whole-row-parity", f"vocab_parallel {mine} vs whole-row {ref if status == 'error' else 'ok'}",
                                o.variant, key_detail=f"vocab_parallel {o.status} {o.exc_type} vs whole-row {status}")]
    if o.status != "ok":
        return found
    refs = [("whole-row-parity", ref)]
    if not opts.get("z_loss") and not spec["special"] and x.dtype in (torch.float32, torch.float64):
        fstatus, fref = tvp_reference(spec, args, opts, use_torch_f=True)
        if fstatus == "ok":
            refs.append(("torch-parity", fref))
    loss, grad = o.result
    c = x.shape[-1]
    eps16 = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}.get(x.dtype)
    dt = np.float32 if eps16 or x.dtype == torch.float32 else np.float64
    rtol = 8 * eps16 if eps16 else reference.rtol_for(dt, c, 64.0)
    scale = float(spec["scale"]) * 2 + math.log(c) + 1
    # z_loss adds z lse^2: its rounding scales with lse^2
    scale += float(opts.get("z_loss", 0.0)) * scale**2 * 2
    for oracle, (rloss, rgrad) in refs:
        why = _compare(loss, rloss, rtol * (np.abs(np.nan_to_num(rloss)) + scale), np.zeros(np.shape(rloss), bool), np.dtype(dt))
        if why:
            found.append(Finding(entry.name, oracle, f"loss: {why}", o.variant))
        if grad is None or rgrad is None:
            continue
        why = _compare(grad, rgrad, rtol * (np.abs(np.nan_to_num(rgrad)) + 1 + 2 * float(opts.get("z_loss", 0.0)) * scale),
                       np.zeros(rgrad.shape, bool), np.dtype(dt))
        if why:
            found.append(Finding(entry.name, oracle, f"gradient: {why}", o.variant))
    return found


# ---------------------------------------------------------------------------------------
# fastxent.jax.vocab_parallel_softmax_cross_entropy[_with_integer_labels]: jitted inside
# jax.shard_map over a mesh of one device (the whole vocabulary on one shard); against
# fastxent.jax's whole-row functions and optax
# ---------------------------------------------------------------------------------------

JVP_SETUP = (
    "from jax.sharding import Mesh, PartitionSpec as P",
    "shard_map = getattr(jax, 'shard_map', None) or __import__('jax.experimental.shard_map', fromlist=['x']).shard_map",
    "mesh = Mesh(np.array(jax.devices()[:1]), ('v',))",
)
JVP_ARGS = ("logits", "labels", "axis_name", "vocab_start", "num_classes")


@st.composite
def jvp_specs(draw: Any) -> dict[str, Any]:
    # few shapes: every new shape costs a trace and a compile
    shape = pick(draw, ([[3, 5], [4, 1], [2, 17], [0, 4]]))
    k = shape[-1]
    return {"entry": "jax_vp", "shape": shape, "integer": draw(st.booleans()), "seed": draw(seeds),
            "xdt": pick(draw, (["float32", "float32", "float32", "bfloat16", "float16", "int32"])),
            "ldt": pick(draw, (["int32", "int32", "int8", "uint32", "float32"])),
            "bad_label": pick(draw, ([None] * 5 + ["-1", str(k), "99"])),
            "special": pick(draw, ([None] * 5 + ["nan", "-inf"])),
            "vocab_start": pick(draw, ([None, None, "0", "jnp.int32(0)", "jax.lax.axis_index('v')", "0.0", "jnp.zeros(2, jnp.int32)"])),
            "num_classes": pick(draw, ([None, None, str(k), str(k + 1), str(k - 1)])),
            "axis_name": pick(draw, (["'v'"] * 9 + ["'w'"])),
            "grad": pick(draw, [True, True, False])}


def _jvp_grad(spec: dict[str, Any]) -> bool:
    return bool(spec["grad"]) and spec["xdt"].startswith(("float", "bfloat"))  # jax.grad itself refuses integer logits


def build_jvp(spec: dict[str, Any]) -> Program:
    shape, k = tuple(spec["shape"]), spec["shape"][-1]
    setup = [(line, "plain") for line in JVP_SETUP]
    setup.append((f"rng = np.random.default_rng({spec['seed']}); x = rng.standard_normal({shape}).astype({spec['xdt']!r})",
                  "plain"))
    if spec["special"] and x_numel(shape):
        setup.append((f"x.flat[0] = {spec['special']} if x.dtype.kind != 'i' else 0", "plain"))
    kw = f"axis_name={spec['axis_name']}"
    if spec["vocab_start"] is not None:
        kw += f", vocab_start={spec['vocab_start']}"
    if spec["num_classes"] is not None:
        kw += f", num_classes={spec['num_classes']}"
    if spec["integer"]:
        setup.append((f"y = rng.integers(0, {k}, {shape[:-1]}).astype({spec['ldt']!r})", "plain"))
        if spec["bad_label"] and x_numel(shape[:-1]):
            setup.append((f"y.flat[0] = {spec['bad_label']} if y.dtype.kind == 'i' else 0", "plain"))
        func, yspec = "fastxent.jax.vocab_parallel_softmax_cross_entropy_with_integer_labels", "P()"
    else:
        setup.append((f"y = rng.dirichlet(np.ones({k}), {shape[:-1]}).astype('float32')", "plain"))
        func, yspec = "fastxent.jax.vocab_parallel_softmax_cross_entropy", "P(None, 'v')"
    sm = f"sm = shard_map(lambda a, b: {func}(a, b, {kw}), mesh=mesh, in_specs=(P(None, 'v'), {yspec}), out_specs=P())"
    setup.append((sm, "plain"))
    if _jvp_grad(spec):
        setup.append(("f = jax.jit(lambda x, y: (sm(x, y), jax.grad(lambda x: sm(x, y).sum())(x)))", "plain"))
    else:
        setup.append(("f = jax.jit(lambda x, y: (sm(x, y), None))", "plain"))
    return Program(setup, "f", {"logits": "x", "labels": "y"}, positional=("logits", "labels"))


def capture_jvp(res: Any, args: dict[str, Any]) -> Any:
    loss, grad = res
    return np.array(np.asarray(loss), np.float64, copy=True), None if grad is None else np.array(np.asarray(grad), np.float64)


def check_jvp(entry: EntryPoint, spec: dict[str, Any], outs: list[Outcome], prog: Program) -> list[Finding]:
    import jax
    import optax

    import fastxent.jax as fj
    found: list[Finding] = []
    for o in outs:
        found += [Finding(entry.name, "memory", m, o.variant) for m in o.memory]
    o = outs[0]
    if o.status == "setup-error":
        return found + [Finding(entry.name, "fuzzer-error", f"setup: {o.exc_type}: {o.message[:120]} (at {o.where[:60]})",
                                o.variant)]
    args = o.args or {}
    x, y = np.asarray(args["logits"]), np.asarray(args["labels"])
    k = x.shape[-1]
    # what must be refused: the trace-time checks (oracle a judged the message) or,
    # for a traced label, the kernel's own check (JaxRuntimeError: jax_traced_error_ok)
    nc = spec["num_classes"]
    vs = spec["vocab_start"]
    must = []
    if spec["axis_name"] != "'v'":
        must.append("axis_name not of the mesh")
    if nc is not None and int(nc) != k:  # (one shard: fewer classes than it holds, or more than any shard holds)
        must.append(f"num_classes={nc} with one shard of {k}")
    if vs in ("0.0", "jnp.zeros(2, jnp.int32)"):
        must.append(f"vocab_start={vs}")
    if x.dtype.kind not in "f" and x.dtype.name != "bfloat16":
        must.append(f"{x.dtype} logits")
    if spec["integer"] and y.dtype.kind not in "iu":
        must.append(f"{y.dtype} labels")
    total = int(nc) if nc is not None else k
    if spec["integer"] and y.dtype.kind in "iu" and y.size and ((y < 0) | (y >= total)).any():
        must.append(f"label {y[(y < 0) | (y >= total)][0]} with {total} classes")
    if o.status == "ok" and must:
        return found + [Finding(entry.name, "accepted-bad-input", f"accepted {must[0]}", o.variant,
                                key_detail=f"accepted {re.sub(r'[0-9]+', 'N', must[0])}")]
    if o.status == "error":
        if not must:
            found.append(Finding(entry.name, "whole-row-parity", f"refused a valid call: {o.exc_type}: {o.message[:120]}", o.variant,
                                 key_detail=f"refused a valid call: {o.exc_type}"))
        return found
    # the whole-row references: fastxent.jax's (the same kernels, same dtype) and optax's
    xj = jax.numpy.asarray(x)
    yj = jax.numpy.asarray(y)
    whole = fj.softmax_cross_entropy_with_integer_labels if spec["integer"] else fj.softmax_cross_entropy
    base = optax.softmax_cross_entropy_with_integer_labels if spec["integer"] else optax.softmax_cross_entropy
    loss, grad = o.result
    dt = np.dtype(xj.dtype)
    rtol = 16 * float(np.finfo(dt).eps) if dt.itemsize == 2 else reference.rtol_for(np.float32, k, 64.0)
    for oracle, fn in (("whole-row-parity", whole), ("optax-parity", base)):
        if oracle == "optax-parity" and spec["special"]:
            continue  # rows with inf/NaN: fastxent's convention (NaN row) differs from optax's on purpose
        try:
            rl = np.asarray(fn(xj, yj), np.float64)
            rg = np.asarray(jax.grad(lambda a, fn=fn: fn(a, yj).sum())(xj), np.float64) if grad is not None else None
        except Exception as exc:  # noqa: BLE001 - the reference's refusal of what the shards accepted
            found.append(Finding(entry.name, oracle, f"accepted, the whole-row function raises {type(exc).__name__}: {str(exc)[:100]}",
                                 o.variant, key_detail=f"accepted, whole-row raises {type(exc).__name__}"))
            continue
        why = _compare(loss, rl, rtol * (np.abs(np.nan_to_num(rl)) + 8), np.zeros(np.shape(rl), bool), dt)
        if why:
            found.append(Finding(entry.name, oracle, f"loss: {why}", o.variant))
        if grad is not None and rg is not None:
            why = _compare(grad, rg, rtol * (np.abs(np.nan_to_num(rg)) + 1), np.zeros(np.shape(rg), bool), dt)
            if why:
                found.append(Finding(entry.name, oracle, f"gradient: {why}", o.variant))
    return found


# ---------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------


@dataclass
class EntryPoint:
    """One public function (or family) under fuzz: how to draw a case, build it, judge it.

    arg_names: the names an error message may start with (oracle a).
    variants(spec): the runs to compare (backends, ISAs, threads).
    check(entry, spec, outcomes, program): the findings of oracles (b) and the rest.
    """

    name: str
    strategy: st.SearchStrategy[dict[str, Any]]
    build: Callable[[dict[str, Any]], Program]
    check: Callable[..., list[Finding]]
    arg_names: tuple[str, ...]
    capture: Callable[[Any, dict[str, Any]], Any] = lambda r, args: np.array(np.asarray(r), np.float64, copy=True)
    variants: Callable[[dict[str, Any]], list[str]] = lambda spec: ["cpp", "numpy"]
    extra_errors: tuple[str, ...] = ()
    foreign_messages: bool = False
    overlap: Callable[[dict[str, Any]], str] | None = None  # on the real arguments, before the call
    share: float = 1.0  # relative fuzzing time (JAX compiles per shape: few cases, less time)
    # errors a traced call (under jax.jit) can only raise from inside the computation
    traced_error_ok: Callable[[Outcome], bool] | None = None
    needs: str = ""  # a module the section needs (sections whose module is missing are left out, said so)


def backend_variants(spec: dict[str, Any]) -> list[str]:
    if spec.get("backend") is not None or not HAVE_CORE:
        return ["given"] if spec.get("backend") is not None else ["numpy"]
    v = ["cpp", "numpy"]
    if spec.get("all_isa"):
        v += [f"simd={s}" for s in SUPPORTED_SIMD] + ["threads=1"]
    return v


def with_backend(prog: Program, variant: str) -> Program:
    if variant in ("cpp", "numpy") or variant.startswith("simd=") or variant == "threads=1":
        be = "'numpy'" if variant == "numpy" else "'cpp'"
        return Program(prog.setup, prog.func, {**prog.args, "backend": be}, prog.positional, prog.writable)
    return prog


LOSS_ARGS = ("logits", "targets", "axis", "reduction", "weight", "ignore_index", "label_smoothing", "z_loss", "softcap",
             "return_grad", "out", "inplace", "backend", "indptr", "indices", "values")

ENTRY_POINTS: dict[str, EntryPoint] = {
    e.name: e
    for e in [
        EntryPoint("loss", loss_specs(), build_loss, check_loss, LOSS_ARGS, capture=capture_loss, variants=backend_variants,
                   overlap=must_refuse_loss, share=2.0),
        EntryPoint("alias", alias_specs(), build_alias, check_loss, LOSS_ARGS, capture=capture_loss, variants=backend_variants,
                   overlap=must_refuse_loss),
        EntryPoint("sparse", sparse_specs(), build_sparse, check_loss, LOSS_ARGS, capture=capture_loss, variants=backend_variants,
                   overlap=must_refuse_loss),
        EntryPoint("rowwise", rowwise_specs(), build_rowwise, check_rowwise, ("x", "axis", "backend"), variants=backend_variants),
        EntryPoint("torch", torch_specs(), build_torch, check_torch,
                   ("input", "target", "weight", "ignore_index", "reduction", "label_smoothing", "compute_grad"),
                   capture=capture_torch, variants=lambda spec: [f"given ({spec.get('path', 'eager')})"], extra_errors=("RuntimeError",), foreign_messages=True,
                   needs="torch"),
        EntryPoint("jax", jax_specs(), build_jax, check_jax, ("logits", "labels", "axis", "where"),
                   variants=lambda spec: [f"given ({_jax_transform(spec)})"], needs="jax", share=0.4,
                   traced_error_ok=jax_traced_error_ok),
        EntryPoint("config", config_specs(), build_config, check_config, ("n", "name", "logits", "targets"),
                   capture=capture_loss, variants=lambda spec: ["given"], share=0.3),
        EntryPoint("linear", linear_specs(), build_linear, check_linear, LINEAR_ARGS, capture=capture_linear,
                   variants=backend_variants),
        EntryPoint("vocab_shards", vocab_specs(), build_vocab, check_vocab, VOCAB_ARGS, capture=capture_vocab,
                   variants=backend_variants),
        # (one gloo group of world size 1 per process; one compile per case: few cases, less time)
        EntryPoint("torch_vp", tvp_specs(), build_tvp, check_tvp, TVP_ARGS, capture=capture_tvp,
                   variants=lambda spec: ["given"], needs="torch", share=0.5),
        EntryPoint("jax_vp", jvp_specs(), build_jvp, check_jvp, JVP_ARGS, capture=capture_jvp,
                   variants=lambda spec: [f"given ({'jit-grad' if _jvp_grad(spec) else 'jit'})"], needs="jax", share=0.3,
                   traced_error_ok=jax_traced_error_ok),
    ]
}


@st.composite
def selftest_specs(draw: Any) -> dict[str, Any]:
    return {"entry": "selftest", "what": pick(draw, ["ok", "ok", "ok", "write-input", "overflow", "crash"]), "seed": draw(seeds)}


def build_selftest(spec: dict[str, Any]) -> Program:
    """Stand-ins for the bugs each oracle must catch (only with FUZZ_API_SELFTEST=1):
    writing into an input (c), an OverflowError (a), killing the process (d)."""
    what = spec["what"]
    setup = [("import ctypes", "plain"), (f"x = np.random.default_rng({spec['seed']}).standard_normal((2, 3))", "plain")]
    body = {"ok": "x.sum()", "write-input": "x.__setitem__((0, 0), 1.0)", "overflow": "float(10**400)",
            "crash": "ctypes.string_at(0)"}[what]
    setup.append((f"f = lambda logits: {body}", "plain"))
    return Program(setup, "f", {"logits": "x"}, positional=("logits",))


if os.environ.get("FUZZ_API_SELFTEST") == "1":
    ENTRY_POINTS["selftest"] = EntryPoint("selftest", selftest_specs(), build_selftest, lambda e, spec, outs: [
        Finding(e.name, "memory", m, o.variant) for o in outs for m in o.memory], ("logits",), variants=lambda spec: ["given"])


CASE_PATH: list[str] = []  # in the child: where each case is written before it runs


def run_case(entry: EntryPoint, spec: dict[str, Any]) -> list[Finding]:
    prog = entry.build(spec)
    outs = []
    for variant in entry.variants(spec):
        p = with_backend(prog, variant) if entry.variants is backend_variants else prog
        if CASE_PATH:  # what the parent reports if this kills the process
            with open(CASE_PATH[0], "w") as fh:
                json.dump({"spec": spec, "variant": variant}, fh)
        outs.append(run_program(p, variant, entry))
    found: list[Finding] = []
    for o in outs:
        found += check_error(entry, o)
    if entry.name in ("torch", "jax", "torch_vp", "jax_vp"):
        found += entry.check(entry, spec, outs, prog)
    else:
        found += entry.check(entry, spec, outs)
    tags = case_tags(spec)
    for f in found:
        f.spec = spec
        if f.oracle in ("reference", "variants-disagree"):
            # one numerical symptom can have several causes: keep apart the backend
            # family, ndarray subclasses and the options that change the math
            fam = "numpy" if f.variant == "numpy" else ("cpp" if f.variant.startswith(("cpp", "simd", "threads")) else "")
            f.tags = " ".join(filter(None, [fam if f.oracle == "reference" else "", tags]))
    return found


def case_tags(spec: dict[str, Any]) -> str:
    found: set[str] = set()

    def visit(o: Any) -> None:
        if isinstance(o, dict):
            if o.get("wrap") in ("masked", "matrix"):
                found.add(o["wrap"])
            for v in o.values():
                visit(v)
        elif isinstance(o, list):
            for v in o:
                visit(v)

    visit(spec)
    opts = spec.get("options") or {}
    found.update(n for n in ("softcap", "z_loss") if opts.get(n) not in (None, "None", "0.0"))
    return ",".join(sorted(found))


def run_case_safely(entry: EntryPoint, spec: dict[str, Any]) -> list[Finding]:
    try:
        return run_case(entry, spec)
    except Exception as exc:  # noqa: BLE001 - a fuzzer-side problem must be seen, not hidden
        tb = traceback.format_exc(limit=-3).splitlines()
        return [Finding(entry.name, "fuzzer-error", f"{type(exc).__name__}: {str(exc)[:120]} | {tb[-3:]}", spec=spec)]


# ---------------------------------------------------------------------------------------
# Shrinking and reporting
# ---------------------------------------------------------------------------------------


def simplifications(obj: Any) -> Iterator[Any]:
    """Simpler variants of a spec, one change each: an option dropped; weight, out=, a
    wrapper, a mutation or an odd backend removed; one ISA instead of all; one special
    value or layout trick removed."""
    if isinstance(obj, dict):
        if isinstance(obj.get("options"), dict):
            for name in obj["options"]:
                yield {**obj, "options": {n: v for n, v in obj["options"].items() if n != name}}
        for k, v in obj.items():
            if k in ("weight", "out", "wrap", "mutation", "backend", "special", "bad_label") and v is not None:
                yield {**obj, k: None}
            if k == "all_isa" and v:
                yield {**obj, k: False}
        for k, v in obj.items():
            if k not in ("options", "entry") and isinstance(v, (dict, list)):
                for sub in simplifications(v):
                    yield {**obj, k: sub}
    elif isinstance(obj, list):
        if obj and all(isinstance(v, list) for v in obj):  # specials / layout ops
            for i in range(len(obj)):
                yield obj[:i] + obj[i + 1:]
        for i, v in enumerate(obj):
            if isinstance(v, dict):
                for sub in simplifications(v):
                    yield [*obj[:i], sub, *obj[i + 1:]]


def shrink_spec(spec: dict[str, Any], still_fails: Callable[[dict[str, Any]], bool], budget_s: float) -> dict[str, Any]:
    """Greedy: take the first simplification that still fails, until none does (or the
    budget is spent)."""
    deadline = time.monotonic() + budget_s
    current = spec
    improved = True
    while improved and time.monotonic() < deadline:
        improved = False
        for cand in simplifications(current):
            if time.monotonic() > deadline:
                break
            if cand != current and still_fails(cand):
                current, improved = cand, True
                break
    return current


def shrink(entry: EntryPoint, spec: dict[str, Any], key: str, budget_s: float = 4.0) -> dict[str, Any]:
    """The simplest spec found that still gives a finding with `key`."""
    def same(candidate: dict[str, Any]) -> bool:
        try:
            return any(f.key() == key for f in run_case_safely(entry, candidate))
        except Exception:  # noqa: BLE001 - a candidate that breaks the fuzzer is not simpler
            return False

    return shrink_spec(spec, same, budget_s)


def shrink_crash(spec: dict[str, Any], budget_s: float, work: str) -> dict[str, Any]:
    """The simplest spec found that still kills a fresh process by a signal (each try
    is a `--replay` child: about a second for the imports)."""
    path = os.path.join(work, "shrink.json")

    def crashes(candidate: dict[str, Any]) -> bool:
        with open(path, "w") as fh:
            json.dump({"spec": candidate}, fh)
        try:
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--replay", path], check=False,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode < 0

    return shrink_spec(spec, crashes, budget_s)


def reproducer(spec: dict[str, Any], variant: str = "") -> str:
    entry = ENTRY_POINTS[spec["entry"]]
    prog = entry.build(spec)
    if entry.variants is backend_variants and variant in ("cpp", "numpy") or variant.startswith("simd=") or variant == "threads=1":
        prog = with_backend(prog, variant)
    return prog.source(variant)


# ---------------------------------------------------------------------------------------
# Child: the fuzzing loop
# ---------------------------------------------------------------------------------------


class _SliceOver(Exception):
    pass


def child_main(opts: argparse.Namespace) -> int:
    warnings.simplefilter("ignore")
    work = opts.workdir
    case_path = os.path.join(work, "case.json")
    CASE_PATH[:] = [case_path]
    findings_path = os.path.join(work, "findings.jsonl")
    stats_path = os.path.join(work, f"stats-{os.getpid()}.json")
    sections = opts.section
    stats = {s: {"cases": 0, "seconds": 0.0} for s in sections}
    seen: set[str] = set()
    with contextlib.suppress(FileNotFoundError), open(findings_path) as fh:
        seen.update(json.loads(line)["key"] for line in fh if line.strip())
    until = opts.until
    slice_s = opts.slice
    round_no = 0
    while time.time() < until or round_no == 0:
        for section in sections:
            if time.time() >= until and round_no > 0:
                break  # (the first round gives every section its turn, however short the run)
            entry = ENTRY_POINTS[section]
            end = time.time() + slice_s * entry.share
            end = end if round_no == 0 else min(end, until)
            def progress(n: int, seconds: float, section: str = section) -> None:
                stats[section]["cases"] += n
                stats[section]["seconds"] += seconds
                with open(stats_path, "w") as fh:
                    json.dump(stats, fh)

            fuzz_slice(entry, end, f"{opts.seed}/{section}/{round_no}", seen, findings_path, progress)
        round_no += 1
    return 0


def fuzz_slice(entry: EntryPoint, end: float, seed_text: str, seen: set[str], findings_path: str,
               progress: Callable[[int, float], None]) -> None:
    """Runs hypothesis-drawn cases of one entry point until `end`. Each spec is written
    to CASE_PATH before it runs (the parent's crash report); each new finding is shrunk
    and appended to findings_path at once, and progress(cases, seconds) is reported
    every half second (a crash loses almost nothing)."""
    count = 0
    ran = 0  # cases of this slice: its first always runs, however long the draw took (ASan)
    last = time.time()

    @settings(max_examples=10**9, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(entry.strategy)
    def body(spec: dict[str, Any]) -> None:
        nonlocal count, ran
        nonlocal last
        now = time.time()
        if now - last > 0.5 or now > end:
            progress(count, now - last)
            count, last = 0, now
        if now > end and ran:
            raise _SliceOver
        count += 1
        ran += 1
        for f in run_case_safely(entry, spec):
            k = f.key()
            if k in seen:
                continue
            seen.add(k)
            small = shrink(entry, spec, k) if f.oracle != "fuzzer-error" else spec
            small_f = next((g for g in run_case_safely(entry, small) if g.key() == k), f)
            rec = {"key": k, "entry": f.entry, "oracle": f.oracle, "detail": small_f.detail, "variant": small_f.variant,
                   "spec": small, "reproducer": reproducer(small, small_f.variant)}
            with open(findings_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")

    seed = int(hashlib.sha256(seed_text.encode()).hexdigest()[:8], 16)
    try:
        hypothesis_seed(seed)(body)()
    except BaseException as exc:  # our own stop, possibly wrapped by hypothesis; re-raise anything else
        if not _only_slice_over(exc):
            raise


def _only_slice_over(exc: BaseException) -> bool:
    if isinstance(exc, _SliceOver):
        return True
    if isinstance(exc, getattr(builtins, "BaseExceptionGroup", ())):  # Python >= 3.11
        return all(_only_slice_over(e) for e in exc.exceptions)
    return False


# ---------------------------------------------------------------------------------------
# Parent: runs children, reports crashes, prints the summary
# ---------------------------------------------------------------------------------------


def parent_main(opts: argparse.Namespace) -> int:
    seed = opts.seed
    if seed == "random":
        seed = str(int.from_bytes(os.urandom(4), "little"))
    print(f"fuzz_api: seed {seed}, {opts.seconds:g} s, sections {', '.join(opts.section)}, "
          f"fastxent {fx.backend_info().get('simd')} ({', '.join(SUPPORTED_SIMD)})", flush=True)
    work = tempfile.mkdtemp(prefix="fuzz_api-")
    findings_path = os.path.join(work, "findings.jsonl")
    until = time.time() + opts.seconds
    crashes: list[dict[str, Any]] = []
    restarts = 0
    while time.time() < until - 0.5:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--workdir", work, "--seed", f"{seed}.{restarts}",
               "--until", repr(until), "--slice", str(opts.slice)]
        for s in opts.section:
            cmd += ["--section", s]
        log = open(os.path.join(work, "child.log"), "ab")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        case_path = os.path.join(work, "case.json")
        while proc.poll() is None:
            time.sleep(0.2)
            with contextlib.suppress(FileNotFoundError):
                if time.time() - os.path.getmtime(case_path) > opts.hang:
                    proc.kill()  # our own child only
                    proc.wait()
                    crashes.append(_crash_record(case_path, "hang", f"no progress for {opts.hang:g} s"))
                    break
            if time.time() > until + opts.hang + 30:
                proc.kill()
                proc.wait()
                break
        log.close()
        rc = proc.returncode
        if rc is not None and rc < 0 and not (crashes and crashes[-1].get("pending")):
            crashes.append(_crash_record(case_path, "crash", f"child killed by signal {signal.Signals(-rc).name}"))
        elif rc not in (0, None, -9):
            crashes.append({"key": f"fuzzer exit {rc}", "entry": "-", "oracle": "fuzzer-error", "detail": f"child exited with {rc}",
                            "reproducer": ""})
        if rc is not None and rc >= 0:
            break  # finished, or the fuzzer itself failed (reported above): no restart
        restarts += 1
    findings = []
    with contextlib.suppress(FileNotFoundError), open(findings_path) as fh:
        findings = [json.loads(line) for line in fh if line.strip()]
    by_key: dict[str, dict[str, Any]] = {}
    for f in crashes + findings:
        by_key.setdefault(f["key"], f)
    for f in by_key.values():
        if f["oracle"] == "crash" and f.get("spec") and opts.crash_shrink > 0:
            f["spec"] = shrink_crash(f["spec"], opts.crash_shrink, work)
            f["reproducer"] = reproducer(f["spec"], f.get("variant", ""))
    stats: dict[str, dict[str, float]] = {}
    for name in os.listdir(work):
        if name.startswith("stats-"):
            with open(os.path.join(work, name)) as fh:
                for sec, v in json.load(fh).items():
                    acc = stats.setdefault(sec, {"cases": 0, "seconds": 0.0})
                    acc["cases"] += v["cases"]
                    acc["seconds"] += v["seconds"]
    print("\nthroughput:")
    for sec in opts.section:
        v = stats.get(sec, {"cases": 0, "seconds": 0.0})
        rate = v["cases"] / v["seconds"] if v["seconds"] else 0.0
        print(f"  {sec:12s} {int(v['cases']):7d} cases in {v['seconds']:6.1f} s = {rate:7.1f} cases/s")
    print(f"  child restarts after a crash or hang: {restarts}")
    print(f"\nfindings: {len(by_key)}")
    for i, f in enumerate(by_key.values(), 1):
        print(f"\n--- finding {i}: [{f['entry']}] {f['oracle']}: {f['detail']}")
        if f.get("variant"):
            print(f"    variant: {f['variant']}")
        print("    reproducer:")
        print("\n".join("      " + line for line in f.get("reproducer", "").splitlines()))
    if opts.report:
        with open(opts.report, "w") as fh:
            json.dump({"seed": seed, "stats": stats, "findings": list(by_key.values())}, fh, indent=1)
    shutil.rmtree(work, ignore_errors=True)
    return 1 if by_key else 0


def crash_signature(spec: Any) -> str:
    """What a crashing case does that is out of the ordinary (option names, target kind,
    sparse breakage/mutation, layout tricks, wrappers): crashes with the same signature
    count as one finding (the child cannot shrink a case that kills it)."""
    feats: set[str] = set()

    def visit(o: Any, key: str = "") -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                if k in ("options",) and isinstance(v, dict):
                    feats.update(f"option:{n}" for n in v)
                elif k in ("kind", "form", "mutation", "wrap", "entry", "func", "op") and v:
                    feats.add(f"{k}:{v}")
                else:
                    visit(v, k)
        elif isinstance(o, list):
            if key == "layout":
                feats.update(f"layout:{op[0]}" for op in o if op)
            else:
                for v in o:
                    visit(v, key)

    visit(spec)
    return ", ".join(sorted(feats)) or "-"


def _crash_record(case_path: str, what: str, detail: str) -> dict[str, Any]:
    try:
        with open(case_path) as fh:
            case = json.load(fh)
        spec, variant = case["spec"], case.get("variant", "")
        src = reproducer(spec, variant)
        entry = spec["entry"]
    except Exception as exc:  # noqa: BLE001 - the file may be half-written when the child died
        spec, src, entry, variant = None, f"(case file unreadable: {exc})", "-", ""
    return {"key": f"{entry} | {what} | {crash_signature(spec)}", "entry": entry, "variant": variant, "oracle": what, "detail": detail, "spec": spec, "reproducer": src}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    ap.add_argument("--seconds", type=float, default=60.0, help="total fuzzing time, shared by the sections (EntryPoint.share)")
    ap.add_argument("--seed", default="0", help="an int, or 'random' (printed, to replay)")
    ap.add_argument("--section", action="append", choices=sorted(ENTRY_POINTS), help="fuzz only these (repeatable); default all")
    ap.add_argument("--slice", type=float, default=1.0, help="seconds per section before the next one's turn")
    ap.add_argument("--hang", type=float, default=30.0, help="a case running this long counts as a hang")
    ap.add_argument("--report", help="also write the findings as JSON here")
    ap.add_argument("--crash-shrink", type=float, default=20.0, help="seconds to spend shrinking each crashing case")
    ap.add_argument("--replay", help="run the case in this JSON file (as the child wrote it) once, in this process")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--until", type=float, help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if not opts.section:
        opts.section = list(ENTRY_POINTS)
    missing = [n for n in opts.section if ENTRY_POINTS[n].needs and importlib.util.find_spec(ENTRY_POINTS[n].needs) is None]
    if missing and not opts.child:
        print(f"fuzz_api: leaving out {', '.join(missing)} (module not installed)")
    opts.section = [n for n in opts.section if n not in missing]
    if opts.replay:
        with open(opts.replay) as fh:
            spec = json.load(fh)["spec"]
        for f in run_case_safely(ENTRY_POINTS[spec["entry"]], spec):
            print(f"[{f.entry}] {f.oracle}: {f.detail}")
        return 0
    if opts.child:
        return child_main(opts)
    return parent_main(opts)


if __name__ == "__main__":
    sys.exit(main())
