"""The ``ipsec-ha`` command: a thin layer over the library.

Each command lives in its own module and decorates the shared ``app``; this
module imports them all and turns ``ApplianceError`` into one line on stderr
and its exit status (never a traceback).
"""

import importlib
import pkgutil
import sys

import typer

from appliance.cli._app import app
from appliance.errors import ApplianceError

# Every public module of this package is a command module that decorates
# ``app`` when imported; private ones (``_app``, ``_output``) are helpers.
for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except ApplianceError as exc:
        typer.echo(f"ipsec-ha: error: {exc}", err=True)
        sys.exit(exc.exit_code)
