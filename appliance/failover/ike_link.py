"""The daemon's ``[ike]`` side: the relay of charon's ``ha`` plugin and what it publishes.

The daemon owns one :class:`IkeLink` when ``[ike]`` is configured.  The
relay (``strongswan.relay``) runs on the daemon's loop in every role and
keeps the book of charon's IKE SAs.  While the node publishes (ACTIVE), the
book's changes go to every store with the kernel's (the flusher calls
:meth:`take`); a full resync of a store also makes its IKE SAs equal to the
book (:meth:`plan_resync`).  While it does not publish, nothing is kept
pending: publishing starts with a full resync.

When publishing starts and the book has not seen charon start
(``IkeBook.complete`` is False: the daemon started beside a running
charon), the link asks charon for its state with a RESYNC message, as a
restarted peer plugin would.  charon then sends what its own cache holds of
each IKE SA and rekeys every CHILD SA (``ha_cache.c``), so each CHILD SA
reaches the book through its new CHILD_ADD.  Until then the store lacks the
IKE SAs charon made before the daemon started, and a resync never deletes a
stored IKE SA that an incomplete book does not know.

With ``[ike] feed`` the link is also the executor's ``CharonControl``
(docs/strongswan.md, "The takeover"): :meth:`feed` hands charon the stored
IKE SAs at a takeover (and, on a hot standby, at every follow run: only what
changed, ``feed.plan_sync``), :meth:`activate` makes them ESTABLISHED, and
:meth:`retire` makes charon delete every IKE SA it holds when the node stops
being ACTIVE.  The book follows what charon is told, so that it keeps
holding exactly charon's IKE SAs.  The executor calls these from its worker
thread; they run on the loop, which owns the relay and the book.

With ``[ike] safety_net`` the daemon runs :meth:`safety_net` once a
takeover is done: charon's IKE SAs, asked through vici, against the book
(``strongswan.safety_net``); missing ones are initiated again where charon
can, and the counts go to the status file's ``ike.safety_net``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from appliance.store.base import IkeSaRecord, IkeSpis
from appliance.store.client import Retrieved
from appliance.strongswan.config import IkeConfig
from appliance.strongswan.feed import (
    CharonFeed,
    CharonSync,
    child_kernel_spis,
    plan_sync,
    segment_active,
    segment_passive,
)
from appliance.strongswan.ha_message import (
    HaAttributeType,
    HaMessage,
    HaMessageType,
    HaNumber,
)
from appliance.strongswan.ike_state import (
    IkeBook,
    IkeEvent,
    IkeSaRemoved,
    format_spis,
)
from appliance.strongswan.publisher import IkeBatch, IkePublisher, plan_ike_resync
from appliance.strongswan.relay import HaRelay
from appliance.strongswan.safety_net import (
    ExpectedIkeSa,
    SafetyNetError,
    Verdict,
    check,
    expected_from,
    steady,
)
from appliance.strongswan.vici_client import CharonVici

log = logging.getLogger("ipsec_ha.daemon.ike")

SEGMENT = 1
"""With ``segment_count = 1`` every IKE SA is in segment 1 (docs/strongswan.md)."""
LOOP_CALL_TIMEOUT_S = 30.0
"""How long the executor's thread waits for the loop to run a call to charon."""
WATCHDOG_GRACE_S = 3.0
"""How long after charon's start (its RESYNC) a feed waits: charon's plugin takes every
segment when no heartbeat came for ``heartbeat_timeout`` (2.1 s by default)."""
INITIATE_TIMEOUT_MS = 10_000
"""How long the safety net waits for charon to set one missing CHILD SA up."""

T = TypeVar("T")


