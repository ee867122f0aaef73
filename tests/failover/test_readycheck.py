"""``python -m appliance.readycheck``: the same verdict as ``ipsec-ha status --ready``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance import readycheck
from appliance.failover.daemon import write_status

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _status(tmp_path: Path, **health: object) -> Path:
    path = tmp_path / "status.json"
    record = {
        "updated": time.time(),
        "interval_s": 1.0,
        "ready_max_lag_s": 10.0,
        "stores": {"192.0.2.1": {"up": True, "error": None, "sas": 2, "policies": 2}},
        "lag_s": 0.5,
        "held_sas": 2,
        "held_policies": 2,
        **health,
    }
    write_status(
        path,
        {"pid": os.getpid(), "role": "standby", "mode": "hot", "ok": True, "health": record},
    )
    return path


def test_a_ready_standby_exits_0_and_says_ready(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert readycheck.main(["--status", str(_status(tmp_path))]) == 0
    assert capsys.readouterr().out == "ready\n"


def test_each_reason_is_a_line_and_the_exit_status_is_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _status(tmp_path, lag_s=30.0, held_sas=0)
    assert readycheck.main(["--status", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("not ready: standby lag 30.")
    assert lines[1] == "not ready: hot standby holds 0 of 2 SAs and 2 of 2 policies the store has"


def test_max_lag_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _status(tmp_path, lag_s=3.0)
    assert readycheck.main(["--status", str(path), "--max-lag", "2", "--json"]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["ready"] is False and verdict["reasons"][0].startswith("standby lag 3.")


@pytest.mark.parametrize("value", ["0", "-1", "nan", "ten", "86401"])
def test_a_bad_max_lag_is_refused_by_name(tmp_path: Path, value: str) -> None:
    with pytest.raises(SystemExit) as exc:
        readycheck.main(["--status", str(tmp_path / "s.json"), "--max-lag", value])
    assert exc.value.code == 2


def test_no_status_file_is_not_ready(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert readycheck.main(["--status", str(tmp_path / "missing.json")]) == 1
    assert capsys.readouterr().out.startswith("not ready: no daemon status")


def test_the_keepalived_hook_runs_the_module_with_ipsec_ha_python(tmp_path: Path) -> None:
    path = _status(tmp_path, stores={"192.0.2.1": {"up": False, "error": "timeout"}})
    env = {**os.environ, "IPSEC_HA_PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [str(REPO / "keepalived" / "ready-check"), "--status", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "not ready: store unreachable: 192.0.2.1: timeout" in result.stdout


def test_the_check_imports_only_the_judgement_and_the_status_file() -> None:
    # keepalived starts it every interval; in the TCG lab VM each imported module is
    # files read over 9p, and a heavier import once made the runs pile up.
    probe = (
        "import sys, appliance.readycheck; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('appliance', 'netns_lab')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert json.loads(out.replace("'", '"')) == [
        "appliance",
        "appliance.errors",
        "appliance.failover",
        "appliance.failover.readiness",
        "appliance.readycheck",
        "appliance.status_file",
    ]
