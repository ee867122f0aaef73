"""The product runs one nfnetlink_queue codec: pyroute2's declarations and the oracle stay in tests.

``appliance.nfqueue.codec`` is the codec; ``tests/nfqueue/nfqueue_oracle.py``
(pyroute2's ``nla`` and ``nfgen_msg``) is what it is held to.  Importing
every module under ``appliance/`` must load neither, and the oracle must
not lean on the code it checks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.import_check import (
    ROOT,
    appliance_module_that_loaded,
    imported_modules,
    modules_added_by_importing,
    modules_loaded_by_importing_appliance,
)

pytestmark = pytest.mark.unit

ORACLE = "tests.nfqueue.nfqueue_oracle"
PYROUTE2_NFQUEUE_DECLARATIONS = ("pyroute2.netlink", "pyroute2.netlink.nfnetlink")
"""Where the oracle's ``nla`` and ``nfgen_msg`` come from."""


def test_no_appliance_module_loads_pyroute2_nfnetlink_declarations() -> None:
    loaded = modules_loaded_by_importing_appliance()
    assert "appliance.nfqueue.codec" in loaded  # the walk did import the package
    found = {
        name: appliance_module_that_loaded(name)
        for name in PYROUTE2_NFQUEUE_DECLARATIONS
        if name in loaded
    }
    assert not found, f"loaded at run time (module: first appliance module to load it): {found}"


def test_no_appliance_module_loads_the_oracle_or_any_test_module() -> None:
    loaded = modules_loaded_by_importing_appliance()
    found = [
        name
        for name in loaded
        if name.split(".")[0] == "tests" or name.rsplit(".", 1)[-1] == "nfqueue_oracle"
    ]
    assert not found, f"test modules loaded by the product: {found}"


def test_the_oracle_does_not_import_the_product() -> None:
    """A reference that imported the codec's numbers or helpers would share its mistakes."""
    added = modules_added_by_importing((ORACLE,))[ORACLE]
    assert "pyroute2.netlink.nfnetlink" in added  # it is pyroute2-based, and was imported
    assert not [name for name in added if name.split(".")[0] == "appliance"]


@pytest.mark.parametrize(
    "path", sorted((ROOT / "appliance" / "nfqueue").glob("*.py")), ids=lambda p: p.name
)
def test_nfqueue_module_imports_neither_pyroute2_nor_the_tests(path: Path) -> None:
    """Also inside functions, where an import escapes the checks above until it runs."""
    found = {m for m in imported_modules(path) if m.split(".")[0] in ("pyroute2", "tests")}
    assert found == set()
