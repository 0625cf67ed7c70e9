"""`python -m fastxent bench`: fastxent side by side with the memory floor, plain
NumPy, PyTorch and JAX, in one run; `python -m fastxent bench adapters`: what the
torch / jax adapters cost over the raw kernel. bench/README.md says how to read both.

  cases.py    what is measured: the cases, their inputs and contenders
  measure.py  how: warm-up, round-robin timing, medians, peak memory, loss agreement
  report.py   the tables, bench.csv, bench.json, bench.png
  frameworks.py  `python -m fastxent bench frameworks`: fastxent.jax / fastxent.torch
              against optax / F.cross_entropy (eager and compiled) in their training
              calls, one process per framework
  cli.py      the command line of the modes

Importing this package imports neither PyTorch, JAX nor matplotlib: a case imports
what it needs when it is built, the plot when it is drawn.
"""

from .cli import main

__all__ = ["main"]
