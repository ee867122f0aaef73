"""``ipsec-ha status`` reads the daemon's status file: shown, failed, fenced, absent."""

from __future__ import annotations

import json
import os
import subprocess
import time
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


def test_status_shows_the_ike_relay(tmp_path: Path) -> None:
    ike = {
        "daemon": "strongswan", "relay": "127.0.0.2", "charon": "127.0.0.1", "ike_sas": 3,
        "child_sas": 5, "complete": False, "received": 40, "dropped": {"HaMessageError": 2},
        "ignored": {}, "published": 9, "pending": 0, "resyncs_asked": 1, "silent_s": 0.4,
    }  # fmt: skip
    result = run(tmp_path, {**GOOD, "ike": ike})
    assert result.exit_code == 0, result.output
    assert (
        "ike: strongswan relay 127.0.0.2 (charon 127.0.0.1, heard 0.4 s ago): 3 IKE SAs, "
        "5 CHILD SAs (incomplete: charon ran before the daemon); 9 published, 2 datagrams "
        "dropped"
    ) in result.output
    never = run(tmp_path, {**GOOD, "ike": {**ike, "silent_s": None, "complete": True}})
    assert "(charon 127.0.0.1, never heard): 3 IKE SAs, 5 CHILD SAs; 9" in never.output
    assert "safety net" not in never.output and "charon restarted" not in never.output


def test_status_shows_the_safety_net_and_charon_restarts(tmp_path: Path) -> None:
    last = {"kept": 2, "replaced": 0, "missing": 1, "children_missing": 0,
            "not_established": 0, "lost": 1, "error": None}  # fmt: skip
    net = {"checks": 3, "errors": 0, "initiated": 1, "initiate_failed": 0, "lost": 1, "last": last}
    ike = {"daemon": "strongswan", "safety_net": net, "charon_restarts": 1}
    out = run(tmp_path, {**GOOD, "ike": ike}).output
    assert (
        "safety net: 3 check(s), 1 initiated again, 0 failed, 1 lost; last check: 2 kept, "
        "0 replaced, 1 missing, 0 children missing, 0 not established, 1 lost"
    ) in out
    assert "charon restarted 1 time(s) while active" in out
    failed = {**net, "last": {"error": "charon's vici at unix:///x: Connection refused"}}
    out = run(tmp_path, {**GOOD, "ike": {**ike, "safety_net": failed}}).output
    assert "last check failed: charon's vici at unix:///x: Connection refused" in out


def test_status_shows_the_gate_lease(tmp_path: Path) -> None:
    lease = {"lease_s": 2.0, "open": True, "renewals": 40, "failures": 0, "last_error": None}
    result = run(tmp_path, {**GOOD, "gate_lease": lease})
    assert "gate lease 2.0 s: open, renewed (40 renewals, 0 failed)" in result.output
    failing = {**lease, "failures": 2, "last_error": "libnftables rejected it"}
    result = run(tmp_path, {**GOOD, "gate_lease": failing})
    assert "(40 renewals, 2 failed, last error: libnftables rejected it)" in result.output


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


# -- --ready: for keepalived's track_script ----------------------------------------------


def with_health(**health: Any) -> dict[str, Any]:
    now = time.time()
    base = {"updated": now, "interval_s": 1.0, "ready_max_lag_s": 10.0,
            "stores": {"198.51.100.10": {"up": True, "error": None, "rtt_s": 0.0012, "epoch": 3,
                                         "sas": 4, "policies": 4, "checked": now}},
            "last_sync": now - 0.5, "lag_s": 0.5, "held_sas": 4, "held_policies": 4}  # fmt: skip
    base.update(health)
    standby = {**GOOD, "role": "standby", "state": "BACKUP", "mode": "hot",
               "publishing": False, "following": True, "report": None}  # fmt: skip
    return {**standby, "pid": os.getpid(), "health": base}


def test_ready_exits_0(tmp_path: Path) -> None:
    result = run(tmp_path, with_health(), "--ready")
    assert result.exit_code == 0 and result.output == "ready\n"


def test_not_ready_names_each_reason_and_exits_1(tmp_path: Path) -> None:
    down = {"up": False, "error": "did not answer the handshake", "rtt_s": None, "epoch": None,
            "sas": None, "policies": None, "checked": time.time()}  # fmt: skip
    result = run(tmp_path, with_health(stores={"203.0.113.1": down}, lag_s=12.3), "--ready")
    assert result.exit_code == 1
    store, lag = result.output.splitlines()
    assert store == "not ready: store unreachable: 203.0.113.1: did not answer the handshake"
    # the lag grows by the status file's age, which the test does not control to 0.1 s
    assert lag.startswith("not ready: standby lag 12.") and lag.endswith(" s exceeds 10 s")


def test_max_lag_overrides_the_daemons_bound(tmp_path: Path) -> None:
    assert run(tmp_path, with_health(lag_s=12.3), "--ready").exit_code == 1
    assert run(tmp_path, with_health(lag_s=12.3), "--ready", "--max-lag", "20").exit_code == 0
    assert run(tmp_path, with_health(lag_s=0.5), "--ready", "--max-lag", "0.2").exit_code == 1


def test_ready_json(tmp_path: Path) -> None:
    result = run(tmp_path, with_health(held_sas=2), "--ready", "--json")
    assert result.exit_code == 1
    assert json.loads(result.output) == {
        "ready": False,
        "reasons": ["hot standby holds 2 of 4 SAs and 4 of 4 policies the store has"],
    }
    result = run(tmp_path, with_health(), "--ready", "--json")
    assert result.exit_code == 0 and json.loads(result.output) == {"ready": True, "reasons": []}


def test_no_daemon_or_a_dead_one_is_not_ready(tmp_path: Path) -> None:
    result = run(tmp_path, None, "--ready")
    assert result.exit_code == 1 and "not ready: no daemon status" in result.output
    dead = subprocess.Popen(["true"])
    dead.wait()
    result = run(tmp_path, {**with_health(), "pid": dead.pid}, "--ready")
    assert result.exit_code == 1
    assert result.output == f"not ready: daemon (pid {dead.pid}) is not running\n"


def test_stale_health_is_not_ready(tmp_path: Path) -> None:
    result = run(tmp_path, with_health(updated=time.time() - 60), "--ready")
    assert result.exit_code == 1 and "not ready: daemon status is 60 s old" in result.output


def test_max_lag_without_ready_is_a_usage_error(tmp_path: Path) -> None:
    result = run(tmp_path, GOOD, "--max-lag", "5")
    assert getattr(result.exception, "exit_code", None) == 2
    assert "--max-lag" in str(result.exception)


def test_plain_status_shows_the_health_summary(tmp_path: Path) -> None:
    down = {"up": False, "error": "timeout", "rtt_s": None, "epoch": None, "sas": None,
            "policies": None, "checked": 1.0}  # fmt: skip
    status = with_health()
    status["health"]["stores"]["203.0.113.1"] = down
    result = run(tmp_path, status)
    assert result.exit_code == 0, result.output
    assert "store 198.51.100.10: up, epoch 3, 4 SAs, 4 policies, 1.2 ms" in result.output
    assert "store 203.0.113.1: DOWN (timeout)" in result.output
    assert "holds 4 SAs, 4 policies; standby lag 0.5 s" in result.output
