"""The hook waits for the daemon: done, failed, too slow, or no daemon at all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import ApplianceError
from appliance.notify import NotifyType, Transition, VrrpState, handle, summary

pytestmark = pytest.mark.unit

MASTER = Transition(NotifyType.GROUP, "VG_IPSEC_HA", VrrpState.MASTER, 0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def write(path: Path, **status: Any) -> None:
    path.write_text(json.dumps({"pid": 42, "role": "standby", **status}))


def run(tmp_path: Path, wait: float = 5.0, on_sleep: Any = None) -> Any:
    clock = Clock()

    def sleep(s: float) -> None:
        clock.sleep(s)
        if on_sleep is not None:
            on_sleep(clock.now)

    return handle(
        MASTER, tmp_path / "notify.jsonl", monotonic=clock, status=tmp_path / "status.json",
        wait_s=wait, sleep=sleep,
    )  # fmt: skip


def test_without_a_daemon_the_hook_only_records(tmp_path: Path) -> None:
    ctx = run(tmp_path)
    assert ctx.daemon is None
    assert (tmp_path / "notify.jsonl").read_text().count("\n") == 1
    assert "daemon" not in summary(ctx)


def test_the_hook_returns_once_the_daemon_shows_the_state_done(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    write(status, state="BACKUP", ok=True)
    report = {"installed_sas": 4, "advanced": [[1, 2, 3]], "timeline": [
        {"step": "notify-received", "monotonic": 1.0, "detail": {}},
        {"step": "done", "monotonic": 1.5, "detail": {}}]}  # fmt: skip

    def daemon_finishes(now: float) -> None:
        if now > 100.5:
            write(status, state="MASTER", ok=True, role="active", report=report)

    ctx = run(tmp_path, on_sleep=daemon_finishes)
    out = summary(ctx)
    assert out["daemon"]["role"] == "active" and out["daemon"]["installed_sas"] == 4
    assert [t["step"] for t in out["daemon"]["timeline"]] == ["notify-received", "done"]


def test_a_failed_transition_is_an_error_naming_the_reason(tmp_path: Path) -> None:
    write(tmp_path / "status.json", state="MASTER", ok=False, error="fetch-state: no store")
    with pytest.raises(ApplianceError, match="daemon failed MASTER: fetch-state: no store"):
        run(tmp_path)


def test_a_daemon_that_does_not_finish_in_time_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "status.json", state="BACKUP", ok=True)
    with pytest.raises(ApplianceError, match=r"did not finish MASTER within 2 s.*role standby"):
        run(tmp_path, wait=2.0)
    # the transition was recorded all the same
    assert "MASTER" in (tmp_path / "notify.jsonl").read_text()


def test_wait_zero_does_not_wait(tmp_path: Path) -> None:
    write(tmp_path / "status.json", state="BACKUP", ok=True)
    assert run(tmp_path, wait=0).daemon is None
