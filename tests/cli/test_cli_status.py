"""``ipsec-ha status`` reads the daemon's status file: shown, failed, fenced, absent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from appliance.cli import app

pytestmark = pytest.mark.unit

GOOD = {
    "node": "gw2", "pid": 7, "mode": "cold", "server_id": "192.0.2.1", "role": "active",
    "state": "MASTER", "ok": True, "error": None, "publishing": True, "following": False,
    "fenced": False,
    "report": {"installed_sas": 2, "advanced": [[1, 2, 3]], "rekey": [], "timeline": [
        {"step": "notify-received", "monotonic": 10.0}, {"step": "done", "monotonic": 10.25}]},
}  # fmt: skip


def run(tmp_path: Path, status: dict[str, Any] | None, *args: str) -> Any:
    path = tmp_path / "status.json"
    if status is not None:
        path.write_text(json.dumps(status))
    return CliRunner().invoke(app, ["status", "--status", str(path), *args])


def test_status_shows_role_and_last_plan(tmp_path: Path) -> None:
    result = run(tmp_path, GOOD)
    assert result.exit_code == 0, result.output
    assert "role active; last VRRP state MASTER (ok)" in result.output
    assert "2 SAs installed, 1 counters advanced, 0 need a rekey, 250 ms" in result.output


def test_status_json_is_the_file(tmp_path: Path) -> None:
    result = run(tmp_path, GOOD, "--json")
    assert result.exit_code == 0 and json.loads(result.output) == GOOD


@pytest.mark.parametrize("change", [{"ok": False, "error": "fetch-state: no store"},
                                    {"fenced": True}])  # fmt: skip
def test_failed_or_fenced_exits_1(tmp_path: Path, change: dict[str, Any]) -> None:
    result = run(tmp_path, {**GOOD, **change})
    assert result.exit_code == 1


def test_no_daemon_is_a_clear_error(tmp_path: Path) -> None:
    result = run(tmp_path, None)  # main() prints ApplianceError as one line, exit 1
    assert "no daemon status at" in str(result.exception)
    assert getattr(result.exception, "exit_code", None) == 1
