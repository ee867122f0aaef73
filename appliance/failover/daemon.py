"""The failover daemon: the asyncio adapter around ``SyncCore`` and ``PlanExecutor``.

Theory of operation
-------------------
- **Transitions.** The daemon reads keepalived's notify FIFO (in order) or,
  without one, the notify log the hook appends to (``vrrp_source``), and for
  each transition runs ``plan(role, state, mode)`` with the ``PlanExecutor``
  in a worker thread, one transition at a time. The role moves to
  ``role_for(state)`` only when the plan succeeded, so a repeated notify
  after a failure runs the plan again. After each transition it replaces the
  status file (``[failover].status_file``), which ``ipsec-ha notify`` waits
  on and ``ipsec-ha status`` shows.
- **Publishing** (active node). Every XFRM notification of the served
  namespace (SA, policy, async-event and expire groups) goes to
  ``SyncCore``; a flusher task sleeps until ``get_timer()`` and carries out
  ``pending_ops``: NEWAE thresholds on new SAs, SA_Stor to every store with
  that store's epoch, and full resyncs (dump the kernel, store it, delete
  from the store what the kernel no longer has). A full resync runs when
  publishing starts, when the kernel flushed, when events were lost, and
  when the store asks: it answers a counter update with NOT_FOUND (it lost
  the SA, e.g. restarted empty). A store that does not answer gets a resync
  of its own later (``RETRY_S``), while the others keep getting every
  change; a store that says our epoch is stale has a newer owner, and
  publishing to it stops.
- **Following** (hot standby): every ``follow_interval_s`` the daemon
  asks the store for the changes since the revision it holds (``Follower``,
  the change feed of protocol.md 5.3; the whole state only the first time,
  or when the store no longer holds those changes) and, when something
  changed, reconciles the kernel with its copy, outbound gated. A poll that
  brings nothing new leaves the kernel alone. A cold standby follows the
  same way into memory only: its takeover installs from the copy brought
  up to date instead of retrieving everything.
- **IKE state** (``[ike]``, ``ike_link``): the relay of charon's ``ha``
  plugin runs on the loop in every role; while publishing, the IKE SAs it
  reports go to every store beside the kernel state (the flusher), and a
  full resync makes a store's IKE SAs equal to the relay's book.  After a
  takeover that fed charon, the safety net (``[ike] safety_net``) asks
  charon through vici whether it holds them all, and initiates the missing
  ones it can (``IkeLink.safety_net``), in a task of its own.
- **Health** (``health``): every ``[failover].health_interval_s`` a worker
  thread asks each store what it holds for the server ID (its own clients,
  never under the kernel lock, so a takeover never waits on it); the
  results, the standby's last sync, what the kernel holds and the
  transition, takeover and store-operation counters go to ``DaemonHealth``,
  which the metrics collector reads at scrape time and the status file
  carries as ``health`` (``ipsec-ha status --ready`` judges it). With the
  nftables gate's lease (``gate_lease``) it also carries ``gate_lease``.

Blocking calls (netlink requests, the store client) run in worker threads;
the event reader and the flusher stay on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError
from appliance.failover.config import DaemonConfig
from appliance.failover.executor import (
    ExecutionError,
    ExecutionReport,
    ExecutorSettings,
    FollowedState,
    OutboundGate,
    PlanExecutor,
    StoreAccess,
    etimer_jiffies,
    kernel_hz,
    node_netns_addresses,
)
from appliance.failover.gate_lease import LeasedGate
from appliance.failover.health import DaemonHealth, StoreProbe, to_status
from appliance.failover.ike_link import IkeLink
from appliance.failover.ondemand_install import STATUS_INTERVAL_S, OnDemand
from appliance.failover.resync import plan_resync
from appliance.failover.sync import (
    DeleteEntries,
    FullResync,
    PutEntries,
    PutReplay,
    SetThresholds,
    SyncCore,
    SyncOp,
)
from appliance.failover.transitions import (
    CHARON_RESTARTED,
    FENCED,
    RECLAIM,
    Role,
    StandbyMode,
    Step,
    plan,
    role_for,
    with_charon,
)
from appliance.failover.vrrp_source import (
    Received,
    fifo_transitions,
    log_transitions,
    open_fifo,
)
from appliance.notify import VrrpState
from appliance.planner import Op, OpKind, apply_ops, is_gate
from appliance.store.base import (
    FetchCancelled,
    IkeSaRecord,
    IkeSpis,
    NotFoundError,
    StaleEpochError,
    StoreError,
)
from appliance.store.client import Retrieved
from appliance.store.follow import Follower
from appliance.strongswan.vici_client import CharonVici, wait_for_connections
from appliance.xfrm import constants as c
from appliance.xfrm.events import EventsOverrun, xfrm_events
from appliance.xfrm.types import XfrmError

log = logging.getLogger("ipsec_ha.daemon")


def write_status(path: Path, status: dict[str, Any], text: str | None = None) -> None:
    """Replace ``path`` atomically with ``status`` as JSON (mode 0600, directory 0700).

    ``text``: the JSON already encoded (``StatusEncoder``).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(status, sort_keys=True) if text is None else text)
    os.replace(tmp, path)


