"""appliance.notify: argument validation, the log format, its permissions and atomicity."""

import json
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance import notify
from appliance.errors import ApplianceError, UsageError

pytestmark = pytest.mark.unit


def test_parse_transition_accepts_keepalived_arguments() -> None:
    t = notify.parse_transition("INSTANCE", "VI_OUTSIDE", "MASTER", "150")
    assert t == notify.Transition(
        notify.NotifyType.INSTANCE, "VI_OUTSIDE", notify.VrrpState.MASTER, 150
    )
    group = notify.parse_transition("GROUP", "VG_IPSEC_HA", "STOP", "0")
    assert group.type is notify.NotifyType.GROUP and group.priority == 0


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (("instance", "VI", "MASTER", "1"), "TYPE"),
        (("VRRP", "VI", "MASTER", "1"), "TYPE"),
        (("INSTANCE", "VI", "master", "1"), "STATE"),
        (("INSTANCE", "VI", "UP", "1"), "STATE"),
        (("INSTANCE", "VI", "MASTER", "high"), "PRIORITY"),
        (("INSTANCE", "VI", "MASTER", "256"), "PRIORITY"),
        (("INSTANCE", "VI", "MASTER", "-1"), "PRIORITY"),
        (("INSTANCE", "VI", "MASTER", "1.5"), "PRIORITY"),
        (("INSTANCE", "", "MASTER", "1"), "NAME"),
        (("INSTANCE", "VI X", "MASTER", "1"), "NAME"),
    ],
)
def test_parse_transition_rejects_bad_arguments_naming_them(
    args: tuple[str, str, str, str], names: str
) -> None:
    with pytest.raises(UsageError) as info:
        notify.parse_transition(*args)
    assert str(info.value).startswith(names)
    assert info.value.exit_code == 2


def test_log_path_prefers_option_then_environment_then_default(tmp_path: Path) -> None:
    env = {notify.LOG_ENV: str(tmp_path / "env.jsonl")}
    assert notify.log_path(tmp_path / "opt.jsonl", env) == tmp_path / "opt.jsonl"
    assert notify.log_path(None, env) == tmp_path / "env.jsonl"
    assert notify.log_path(None, {}) == notify.DEFAULT_LOG


def test_handle_appends_one_json_line_per_transition(tmp_path: Path) -> None:
    log = tmp_path / "state" / "notify.jsonl"
    clock = iter([10.5, 11.25])
    for state in ("BACKUP", "MASTER"):
        notify.handle(
            notify.parse_transition("GROUP", "VG", state, "0"),
            log,
            node="gw1",
            wall_clock=lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            monotonic=lambda: next(clock),
        )
    lines = log.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            "type": "GROUP",
            "name": "VG",
            "state": state,
            "priority": 0,
            "node": "gw1",
            "time": "2026-01-02T03:04:05.000000+00:00",
            "monotonic": mono,
        }
        for state, mono in (("BACKUP", 10.5), ("MASTER", 11.25))
    ]
    assert [r.state for r in notify.read_records(log)] == ["BACKUP", "MASTER"]


def test_log_file_is_0600_in_a_0700_directory(tmp_path: Path) -> None:
    log = tmp_path / "new-dir" / "notify.jsonl"
    notify.handle(notify.parse_transition("INSTANCE", "VI", "FAULT", "100"), log)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700


def test_existing_world_readable_log_is_tightened(tmp_path: Path) -> None:
    log = tmp_path / "notify.jsonl"
    log.write_text("")
    os.chmod(log, 0o644)
    notify.handle(notify.parse_transition("INSTANCE", "VI", "BACKUP", "100"), log)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    log = tmp_path / "notify.jsonl"
    transition = notify.parse_transition("INSTANCE", "VI_" + "X" * 200, "MASTER", "150")

    def writer(node: str) -> None:
        for _ in range(50):
            notify.handle(transition, log, node=node)

    threads = [threading.Thread(target=writer, args=(f"n{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = notify.read_records(log)
    assert len(records) == 400
    assert {r.node for r in records} == {f"n{i}" for i in range(8)}


def test_unwritable_log_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ApplianceError, match="cannot open notify log"):
        notify.handle(notify.parse_transition("INSTANCE", "VI", "MASTER", "1"), blocker / "n.jsonl")


def test_corrupt_log_line_is_reported_with_its_line_number(tmp_path: Path) -> None:
    log = tmp_path / "notify.jsonl"
    log.write_text('{"not": "a record"}\n')
    with pytest.raises(ApplianceError, match=r"notify.jsonl:1"):
        notify.read_records(log)


def test_every_state_has_actions_and_all_record_the_transition() -> None:
    assert set(notify.ACTIONS) == set(notify.VrrpState)
    for actions in notify.ACTIONS.values():
        assert notify.record_transition in actions
