"""The sync loop's core: XFRM events in, coalesced store operations out (sans-IO).

Theory of operation
-------------------
On the active node the daemon feeds every XFRM notification to
``SyncCore.on_event(event, now)``. The core keeps, per SA and per policy,
only the latest thing to tell the store, so a burst (an IKE rekey adds and
deletes SAs and policies, a busy SA reports its counters often) becomes one
set of operations. ``get_timer()`` says when the adapter must call
``pending_ops(now)``; the first change after a flush arms the timer
``coalesce_s`` ahead, and later changes do not push it back, so no change
waits longer than ``coalesce_s`` (the jump in ``seqjump`` counts on that).

The operations (``SyncOp``), in the order ``pending_ops`` returns them:

- ``SetThresholds``: a kernel operation, returned at once (not coalesced):
  give a newly seen SA the configured ``XFRMA_REPLAY_THRESH`` and
  ``XFRMA_ETIMER_THRESH`` so that the kernel reports its counters often
  enough (``XFRM_MSG_NEWAE``, docs/failover.md "The bound").
- ``FullResync``: read the whole SAD/SPD and make the store equal to it.
  Asked for at start (``request_resync``), when the kernel flushed, when
  events were lost, when an ``AeChanged`` names an SA the core has never
  seen, and by the adapter when the store asks (it answers a replay update
  with NOT_FOUND: it has lost the SA) or a store operation failed. It
  replaces every pending change: the dump is newer than all of them.
- ``PutEntries`` (SAs and policies to store whole), ``PutReplay`` (counter
  updates of SAs stored before), ``DeleteEntries`` (SAs by SPI and
  protocol, policies by kernel index).

Each SA and policy is in at most one of put / replay / delete, and the
latest event decides which, so the order among them does not matter.

Outbound *gates* (an ``out`` policy with action block and no template, see
``transitions``) are never published: the store keeps the real policy the
gate stands in for, and a gate's UPDPOLICY or deletion would otherwise
overwrite or delete it (the kernel keeps the policy's index across
UPDPOLICY).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from appliance.model import SadEntry, SpdEntry
from appliance.planner import is_gate
from appliance.store.base import SaKey
from appliance.xfrm.events import (
    AeChanged,
    Event,
    PolicyAdded,
    PolicyDeleted,
    PolicyExpired,
    PolicyFlushed,
    SaAdded,
    SaDeleted,
    SaExpired,
    SaFlushed,
)


@dataclass(frozen=True, slots=True)
class SetThresholds:
    """Kernel: set the async-event thresholds of one SA (NEWAE with RTHR/ETHR)."""

    sa: SadEntry
    """The SA (its daddr, SPI, protocol and mark name it)."""


@dataclass(frozen=True, slots=True)
class FullResync:
    """Dump the kernel and make the stores equal to it; then call ``resynced``."""

    reason: str
    """Why, for the log."""
    stores: frozenset[str] | None = None
    """Only these stores (one failed or lost state; the others got every change). None:
    every store, and the changes pending before it are dropped (the dump is newer)."""


@dataclass(frozen=True, slots=True)
class PutEntries:
    """SA_Stor: these SAs and policies, whole."""

    sad: tuple[SadEntry, ...]
    """SAs added or updated (with their latest counters)."""
    spd: tuple[SpdEntry, ...]
    """Policies added or updated (never gates)."""


@dataclass(frozen=True, slots=True)
class PutReplay:
    """SA_Stor: counter updates of SAs the store holds (Replay State payloads)."""

    sas: tuple[SadEntry, ...]
    """The SAs whose counters moved, each with its latest counters; the store
    client sends only their counters."""


@dataclass(frozen=True, slots=True)
class DeleteEntries:
    """SA_Stor with Delete payloads."""

    sas: tuple[tuple[int, int], ...]
    """(SPI, IP protocol) of deleted SAs."""
    policy_indexes: tuple[int, ...]
    """Kernel indexes of deleted policies."""


SyncOp = SetThresholds | FullResync | PutEntries | PutReplay | DeleteEntries


def _apply_ae(sa: SadEntry, event: AeChanged) -> SadEntry:
    """``sa`` with the counters an AE event carries (what it does not carry stays)."""
    state = event.state
    changes: dict[str, object] = {}
    if state.replay_esn is not None:
        changes["replay_esn"] = state.replay_esn
    if state.replay is not None:
        changes["replay"] = state.replay
    if state.lifetime_cur is not None:
        changes["lifetime_cur"] = state.lifetime_cur
    return dataclasses.replace(sa, **changes) if changes else sa  # type: ignore[arg-type]


class SyncCore:
    """Coalesces XFRM events into store operations; see the module docstring."""

    def __init__(self, coalesce_s: float) -> None:
        if coalesce_s < 0:
            raise ValueError("coalesce_s must be >= 0")
        self.coalesce_s = coalesce_s
        self._known: dict[SaKey, SadEntry] = {}
        """Every SA the kernel holds, as far as the events told (for AE merging)."""
        self._put_sas: dict[SaKey, SadEntry] = {}
        self._replay: dict[SaKey, SadEntry] = {}
        self._del_sas: dict[SaKey, tuple[int, int]] = {}
        self._put_pols: dict[int, SpdEntry] = {}
        self._del_pols: set[int] = set()
        self._thresholds: list[SadEntry] = []
        self._resync_reason: str | None = None
        self._resync_at: float | None = None
        self._resync_stores: set[str] | None = None
        """The stores a pending resync is for; None: every store."""
        self._deadline: float | None = None
        self.events_seen = 0
        self.events_coalesced = 0

    # -- input -----------------------------------------------------------------

    def request_resync(self, reason: str, at: float, store: str | None = None) -> None:
        """Ask for a ``FullResync`` at time ``at`` (keeps an earlier request).

        With ``store``, of that store only (it failed, or lost state): the changes
        keep going to every store meanwhile. Without, of every store (events were
        lost, the kernel flushed, publishing started): changes wait for it.
        """
        pending = self._resync_reason is not None
        if not pending or self._resync_at is None or at < self._resync_at:
            self._resync_at = at
        self._resync_reason = self._resync_reason or reason
        if store is None:
            self._resync_stores = None
        elif not pending:
            self._resync_stores = {store}
        elif self._resync_stores is not None:
            self._resync_stores.add(store)

    def resynced(self, sad: Iterable[SadEntry], now: float) -> None:
        """The adapter made the store equal to this dump: it is now what the core knows."""
        self._known = {SaKey.of(sa): sa for sa in sad}

    def on_event(self, event: Event, now: float) -> None:
        """Take one XFRM notification into account."""
        self.events_seen += 1
        if isinstance(event, SaAdded):
            self._sa_changed(event.entry, now, new=not event.updated)
        elif isinstance(event, SaDeleted):
            self._sa_gone(SaKey(event.spi, event.daddr, event.proto), now)
        elif isinstance(event, SaExpired):
            if event.hard:  # the kernel deletes it without a DELSA notification
                self._sa_gone(SaKey.of(event.entry), now)
        elif isinstance(event, AeChanged):
            self._ae(event, now)
        elif isinstance(event, PolicyAdded):
            if not is_gate(event.entry):
                self._del_pols.discard(event.entry.index)
                self._touch(event.entry.index in self._put_pols, now)
                self._put_pols[event.entry.index] = event.entry
        elif isinstance(event, PolicyDeleted):
            if event.entry is None or not is_gate(event.entry):
                self._policy_gone(event.index, now)
        elif isinstance(event, PolicyExpired):
            if event.hard and not is_gate(event.entry):
                self._policy_gone(event.entry.index, now)
        elif isinstance(event, SaFlushed | PolicyFlushed):
            self.request_resync(f"kernel flush ({type(event).__name__})", now)
        # Acquire, migrate, mapping and unknown messages change nothing the store keeps.

    def _touch(self, coalesced: bool, now: float) -> None:
        if coalesced:
            self.events_coalesced += 1
        if self._deadline is None:
            self._deadline = now + self.coalesce_s

    def _sa_changed(self, sa: SadEntry, now: float, *, new: bool) -> None:
        key = SaKey.of(sa)
        if new or key not in self._known:
            self._thresholds.append(sa)
        self._known[key] = sa
        self._del_sas.pop(key, None)
        self._replay.pop(key, None)
        self._touch(key in self._put_sas, now)
        self._put_sas[key] = sa

    def _sa_gone(self, key: SaKey, now: float) -> None:
        self._known.pop(key, None)
        self._put_sas.pop(key, None)
        self._replay.pop(key, None)
        self._touch(key in self._del_sas, now)
        self._del_sas[key] = (key.spi, key.proto)

    def _policy_gone(self, index: int, now: float) -> None:
        self._put_pols.pop(index, None)
        self._touch(index in self._del_pols, now)
        self._del_pols.add(index)

    def _ae(self, event: AeChanged, now: float) -> None:
        key = SaKey(event.spi, event.daddr, event.proto)
        known = self._known.get(key)
        if known is None:
            # Counters of an SA we never saw: the store may lack the SA itself.
            self.request_resync(f"counters of an unknown SA ({key})", now)
            return
        merged = _apply_ae(known, event)
        self._known[key] = merged
        if key in self._put_sas:
            self._touch(True, now)
            self._put_sas[key] = merged
            return
        self._touch(key in self._replay, now)
        self._replay[key] = merged

    # -- output ----------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When ``pending_ops`` has something to return (None: nothing pending)."""
        if self._thresholds:
            return float("-inf")
        times = [t for t in (self._resync_at, self._deadline) if t is not None]
        return min(times) if times else None

    def pending_ops(self, now: float) -> list[SyncOp]:
        """The operations due at ``now``; each change is returned once."""
        ops: list[SyncOp] = [SetThresholds(sa) for sa in self._thresholds]
        self._thresholds = []
        if self._resync_reason is not None and self._resync_at is not None:
            stores = self._resync_stores
            if stores is None:
                if now >= self._resync_at:
                    ops.append(FullResync(self._resync_reason))
                    self._resync_reason = self._resync_at = None
                    self._clear()
                return ops
            if now >= self._resync_at:
                # What is pending first, to every store; then the failed ones from a dump.
                ops += self._changes()
                ops.append(FullResync(self._resync_reason, frozenset(stores)))
                self._resync_reason = self._resync_at = self._resync_stores = None
                return ops
        if self._deadline is None or now < self._deadline:
            return ops
        return ops + self._changes()

    def _changes(self) -> list[SyncOp]:
        """The pending changes as operations, and nothing pending any more."""
        ops: list[SyncOp] = []
        if self._put_sas or self._put_pols:
            ops.append(PutEntries(tuple(self._put_sas.values()), tuple(self._put_pols.values())))
        if self._replay:
            ops.append(PutReplay(tuple(self._replay.values())))
        if self._del_sas or self._del_pols:
            ops.append(DeleteEntries(tuple(self._del_sas.values()), tuple(sorted(self._del_pols))))
        self._clear()
        return ops

    def _clear(self) -> None:
        self._put_sas.clear()
        self._replay.clear()
        self._del_sas.clear()
        self._put_pols.clear()
        self._del_pols.clear()
        self._deadline = None

    @property
    def idle(self) -> bool:
        """Nothing pending."""
        return self.get_timer() is None
