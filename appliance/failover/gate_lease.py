"""The open nftables gate's lease, renewed while the gate is open (``[failover] gate_lease_s``).

Theory of operation
-------------------
``appliance.nft.gate`` opens the gate for a lease only: once its elements
expire, the kernel drops the gated SPIs' outbound ESP again. The lease covers the
gated SPIs and every SA whose outer source is a served VIP
(``lease_addresses``): an IKE daemon sets up and rekeys SAs on the active
node whose SPIs the gate never held. ``LeasedGate``
wraps the gate the executor drives and renews the lease from its own thread
every ``interval_s`` for as long as the gate is open, i.e. from ``open``
until the next ``close``. It follows the gate rather than the daemon's role
because a takeover opens the gate before its last steps and only then
becomes ACTIVE.

What the lease is for: a daemon that dies while active leaves no one to
close the gate, and the gateway's kernel would go on encrypting (docs/failover.md,
"A gateway whose daemon died"). With the lease, the renewals stop with the
daemon and the gate closes itself ``gate_lease_s`` later at most, so the
orphaned kernel falls silent before the new active node (VRRP's dead
interval later) sends; the jump covers what it sent meanwhile.

The renewal thread is a thread, not a task on the daemon's loop, and it
does not use the loop's thread pool: a takeover or slow stores keep both
busy, and a late renewal closes the gate of a healthy active node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from appliance.errors import ApplianceError

if TYPE_CHECKING:
    from appliance.failover.config import DaemonConfig

log = logging.getLogger(__name__)

RENEWALS_PER_LEASE = 4
"""Renew four times per lease: three renewals in a row may be late or fail first."""


def lease_addresses(config: DaemonConfig) -> tuple[str, ...]:
    """The served VIPs the lease also covers by outer source address: the server ID when it
    is an IP address, and ``[nft].vips``."""
    found: list[str] = []
    with contextlib.suppress(ValueError):
        found.append(str(ipaddress.ip_address(config.node.server_id)))
    if config.nft is not None:
        found += [str(vip) for vip in config.nft.vips]
    return tuple(dict.fromkeys(found))


class RenewableGate(Protocol):
    """The gate as ``appliance.nft.gate.NftGate`` offers it."""

    lease_s: float | None

    def close(self, spis: Iterable[int]) -> None: ...

    def add(self, spis: Iterable[int]) -> None: ...

    def discard(self, spis: Iterable[int]) -> None: ...

    def open(self) -> None: ...

    def renew(self) -> None: ...

    def stop_renewals(self) -> None: ...


@dataclass
class LeaseCounters:
    """What the renewal thread did, for the status file."""

    renewals: int = 0
    failures: int = 0
    last_error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class LeasedGate:
    """An ``OutboundGate`` (``executor``) whose open state is kept alive by renewals."""

    def __init__(self, gate: RenewableGate, interval_s: float | None = None) -> None:
        if gate.lease_s is None:
            raise ValueError("LeasedGate needs a gate with a lease")
        self.gate = gate
        self.interval_s = (
            interval_s if interval_s is not None else gate.lease_s / RENEWALS_PER_LEASE
        )
        self.counters = LeaseCounters()
        self._open = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    # -- OutboundGate ------------------------------------------------------------------
    def close(self, spis: Iterable[int]) -> None:
        self._open.clear()  # before the batch: no renewal is started after it
        self.gate.close(spis)

    def add(self, spis: Iterable[int]) -> None:
        self.gate.add(spis)

    def discard(self, spis: Iterable[int]) -> None:
        self.gate.discard(spis)

    def open(self) -> None:
        self.gate.open()
        self._open.set()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._renew_while_open, name="gate-lease", daemon=True
            )
            self._thread.start()

    # -- the renewals --------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def renew_once(self) -> bool:
        """Renew the lease now if the gate is open; True if renewed."""
        if not self._open.is_set():
            return False
        try:
            self.gate.renew()
        except ApplianceError as exc:
            if self.counters.failures == 0 or self.counters.last_error != str(exc):
                log.warning("the outbound gate's lease was not renewed: %s", exc)
            self.counters.failures += 1
            self.counters.last_error = str(exc)
            return False
        self.counters.renewals += 1
        return True

    def _renew_while_open(self) -> None:
        while not self._stopped.is_set():
            if not self._open.wait(timeout=0.5):
                continue
            self.renew_once()
            self._stopped.wait(self.interval_s)

    def stop(self) -> None:
        """End the renewals (the lease then runs out: the gate closes)."""
        self._stopped.set()
        self._open.clear()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.gate.stop_renewals()
