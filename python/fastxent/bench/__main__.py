"""`python -m fastxent.bench`, the same as `python -m fastxent bench`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
