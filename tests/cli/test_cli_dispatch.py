"""``ipsec-ha`` imports only the module of the command invoked, and still reaches every command."""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

import appliance.cli
from appliance.cli import COMMAND_MODULES, command_of, load_commands

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def ipsec_ha(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m appliance ARGS`` in a fresh interpreter (the real start-up path)."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def command_names(app: typer.Typer) -> set[str]:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    return set(group.commands)


def test_every_command_module_is_in_the_map() -> None:
    public = {m.name for m in pkgutil.iter_modules(appliance.cli.__path__)}
    public = {name for name in public if not name.startswith("_")}
    assert set(COMMAND_MODULES.values()) == public


def test_the_full_app_has_exactly_the_mapped_commands() -> None:
    assert command_names(load_commands()) == set(COMMAND_MODULES)
    from appliance.cli import app

    assert command_names(app) == set(COMMAND_MODULES)


@pytest.mark.parametrize(
    "args,command",
    [
        (["restore", "snap.json", "--netns", "x"], "restore"),
        (["spi-range", "--json"], "spi-range"),
        (["store", "serve"], "store"),
        ([], None),
        (["--help"], None),
        (["-h", "restore"], None),
        (["bogus"], None),
        (["spi_range"], None),
    ],
)
def test_command_of_takes_only_a_known_first_argument(args: list[str], command: str | None) -> None:
    assert command_of(args) == command


def test_help_lists_every_command() -> None:
    result = ipsec_ha("--help")
    assert result.returncode == 0, result.stderr
    listed = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("│ ")}
    assert set(COMMAND_MODULES) <= listed


def test_no_arguments_shows_every_command() -> None:
    result = ipsec_ha()
    listed = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("│ ")}
    assert set(COMMAND_MODULES) <= listed


@pytest.mark.parametrize("command", sorted(COMMAND_MODULES))
def test_each_command_is_reachable_on_its_own(command: str) -> None:
    result = ipsec_ha(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"Usage: python -m appliance {command} " in result.stdout


def test_an_unknown_command_is_a_usage_error() -> None:
    result = ipsec_ha("no-such-command")
    assert result.returncode == 2
    assert "No such command 'no-such-command'" in result.stderr


def test_the_lab_is_not_a_product_command() -> None:
    # The lab has its own program, ipsec-ha-lab (netns_lab/cli.py).
    assert "lab" not in COMMAND_MODULES
    listed = ipsec_ha("--help").stdout.splitlines()
    assert not [line for line in listed if line.startswith("│ lab ")]
    result = ipsec_ha("lab", "up")
    assert result.returncode == 2
    assert "No such command 'lab'" in result.stderr


LOADED = """
import atexit, sys
atexit.register(lambda: print(sorted(m for m in sys.modules if m.startswith("appliance.cli."))))
sys.argv = ["ipsec-ha", *sys.argv[1:]]
from appliance.cli import main
main()
"""


def loaded_command_modules(*args: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", LOADED, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    last = result.stdout.strip().splitlines()[-1]
    names: list[str] = ast.literal_eval(last)
    return {name.removeprefix("appliance.cli.") for name in names}


def test_a_command_imports_only_its_own_module() -> None:
    assert loaded_command_modules("version") == {"_app", "_output", "version"}


def test_restore_imports_no_other_command_module(tmp_path: Path) -> None:
    # The file does not exist: the command fails after dispatch, which is all this needs.
    loaded = loaded_command_modules("restore", str(tmp_path / "none.json"))
    assert "snapshot" in loaded
    assert loaded <= {"_app", "_output", "snapshot", "sa"}


def test_help_imports_every_command_module() -> None:
    assert set(COMMAND_MODULES.values()) <= loaded_command_modules("--help")
