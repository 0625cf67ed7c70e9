"""The command line: `python -m fastxent bench [options]` runs the suite (cases.py,
measured by measure.py, reported by report.py); `python -m fastxent bench adapters
[options]` times what the torch / jax adapters cost over the raw kernel.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastxent as fx

from . import cases, measure, report


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
            out.append(cases.all_threads())
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
        epilog="python -m fastxent bench adapters --help: what the torch/jax adapters cost over the raw kernel.",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats (a smoke test, not a measurement)")
    p.add_argument("--sizes", type=_parse_sizes, help=f"main cases, NxK,... (default {cases.DEFAULT_SIZES})")
    p.add_argument("--dtypes", type=_parse_list(("float32", "float64", "bfloat16", "float16"), "--dtypes"),
                   default=["float32", "float64"])
    p.add_argument("--targets", type=_parse_list(("dense", "int"), "--targets"), default=["dense", "int"])
    p.add_argument("--threads", type=_parse_threads, default=None, help="e.g. 1,all (default)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per contender (default 7; quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 2; quick 1)")
    p.add_argument("--burst", type=int, default=None,
                   help="warm calls timed back to back per contender per round, after its cold call (default 3; quick 1)")
    p.add_argument("--only", action="append", default=[], help="run only cases whose name contains this (repeatable)")
    p.add_argument("--no-extra", action="store_true", help="skip the sparse, multi-label and training-step rows")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--out", type=Path, default=Path("fastxent-bench"), help="directory for CSV/JSON/PNG")
    return p


def build_adapters_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastxent bench adapters",
        description="What fastxent.torch and fastxent.jax cost over calling the kernel directly "
                    "(float32, int64 class targets, mean reduction; needs torch and jax). "
                    "Medians of interleaved repeats; the adapter's overhead = its time - the raw kernel's.",
    )
    p.add_argument("--repeats", type=int, default=15, help="timed repeats per call (default 15)")
    p.add_argument("--sizes", type=_parse_sizes, default=_parse_sizes("256x1000,2048x32000"),
                   help="NxK,... (default 256x1000,2048x32000)")
    return p


def suite(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.repeats = args.repeats if args.repeats is not None else (2 if args.quick else 7)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.burst = args.burst if args.burst is not None else (1 if args.quick else measure.BURST)
    if args.repeats < 1 or args.warmup < 0 or args.burst < 1:
        print("--repeats and --burst must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    selected = cases.make_cases(
        sizes=args.sizes or _parse_sizes(cases.QUICK_SIZES if args.quick else cases.DEFAULT_SIZES),
        dtypes=args.dtypes, targets=args.targets, threads=args.threads or _parse_threads("1,all"),
        quick=args.quick, extra=not args.no_extra, only=args.only,
    )
    if not selected:
        print("no case matches --only " + " ".join(args.only), file=sys.stderr)
        return 2

    info = fx.backend_info()
    _log(f"fastxent {info['version']} backend={info['backend']} simd={info.get('simd')}; "
         f"{len(selected)} cases, {args.repeats} rounds x (1 cold + {args.burst} warm calls) after {args.warmup} "
         "warm-up, round-robin")
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
        for i, case in enumerate(selected, 1):
            _log(f"[{i}/{len(selected)}] {case.name} ({time.perf_counter() - start:.0f}s)")
            case_rows = measure.run_case(case, args.repeats, args.warmup, args.burst)
            _log(report.progress_line(case_rows))
            rows += case_rows
    finally:
        fx.set_num_threads(None)
    references = {c.group: c.reference for c in selected}

    print(report.machine_line())
    print(report.format_table(rows, references))
    print(report.LEGEND)
    written = report.write_results(args.out, rows, references, report.meta(args.repeats, args.warmup, args.burst),
                                   plot=not args.no_plot)
    print(f"wrote {', '.join(str(w) for w in written)} ({time.perf_counter() - start:.0f}s)")
    bad = measure.loss_mismatches(rows)
    for r in bad:
        print(f"LOSS MISMATCH {r['case']} {r['contender']}: {r['loss']} vs reference "
              f"(relative difference {r['loss_rel_diff']:.2e})", file=sys.stderr)
    return 1 if bad else 0


def adapters(argv: list[str]) -> int:
    args = build_adapters_parser().parse_args(argv)
    if args.repeats < 1:
        print("--repeats must be >= 1", file=sys.stderr)
        return 2
    for name in cases.ADAPTER_FRAMEWORKS:
        why = cases.optional(name)[1]
        if why:
            print(f"adapters: needs {', '.join(cases.ADAPTER_FRAMEWORKS)}; {why}", file=sys.stderr)
            return 2
    print(report.adapters_header())
    for n, k in args.sizes:
        calls = cases.adapter_contenders(n, k)
        times = measure.time_round_robin(calls, args.repeats, 1, rotate=False, settle_s=0.0)
        print(report.format_adapters(n, k, args.repeats, {name: measure.median_ms(ts) for name, ts in times.items()}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m fastxent bench`'s entry: the suite, or the `adapters` / `frameworks` mode."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "adapters":
        return adapters(args[1:])
    if args and args[0] == "frameworks":
        from . import frameworks

        return frameworks.main(args[1:])
    return suite(args)
