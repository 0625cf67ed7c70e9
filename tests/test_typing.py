"""The installed package is typed: py.typed ships, the compiled module has a stub that
lists exactly its functions, and `mypy --strict` passes on the package's sources."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import fastxent
from fastxent import _core

PACKAGE = Path(fastxent.__file__).resolve().parent


def test_markers_ship_with_the_package() -> None:
    assert (PACKAGE / "py.typed").is_file()
    assert (PACKAGE / "_core.pyi").is_file()


def test_stub_lists_every_function_of_the_compiled_module() -> None:
    tree = ast.parse((PACKAGE / "_core.pyi").read_text())
    stubbed = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    compiled = {name for name in dir(_core) if not name.startswith("_") and callable(getattr(_core, name))}
    assert stubbed == compiled


def test_mypy_strict_passes(tmp_path: Path) -> None:
    # Check a copy, from a directory with no other configuration: CI runs the tests
    # against the installed wheel, whose site-packages mypy would not report on.
    pkg = tmp_path / "fastxent"
    shutil.copytree(PACKAGE, pkg, ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    sources = sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*") if p.suffix in (".py", ".pyi"))  # subpackages too
    assert "torch.py" in sources
    assert "jax.py" in sources
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(tmp_path / "cache"), "fastxent"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"no issues found in {len(sources)} source files" in proc.stdout, proc.stdout
