"""``ipsec-ha-lab``: the lab's own command, with the commands ``ipsec-ha lab`` used to have."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from netns_lab import cli, lab

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def lab_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m netns_lab ARGS`` in a fresh interpreter (the real start-up path)."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "netns_lab", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def test_the_console_script_runs_the_lab_cli() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    entry = EntryPoint("ipsec-ha-lab", scripts["ipsec-ha-lab"], "console_scripts")
    assert entry.load() is cli.main


def test_help_says_what_it_is_and_lists_the_lab_commands() -> None:
    result = lab_cli("--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: python -m netns_lab " in result.stdout
    assert "network-namespace lab" in result.stdout
    assert "not part of the product" in result.stdout
    listed = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("│ ")}
    assert listed - {"--help"} == {"up", "status", "down"}


@pytest.mark.parametrize(
    "command,options",
    [("up", ["--advert-int", "--json"]), ("status", ["[RUNID]", "--json"]), ("down", ["--all"])],
)
def test_each_command_keeps_its_arguments(command: str, options: list[str]) -> None:
    result = lab_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"Usage: python -m netns_lab {command} " in result.stdout
    for option in options:
        assert option in result.stdout


def run_main(monkeypatch: pytest.MonkeyPatch, euid: int, *args: str) -> int:
    """Run ``ipsec-ha-lab ARGS`` in this process as user ``euid``; return its exit status."""
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    monkeypatch.setattr(sys, "argv", ["ipsec-ha-lab", *args])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert isinstance(exited.value.code, int)
    return exited.value.code


def test_an_error_is_one_line_named_after_the_lab_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(monkeypatch, 1000, "status") == 1
    assert capsys.readouterr().err == (
        "ipsec-ha-lab: error: the lab needs root (network namespaces, keepalived)\n"
    )


@pytest.mark.parametrize("args", [["down"], ["down", "abc123", "--all"]])
def test_down_takes_a_run_id_or_all_not_both(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert run_main(monkeypatch, 0, *args) == 2
    assert capsys.readouterr().err == "ipsec-ha-lab: error: give either a RUNID or --all\n"


RUN_STATUS: dict[str, Any] = {
    "run_id": "abc123",
    "run_dir": "/run/ipsec-ha-lab/abc123",
    "advert_int": 0.2,
    "namespaces": {"gw1": {"name": "iha-abc123-gw1", "present": True}},
    "vips": {"outside": "192.0.2.1/24"},
    "vip_holders": {"outside": ["gw1"]},
    "keepalived": {"gw1": {"pid": 4242, "alive": True}},
    "transitions": [],
}


def test_up_prints_the_run_and_how_to_remove_it(monkeypatch: pytest.MonkeyPatch) -> None:
    built = SimpleNamespace(run_id="abc123", state=SimpleNamespace(namespaces={"gw1": "iha-x"}))
    advert_ints: list[float] = []

    def create(advert_int: float) -> SimpleNamespace:
        advert_ints.append(advert_int)
        return built

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(lab.Lab, "create", create)
    monkeypatch.setattr(lab, "status", lambda run_id: dict(RUN_STATUS))
    result = CliRunner().invoke(cli.app, ["up", "--advert-int", "0.5"])
    assert result.exit_code == 0, result.output
    assert advert_ints == [0.5]
    assert result.output.splitlines() == [
        "lab abc123 is up (run dir /run/ipsec-ha-lab/abc123)",
        "  gw1     iha-x",
        "  VIP outside  192.0.2.1/24       held by gw1",
        "remove it with: ipsec-ha-lab down abc123",
    ]


def test_status_without_a_run_id_shows_every_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(lab, "list_runs", lambda: ["abc123"])
    monkeypatch.setattr(lab, "status", lambda run_id: {**RUN_STATUS, "run_id": run_id})
    result = CliRunner().invoke(cli.app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"runs": [RUN_STATUS]}
