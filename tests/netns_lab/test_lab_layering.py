"""The lab sits above the product: no module under ``appliance/`` imports ``netns_lab``.

The lab imports the product to run it in namespaces; the product must run
on a gateway where the lab is not installed, so the dependency goes one way
only. Imports inside functions count too (``ipsec-ha lab`` once hid its
lab imports there).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

APPLIANCE = Path(__file__).resolve().parents[2] / "appliance"


def lab_imports(source: str) -> list[str]:
    """The ``netns_lab`` modules that ``source`` imports, anywhere in it."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [name for name in names if name.split(".")[0] == "netns_lab"]
    return found


def test_the_check_sees_every_form_of_import() -> None:
    source = (
        "import os, netns_lab.plan\n"
        "from netns_lab import Lab\n"
        "def up():\n"
        "    import netns_lab\n"
        "from netns_lab_extra import x\n"
    )
    assert lab_imports(source) == ["netns_lab.plan", "netns_lab", "netns_lab"]


def test_no_appliance_module_imports_the_lab() -> None:
    modules = sorted(APPLIANCE.rglob("*.py"))
    assert len(modules) > 20, f"no appliance package at {APPLIANCE}"
    offenders = {
        str(path.relative_to(APPLIANCE.parent)): imports
        for path in modules
        if (imports := lab_imports(path.read_text()))
    }
    assert offenders == {}
