"""The daemon's side of on-demand SA retrieval: fetch one SA by SPI, install it, hold its SPI.

Theory of operation
-------------------
``OnDemandService`` (``appliance.ondemand``) calls ``retrieve(spi, daddr)``
on a pool thread for each (destination, SPI) whose packets the guard trapped.
:class:`OnDemandInstaller` answers it:

1. **Lookup.** ``fetch_sa(spi, daddr, "esp")`` on each configured store in
   order (the SA comes with its latest stored counters); a store that fails
   or does not know the SA passes to the next. An SA stored under another
   server ID is refused: this daemon serves one (it would publish the SA
   under its own server ID and collide). So is a tunnel-mode SA stored
   without its policies (the owner stores them just after the SA):
   installed alone, it would decrypt into ``XfrmInNoPols``.
2. **Install** (``install_guard``: the daemon runs it under the lock that
   orders its kernel work, so a retrieval never races a transition's
   install). One batch (``planner.plan_sa_install``): the SA with its latest
   replay state, then its SPD entries. An outbound SA (``classify_outbound``)
   is advanced by the sequence jump first, as at a takeover; one whose
   counter would wrap is not installed (IKE must rekey). An SA or policy already present
   (``EEXIST``) is left alone: its counters have moved on.
3. **Hold** (:meth:`OnDemandInstaller.hold`, the service's ``on_retrieved``,
   once the queue held none of the SPI's packets: the core's ``Hold``). The
   SPI goes into the guard's ``held_spis`` set, so the next packets no
   longer trap. Not earlier: packets arriving after the SPI is held pass
   straight to XFRM, and if they overtook the ones still waiting in the
   queue the SA's replay window (often 32) would move past those and
   refuse them.

:meth:`OnDemandInstaller.sync_held` keeps ``held_spis`` equal to the SPIs
of the ESP SAs whose destination is a VIP (``[nft].vips``): whatever
installed them (a takeover, the hot-standby follower, IKE). The daemon runs
it at start, after XFRM SA notifications (debounced) and periodically.

The installer owns its own XFRM socket and store clients: the daemon's are
used from its worker threads and are not shared. Logs name SAs by SPI only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from appliance.errors import ApplianceError
from appliance.failover.seqjump import RekeyRequired
from appliance.model import Address, Mode, SadEntry, SpdEntry, classify_outbound
from appliance.planner import XfrmKernel, apply_ops, plan_sa_install
from appliance.store.base import NotFoundError, StoreError
from appliance.store.client import Retrieved, UndecodableEntryError

log = logging.getLogger("ipsec_ha.ondemand")

IPPROTO_ESP = 50
SYNC_DEBOUNCE_S = 0.5
"""Batch a burst of XFRM notifications into one held-set sync (and let an on-demand
``hold``, which follows its install's notification, go first)."""
SYNC_INTERVAL_S = 30.0
"""Re-check the held set this often even without notifications (lost events, manual edits)."""
PENDING_HOLD_S = 10.0
"""The held-set sync leaves an SPI installed on demand to ``hold`` for this long."""
STATUS_INTERVAL_S = 1.0
"""How often the daemon refreshes the counters in its status file."""


class SpiSource(Protocol):
    """What the installer needs of ``StoreClient``."""

    server: str

    def fetch_sa(self, spi: int, dst: str, proto: int | str = "esp") -> Retrieved: ...


class HeldSet(Protocol):
    """The guard's ``held_spis`` set (``NftHeldSet``; a fake in tests)."""

    def add(self, spis: Iterable[int]) -> None: ...

    def remove(self, spis: Iterable[int]) -> None: ...

    def list(self) -> list[int]: ...


class NftHeldSet:
    """``held_spis`` of the guard in ``netns`` through libnftables."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns

    def add(self, spis: Iterable[int]) -> None:
        # One libnftables session, not add_spis's two (it checks the table first): the
        # hold is on the path of a retrieval's packets; an absent table fails all the same.
        from appliance.nft import libnft
        from appliance.nft.render import SPI_SET, render_spi_addition

        libnft.run_batch(self.netns, render_spi_addition(spis), f"addition to set {SPI_SET}")

    def remove(self, spis: Iterable[int]) -> None:
        from appliance.nft import remove_spis

        remove_spis(self.netns, spis)

    def list(self) -> list[int]:
        from appliance.nft import list_spis

        return list_spis(self.netns)


InstallGuard = Callable[[Callable[[], bool]], bool]
"""Runs the install step (the daemon: under its kernel lock); returns what the step returns."""


def _direct(step: Callable[[], bool]) -> bool:
    return step()


@dataclass
class HeldSetCounters:
    """What ``sync_held`` did."""

    synced: int = 0
    """Held-set syncs run."""
    added: int = 0
    """SPIs added to ``held_spis``."""
    removed: int = 0
    """SPIs removed from it."""


@dataclass
class InstallCounters:
    """What the retrievals came to (the service counts packets; this counts SAs)."""

    installed: int = 0
    """SAs fetched and installed (or found already installed) and held."""
    already_present: int = 0
    """Of ``installed``: the kernel had the SA already (installed meanwhile)."""
    not_found: int = 0
    """No store knows the SA."""
    store_errors: int = 0
    """Store lookups that failed (timeout, refusal); the next store was asked."""
    foreign: int = 0
    """SAs stored under another server ID: refused."""
    incomplete: int = 0
    """Tunnel-mode SAs the store had without their policies: not installed (yet)."""
    rekey_required: int = 0
    """Outbound SAs whose counter would wrap with the jump: not installed."""
    install_failures: int = 0
    """The kernel refused the SA or one of its policies."""
    hold_failures: int = 0
    """The SPI could not be added to ``held_spis`` (the SA is installed all the same)."""
    undecodable: int = 0
    """The store holds the SA, but it, a policy of it or its replay state does not decode."""
    held: HeldSetCounters = dataclasses.field(default_factory=HeldSetCounters)
    """What the held-set syncs did."""

    def as_dict(self) -> dict[str, int]:
        """Flat, as the status file has them (``held_synced``, ``held_added``...)."""
        counts = dataclasses.asdict(self)
        held = counts.pop("held")
        return counts | {f"held_{name}": n for name, n in held.items()}


class OnDemandInstaller:
    """``retrieve(spi, daddr)`` for ``OnDemandService``, and the held-set sync; thread-safe."""

    def __init__(
        self,
        kernel: XfrmKernel,
        stores: Sequence[SpiSource],
        held: HeldSet,
        *,
        server_id: str,
        oseq_jump: int,
        vips: Iterable[Address],
        local_addresses: Callable[[], Sequence[Address]],
        replay_seq_thresh: int = 0,
        etimer_jiffies: int = 0,
        install_guard: InstallGuard = _direct,
    ) -> None:
        if not stores:
            raise ApplianceError("on-demand retrieval needs at least one store")
        self.kernel = kernel
        self.stores = list(stores)
        self.held = held
        self.server_id = server_id
        self.oseq_jump = oseq_jump
        self.vips = frozenset(vips)
        self.local_addresses = local_addresses
        self.replay_seq_thresh = replay_seq_thresh
        self.etimer_jiffies = etimer_jiffies
        self.install_guard = install_guard
        self.counters = InstallCounters()
        self._store_lock = threading.Lock()  # the clients are not thread-safe
        self._kernel_lock = threading.Lock()  # the XFRM socket and the held set
        self._counter_lock = threading.Lock()
        self._pending: dict[int, float] = {}  # SPI installed on demand -> when; not yet held
        self.clock: Callable[[], float] = time.monotonic

    # -- retrieval ---------------------------------------------------------------

    def retrieve(self, spi: int, daddr: str) -> bool:
        """Fetch and install the ESP SA (``daddr``, ``spi``); True when it is installed."""
        answer = self.lookup(spi, daddr)
        if answer is None:
            return False
        if answer.server_id != self.server_id:
            log.warning("SA spi 0x%08x dst %s belongs to server ID %s, not %s: not installed",
                        spi, daddr, answer.server_id, self.server_id)  # fmt: skip
            self._count("foreign")
            return False
        (sa,) = answer.sad
        if sa.mode == Mode.TUNNEL and not answer.spd:
            # Without its policies the kernel would decrypt and then drop every packet
            # (XfrmInNoPols), and nothing would fetch them later: try again after the
            # negative TTL, by when the owner has stored them.
            log.warning("SA spi 0x%08x dst %s: stored without its policies; not installed",
                        spi, daddr)  # fmt: skip
            self._count("incomplete")
            return False
        return self.install_guard(lambda: self.install(sa, answer.spd))

    def lookup(self, spi: int, daddr: str) -> Retrieved | None:
        """The first store's answer for the SA (with its latest counters); None when none has it.

        An SA whose entry, policies or replay state does not decode or apply
        counts as ``undecodable`` and the next store is asked: older counters
        could reuse sequence numbers.
        """
        with self._store_lock:
            for client in self.stores:
                try:
                    return client.fetch_sa(spi, daddr, "esp")
                except NotFoundError:
                    continue
                except UndecodableEntryError as exc:
                    log.warning("SA spi 0x%08x dst %s: store %s: %s; skipped",
                                spi, daddr, client.server, exc)  # fmt: skip
                    self._count("undecodable")
                    continue
                except StoreError as exc:
                    # The class only: a store's message may quote what it was sent.
                    log.warning("SA spi 0x%08x dst %s: store %s failed (%s)",
                                spi, daddr, client.server, type(exc).__name__)  # fmt: skip
                    self._count("store_errors")
        log.info("SA spi 0x%08x dst %s: no store has it", spi, daddr)
        self._count("not_found")
        return None

    def install(self, sa: SadEntry, spd: Sequence[SpdEntry]) -> bool:
        """Install ``sa`` with its policies (blocking); True on success; ``hold`` follows."""
        with self._kernel_lock:
            (outbound,) = classify_outbound([sa], spd, self.local_addresses())
            ops = plan_sa_install(
                sa,
                spd,
                outbound,
                self.oseq_jump,
                thresholds=(self.replay_seq_thresh, self.etimer_jiffies),
            )
            if isinstance(ops, RekeyRequired):
                log.warning("SA spi 0x%08x not installed: %s", sa.spi, ops.reason)
                self._count("rekey_required")
                return False
            failures = apply_ops(self.kernel, ops)
            present = any(f.index == 0 and f.errno == errno.EEXIST for f in failures)
            refused = [f for f in failures if f.errno != errno.EEXIST]
            if refused:
                log.warning("SA spi 0x%08x: the kernel refused %d of %d changes; first: %s",
                            sa.spi, len(refused), len(ops), refused[0].message)  # fmt: skip
                self._count("install_failures")
                return False
            if not outbound and sa.daddr in self.vips:
                self._pending[sa.spi] = self.clock()
        self._count("installed")
        if present:
            self._count("already_present")
        log.info("SA spi 0x%08x dst %s installed on demand with %d policies%s", sa.spi,
                 sa.daddr, len(spd), " (already present)" if present else "")  # fmt: skip
        return True

    # -- the held set ----------------------------------------------------------------

    def hold(self, spi: int, daddr: str) -> None:
        """Add an SPI installed on demand to ``held_spis`` (once none of its packets waits)."""
        with self._kernel_lock:
            if self._pending.pop(spi, None) is None:
                return  # outbound, or not installed by us
            try:
                self.held.add([spi])
                log.info("SPI 0x%08x held", spi)
            except ApplianceError as exc:
                # Installed all the same: packets decrypt, they just keep trapping.
                log.warning("SPI 0x%08x not held: %s", spi, exc)
                self._count("hold_failures")

    def wanted_spis(self, sad: Iterable[SadEntry]) -> set[int]:
        """The SPIs to hold: ESP SAs whose destination is a VIP."""
        return {sa.spi for sa in sad if sa.proto == IPPROTO_ESP and sa.daddr in self.vips}

    def sync_held(self) -> tuple[int, int]:
        """Make ``held_spis`` equal to the kernel's inbound VIP SAs; (added, removed)."""
        with self._kernel_lock:
            now = self.clock()
            self._pending = {s: t for s, t in self._pending.items() if now - t < PENDING_HOLD_S}
            wanted = self.wanted_spis(self.kernel.dump_sad()) - set(self._pending)
            current = set(self.held.list())
            # An SPI pending ``hold`` stays as it is (held only if something else held it).
            extra = current - wanted - set(self._pending)
            missing = wanted - current
            if missing:
                self.held.add(missing)
            if extra:
                self.held.remove(extra)
        with self._counter_lock:
            held = self.counters.held
            held.synced += 1
            held.added += len(missing)
            held.removed += len(extra)
        return len(missing), len(extra)

    def _count(self, name: str) -> None:
        with self._counter_lock:  # bumped from the service's pool threads
            setattr(self.counters, name, getattr(self.counters, name) + 1)


class OnDemand:
    """The daemon's on-demand runtime: the installer, the NFQUEUE service and their tasks."""

    def __init__(self, installer: OnDemandInstaller, service: Any, netns: str | None) -> None:
        self.installer = installer
        self.service = service
        self.netns = netns
        self._wake = asyncio.Event()

    @classmethod
    def from_config(cls, config: Any, install_guard: InstallGuard) -> OnDemand:
        """Open what the ``[ondemand]`` and ``[nft]`` tables name (own sockets, own clients)."""
        from appliance.failover.executor import (
            etimer_jiffies,
            kernel_hz,
            node_netns_addresses,
            open_store_clients,
        )
        from appliance.ondemand import OnDemandService
        from appliance.xfrm.socket import XfrmSocket

        od, nft = config.ondemand, config.nft
        assert od is not None and od.enabled and nft is not None  # the config loader checks
        stores = open_store_clients(config.store, f"{config.node.id}.ondemand")
        installer = OnDemandInstaller(
            XfrmSocket(config.netns),
            stores,
            NftHeldSet(config.netns),
            server_id=config.node.server_id,
            oseq_jump=config.oseq_jump,
            vips=nft.vips,
            local_addresses=node_netns_addresses(config.netns),
            replay_seq_thresh=config.sync.replay_seq_thresh,
            etimer_jiffies=etimer_jiffies(config.sync.replay_timer_ms, kernel_hz()),
            install_guard=install_guard,
        )
        service = OnDemandService(
            config.netns,
            od.queue_num,
            installer.retrieve,
            limits=od.limits,
            workers=od.workers,
            on_retrieved=installer.hold,
        )
        return cls(installer, service, config.netns)

    def start(self) -> None:
        """Hold what the kernel has, then bind the queue (``KernelError`` if it cannot)."""
        with contextlib.suppress(ApplianceError):  # no guard yet: keep_held retries
            self.installer.sync_held()
        self.service.start()

    def stop(self) -> None:
        self.service.stop()
        kernel = self.installer.kernel
        for closable in (kernel, *self.installer.stores):
            close = getattr(closable, "close", None)
            if close is not None:
                with contextlib.suppress(OSError):
                    close()

    def status(self) -> dict[str, Any]:
        """For the status file: the packet counters, the SA counters, whether it runs."""
        return {
            "running": bool(self.service.running),
            "error": None if self.service.error is None else str(self.service.error),
            "queue_num": self.service.queue_num,
            **self.service.counters().as_dict(),
            "sas": self.installer.counters.as_dict(),
        }

    async def keep_held(self) -> None:
        """Sync ``held_spis`` after SA notifications (debounced) and every ``SYNC_INTERVAL_S``."""
        from appliance.xfrm import constants as c
        from appliance.xfrm.events import EventsOverrun, SaAdded, SaDeleted, SaFlushed, xfrm_events

        async def listen() -> None:
            while True:
                try:
                    async for event in xfrm_events(self.netns, (c.XFRMNLGRP_SA,)):
                        if isinstance(event, SaAdded | SaDeleted | SaFlushed):
                            self._wake.set()
                except EventsOverrun:
                    self._wake.set()
                except ApplianceError as exc:
                    # Without notifications the periodic sync still runs.
                    log.warning("held SPIs: no XFRM notifications (%s)", exc)
                    return

        listener = asyncio.create_task(listen())
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), SYNC_INTERVAL_S)
                await asyncio.sleep(SYNC_DEBOUNCE_S)
                self._wake.clear()
                try:
                    await asyncio.to_thread(self.installer.sync_held)
                except ApplianceError as exc:
                    log.warning("held SPIs not synced: %s", exc)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener


__all__ = [
    "STATUS_INTERVAL_S",
    "HeldSet",
    "InstallCounters",
    "NftHeldSet",
    "OnDemand",
    "OnDemandInstaller",
    "SpiSource",
]