class IkeLink:
    """The relay, its book, and the IKE SA changes not yet published."""

    def __init__(self, config: IkeConfig, netns: str | None, wake: Callable[[], None]) -> None:
        self.config = config
        self.netns = netns
        self.book = IkeBook()
        self.publisher = IkePublisher()
        self.relay = HaRelay(config.addresses, self._on_events, self.book)
        self._wake = wake
        self.publishing = False
        self.published = 0
        """IKE SA records and deletions handed to the stores."""
        self.resyncs_asked = 0
        self.fed = 0
        """IKE SAs handed to charon from the store."""
        self.retired = 0
        """IKE SAs charon was told to delete."""
        self.unreadable = 0
        """Stored IKE SA records that did not rebuild an IKE SA, so were not fed."""
        self.safety: dict[str, Any] = {
            "checks": 0, "errors": 0, "initiated": 0, "initiate_failed": 0, "lost": 0,
            "last": None,
        }  # fmt: skip
        """The status file's ``ike.safety_net``: totals, and the last check's findings."""
        self._safety_lock = threading.Lock()
        self.on_restart: Callable[[], None] | None = None
        """Called (on the loop) when charon restarted and lost IKE SAs while the node was
        publishing with ``feed``: the daemon answers with ``CHARON_RESTARTED``."""
        self._lost_connections: set[str] = set()
        """The connections of the IKE SAs a restarted charon lost, not yet given back."""
        self.orphaned: frozenset[int] = frozenset()
        """Kernel SPIs of their CHILD SAs, until out of the kernel (``forget_orphans``)."""
        self.restarts = 0
        """charon restarts (RESYNC) that lost IKE SAs while this node was active."""
        self._fed: dict[IkeSpis, bytes] = {}
        """The stored record each IKE SA charon holds passive was last fed from; charon's
        own IKE SAs (all of them once it is activated) have none, and a feed leaves them
        alone."""
        self._refeed: set[IkeSpis] = set()
        """Fed IKE SAs charon lacks CHILD SAs of: deleted and fed whole at the next feed."""
        self._said_incomplete = False
        self._passive_since: tuple[int, int] | None = None
        """``_segment_state()`` when the segment was last made passive (None: activated
        since, or made passive before charon's watchdog could take it)."""
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.relay.start(self.netns)

    def _on_loop(self, call: Callable[[], T]) -> T:
        """``call()`` on the loop (which owns the relay and the book), from any thread."""
        loop = self._loop
        if loop is None:
            return call()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return call()

        async def run() -> T:
            return call()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(LOOP_CALL_TIMEOUT_S)

    # -- the executor's CharonControl ([ike] feed) -----------------------------------------

    def feed(
        self,
        fetched: Retrieved,
        installed: Callable[[frozenset[int]], None],
        make_room: Callable[[frozenset[int]], None],
    ) -> tuple[frozenset[int], frozenset[int]]:
        # Planned and sent on the loop (which owns the relay and the book); the executor's
        # thread waits between batches (``installed``), so that charon's socket never
        # holds more than a batch (feed.FEED_BATCH).
        plan = self._on_loop(lambda: self._plan_sync(fetched.ike_sas))
        if plan is None:
            return self._on_loop(self._charon_spis), frozenset()
        self._wait_for_watchdog()
        before = self._on_loop(self._charon_spis)
        # The segment goes passive first, also when nothing is new (a reclaim): charon took
        # it when no heartbeat came, and only a passive segment flips its IKE SAs when
        # activated (ha_segments.c).  Once per charon start or activation.
        self._on_loop(self._make_passive)
        if plan.first:
            # CHILD SAs added to held IKE SAs: an SA of ours with such an SPI goes first
            # (a hot follow installed it from the store before its IKE record came).
            make_room(plan.installs - before)
            self._on_loop(functools.partial(self._send_sync, plan, fetched.ike_sas))
            installed(plan.installs)
        for batch in plan.feeds:
            make_room(batch.child_spis - before)
            self._on_loop(functools.partial(self._send_feed, batch, fetched.ike_sas))
            installed(batch.child_spis)
        if not plan.empty:
            log.info("feed-charon: %d IKE SAs fed whole (%d SAs, %d batches), %d updated, "
                     "%d deleted", sum(len(b.ike_sas) for b in plan.feeds),
                     sum(len(b.child_spis) for b in plan.feeds), len(plan.feeds),
                     len(plan.updated), len(plan.deleted))  # fmt: skip
        return self._on_loop(self._charon_spis), plan.removes

    def _plan_sync(self, records: Mapping[IkeSpis, IkeSaRecord]) -> CharonSync | None:
        """What to send (None: the book is not complete, so nothing goes, not even the
        segment switch)."""
        if not self.book.complete:
            # charon may hold some of them already: a second IKE_ADD of one would give
            # charon two IKE SAs with one ID.  Said once (a hot standby asks every poll).
            (log.warning if not self._said_incomplete else log.debug)(
                "feed-charon: this daemon has not seen charon start, so does not know which "
                "IKE SAs charon holds; feeding none (start the daemon before charon)"
            )
            self._said_incomplete = True
            return None
        # Only what charon was fed (and holds still) is changed or deleted; the IKE SAs it
        # made itself (a client's, on the active node) are its own.
        self._fed = {k: v for k, v in self._fed.items() if k in self.book.sas}
        held = {k: self.book.sas[k] for k in self._fed}
        others = self.book.sas.keys() - held.keys()
        refeed = self._refeed & held.keys()
        self._refeed = set()
        plan = plan_sync(held, self._fed, records, refeed=refeed, others=others)
        for spis, why in plan.unreadable:
            log.error("feed-charon: stored IKE SA %s not fed: %s", format_spis(spis), why)
        self.unreadable += len(plan.unreadable)
        return plan

    def refeed(self, spis: frozenset[int]) -> None:
        """charon does not hold these CHILD SAs it was fed: their IKE SAs are deleted and fed
        whole at the next feed (from the executor's thread)."""
        self._on_loop(functools.partial(self._mark_refeed, spis))

    def _mark_refeed(self, spis: frozenset[int]) -> None:
        owners = {k for k, sa in self.book.sas.items() if child_kernel_spis(sa) & spis}
        for owner in owners:
            log.warning("feed-charon: charon lacks CHILD SAs of IKE SA %s; feeding it again",
                        format_spis(owner))  # fmt: skip
        self._refeed |= owners

    def _wait_for_watchdog(self) -> None:
        """Until charon's plugin has taken every segment after its start (in the executor's
        thread): a segment made passive before that would be taken again, and with it the
        IKE SAs fed, as if this node were active."""
        started = self.relay.last_resync
        if started is not None:
            time.sleep(max(0.0, started + WATCHDOG_GRACE_S - time.monotonic()))

    def _segment_state(self) -> tuple[int, int] | None:
        """What makes a passive segment stay so: no charon start, no SEGMENT_TAKE of charon's
        since (None: charon's watchdog may still take it)."""
        started = self.relay.last_resync
        if started is not None and time.monotonic() < started + WATCHDOG_GRACE_S:
            return None
        return self.relay.resyncs, self.relay.segment_takes

    def _make_passive(self) -> None:
        now = self._segment_state()
        if now is not None and self._passive_since == now:
            return
        self.relay.send([segment_passive()])
        self._passive_since = now

    def _tell(self, messages: Sequence[HaMessage]) -> None:
        """Send charon ``messages``; the book takes them too, so it holds what charon does."""
        self.relay.send(messages)
        for message in messages:
            self.book.handle(message)

    def _send_sync(self, plan: CharonSync, records: Mapping[IkeSpis, IkeSaRecord]) -> None:
        self._tell(plan.first)
        for spis in plan.updated:
            self._fed[spis] = records[spis].record
        for spis in plan.deleted:
            self._fed.pop(spis, None)
        self.retired += len(plan.deleted)

    def _send_feed(self, batch: CharonFeed, records: Mapping[IkeSpis, IkeSaRecord]) -> None:
        self._tell(batch.messages)
        for spis in batch.ike_sas:
            self._fed[spis] = records[spis].record
        self.fed += len(batch.ike_sas)

    def activate(self) -> None:
        self._on_loop(self._activate)

    def _activate(self) -> None:
        self.relay.send([segment_active()])
        self._passive_since = None
        self._fed.clear()  # charon's own from now on: it rekeys and changes them itself

    def retire(self) -> frozenset[int]:
        return self._on_loop(self._retire)

    def _retire(self) -> frozenset[int]:
        spis = self._charon_spis()
        deletes = [
            HaMessage(HaMessageType.IKE_DELETE, (ike_id,))
            for sa in self.book.sas.values()
            if (ike_id := sa.add.get(HaAttributeType.IKE_ID)) is not None
        ]
        self._tell([segment_passive(), *deletes])
        self._passive_since = self._segment_state()
        self._fed.clear()
        self.retired += len(deletes)
        if deletes:
            log.info("retire-charon: charon deletes its %d IKE SAs", len(deletes))
        return spis

    def _charon_spis(self) -> frozenset[int]:
        return frozenset().union(*(child_kernel_spis(sa) for sa in self.book.sas.values()))

    def close(self) -> None:
        self.relay.close()

    # -- the safety net ([ike] safety_net), in a worker thread -----------------------------

    def safety_net(self, charon: CharonVici, still_active: Callable[[], bool]) -> Verdict | None:
        """Check charon's IKE SAs against the book and initiate the missing ones (while
        ``still_active()``); None if charon could not be asked (logged and counted)."""
        with self._safety_lock:  # one check at a time: they share the counters
            return self._safety_net(charon, still_active)

    def _safety_net(self, charon: CharonVici, still_active: Callable[[], bool]) -> Verdict | None:
        self.safety["checks"] += 1
        before = self._on_loop(self._expected)
        try:
            held = charon.list_sas()
            connections = charon.list_conns()
        except SafetyNetError as exc:
            log.error("safety net: charon's IKE SAs not checked: %s", exc)
            self.safety["errors"] += 1
            self.safety["last"] = {"error": str(exc)}
            return None
        # Only what the book held before and after the listing: an IKE or CHILD SA made,
        # rekeyed or deleted while charon answered is not one charon lacks.
        verdict = check(steady(before, self._on_loop(self._expected)), held, connections)
        for spis, state in verdict.not_established:
            log.error("safety net: charon holds IKE SA %s %s, not ESTABLISHED",
                      format_spis(spis), state)  # fmt: skip
        for spis in verdict.missing:
            log.error("safety net: charon does not hold IKE SA %s", format_spis(spis))
        for spis, spi in verdict.children_missing:
            log.error("safety net: charon holds IKE SA %s without its CHILD SA 0x%08x",
                      format_spis(spis), spi)  # fmt: skip
        for spis, why in verdict.lost:
            log.error("safety net: IKE SA %s is not set up again: %s", format_spis(spis), why)
        initiated = failed = 0
        for item in verdict.initiate if self.config.reinitiate else ():
            if not still_active():
                log.warning("safety net: the node left ACTIVE; no more initiates")
                break
            what = f"{item.connection}/{item.child or '(IKE SA only)'}"
            try:
                charon.initiate(item.connection, item.child, INITIATE_TIMEOUT_MS)
            except SafetyNetError as exc:
                failed += 1
                log.error("safety net: initiating %s (for IKE SA %s) failed: %s",
                          what, format_spis(item.spis), exc)  # fmt: skip
            else:
                initiated += 1
                log.warning("safety net: %s initiated again (for IKE SA %s)",
                            what, format_spis(item.spis))  # fmt: skip
        counts = verdict.counts()
        self.safety["initiated"] += initiated
        self.safety["initiate_failed"] += failed
        self.safety["lost"] += len(verdict.lost)
        self.safety["last"] = {**counts, "initiated": initiated, "initiate_failed": failed,
                               "error": None}  # fmt: skip
        (log.info if verdict.clean else log.warning)(
            "safety net: %s", ", ".join(f"{k} {v}" for k, v in counts.items())
        )
        return verdict

    def _expected(self) -> list[ExpectedIkeSa]:
        return [expected_from(state) for state in self.book.sas.values()]

    def _on_events(self, events: list[IkeEvent]) -> None:
        lost = [e.lost for e in events if isinstance(e, IkeSaRemoved) and e.lost is not None]
        if lost and self.publishing and self.config.feed:
            # charon crashed and came back: its peers still hold these IKE SAs, and so does
            # the store, which keeps them (no deletion is published) for the answer.
            for state in lost:
                self.orphaned |= child_kernel_spis(state)
                if state.config_name is not None:
                    self._lost_connections.add(state.config_name)
            self.restarts += 1
            log.error(
                "charon restarted without deleting its %d IKE SAs (a crash?); giving them "
                "back from the store", len(lost),
            )  # fmt: skip
            events = [e for e in events if not (isinstance(e, IkeSaRemoved) and e.lost)]
            if self.on_restart is not None:
                self.on_restart()
        if self.publishing:
            self.publisher.on_events(events)
            self._wake()

    def orphans(self) -> frozenset[int]:
        return self._on_loop(lambda: self.orphaned)

    def forget_orphans(self, spis: frozenset[int]) -> None:
        self._on_loop(functools.partial(self._forget_orphans, spis))

    def _forget_orphans(self, spis: frozenset[int]) -> None:
        self.orphaned -= spis
        if not self.orphaned:
            self._lost_connections.clear()

    def forget_lost(self) -> None:
        """The node is no longer active: nothing of a restarted charon's is to be given
        back by it (on the loop)."""
        self._lost_connections.clear()
        self.orphaned = frozenset()

    def lost_connections(self) -> set[str]:
        """The connections of the IKE SAs a restarted charon lost (on the loop)."""
        return set(self._lost_connections)

    # -- on the loop ----------------------------------------------------------------

    def set_publishing(self, publishing: bool) -> None:
        """Publishing starts or stops (the daemon's loop; the resync follows)."""
        self.publishing = publishing
        self.publisher.clear()
        # Once per daemon: charon's answer makes the book hold what charon holds.
        if publishing and not self.book.complete and not self.resyncs_asked:
            self.ask_resync()

    def ask_resync(self) -> None:
        """Ask charon for every IKE SA it holds (it also rekeys each CHILD SA)."""
        log.warning(
            "charon's IKE SAs from before this daemon started are not known; asking charon "
            "to resync them (charon rekeys every CHILD SA to send them)"
        )
        try:
            self.relay.send([HaMessage(HaMessageType.RESYNC, (_SEGMENT_ATTR,))])
        except RuntimeError:  # the relay is not listening yet: the resync waits for it
            log.warning("the ha relay is not started; charon is asked when it starts")
            return
        self.resyncs_asked += 1

    # -- in the flusher's worker thread ------------------------------------------------

    def take(self) -> IkeBatch:
        batch = self.publisher.take()
        self.published += len(batch.puts) + len(batch.removed)
        return batch

    def plan_resync(
        self, stored: Mapping[IkeSpis, IkeSaRecord], kernel_spis: Collection[int]
    ) -> IkeBatch:
        # dict() copies under the GIL: the loop thread may change the book meanwhile.
        return plan_ike_resync(dict(self.book.sas), stored, self.book.complete, kernel_spis)

    def silent_s(self) -> float | None:
        """Seconds since charon's plugin last sent anything (None: never)."""
        last = self.relay.last_received
        return None if last is None else max(0.0, time.monotonic() - last)

    def status(self) -> dict[str, Any]:
        """The status file's ``ike`` (docs/operations.md)."""
        silent = self.silent_s()
        return {
            "daemon": self.config.daemon,
            "relay": str(self.config.addresses.relay),
            "charon": str(self.config.addresses.charon),
            "ike_sas": len(self.book.sas),
            "child_sas": sum(len(s.all_children) for s in self.book.sas.values()),
            "complete": self.book.complete,
            "received": self.relay.received,
            "dropped": dict(self.relay.drops),
            "ignored": dict(self.book.ignored),
            "published": self.published,
            "pending": len(self.publisher),
            "resyncs_asked": self.resyncs_asked,
            "feed": self.config.feed,
            "fed": self.fed,
            "retired": self.retired,
            "charon_restarts": self.restarts,
            "unreadable": self.unreadable,
            "silent_s": None if silent is None else round(silent, 3),
            "safety_net": dict(self.safety),
        }


_SEGMENT_ATTR = HaNumber(HaAttributeType.SEGMENT, SEGMENT)