class StatusEncoder:
    """The status file's JSON, with the last plan's report encoded once.

    The report has an entry per SA moved (10,000 after a takeover of 10,000
    pairs) and changes only at a transition, while the health probe rewrites
    the file every ``health_interval_s``: only the rest is encoded again.
    """

    def __init__(self) -> None:
        self._report: object = None
        self._report_json = "null"

    def encode(self, status: dict[str, Any]) -> str:
        report = status.get("report")
        if report is not self._report:
            self._report, self._report_json = report, json.dumps(report, sort_keys=True)
        rest = json.dumps({k: v for k, v in status.items() if k != "report"}, sort_keys=True)
        return '{"report": ' + self._report_json + ("}" if rest == "{}" else ", " + rest[1:])


RETRY_S = 1.0
"""Wait before retrying a full resync after a store failure."""
FOLLOWER_WAIT_S = 2.0
"""How long a takeover waits for the hot standby's poll in flight to stop before it
fetches the whole state instead."""
MAX_FOLLOW_REST_S = 5.0
"""The longest rest between two follow cycles, however long the last one took."""
CHARON_CONFIG_WAIT_S = 60.0
"""How long the answer to a restarted charon waits for it to load the connections of the
IKE SAs it lost (swanctl --load-all runs after charon starts)."""
CHARON_RESTART_RETRY_S = 5.0
"""The wait before the answer to a restarted charon is tried again (it is, while the node
stays ACTIVE: outbound stays gated meanwhile)."""
SAFETY_NET_DELAY_S = 2.0
"""After a takeover, the wait before charon's IKE SAs are checked: charon flips the fed IKE
SAs at the activation it read last, and its dispatcher thread may still be at it."""

EVENT_GROUPS = (c.XFRMNLGRP_SA, c.XFRMNLGRP_POLICY, c.XFRMNLGRP_AEVENTS, c.XFRMNLGRP_EXPIRE)


