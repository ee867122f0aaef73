"""``not_ready_reasons``: each reason from the status file it is judged on, and none when ready."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from appliance.failover.readiness import not_ready_reasons

pytestmark = pytest.mark.unit

NOW = 1_700_000_000.0


def store(up: bool = True, sas: int = 4, policies: int = 4, error: str | None = None) -> Any:
    return {"up": up, "error": error, "rtt_s": 0.001 if up else None, "epoch": 3 if up else None,
            "sas": sas if up else None, "policies": policies if up else None,
            "checked": NOW - 0.5}  # fmt: skip


def status(role: str = "standby", mode: str = "hot", **health: Any) -> dict[str, Any]:
    base = {
        "updated": NOW - 0.5, "interval_s": 1.0, "ready_max_lag_s": 10.0,
        "stores": {"198.51.100.10": store()}, "last_sync": NOW - 1.0, "lag_s": 1.0,
        "held_sas": 4, "held_policies": 4,
    }  # fmt: skip
    base.update(health)
    return {
        "node": "gw2", "pid": 42, "mode": mode, "role": role, "ok": True, "error": None,
        "publishing": role == "active", "following": role == "standby" and mode == "hot",
        "fenced": False, "health": base,
    }  # fmt: skip


def changed(data: dict[str, Any], **top: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    out.update(top)
    return out


@pytest.mark.parametrize(
    ("data", "alive", "max_lag", "expected"),
    [
        (status(), True, None, []),
        (status(mode="cold", held_sas=0, held_policies=0), True, None, []),
        (status(role="active", lag_s=None), True, None, []),
        (None, False, None, ["no daemon status (is ipsec-ha daemon running?)"]),
        (status(), False, None, ["daemon (pid 42) is not running"]),
        (changed(status(), health=None), True, None, ["daemon status has no health record yet"]),
        (status(updated=NOW - 7.2), True, None, ["daemon status is 7 s old"]),
        # a slow probe interval stretches the bound: 3 intervals
        (status(updated=NOW - 7.2, interval_s=3.0), True, None, []),
        (changed(status(), ok=False, error="fetch-state: no store answered"), True, None,
         ["last transition failed: fetch-state: no store answered"]),
        (changed(status(role="active"), fenced=True, publishing=False), True, None, ["fenced"]),
        (status(stores={}), True, None, ["no store probed yet"]),
        (status(stores={"203.0.113.1": store(False, error="no answer to the handshake"),
                        "198.51.100.10": store(False, error="timeout")}), True, None,
         ["store unreachable: 198.51.100.10: timeout",
          "store unreachable: 203.0.113.1: no answer to the handshake"]),
        # one store of two answering is enough
        (status(stores={"203.0.113.1": store(False, error="timeout"),
                        "198.51.100.10": store()}), True, None, []),
        (status(lag_s=11.8), True, None, ["standby lag 12.3 s exceeds 10 s"]),
        (status(lag_s=11.8), True, 20.0, []),
        (status(lag_s=2.0), True, 1.5, ["standby lag 2.5 s exceeds 1.5 s"]),
        (status(mode="cold", lag_s=30.0, held_sas=0), True, None,
         ["standby lag 30.5 s exceeds 10 s"]),
        (status(role="init", lag_s=None, last_sync=None), True, None,
         ["standby has not synced with a store yet"]),
        (status(held_sas=2), True, None,
         ["hot standby holds 2 of 4 SAs and 4 of 4 policies the store has"]),
        (status(held_policies=3), True, None,
         ["hot standby holds 4 of 4 SAs and 3 of 4 policies the store has"]),
        # the stale store of a dead peer does not count against us: one store agrees
        (status(held_sas=2, stores={"198.51.100.10": store(sas=2),
                                    "198.51.100.11": store(sas=4)}), True, None, []),
        (changed(status(role="active"), publishing=False), True, None,
         ["active, but not publishing to any store"]),
        # [ike]: charon's ha plugin heard a second ago, 4.6 s ago (+0.5 s of status age),
        # never
        (changed(status(), ike={"silent_s": 1.0}), True, None, []),
        (changed(status(role="active"), ike={"silent_s": 4.6}), True, None,
         ["charon down: nothing from its ha plugin for 5 s"]),
        (changed(status(), ike={"silent_s": None}), True, None,
         ["charon down: its ha plugin never reached the relay (is charon running with the ha "
          "plugin, remote = the relay's address?)"]),
    ],
)  # fmt: skip
def test_reasons(
    data: dict[str, Any] | None, alive: bool, max_lag: float | None, expected: list[str]
) -> None:
    assert not_ready_reasons(data, NOW, alive, max_lag) == expected


def test_several_reasons_are_all_given() -> None:
    data = changed(
        status(held_sas=1, lag_s=20.0, stores={"203.0.113.1": store(False, error="timeout")}),
        ok=False,
        error="boom",
    )
    assert not_ready_reasons(data, NOW, True, None) == [
        "last transition failed: boom",
        "store unreachable: 203.0.113.1: timeout",
        "standby lag 20.5 s exceeds 10 s",
    ]  # no store answered: nothing to compare the held state with
