"""What the benchmark reports: the tables printed, bench.csv, bench.json (rows plus
the machine, versions and settings), bench.png (fastxent's speedup over each
contender, needs matplotlib, imported only to draw it), and the `adapters` mode's
table.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

import fastxent as fx

from .cases import DENSE_DENSITY, FLOORS, all_threads, loaded
from .measure import loss_mismatches

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
    "cold_ms",
    "repeats",
    "vs_floor",
    "vs_numpy",
    "fastxent_speedup",
    "peak_bytes",
    "extra_nk_arrays",
    "mem_method",
    "loss",
    "loss_rel_diff",
    "note",
]

LEGEND = ("fx = fastxent with out=g, fx_alloc = fastxent allocating its gradient. floor: the same bytes moved on "
          "fastxent's own threads (dense targets g = x + y, integer/sparse g = -x; fastxent._core.memory_floor); "
          "np_floor: np.add(x, y, out=g) / np.negative(x, out=g); np_alloc: np.add(x, y) / np.negative(x).\n"
          "C/floor: C's time over the floor's; fx/np = fx / np_floor, fx_alloc/np = fx_alloc / np_alloc. "
          "Times are warm (back-to-back calls, medians); 'fx_alloc cold' = fx_alloc's median after a 50 ms pause.\n"
          "* rise of peak resident memory (torch, jax), a lower bound. JAX runs in a process of its own, on all cores in every row.")


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "n/a"
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def _fmt_x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def _fmt_nk(r: dict[str, Any]) -> str:
    v = r["extra_nk_arrays"]
    if v is None:
        return "n/a"
    return f"{v:.2f}" + ("*" if r["mem_method"] == "rss_hwm" else "")


_SHORT = {"fastxent": "fx", "fastxent_alloc": "fx_alloc", "fastxent_dense": "fx_dense"}


def _short(name: str) -> str:
    return _SHORT.get(name, name)


def progress_line(rows: list[dict[str, Any]]) -> str:
    """One case's medians, for the progress log."""
    return "  " + ", ".join(f"{r['contender']} {_fmt_ms(r['median_ms'])}" for r in rows)


def _speedup_names(names: list[str], ref: str) -> list[str]:
    """The contenders fastxent's speedup is shown over: the other implementations, not
    the floor (a ratio column of its own) nor the reference's out=/allocating twin."""
    return [c for c in names if c not in FLOORS and c not in (ref, ref + "_alloc", ref.removesuffix("_alloc"))]


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
        np_names = [c for c in ("fastxent", "fastxent_alloc") if c in names and "np_floor" in names]
        cold_names = [c for c in ("fastxent_alloc",) if c in names]
        head = (["case"] + [f"{_short(c)} ms" for c in names] + [f"{_short(c)} cold" for c in cold_names]
                + [f"{_short(c)}/floor" for c in fx_names] + [f"{_short(c)}/np" for c in np_names]
                + [f"x{_short(c)}" for c in others] + [f"{_short(c)} NxK" for c in mem_names])
        table = [head]
        for case in dict.fromkeys(r["case"] for r in grows):
            cells = [by.get((case, c)) for c in names]
            line = [case + (" LOSS MISMATCH" if loss_mismatches([r for r in cells if r]) else "")]
            line += [_fmt_ms(by[(case, c)]["median_ms"]) if (case, c) in by else "" for c in names]
            # (a contender some cases lack, e.g. fastxent_torch in the 16-bit rows only: blank)
            line += [_fmt_ms(by[(case, c)]["cold_ms"]) if (case, c) in by else "" for c in cold_names]
            line += [_fmt_x(by[(case, c)]["vs_floor"]) if (case, c) in by else "" for c in fx_names]
            line += [_fmt_x(by[(case, c)]["vs_numpy"]) if (case, c) in by else "" for c in np_names]
            line += [_fmt_x(by[(case, c)]["fastxent_speedup"]) if (case, c) in by else "" for c in others]
            line += [_fmt_nk(by[(case, c)]) if (case, c) in by else "" for c in mem_names]
            table.append(line)
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        out.append(f"== {group}: medians (ms); xC = C's time / {_short(ref)}'s time; "
                   "NxK = extra peak memory of one call, in N x K arrays")
        for row in table:
            out.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                 for i, (cell, w) in enumerate(zip(row, widths))))
        out.append("")
    return "\n".join(out)


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


def cpu_model() -> str:
    """The CPU's model name (for every figure's caption)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """The CPU the figures were measured on, printed above the tables."""
    info = fx.backend_info()
    return (f"CPU: {cpu_model()}, {all_threads()} cores available; fastxent {info['version']} "
            f"simd={info.get('simd')}, numpy {np.__version__}")


def _installed_version(name: str) -> str | None:
    """A package's version without importing it (JAX is only imported by the
    processes that time it)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def meta(repeats: int, warmup: int, burst: int = 1) -> dict[str, Any]:
    """bench.json's "meta": the machine, the versions, the settings, how to read the rows."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "jax", "optax"):
        versions[name] = getattr(loaded(name), "__version__", None) or _installed_version(name)
    return {
        "fastxent": fx.backend_info(),
        "versions": versions,
        "cpu": cpu_model(),
        "cores_available": all_threads(),
        "argv": sys.argv[1:],
        "repeats": repeats,
        "warmup": warmup,
        "burst": burst,
        "references": "main and multilabel: speedups vs fastxent_alloc (allocating call); "
                      "sparse_vs_dense and train_step: vs fastxent",
        "floor": "the same bytes on fastxent's threads (fastxent._core.memory_floor): dense targets g = x + y, "
                 "integer/sparse g = -x; np_floor / np_alloc: NumPy's np.add / np.negative into g / allocating",
        "timing": "median_ms: warm, back-to-back calls (burst after one cold call per round); "
                  "cold_ms: the call after a 50 ms pause",
        "dense_targets": f"multi-hot, {DENSE_DENSITY:.1%} of classes per row (at least 1)",
        "jax_threads": "JAX is timed in a process of its own per case (its spinning workers slow every other "
                       "contender); its thread pool is sized at import (all cores) and cannot follow a case's threads",
        "memory": "tracemalloc peak for NumPy-based contenders (sees NumPy allocations only); "
                  "VmHWM rise (lower bound) for torch/jax",
    }


def write_results(out: Path, rows: list[dict[str, Any]], references: dict[str, str], run_meta: dict[str, Any],
                  plot: bool) -> list[Path]:
    """bench.csv, bench.json and (when `plot` and matplotlib is there) bench.png in
    `out`, created if needed; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "bench.csv", rows)
    with (out / "bench.json").open("w") as f:
        json.dump({"meta": run_meta, "results": rows}, f, indent=1)
    written = [out / "bench.csv", out / "bench.json"]
    if plot and write_plot(out / "bench.png", rows, references):
        written.append(out / "bench.png")
    return written


def adapters_header() -> str:
    """The versions line of the `adapters` mode (after its frameworks are imported)."""
    torch, jax = loaded("torch"), loaded("jax")
    return (f"fastxent {fx.backend_info()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"jax {jax.__version__}")


def format_adapters(n: int, k: int, repeats: int, medians: dict[str, float]) -> str:
    """One size of the `adapters` mode: each call's median, its ratio to and its
    time over the raw kernel's (the adapter's overhead)."""
    base = medians["raw kernel"]
    lines = [f"\n{n}x{k} float32 (median of {repeats}, ms)"]
    lines += [f"  {name:<26}{ms:9.3f}  ({ms / base:4.2f}x raw, +{ms - base:.3f} ms)" for name, ms in medians.items()]
    return "\n".join(lines)
