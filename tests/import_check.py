"""What importing the product loads: every module under ``appliance/``, in a fresh interpreter.

The import tests use it to check that no reference codec (pyroute2's
declarations, the oracles under ``tests/``) is loaded at run time.  A fresh
subprocess, because the test session itself has imported those modules
for other tests.  ``appliance.__main__`` is left out: importing it runs the
CLI.  An import inside a function runs only when the function does, so
:func:`imported_modules` reads the source as well.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository: ``appliance/`` is below it."""

# Imports the modules named in argv[1] one by one; prints, for each, what its import added.
_IMPORT_EACH = """
import importlib, json, sys
added = {"": sorted(sys.modules)}
for name in json.loads(sys.argv[1]):
    before = set(sys.modules)
    importlib.import_module(name)
    added[name] = sorted(set(sys.modules) - before)
print(json.dumps(added))
"""


def appliance_modules() -> list[str]:
    """The dotted names of every module and package under ``appliance/``, but ``__main__``."""
    names = []
    for path in sorted((ROOT / "appliance").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def modules_added_by_importing(names: tuple[str, ...]) -> dict[str, list[str]]:
    """For each of ``names``, imported in order in a fresh interpreter: the modules its import
    loaded that were not loaded before (key ``""``: what the interpreter started with)."""
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, json.dumps(names)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"importing {', '.join(names)} failed:\n{done.stderr}")
    added: dict[str, list[str]] = json.loads(done.stdout)
    return added


@functools.cache  # one interpreter per test session: it takes a second or so
def _appliance_imports() -> dict[str, list[str]]:
    return modules_added_by_importing(tuple(appliance_modules()))


def modules_loaded_by_importing_appliance() -> set[str]:
    """``sys.modules`` of a fresh interpreter after importing every module of ``appliance/``."""
    return {name for added in _appliance_imports().values() for name in added}


def appliance_module_that_loaded(module: str) -> str | None:
    """The first module of ``appliance/`` whose import (directly or not) loaded ``module``."""
    for name, added in _appliance_imports().items():
        if module in added:
            return name or None
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names
