"""``ipsec-ha notify`` as keepalived's hook runs it: a real process, real exit codes.

Both entry points behave the same: the Typer CLI (``ipsec-ha notify``) and
``python -m appliance.notify``, the fast path the hook takes with
``IPSEC_HA_PYTHON`` set.
"""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
HOOK = REPO / "keepalived" / "notify-hook"


ENTRY_POINTS = {"cli": ["-m", "appliance", "notify"], "module": ["-m", "appliance.notify"]}


@pytest.fixture(params=sorted(ENTRY_POINTS))
def entry(request: pytest.FixtureRequest) -> list[str]:
    return ENTRY_POINTS[request.param]


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )


def test_notify_records_to_the_log_named_in_the_environment(
    tmp_path: Path, entry: list[str]
) -> None:
    log = tmp_path / "notify.jsonl"
    result = run_cli(
        [*entry, "--json", "INSTANCE", "VI_INSIDE", "BACKUP", "100"],
        {"IPSEC_HA_NOTIFY_LOG": str(log)},
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    (recorded,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert printed == recorded
    assert recorded["name"] == "VI_INSIDE" and recorded["state"] == "BACKUP"
    assert recorded["node"] is None
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_bad_state_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, entry: list[str]
) -> None:
    log = tmp_path / "notify.jsonl"
    result = run_cli([*entry, "--log", str(log), "INSTANCE", "VI", "ACTIVE", "100"], {})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ipsec-ha: error: STATE must be one of MASTER, BACKUP, FAULT, STOP, DELETED, not 'ACTIVE'"
    ]
    assert not log.exists()


def test_missing_argument_exits_2(tmp_path: Path, entry: list[str]) -> None:
    result = run_cli([*entry, "--log", str(tmp_path / "n.jsonl"), "GROUP", "VG", "MASTER"], {})
    assert result.returncode == 2
    assert not (tmp_path / "n.jsonl").exists()


@pytest.mark.parametrize("fast", [False, True])
def test_hook_passes_keepalived_arguments_after_its_own(tmp_path: Path, fast: bool) -> None:
    """keepalived runs: notify-hook --log F --node gw1 TYPE NAME STATE PRIORITY."""
    log = tmp_path / "gw1.jsonl"
    cli = Path(sys.executable).parent / "ipsec-ha"
    env = {**os.environ, "IPSEC_HA_BIN": str(cli)}
    env.pop("IPSEC_HA_PYTHON", None)
    if fast:
        env["IPSEC_HA_PYTHON"] = sys.executable
    result = subprocess.run(
        [str(HOOK), "--log", str(log), "--node", "gw1", "GROUP", "VG_IPSEC_HA", "MASTER", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert (record["node"], record["type"], record["name"], record["state"]) == (
        "gw1",
        "GROUP",
        "VG_IPSEC_HA",
        "MASTER",
    )


def test_hook_keeps_errors_in_the_named_file(tmp_path: Path) -> None:
    errors = tmp_path / "hook-stderr.log"
    env = {**os.environ, "IPSEC_HA_PYTHON": sys.executable, "IPSEC_HA_HOOK_STDERR": str(errors)}
    result = subprocess.run(
        [str(HOOK), "--log", str(tmp_path / "n.jsonl"), "GROUP", "VG", "LOST", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "STATE must be one of" in errors.read_text()
