"""Could this node take over cleanly right now? The judgement behind ``ipsec-ha status --ready``.

Pure: it reads the daemon's status file (its ``health`` object, see
``health.to_status``) and says why the node is *not* ready, one reason a
line; no reason means ready. keepalived runs the command as a
``track_script`` and lowers the node's priority while it fails, so a
standby that would take over with missing state (or none) is not elected
while a ready one exists (docs/operations.md, "Monitoring and readiness").

The reasons, in the order they are checked:

- no status, a dead daemon, or a ``health`` object older than
  ``max(3 * interval_s, STALE_FLOOR_S)``: nothing below can be trusted, so
  this is the only reason given;
- the last transition failed; the node is fenced;
- no store answered the last probe (each store named with its error);
- with ``[ike]``: charon's ``ha`` plugin silent for over ``CHARON_SILENT_S``
  (it sends a heartbeat every second), or never heard: charon is down;
- a node that is not active: no sync yet, or a lag over the bound (the
  lag grows by the status file's age);
- a hot standby that holds fewer SAs or policies than every answering
  store holds for the server ID;
- an active node that does not publish.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STALE_FLOOR_S = 5.0
"""A ``health`` object is stale after ``max(3 * interval_s, STALE_FLOOR_S)`` seconds."""
DEFAULT_MAX_LAG_S = 10.0
"""The lag bound when neither ``--max-lag`` nor the status file gives one."""
CHARON_SILENT_S = 5.0
"""charon's ha plugin sends a STATUS every ``heartbeat_delay`` (1 s by default): this
much silence means charon (or its plugin) is down."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def not_ready_reasons(
    status: Mapping[str, Any] | None,
    now_unix: float,
    pid_alive: bool,
    max_lag_s: float | None,
) -> list[str]:
    """Why the node could not take over cleanly now (empty: it could).

    ``pid_alive``: whether the status file's ``pid`` runs; ``max_lag_s``:
    the bound on a standby's lag (None: the daemon's ``ready_max_lag_s``).
    """
    if status is None:
        return ["no daemon status (is ipsec-ha daemon running?)"]
    if not pid_alive:
        return [f"daemon (pid {status.get('pid')}) is not running"]
    health = status.get("health")
    if not isinstance(health, Mapping):
        return ["daemon status has no health record yet"]
    updated = _number(health.get("updated"))
    interval = _number(health.get("interval_s")) or 1.0
    if updated is None:
        return ["daemon status has no health record yet"]
    age = max(0.0, now_unix - updated)
    if age > max(3 * interval, STALE_FLOOR_S):
        return [f"daemon status is {age:.0f} s old"]

    reasons: list[str] = []
    if not status.get("ok", False):
        reasons.append(f"last transition failed: {status.get('error') or 'no reason given'}")
    if status.get("fenced"):
        reasons.append("fenced")

    stores = health.get("stores")
    stores = stores if isinstance(stores, Mapping) else {}
    up = {addr: p for addr, p in stores.items() if isinstance(p, Mapping) and p.get("up")}
    if not stores:
        reasons.append("no store probed yet")
    elif not up:
        for addr, probe in sorted(stores.items()):
            error = probe.get("error") if isinstance(probe, Mapping) else None
            reasons.append(f"store unreachable: {addr}: {error or 'no answer'}")
    reasons += _charon(status.get("ike"), age)

    role = status.get("role")
    if role == "active":
        if not status.get("publishing") and not status.get("fenced"):
            reasons.append("active, but not publishing to any store")
        return reasons

    bound = max_lag_s if max_lag_s is not None else _number(health.get("ready_max_lag_s"))
    bound = DEFAULT_MAX_LAG_S if bound is None else bound
    lag = _number(health.get("lag_s"))
    if lag is None:
        reasons.append("standby has not synced with a store yet")
    elif lag + age > bound:
        reasons.append(f"standby lag {lag + age:.1f} s exceeds {bound:g} s")

    if role == "standby" and status.get("mode") == "hot" and up:
        reasons += _missing_state(health, up)
    return reasons


def _charon(ike: Any, age: float) -> list[str]:
    """With ``[ike]``: is charon's ha plugin talking to the relay?"""
    if not isinstance(ike, Mapping):
        return []
    silent = _number(ike.get("silent_s"))
    if silent is None:
        return ["charon down: its ha plugin never reached the relay (is charon running with "
                "the ha plugin, remote = the relay's address?)"]  # fmt: skip
    if silent + age > CHARON_SILENT_S:
        return [f"charon down: nothing from its ha plugin for {silent + age:.0f} s"]
    return []


def _missing_state(health: Mapping[str, Any], up: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A hot standby holding less than every answering store has (the follower fetched from
    one of them: a store that agrees with what we hold is enough)."""
    counts = [
        (int(p["sas"]), int(p["policies"]))
        for p in up.values()
        if _number(p.get("sas")) is not None and _number(p.get("policies")) is not None
    ]
    if not counts:
        return []
    held_sas = int(_number(health.get("held_sas")) or 0)
    held_pols = int(_number(health.get("held_policies")) or 0)
    # The store closest to what we hold: the one we most likely followed.
    sas, pols = min(counts, key=lambda c: max(0, c[0] - held_sas) + max(0, c[1] - held_pols))
    if held_sas >= sas and held_pols >= pols:
        return []
    return [
        f"hot standby holds {held_sas} of {sas} SAs and {held_pols} of {pols} policies "
        "the store has"
    ]


__all__ = ["CHARON_SILENT_S", "DEFAULT_MAX_LAG_S", "STALE_FLOOR_S", "not_ready_reasons"]
