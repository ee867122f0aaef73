"""The package map: every module is listed, and imports follow its layers (issue 15).

``appliance/__init__.py`` and docs/architecture.md list every package and
top-level module under ``appliance/`` with its layer; a module imports only
from its own layer or below.  The check reads the source with ``ast``, so an
import inside a function or under ``TYPE_CHECKING`` counts like any other.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import appliance

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "appliance"

UPWARD_IMPORTS = {("config_toml", "store")}
"""Known imports against the layers, each explained in docs/architecture.md."""


def top_level_units() -> set[str]:
    """Packages and top-level modules under ``appliance/`` (``__init__`` excluded)."""
    units = set()
    for path in PACKAGE.iterdir():
        if path.is_dir() and (path / "__init__.py").is_file():
            units.add(path.name)
        elif path.suffix == ".py" and path.name != "__init__.py":
            units.add(path.stem)
    return units


def documented_layers() -> dict[str, int]:
    """``{unit: layer}`` from the package docstring's headings and ``- ``appliance.x```` lines."""
    layers: dict[str, int] = {}
    layer = 0
    for line in (appliance.__doc__ or "").splitlines():
        heading = re.match(r"(\d) ", line)
        if heading:
            layer = int(heading.group(1))
        entry = re.match(r"- ``appliance\.(\w+)``", line)
        if entry:
            layers[entry.group(1)] = layer
    return layers


def imports_of(path: Path) -> Iterator[tuple[int, str]]:
    """(line, top-level unit) of every ``appliance.*`` import in ``path``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
            if node.module == "appliance":
                names = [f"appliance.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "appliance" and len(parts) > 1:
                yield node.lineno, parts[1]


def unit_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def test_the_package_docstring_lists_every_package_and_module_once() -> None:
    listed = [
        m.group(1) for m in re.finditer(r"^- ``appliance\.(\w+)``", appliance.__doc__ or "", re.M)
    ]
    assert sorted(listed) == sorted(top_level_units())


def test_the_architecture_table_lists_every_package_and_module_at_its_layer() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = {
        m.group(2): int(m.group(1))
        for m in re.finditer(r"^\| (\d) \| `appliance\.(\w+)`", text, re.M)
    }
    assert table == documented_layers()


def test_imports_follow_the_layers() -> None:
    layers = documented_layers()
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE and path.name == "__init__.py":
            continue
        importer = unit_of(path)
        for line, imported in imports_of(path):
            if imported == importer or (importer, imported) in UPWARD_IMPORTS:
                continue
            if imported in layers and layers[imported] > layers[importer]:
                wrong.append(
                    f"{path.relative_to(ROOT)}:{line} ({importer}, layer {layers[importer]}) "
                    f"imports {imported} (layer {layers[imported]})"
                )
    assert wrong == []
