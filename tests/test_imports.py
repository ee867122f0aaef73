"""No module under appliance/ imports another package's private module (issue 15).

A private module (``appliance.wire._buffer``), or a private name in a module
(``appliance.xfrm.codec._nla``), belongs to the package that holds it: modules
of that package may use it, other packages use what the package exports
(``from appliance.wire import Buffer``). The check reads the source with
``ast`` and imports nothing, so an import inside a function or under
``TYPE_CHECKING`` counts like any other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
"""The repository: ``appliance/`` is below it."""


@dataclass(frozen=True)
class PrivateImport:
    """One import of a private module or name from outside the package that owns it."""

    importer: str
    """The importing file, relative to the repository."""
    line: int
    name: str
    """The private module or name, relative imports resolved (``appliance.wire._buffer``)."""
    owner: str
    """The package the name is private to."""

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.name} (private to {self.owner})"


def module_of(path: Path) -> tuple[str, str]:
    """(module name, name of the package a relative import starts from) of a file below ROOT."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        module = ".".join(parts[:-1])
        return module, module
    return ".".join(parts), ".".join(parts[:-1])


def imported_names(tree: ast.AST, package: str) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything ``tree`` imports: modules, and ``module.name``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{module}.{alias.name}"


def _is_package(parts: list[str]) -> bool:
    return (ROOT.joinpath(*parts) / "__init__.py").is_file()


def private_part(name: str) -> tuple[str, str] | None:
    """(``name`` up to its first private part, the package that is private to), or None.

    A private part directly in a package (``appliance.wire._buffer``) is
    private to that package; one in a module (``appliance.xfrm.codec._nla``)
    to the module's package.
    """
    parts = name.split(".")
    for i in range(1, len(parts)):
        if parts[i].startswith("_") and not parts[i].startswith("__"):
            holder = parts[:i]
            owner = holder if _is_package(holder) else holder[:-1]
            return ".".join(parts[: i + 1]), ".".join(owner)
    return None


def private_imports(path: Path, source: str | None = None) -> list[PrivateImport]:
    """The imports in ``path`` (or in ``source``, read as that file) of other packages' privates."""
    module, package = module_of(path)
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    found: dict[tuple[int, str], PrivateImport] = {}
    for line, name in imported_names(tree, package):
        private = private_part(name) if name.startswith("appliance.") else None
        if private is None:
            continue
        private_name, owner = private
        if module != owner and not module.startswith(owner + "."):
            importer = str(path.relative_to(ROOT))
            found[line, private_name] = PrivateImport(importer, line, private_name, owner)
    return list(found.values())


def test_no_module_imports_another_packages_private_module() -> None:
    modules = sorted((ROOT / "appliance").rglob("*.py"))
    assert len(modules) > 50  # the walk found the package
    found = [str(p) for path in modules for p in private_imports(path)]
    assert not found, "private modules used across packages:\n" + "\n".join(found)


# The check itself, on sources placed (by name only) in the real package tree.
STORE_MODULE = ROOT / "appliance" / "store" / "example.py"
WIRE_MODULE = ROOT / "appliance" / "wire" / "example.py"


@pytest.mark.parametrize(
    "source",
    [
        "from appliance.wire._buffer import Buffer\n",
        "import appliance.wire._buffer\n",
        "from appliance.wire import _buffer\n",
        "from ..wire._errors import WireError\n",
        "def later():\n    from appliance.wire._buffer import Buffer\n",
    ],
)
def test_an_import_of_another_packages_private_module_is_named(source: str) -> None:
    (found,) = private_imports(STORE_MODULE, source)
    assert found.importer == "appliance/store/example.py"
    assert found.name in ("appliance.wire._buffer", "appliance.wire._errors")
    assert found.owner == "appliance.wire"
    assert str(found).startswith(f"appliance/store/example.py:{source.count(chr(10))} imports")


def test_a_private_name_of_a_module_is_private_to_the_modules_package() -> None:
    source = "from appliance.xfrm.codec import _nla\n"
    assert [p.owner for p in private_imports(STORE_MODULE, source)] == ["appliance.xfrm"]
    assert private_imports(ROOT / "appliance" / "xfrm" / "example.py", source) == []


@pytest.mark.parametrize(
    "source",
    [
        "from appliance.wire._buffer import Buffer\n",
        "from ._errors import WireError\n",
        "from appliance.wire import Buffer, WireError\n",
        "from __future__ import annotations\n",
        "from appliance.wire.messages import *\n",
    ],
)
def test_own_package_privates_and_public_names_are_allowed(source: str) -> None:
    assert private_imports(WIRE_MODULE, source) == []


def test_a_package_init_may_re_export_its_own_private_modules() -> None:
    init = ROOT / "appliance" / "wire" / "__init__.py"
    assert private_imports(init, "from appliance.wire._buffer import Buffer\n") == []
