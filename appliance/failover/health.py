"""What the daemon knows about its own health: the record its metrics and status file read.

``DaemonHealth`` is filled by the daemon's tasks (the store probe, the
follower, the publisher, the transitions), each from its own thread, and
read by the metrics collector at scrape time and by the status writer; one
lock guards it, and readers get copies. ``to_status`` is pure: it turns a
snapshot into the ``health`` object of the status file, which
``ipsec-ha status --ready`` (``readiness``) judges.

Times are kept twice where the status file needs them: monotonic to measure
lag, Unix to show and to compare across processes.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.metrics.latency import HistogramSnapshot, LatencyHistogram

TAKEOVER_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip
"""Seconds: a takeover of a few SAs takes milliseconds, one of 10,000 tens of seconds."""


@dataclass(frozen=True)
class StoreProbe:
    """One store's answer to the last health probe (or why it gave none)."""

    up: bool
    error: str | None
    """Why the probe failed (None when ``up``)."""
    rtt_s: float | None
    """How long the probe took (None when it failed)."""
    epoch: int | None
    """The store's epoch for our server ID (0 when it holds nothing; None when not ``up``)."""
    sas: int | None
    policies: int | None
    checked: float
    """Unix time of the probe."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "error": self.error,
            "rtt_s": self.rtt_s,
            "epoch": self.epoch,
            "sas": self.sas,
            "policies": self.policies,
            "checked": self.checked,
        }


@dataclass(frozen=True)
class HealthSnapshot:
    """A consistent copy of ``DaemonHealth`` at one moment."""

    stores: dict[str, StoreProbe]
    last_sync_monotonic: float | None
    last_sync_unix: float | None
    held_sas: int
    held_policies: int
    transitions: dict[tuple[str, str], int]
    """(VRRP state or FENCED/RECLAIM, ok|failed) -> count."""
    takeovers: dict[str, int]
    """ok|failed -> count (both always present)."""
    takeover_duration: HistogramSnapshot
    last_takeover_steps: dict[str, float] = field(default_factory=dict)
    """Step name -> seconds it took in the last successful takeover."""
    last_takeover_unix: float | None = None
    sync_messages: dict[tuple[str, str, str], int] = field(default_factory=dict)
    """(store, op, result) -> count."""
    follow_polls: dict[str, int] = field(default_factory=dict)
    """Hot standby polls of the store, by what they brought: unchanged|changes|whole."""
    follow_revision: int | None = None
    """The store revision of the hot standby's copy after its last poll."""


def step_seconds(timeline: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Seconds each timeline step took: its entry minus the previous one (a repeated name sums).

    The first entry (``notify-received``) starts the clock and takes no time itself.
    """
    steps: dict[str, float] = {}
    for previous, entry in itertools.pairwise(timeline):
        took = float(entry["monotonic"]) - float(previous["monotonic"])
        steps[str(entry["step"])] = steps.get(str(entry["step"]), 0.0) + took
    return steps


class DaemonHealth:
    """The daemon's probe results and counters; safe to update and read from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[str, StoreProbe] = {}
        self._last_sync: tuple[float, float] | None = None
        self._held = (0, 0)
        self._transitions: Counter[tuple[str, str]] = Counter()
        self._takeovers: Counter[str] = Counter({"ok": 0, "failed": 0})
        self._takeover_duration = LatencyHistogram(TAKEOVER_BUCKETS)
        self._last_takeover_steps: dict[str, float] = {}
        self._last_takeover_unix: float | None = None
        self._sync_messages: Counter[tuple[str, str, str]] = Counter()
        self._follow_polls: Counter[str] = Counter()
        self._follow_revision: int | None = None

    # -- updates -------------------------------------------------------------------

    def record_probe(self, store: str, probe: StoreProbe) -> None:
        with self._lock:
            self._stores[store] = probe

    def record_sync(self, monotonic: float, unix: float) -> None:
        """The standby is in step with the store as of this moment (see the daemon)."""
        with self._lock:
            self._last_sync = (monotonic, unix)

    def record_held(self, sas: int, policies: int) -> None:
        """What this node's kernel holds of the served state, as last known."""
        with self._lock:
            self._held = (sas, policies)

    def record_poll(self, result: str, revision: int) -> None:
        """One hot standby poll (``result``: unchanged|changes|whole) and the copy's revision."""
        with self._lock:
            self._follow_polls[result] += 1
            self._follow_revision = revision

    def record_transition(self, state: str, ok: bool) -> None:
        with self._lock:
            self._transitions[(state, "ok" if ok else "failed")] += 1

    def record_takeover(
        self,
        ok: bool,
        *,
        duration_s: float | None = None,
        timeline: Sequence[Mapping[str, Any]] = (),
        received_unix: float | None = None,
    ) -> None:
        """A MASTER transition that was to make the node active; its duration when it did."""
        with self._lock:
            self._takeovers["ok" if ok else "failed"] += 1
            if not ok:
                return
            if duration_s is not None:
                self._takeover_duration.observe(duration_s)
            self._last_takeover_steps = step_seconds(timeline)
            self._last_takeover_unix = received_unix

    def count_sync(self, store: str, op: str, result: str) -> None:
        """One store operation of the publisher (``op``: put|replay|delete|resync|ownership)."""
        with self._lock:
            self._sync_messages[(store, op, result)] += 1

    # -- reading -------------------------------------------------------------------

    def snapshot(self) -> HealthSnapshot:
        with self._lock:
            last_sync = self._last_sync
            return HealthSnapshot(
                stores=dict(self._stores),
                last_sync_monotonic=None if last_sync is None else last_sync[0],
                last_sync_unix=None if last_sync is None else last_sync[1],
                held_sas=self._held[0],
                held_policies=self._held[1],
                transitions=dict(self._transitions),
                takeovers=dict(self._takeovers),
                takeover_duration=self._takeover_duration.snapshot(),
                last_takeover_steps=dict(self._last_takeover_steps),
                last_takeover_unix=self._last_takeover_unix,
                sync_messages=dict(self._sync_messages),
                follow_polls=dict(self._follow_polls),
                follow_revision=self._follow_revision,
            )


def lag_s(snap: HealthSnapshot, now_monotonic: float, standby: bool) -> float | None:
    """Seconds since the last sync, on a node that is not active; None otherwise or if never."""
    if not standby or snap.last_sync_monotonic is None:
        return None
    return max(0.0, now_monotonic - snap.last_sync_monotonic)


def to_status(
    snap: HealthSnapshot,
    *,
    now_unix: float,
    now_monotonic: float,
    standby: bool,
    interval_s: float,
    ready_max_lag_s: float,
) -> dict[str, Any]:
    """The status file's ``health`` object (docs/operations.md, "Monitoring and readiness").

    ``standby``: the node is not active, so its lag counts.
    """
    return {
        "updated": now_unix,
        "interval_s": interval_s,
        "ready_max_lag_s": ready_max_lag_s,
        "stores": {addr: probe.to_dict() for addr, probe in snap.stores.items()},
        "last_sync": snap.last_sync_unix,
        "lag_s": lag_s(snap, now_monotonic, standby),
        "held_sas": snap.held_sas,
        "held_policies": snap.held_policies,
        "follow_polls": dict(snap.follow_polls),
        "follow_revision": snap.follow_revision,
    }


__all__ = [
    "TAKEOVER_BUCKETS",
    "DaemonHealth",
    "HealthSnapshot",
    "StoreProbe",
    "lag_s",
    "step_seconds",
    "to_status",
]
