"""The ``ipsec-ha`` command: a thin layer over the library.

Each command lives in its own module and decorates the shared Typer ``app``
when imported. ``main`` imports only the module of the command invoked
(``COMMAND_MODULES``): Python start-up is most of a short command's time, and
in the lab VM importing every module costs seconds. With no command, an
option first (``--help``) or an unknown name it imports them all, so help and
Typer's "no such command" see every command. ``from appliance.cli import
app`` also gives the app with every command. Errors (``ApplianceError``)
become one line on stderr and the error's exit status (never a traceback).
"""

import importlib
import pkgutil
import sys
from collections.abc import Sequence

import typer

from appliance.errors import ApplianceError

COMMAND_MODULES: dict[str, str] = {
    "daemon": "daemon",
    "doctor": "doctor",
    "nft": "nft",
    "notify": "notify",
    "policy": "policy",
    "restore": "snapshot",
    "sa": "sa",
    "snapshot": "snapshot",
    "spi-range": "spi_range",
    "status": "status",
    "store": "store",
    "traffic": "traffic",
    "version": "version",
}
"""Top-level command (or command group) name -> the module of this package defining it."""

__all__ = ["COMMAND_MODULES", "app", "load_commands", "main"]


def load_commands(names: Sequence[str] | None = None) -> typer.Typer:
    """Import the modules of the commands ``names`` (all when None); return the app."""
    if names is None:
        # Every public module, mapped or not: a command added without its
        # COMMAND_MODULES entry still works (its test says what is missing).
        wanted = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    else:
        wanted = {COMMAND_MODULES[n] for n in names}
    # Sorted: the order the modules register in is the order help lists them.
    for module in sorted(wanted):
        importlib.import_module(f"{__name__}.{module}")
    from appliance.cli._app import app

    return app


def command_of(args: Sequence[str]) -> str | None:
    """The command named by a command line (without the program name), if it is one we know.

    Only the first argument counts: the root command has no options but
    ``--help``, so anything else first means help or a usage error.
    """
    if args and args[0] in COMMAND_MODULES:
        return args[0]
    return None


def __getattr__(name: str) -> typer.Typer:
    # ``appliance.cli.app``: the app with every command, loaded on first use.
    if name == "app":
        return load_commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Console-script entry point."""
    command = command_of(sys.argv[1:])
    app = load_commands(None if command is None else [command])
    try:
        app()
    except ApplianceError as exc:
        typer.echo(f"ipsec-ha: error: {exc}", err=True)
        sys.exit(exc.exit_code)
