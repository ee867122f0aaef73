"""The product speaks XFRM through its one hand-written codec, never pyroute2 (issue 15).

Every XFRM message goes through ``appliance.xfrm.codec`` (with
``codec_migrate`` and the decoders of ``events``). pyroute2 declarations of
the same structs exist only under ``tests/xfrm/oracle``, as the oracle the
unit tests hold the codec to; pyroute2 stays for links, addresses and
namespaces elsewhere. Each probe runs in a fresh interpreter, so that what
other tests imported does not count.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import importlib, json, pkgutil, sys

package = importlib.import_module(sys.argv[1])
names = sorted(
    m.name
    for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
    if not m.name.endswith(".__main__")  # runs the CLI
)
for name in [*names, *sys.argv[2:]]:
    importlib.import_module(name)
declarations = set()
if "pyroute2.netlink" in sys.modules:
    stack = [sys.modules["pyroute2.netlink"].nlmsg_base]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in declarations:
                declarations.add(sub)
                stack.append(sub)
print(json.dumps({
    "imported": names,
    "modules": sorted(sys.modules),
    "xfrm_declarations": sorted(
        f"{c.__module__}.{c.__qualname__}" for c in declarations if c.__name__.startswith("xfrm_")
    ),
}))
"""


def probe(package: str, *also: str) -> dict[str, Any]:
    """Import every module below ``package`` (then ``also``) in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, package, *also],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def test_no_module_under_appliance_loads_xfrm_declarations_or_the_oracle() -> None:
    loaded = probe("appliance")
    assert {"appliance.xfrm.codec", "appliance.xfrm.events", "appliance.doctor"} <= set(
        loaded["imported"]
    )
    assert loaded["xfrm_declarations"] == []
    assert [m for m in loaded["modules"] if m == "tests" or m.startswith("tests.")] == []


def test_the_probe_sees_the_oracle_when_it_is_loaded() -> None:
    # The check above is only as good as its probe: loading the oracle must show.
    loaded = probe("appliance.xfrm", "tests.xfrm.oracle.events")
    assert "tests.xfrm.oracle.structs" in loaded["modules"]
    assert "tests.xfrm.oracle.structs.xfrm_usersa_info" in loaded["xfrm_declarations"]


def test_the_xfrm_package_loads_no_pyroute2_at_all() -> None:
    loaded = probe("appliance.xfrm")
    assert "appliance.xfrm.socket" in loaded["imported"]
    assert [m for m in loaded["modules"] if m.split(".")[0] == "pyroute2"] == []


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "appliance" / "xfrm").glob("*.py")),
    ids=lambda p: p.name,
)
def test_xfrm_module_imports_neither_pyroute2_nor_the_tests(path: Path) -> None:
    # Importing runs no function body: a lazy import would escape the probes.
    found = {m for m in imported_modules(path) if m.split(".")[0] in ("pyroute2", "tests")}
    assert found == set()