class FailoverDaemon:
    """One served namespace, its stores, its role; see the module docstring."""

    def __init__(
        self,
        config: DaemonConfig,
        kernel: Any,
        stores: Sequence[Any],
        *,
        notify_log: Path,
        follow_interval_s: float = 1.0,
        follower_stores: Sequence[Any] = (),
        probe_stores: Sequence[Any] = (),
        gate: OutboundGate | None = None,
    ) -> None:
        self.config = config
        self.kernel = kernel
        self.stores = list(stores)
        self.access = StoreAccess(self.stores)
        self.follower = Follower(follower_stores) if follower_stores else None
        """The hot standby's copy of the stored state, over its own store clients: it
        fetches without the kernel lock, so a takeover never waits for a background
        fetch (clients are not thread-safe)."""
        self._follow_generation = 0
        """Moves at every start/stop of following: a fetch from before is stale."""
        self._charon_followed: tuple[int, Mapping[IkeSpis, IkeSaRecord]] | None = None
        """charon's starts and the IKE SAs at the last follow run (``_charon_behind``)."""
        self.probe_clients = list(probe_stores)
        """The health probe's own store clients (none: no probe runs)."""
        self.health = DaemonHealth()
        self._published_sas: set[tuple[int, int]] = set()
        self._published_policies: set[int] = set()
        """(SPI, protocol) of the SAs and indexes of the policies last published (active)."""
        self.notify_log = notify_log
        self.follow_interval_s = follow_interval_s
        self.role = Role.INIT
        self.core = SyncCore(config.sync.coalesce_ms / 1000)
        self.epochs: dict[str, int] = {}
        self.publishing = False
        self.following = False
        self.fenced = False
        """ACTIVE, but the stores refuse our epoch: another node claimed (split brain)."""
        self.etimer = etimer_jiffies(config.sync.replay_timer_ms, kernel_hz())
        self._wake = asyncio.Event()
        self.ike = IkeLink(config.ike, config.netns, self._wake.set) if config.ike else None
        """``[ike]``: the relay of charon's ha plugin (None: kernel SAs only)."""
        self.feeds_charon = self.ike is not None and self.ike.config.feed
        """``[ike] feed``: the plans hand charon the stored IKE SAs (``with_charon``)."""
        self.vici: CharonVici | None = (
            CharonVici(self.ike.config.vici, config.netns)
            if self.ike is not None and self.feeds_charon
            else None
        )
        """``[ike] feed``: charon's vici, asked after each takeover (``_safety_net``) and
        before a restarted charon is given its IKE SAs back (``_answer_charon_restart``)."""
        self._background: set[asyncio.Task[None]] = set()
        """Tasks off the transitions' path: the safety net, the answer to a charon restart."""
        self._restart_answer: asyncio.Task[None] | None = None
        self._plans = 0
        """Plans run (transitions and the others): background work started after one stops
        acting when another has run since."""
        self._stopping = False
        if self.ike is not None and self.feeds_charon:
            self.ike.on_restart = self._charon_restarted
        self.executor = PlanExecutor(
            kernel,
            self.access,
            self,
            ExecutorSettings(
                server_id=config.node.server_id,
                oseq_jump=config.oseq_jump,
                timeout_s=config.failover.notify_timeout_s,
                replay_seq_thresh=config.sync.replay_seq_thresh,
                etimer_jiffies=self.etimer,
            ),
            local_addresses=node_netns_addresses(config.netns),
            gate=gate,
            charon=self.ike if self.feeds_charon else None,
        )
        self._publishing_changed = asyncio.Event()
        """Set (from any thread, through the loop) when publishing starts or stops."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kernel_lock = asyncio.Lock()
        """Serialises the worker threads: kernel requests and the (not thread-safe) store
        clients."""
        # On-demand SA retrieval ([ondemand]): opened by run(); see ondemand_install.
        self.ondemand: OnDemand | None = None
        self.ondemand_factory: Callable[[DaemonConfig, Callable[..., bool]], OnDemand] = (
            OnDemand.from_config
        )
        self._status: dict[str, Any] | None = None
        self._status_encoder = StatusEncoder()

    # -- SyncLoops (called by the executor, in its worker thread) ----------------

    def start_publishing(self, epochs: dict[str, int]) -> None:
        self.epochs = dict(epochs)
        self.publishing = True
        self._ike_publishing(True)
        if self._loop is None:  # no event loop to subscribe from (tests): resync at once
            self.core.request_resync("publishing started", time.monotonic())
        else:  # _events subscribes, then asks for the resync
            self._loop.call_soon_threadsafe(self._publishing_changed.set)

    def stop_publishing(self) -> None:
        # Flush what is pending (counters above all) before going quiet.
        self.apply_ops(self.core.pending_ops(float("inf")))
        self.publish_ike()
        self.publishing = False
        self._ike_publishing(False)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._publishing_changed.set)

    def _ike_publishing(self, publishing: bool) -> None:
        if self.ike is None:
            return
        if self._loop is None:
            self.ike.set_publishing(publishing)
        else:  # the relay and its book live on the loop
            self._loop.call_soon_threadsafe(self.ike.set_publishing, publishing)

    def start_following(self) -> None:
        self.following = True
        self._follow_generation += 1

    def stop_following(self) -> None:
        self.following = False
        self._follow_generation += 1

    def followed_state(self, server_id: str) -> FollowedState | None:
        """The follower's copy, brought up to date now (blocking; at a hot takeover).

        The plan stopped following first, so a poll in flight ends at its next
        page; this waits for it (``FOLLOWER_WAIT_S`` at most), then asks the
        copy's store for the changes since, through the plan's own clients
        (the follower's are not thread-safe). None, and the plan fetches the
        whole state, when there is no copy or that store does not answer.
        """
        follower = self.follower
        if follower is None or not follower.lock.acquire(timeout=FOLLOWER_WAIT_S):
            return None
        try:
            copy = follower.state
            if copy is None or copy.server_id != server_id:
                return None
            client = next((c for c in self.stores if c.server == copy.source), None)
            if client is None:
                return None
            try:
                changed = copy.catch_up(client)
            except StoreError as exc:
                log.info("takeover: the hot standby's copy cannot be brought up to date "
                         "(%s); fetching the whole state", exc)  # fmt: skip
                return None
            if changed is None:
                return None
            state = copy.retrieved()
            # By identity: a poll whose follow run a transition cancelled changed the copy
            # but not the kernel, and the catch-up here then finds nothing new.
            return FollowedState(state, self.executor.kernel_holds(state))
        finally:
            follower.lock.release()

    # -- store operations (worker thread) -----------------------------------------

    def _to_stores(self, what: str, call: Any, only: frozenset[str] | None = None) -> None:
        for client in self.stores:
            epoch = self.epochs.get(client.server)
            if epoch is None or (only is not None and client.server not in only):
                continue
            try:
                call(client, epoch)
            except StaleEpochError as exc:
                self.health.count_sync(client.server, what, "stale_epoch")
                log.error("%s: store %s has a newer owner (%s); not publishing to it", what,
                          client.server, exc)  # fmt: skip
                del self.epochs[client.server]
            except NotFoundError as exc:
                self.health.count_sync(client.server, what, "not_found")
                log.warning("%s: store %s asks for a resync (%s)", what, client.server, exc)
                self.core.request_resync(
                    f"store {client.server}: {exc}", time.monotonic(), client.server
                )
            except StoreError as exc:
                self.health.count_sync(client.server, what, "failed")
                log.warning("%s: store %s failed (%s); resync later", what, client.server, exc)
                self.core.request_resync(
                    f"store {client.server} failed", time.monotonic() + RETRY_S, client.server
                )
            else:
                self.health.count_sync(client.server, what, "ok")

    def apply_ops(self, ops: Sequence[SyncOp]) -> None:
        """Carry out the core's operations (blocking)."""
        sid = self.config.node.server_id
        # Thresholds touch only the kernel: one pipelined batch for all of them
        # (a resync of 10,000 pairs asks for 20,000).
        self._set_thresholds([op for op in ops if isinstance(op, SetThresholds)])
        for op in ops:
            if isinstance(op, SetThresholds) or not self.publishing:
                continue
            elif isinstance(op, FullResync):
                log.info("full resync of %s: %s",
                         "every store" if op.stores is None else ", ".join(sorted(op.stores)),
                         op.reason)  # fmt: skip
                self.full_resync(op.stores)
            elif isinstance(op, PutEntries):
                self._to_stores(
                    "put", lambda cl, ep, op=op: cl.put_entries(sid, ep, op.sad, op.spd)
                )
                self._published(add=op)
            elif isinstance(op, PutReplay):
                self._to_stores("replay", lambda cl, ep, op=op: cl.update_replay(sid, ep, op.sas))
            elif isinstance(op, DeleteEntries):
                self._to_stores(
                    "delete",
                    lambda cl, ep, op=op: cl.delete(sid, ep, op.sas, op.policy_indexes),
                )
                self._published(remove=op)

    def publish_ike(self) -> None:
        """Send the IKE SA changes the relay reported since the last call (blocking)."""
        if self.ike is None or not self.publishing:
            return
        batch = self.ike.take()
        if batch:
            sid = self.config.node.server_id
            self._to_stores(
                "ike", lambda cl, ep: cl.put_ike_sas(sid, ep, batch.puts, batch.removed)
            )

    def _published(
        self, *, add: PutEntries | None = None, remove: DeleteEntries | None = None
    ) -> None:
        """Keep the count of what this node publishes (the active node's held SAs/policies)."""
        if add is not None:
            self._published_sas.update((sa.spi, sa.proto) for sa in add.sad)
            self._published_policies.update(p.index for p in add.spd)
        if remove is not None:
            self._published_sas.difference_update(remove.sas)
            self._published_policies.difference_update(remove.policy_indexes)
        self.health.record_held(len(self._published_sas), len(self._published_policies))

    def _set_thresholds(self, ops: Sequence[SetThresholds]) -> None:
        if not ops:
            return
        replay_thresh, etimer_thresh = self.config.sync.replay_seq_thresh, self.etimer
        batch = [
            Op(
                OpKind.SET_THRESHOLDS,
                dataclasses.replace(
                    op.sa, replay_thresh=replay_thresh, etimer_thresh=etimer_thresh
                ),
            )
            for op in ops
        ]
        try:
            failures = apply_ops(self.kernel, batch)
        except XfrmError as exc:
            log.warning("thresholds of %d SAs not set: %s", len(batch), exc)
            return
        if failures:  # an SA may be gone already
            log.warning(
                "thresholds of %d of %d SAs not set; first: %s",
                len(failures),
                len(batch),
                failures[0].message,
            )

    def full_resync(self, stores: frozenset[str] | None = None) -> None:
        """Make every store (or only ``stores``) equal to the kernel (blocking).

        Only some stores: the others got every change, and no event was lost, so
        the kernel's thresholds stay as they are set.
        """
        sid = self.config.node.server_id
        sad = self.kernel.dump_sad()
        spd = [p for p in self.kernel.dump_spd() if not is_gate(p)]
        kernel_pols = {p.index for p in spd}
        kernel_spis = {sa.spi for sa in sad}

        def resync(client: Any, epoch: int) -> None:
            # Only the difference: a resync that failed part-way is finished by the next
            # one instead of started again (see failover.resync). A store with a newer
            # owner says so here, even when there is nothing to send.
            client.check_epoch(sid, epoch)
            stored = client.get_server(sid)
            plan = plan_resync(sad, spd, stored.sad, stored.spd)
            log.info(
                "resync of store %s: %d SAs and %d policies to store, %d counters to update, "
                "%d SAs and %d policies to delete", client.server, len(plan.put_sad),
                len(plan.put_spd), len(plan.replay_only), len(plan.stale_sas),
                len(plan.stale_policies),
            )  # fmt: skip
            if plan.put_sad or plan.put_spd:
                client.put_entries(sid, epoch, plan.put_sad, plan.put_spd)
            if plan.replay_only:
                client.update_replay(sid, epoch, plan.replay_only)
            if plan.stale_sas or plan.stale_policies:
                client.delete(sid, epoch, plan.stale_sas, plan.stale_policies)
            if self.ike is not None:
                ike = self.ike.plan_resync(stored.ike_sas, kernel_spis)
                log.info("resync of store %s: %d IKE SAs to store, %d to delete",
                         client.server, len(ike.puts), len(ike.removed))  # fmt: skip
                if ike:
                    client.put_ike_sas(sid, epoch, ike.puts, ike.removed)

        self._to_stores("resync", resync, only=stores)
        self.core.resynced(sad, time.monotonic())
        self._published_sas = {(sa.spi, sa.proto) for sa in sad}
        self._published_policies = set(kernel_pols)
        self.health.record_held(len(self._published_sas), len(self._published_policies))
        if stores is None:
            self._set_thresholds([SetThresholds(sa) for sa in sad])

    # -- tasks -------------------------------------------------------------------

    async def _events(self) -> None:
        """Follow XFRM notifications, but only while publishing.

        A node that does not publish does not listen: a hot standby's
        follower installs thousands of SAs, and decoding their notifications
        on this loop delayed the reading of keepalived's FIFO (the lab's hot
        standby of 10,000 pairs read MASTER 36 s late). Each publishing
        period subscribes first and only then asks for the full resync, so
        no change between the dump and the subscription is missed.
        """
        while True:
            self._publishing_changed.clear()
            if not self.publishing:
                await self._publishing_changed.wait()
                continue
            reader = asyncio.create_task(self._read_events())
            changed = asyncio.create_task(self._publishing_changed.wait())
            try:
                await asyncio.wait({reader, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (reader, changed):
                    task.cancel()
                await asyncio.gather(reader, changed, return_exceptions=True)
            error = None if reader.cancelled() else reader.exception()
            if error is not None:
                raise error

    async def _read_events(self) -> None:
        def subscribed() -> None:
            self.core.request_resync("publishing started", time.monotonic())
            self._wake.set()

        while True:
            try:
                async for event in xfrm_events(
                    self.config.netns, EVENT_GROUPS, subscribed=subscribed
                ):
                    self.core.on_event(event, time.monotonic())
                    self._wake.set()
            except EventsOverrun as exc:
                self.core.request_resync(str(exc), time.monotonic())
                self._wake.set()

    async def _flusher(self) -> None:
        while True:
            timer = self.core.get_timer()
            timeout = None if timer is None else max(0.0, timer - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            ops = self.core.pending_ops(time.monotonic())
            ike = self.ike is not None and self.publishing and len(self.ike.publisher) > 0
            if ops or ike:
                async with self._kernel_lock:
                    await asyncio.to_thread(self._flush, ops)

    def _flush(self, ops: Sequence[SyncOp]) -> None:
        self.apply_ops(ops)
        self.publish_ike()

    async def _follower(self) -> None:
        apply = [Step.RECONCILE_STATE, Step.RESTORE_INBOUND_REPLAY]
        if self.feeds_charon:  # a hot standby's charon holds the stored IKE SAs, passive
            apply.insert(0, Step.FEED_CHARON)
        last_cycle = 0.0
        while True:
            # Rest as long as the last cycle took (up to MAX_FOLLOW_REST_S): a cycle that
            # brings many changes (or a whole retrieval) costs the store and the CPU what
            # they also owe others; but a standby catching up must not idle half the time.
            await asyncio.sleep(max(self.follow_interval_s, min(last_cycle, MAX_FOLLOW_REST_S)))
            in_memory = not self.following and self._cold_standby_follows()
            if not self.following and not in_memory:
                continue
            started, started_unix = time.monotonic(), time.time()
            generation = self._follow_generation

            def overtaken(generation: int = generation) -> bool:
                return self._follow_generation != generation

            fetched = None
            changed = True
            try:
                if self.follower is not None:
                    # Outside the kernel lock: a takeover cancels it between pages.
                    poll = await asyncio.to_thread(
                        self.follower.poll, self.config.node.server_id, overtaken
                    )
                    fetched, changed = poll.state, poll.changed
                    result = "whole" if poll.full else "changes" if changed else "unchanged"
                    self.health.record_poll(result, poll.revision)
                if in_memory:
                    # Cold: the copy is all; its takeover installs from it (fetch-state).
                    last_cycle = time.monotonic() - started
                    continue
                async with self._kernel_lock:
                    if overtaken():
                        continue  # a transition ran meanwhile: this fetch is stale
                    if (
                        fetched is None
                        or not self.executor.kernel_holds(fetched)
                        or self._charon_behind(fetched)
                    ):
                        actions = apply if fetched is not None else [Step.FETCH_STATE, *apply]
                        # Read before the run: a charon start during it is not fed by it.
                        charon = None
                        if fetched is not None and self.ike is not None:
                            charon = (self.ike.relay.resyncs, fetched.ike_sas)
                        held = await asyncio.to_thread(self._follow_once, actions, fetched)
                        if charon is not None:
                            self._charon_followed = charon
                    else:
                        held = None  # nothing new: the kernel holds what it held
                # In step with the store as of the fetch's start, holding this much of it.
                self.health.record_sync(started, started_unix)
                if held is not None:
                    self.health.record_held(*held)
            except FetchCancelled:
                continue
            except StoreError as exc:
                log.warning("hot standby: no store answered: %s", exc)
            except ExecutionError as exc:
                log.warning("hot standby: %s", exc)
            last_cycle = time.monotonic() - started

    def _charon_behind(self, fetched: Retrieved) -> bool:
        """A hot standby's fed charon lacks what a follow run would give it: it started
        again since (its RESYNC: it holds nothing), or the copy's IKE SAs changed (by
        identity; they change without the kernel state, in an IKE rekey)."""
        if self.ike is None or not self.feeds_charon:
            return False
        followed = self._charon_followed
        return (
            followed is None
            or followed[0] != self.ike.relay.resyncs
            or followed[1] is not fetched.ike_sas
        )

    def _cold_standby_follows(self) -> bool:
        """A cold standby keeps the store's state in memory (not in its kernel): its
        takeover then installs from the copy brought up to date, not from a bulk SA_Retr."""
        return (
            self.follower is not None
            and self.config.failover.mode is StandbyMode.COLD
            and self.role is Role.STANDBY
        )

    def _follow_once(self, actions: list[Step], fetched: Any) -> tuple[int, int] | None:
        """One follow run (blocking); what the kernel then holds of the fetched state."""
        self.executor.run(actions, fetched=fetched)
        return self.executor.held_of_fetched()

    def check_ownership(self) -> None:
        """Probe every store we publish to with our epoch (blocking); see ``_owner_watch``."""
        sid = self.config.node.server_id
        self._to_stores("ownership", lambda cl, ep: cl.check_epoch(sid, ep))

    async def _owner_watch(self) -> None:
        """Split brain: notice a newer owner, gate outbound, and try to take over again.

        While publishing, every ``fence_check_ms`` the stores check our epoch;
        a store that refuses it is dropped from ``epochs`` (``_to_stores``).
        With none left while ACTIVE, the node is fenced: ``FENCED`` runs at
        once, then ``RECLAIM`` every ``reclaim_interval_s`` for as long as
        keepalived keeps this node MASTER (``transitions``).
        """
        check_s = self.config.failover.fence_check_ms / 1000
        last_reclaim = 0.0
        while True:
            await asyncio.sleep(check_s)
            if self.role is not Role.ACTIVE:
                self.fenced = False
                continue
            if self.publishing and not self.fenced:
                # The store clients are not thread-safe: one worker at a time uses them.
                async with self._kernel_lock:
                    await asyncio.to_thread(self.check_ownership)
                if self.epochs:
                    continue
                log.error("fenced: every store has a newer owner of %s; gating outbound",
                          self.config.node.server_id)  # fmt: skip
                self.fenced = True
                fenced_at = time.monotonic()
                await self._run_plan(list(FENCED), "fenced", fenced_at)
                self._write_status(VrrpState.MASTER, fenced_at, ok=True)
                last_reclaim = time.monotonic()
            elif self.fenced and time.monotonic() - last_reclaim >= (
                self.config.failover.reclaim_interval_s
            ):
                last_reclaim = time.monotonic()
                if await self._run_plan(list(RECLAIM), "reclaim", last_reclaim):
                    self.fenced = False
                    log.warning("reclaimed ownership of %s", self.config.node.server_id)
                    self._write_status(VrrpState.MASTER, last_reclaim, ok=True)
                    self._start_safety_net()  # a reclaim feeds charon as a takeover does

    def _plan_for_node(self, actions: list[Step]) -> list[Step]:
        """``actions`` as this node runs them (with its charon's steps, if it feeds one)."""
        return with_charon(actions) if self.feeds_charon else actions

    async def _run_plan(
        self, actions: list[Step], what: str, at: float, only_if: Callable[[], bool] | None = None
    ) -> bool | None:
        """Run a plan outside VRRP (fenced, reclaim, charon restart); counted as a transition
        of state ``what`` (upper case).  With ``only_if``, checked once the kernel lock is
        held, the plan runs only if it is still wanted (None if not)."""
        actions = self._plan_for_node(actions)
        async with self._kernel_lock:
            if only_if is not None and not only_if():
                return None
            self._plans += 1
            try:
                report = await asyncio.to_thread(self.executor.run, actions, at)
            except ExecutionError as exc:
                log.error("%s failed: %s", what, exc)
                self.health.record_transition(what.upper(), ok=False)
                return False
        self.health.record_transition(what.upper(), ok=True)
        log.info("%s", json.dumps({"plan": what, "report": report.to_dict()}))
        return True

    async def transition(self, state: VrrpState, received_at: float) -> bool:
        """Run the plan for ``state``; True if it completed. The status file says how it went."""
        actions = self._plan_for_node(plan(self.role, state, self.config.failover.mode))
        # A takeover: a MASTER that is to make a node that is not active active.
        takeover = role_for(state) is Role.ACTIVE and self.role is not Role.ACTIVE
        if not actions:
            self.health.record_transition(state.value, ok=True)
            self._write_status(state, received_at, ok=True)
            return True
        # A poll in flight (a cold standby's, or a hot one's before stop-following) ends
        # at its next page: the plan's fetch-state may want the follower's copy.
        self._follow_generation += 1
        async with self._kernel_lock:
            self._plans += 1
            try:
                report = await asyncio.to_thread(self.executor.run, actions, received_at)
            except ExecutionError as exc:
                log.error("%s -> %s failed: %s", self.role.value, state.value, exc)
                self.health.record_transition(state.value, ok=False)
                if takeover:
                    self.health.record_takeover(ok=False)
                self._write_status(state, received_at, ok=False, error=str(exc))
                return False
        log.info("%s", json.dumps({"transition": state.value, "from": self.role.value,
                                   "report": report.to_dict()}))  # fmt: skip
        self.role = role_for(state)
        self.health.record_transition(state.value, ok=True)
        if takeover:
            self._record_takeover(report, received_at)
            self._start_safety_net()
        elif self.role is not Role.ACTIVE and self.config.failover.mode is StandbyMode.COLD:
            self.health.record_held(0, 0)  # a cold standby holds nothing
        self._write_status(state, received_at, ok=True, report=report.to_dict())
        return True

    def _start_safety_net(self) -> None:
        """After a takeover: the check of charon's IKE SAs, off the transition's path."""
        if self.vici is None or self._loop is None or self.ike is None:
            return
        if not self.ike.config.safety_net:
            return
        self._spawn(self._safety_net(self._plans))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._loop is not None
        task = self._loop.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s failed: %s", task.get_coro().__qualname__, exc, exc_info=exc)  # type: ignore[union-attr]

    def _active_here(self) -> bool:
        """ACTIVE, not fenced, not stopping: background work for the active role may act."""
        return self.role is Role.ACTIVE and not self.fenced and not self._stopping

    # -- a restarted charon (docs/strongswan.md, "charon restarts") ----------------------

    def _charon_restarted(self) -> None:
        """On the loop: charon restarted and lost IKE SAs while this node was active."""
        if self._loop is None or (self._restart_answer and not self._restart_answer.done()):
            return  # the answer under way takes what this restart lost too
        self._restart_answer = self._spawn(self._answer_charon_restart())

    async def _answer_charon_restart(self) -> None:
        assert self.ike is not None and self.vici is not None
        wanted = self.ike.lost_connections()
        loaded = await asyncio.to_thread(
            wait_for_connections, self.vici, wanted, CHARON_CONFIG_WAIT_S, self._active_here
        )
        if not loaded and self._active_here():
            log.warning(
                "charon restart: charon has not loaded connection(s) %s after %g s; giving "
                "the IKE SAs back anyway (the answer fails, and is tried again, until they "
                "are loaded)", ", ".join(sorted(wanted)), CHARON_CONFIG_WAIT_S,
            )  # fmt: skip
        attempt = 0
        while True:
            attempt += 1
            done = await self._run_plan(
                list(CHARON_RESTARTED), "charon-restart", time.monotonic(), self._active_here
            )
            if done is None:
                log.warning("charon restart: the node is no longer active; not answered")
                self.ike.forget_lost()
                self._refresh_ike_status()
                return
            if done:
                log.warning("charon restart: its IKE SAs given back (attempt %d)", attempt)
                self._set_status_error(None)  # writes the status file, ike included
                self._start_safety_net()
                return
            # Outbound stays gated: traffic stops, and no ESP goes out with a counter the
            # new charon's SAs would repeat. Until it works, or the node leaves ACTIVE.
            self._set_status_error(
                f"charon restart: giving its IKE SAs back failed (attempt {attempt}); "
                "outbound stays gated (the daemon's log says why)"
            )
            await asyncio.sleep(CHARON_RESTART_RETRY_S)

    def _set_status_error(self, error: str | None) -> None:
        """Mark the status file failed with ``error`` (None: ok again), the rest as it is."""
        if self._status is None:
            return
        self._status["ok"], self._status["error"] = error is None, error
        self._refresh_ike_status()

    def _refresh_ike_status(self) -> None:
        """The status file's ``ike`` again, the rest as the last transition left it."""
        if self._status is None or self.ike is None:
            return
        self._status["ike"] = self.ike.status()
        self._status["health"] = self._health_status()
        with contextlib.suppress(OSError):
            self._save_status(self._status)

    async def _safety_net(self, generation: int) -> None:
        await asyncio.sleep(SAFETY_NET_DELAY_S)
        assert self.ike is not None and self.vici is not None

        def still_active() -> bool:
            # Any plan run since (a transition, a charon restart's answer) owns charon now.
            return self._active_here() and self._plans == generation

        if not still_active():
            return
        await asyncio.to_thread(self.ike.safety_net, self.vici, still_active)
        self._refresh_ike_status()

    def _record_takeover(self, report: ExecutionReport, received_at: float) -> None:
        timeline = [{"step": t.step, "monotonic": t.monotonic} for t in report.timeline]
        done = report.timeline[-1].monotonic if report.timeline else received_at
        self.health.record_takeover(
            ok=True,
            duration_s=max(0.0, done - received_at),
            timeline=timeline,
            received_unix=time.time() - (time.monotonic() - received_at),
        )

    def _write_status(
        self,
        state: VrrpState | None,
        received_at: float | None,
        *,
        ok: bool,
        error: str | None = None,
        report: dict[str, Any] | None = None,
    ) -> None:
        status = {
            "node": self.config.node.id,
            "server_id": self.config.node.server_id,
            "pid": os.getpid(),
            "mode": self.config.failover.mode.value,
            "role": self.role.value,
            "state": state.value if state else None,
            "ok": ok,
            "error": error,
            "received": received_at,
            "monotonic": time.monotonic(),
            "publishing": self.publishing,
            "following": self.following,
            "fenced": self.fenced,
            "report": report,
        }
        if self.ondemand is not None:
            status["ondemand"] = self.ondemand.status()
        if self.ike is not None:
            status["ike"] = self.ike.status()
        status["health"] = self._health_status()
        self._status = status
        try:
            self._save_status(status)
        except OSError as exc:
            log.warning("status file %s not written: %s", self.config.failover.status_file, exc)

    def _save_status(self, status: dict[str, Any]) -> None:
        """Replace the status file with ``status`` (OSError if it cannot be written)."""
        write_status(self.config.failover.status_file, status, self._status_encoder.encode(status))

    # -- health (docs/operations.md, "Monitoring and readiness") --------------------

    def _health_status(self) -> dict[str, Any]:
        return to_status(
            self.health.snapshot(),
            now_unix=time.time(),
            now_monotonic=time.monotonic(),
            standby=self.role is not Role.ACTIVE,
            interval_s=self.config.failover.health_interval_s,
            ready_max_lag_s=self.config.failover.ready_max_lag_s,
        )

    def probe_store(self, client: Any) -> bool:
        """Ask one store what it holds for our server ID (blocking); True if it answered.

        One Heartbeat server-list page (``StoreClient.server_stats``), never
        the state itself. The result goes to ``health``.
        """
        started = time.monotonic()
        try:
            held = client.server_stats(self.config.node.server_id)
        except (StoreError, OSError) as exc:
            probe = StoreProbe(False, str(exc), None, None, None, None, time.time())
        else:
            held = held or {}  # None: the store holds nothing for it
            probe = StoreProbe(
                True,
                None,
                time.monotonic() - started,
                int(held.get("epoch", 0)),
                int(held.get("sas", 0)),
                int(held.get("policies", 0)),
                time.time(),
            )
        self.health.record_probe(client.server, probe)
        return probe.up

    async def probe_stores(self) -> bool:
        """Probe every store at once, each client in its own worker thread; True if one answered.

        At once, so that stores that do not answer (each takes its timeouts)
        do not add up to a status file that looks stale.
        """
        answers = await asyncio.gather(
            *(asyncio.to_thread(self.probe_store, client) for client in self.probe_clients)
        )
        return any(answers)

    async def _health_probe(self) -> None:
        """Probe the stores and rewrite the status file's ``health`` every interval."""
        interval = self.config.failover.health_interval_s
        while True:
            started, started_unix = time.monotonic(), time.time()
            if self.probe_clients:
                answered = await self.probe_stores()
                if (
                    answered
                    and self.role is not Role.ACTIVE
                    and self.config.failover.mode is StandbyMode.COLD
                ):
                    # A cold standby fetches at takeover: reaching a store is being in step.
                    self.health.record_sync(started, started_unix)
            if self._status is not None:
                self._status["health"] = self._health_status()
                if self.ike is not None:
                    self._status["ike"] = self.ike.status()
                if isinstance(self.executor.gate, LeasedGate):
                    lease = self.executor.gate
                    self._status["gate_lease"] = {
                        "lease_s": lease.gate.lease_s,
                        "open": lease.is_open,
                        **lease.counters.to_dict(),
                    }
                try:
                    self._save_status(self._status)
                except OSError as exc:
                    log.warning("status file %s not written: %s",
                                self.config.failover.status_file, exc)  # fmt: skip
            await asyncio.sleep(max(0.0, started + interval - time.monotonic()))

    def _wanted(self, received: Received) -> bool:
        name = self.config.failover.vrrp_name
        return name is None or received.transition.name == name

    async def _notifications(self) -> None:
        fifo = self.config.failover.keepalived_fifo
        source = fifo_transitions(fifo) if fifo else log_transitions(self.notify_log)
        async for received in source:
            if self._wanted(received):
                await self.transition(received.transition.state, received.monotonic)

    # -- on-demand SA retrieval (docs/ondemand.md) ---------------------------------

    def _start_ondemand(self) -> None:
        # On any role: a gateway that receives ESP for an SPI it lacks must try SA_Retr
        # (draft 4.4), whether it is active, a standby given the VIP, or a cold spare.
        od = self.config.ondemand
        if od is None or not od.enabled:
            return
        self.ondemand = self.ondemand_factory(self.config, self._under_kernel_lock)
        self.ondemand.start()

    def _under_kernel_lock(self, step: Callable[[], bool]) -> bool:
        """Run an on-demand install (from a pool thread) under the lock that orders kernel
        work, so it never races a transition's install; False if the lock is not had in time."""
        od = self.config.ondemand
        assert self._loop is not None and od is not None

        async def locked() -> bool:
            async with self._kernel_lock:
                return await asyncio.to_thread(step)

        future = asyncio.run_coroutine_threadsafe(locked(), self._loop)
        try:
            return future.result(timeout=od.limits.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # the service has dropped the packets by now
            return False

    async def _ondemand_status(self) -> None:
        # Transitions are rare; the counters move with traffic.
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            if self.ondemand is None or self._status is None:
                continue
            current = self.ondemand.status()
            if current != self._status.get("ondemand"):
                self._status["ondemand"] = current
                with contextlib.suppress(OSError):
                    self._save_status(self._status)

    async def run_until_stopped(self) -> None:
        """``run`` until SIGTERM or SIGINT, then stop as a cancelled ``run`` does.

        Python's default SIGTERM ends the process at once: no ``finally`` would
        run, and the status file of a daemon that is gone would stay for the
        notify hook and the readiness check to read as alive until it aged.
        """
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        assert main is not None  # called from a task: asyncio.run's
        stops = (signal.SIGTERM, signal.SIGINT)
        for sig in stops:
            loop.add_signal_handler(sig, main.cancel)
        try:
            await self.run()
        except asyncio.CancelledError:
            log.warning("stopped by a signal; the kernel's SAs and policies stay as they are")
        except ApplianceError as exc:
            # The CLI prints the one line; the log keeps where it came from.
            log.error("the daemon stopped: %s", exc, exc_info=True)
            raise
        finally:
            for sig in stops:
                loop.remove_signal_handler(sig)

    async def run(self) -> None:
        """Run until cancelled."""
        self._loop = asyncio.get_running_loop()
        if self.config.failover.keepalived_fifo:
            # Fail now, loudly, if unusable; _events() opens the FIFO it reads itself.
            os.close(open_fifo(self.config.failover.keepalived_fifo))
        self._start_ondemand()
        if self.ike is not None:
            await self.ike.start()  # OSError (the address is taken) ends the daemon, named
        self._write_status(None, None, ok=True)
        tasks = [
            asyncio.create_task(coro)
            for coro in (
                self._events(),
                self._flusher(),
                self._follower(),
                self._notifications(),
                self._owner_watch(),
                self._health_probe(),
            )
        ]
        if self.ondemand is not None:
            tasks += [
                asyncio.create_task(self.ondemand.keep_held()),
                asyncio.create_task(self._ondemand_status()),
            ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            self._stopping = True  # background threads stop at their next check
            for task in (*tasks, *self._background):
                task.cancel()
            await asyncio.gather(*tasks, *self._background, return_exceptions=True)
            if self.ondemand is not None:
                self.ondemand.stop()
            if self.ike is not None:
                self.ike.close()
            # A hook must not wait on the status of a daemon that is gone.
            with contextlib.suppress(OSError):
                self.config.failover.status_file.unlink()
