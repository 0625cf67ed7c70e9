"""`python -m fastxent`: a short demo on a multi-label batch (checks the C++ result
against the NumPy backend and times it against plain NumPy, and PyTorch / JAX when
installed). `python -m fastxent bench` runs the full benchmark suite, `python -m
fastxent bench adapters` what the torch / jax adapters cost over the raw kernel."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "bench":
        from .bench import main as bench_main

        return bench_main(args[1:])
    from .demo import main as demo_main

    return demo_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
