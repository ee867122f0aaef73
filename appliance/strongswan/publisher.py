"""What the active node publishes of the IKE state: records for the stores (sans-IO).

The relay's book reports every change of an IKE SA (``IkeSaChanged`` with
the whole state, ``IkeSaRemoved``).  :class:`IkePublisher` keeps, per IKE
SA, only the latest of them until the daemon sends them: a burst of
message-ID updates of one IKE SA costs one record, and an IKE rekey (the
old SA removed, its successor added) goes to the store in one call, the
successor first (``StoreClient.put_ike_sas``).

:func:`ike_sa_record` turns a state into the store's :class:`IkeSaRecord`:
the record of ``ike_record`` and the kernel SPIs of its CHILD SAs, inbound
and outbound, which the store indexes so that a lookup by an SA's SPI
returns its IKE SA (protocol.md 5.3).

:func:`plan_ike_resync` compares the book with what a store holds, for a
full resync: it stores what differs, and deletes what the store holds and
the book does not only when the book is *complete* (the relay has seen
everything charon did since charon started); a daemon started beside a
running charon does not know the IKE SAs that charon made before, and must
not delete them from the store. Nor does it delete an IKE SA one of whose
CHILD SAs the kernel still holds: after a takeover that moved the kernel's
SAs but not charon's state, the new active's charon has a complete book
without the old active's IKE SAs, which are still the only record of the
tunnels' IKE state.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from appliance.store.base import MAX_CHILD_SPIS, IkeSaRecord, IkeSpis
from appliance.strongswan.ha_message import HaAttributeType, HaNumber
from appliance.strongswan.ike_record import encode_record
from appliance.strongswan.ike_state import (
    IkeEvent,
    IkeSaChanged,
    IkeSaState,
    format_spis,
    kernel_spi,
)

log = logging.getLogger("appliance.strongswan.publisher")

_SPI_ATTRIBUTES = (HaAttributeType.INBOUND_SPI, HaAttributeType.OUTBOUND_SPI)


def ike_sa_record(state: IkeSaState, byteorder: str = sys.byteorder) -> IkeSaRecord:
    """The store's record of ``state``; ``byteorder`` is the sending charon's."""
    children: dict[int, None] = {}
    for child in state.all_children:
        for attr_type in _SPI_ATTRIBUTES:
            found = child.add.get(attr_type)
            if isinstance(found, HaNumber) and found.value:
                children[kernel_spi(found, byteorder)] = None
    spis = tuple(children)
    if len(spis) > MAX_CHILD_SPIS:
        log.warning("IKE SA %s has %d CHILD SA SPIs; a lookup by SPI finds it by the first %d",
                    format_spis(state.spis), len(spis), MAX_CHILD_SPIS)  # fmt: skip
        spis = spis[:MAX_CHILD_SPIS]
    return IkeSaRecord(state.spis, spis, encode_record(state))


@dataclass(frozen=True)
class IkeBatch:
    """IKE SAs to store and to delete, in one ``StoreClient.put_ike_sas`` call."""

    puts: tuple[IkeSaRecord, ...] = ()
    removed: tuple[IkeSpis, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.puts or self.removed)


class IkePublisher:
    """IKE SA changes not yet sent to the stores, the latest per IKE SA.

    Thread-safe: the relay adds on the daemon's loop while the flusher takes
    in a worker thread.
    """

    def __init__(self, byteorder: str = sys.byteorder) -> None:
        self.byteorder = byteorder
        self._pending: dict[IkeSpis, IkeSaState | None] = {}
        """Per IKE SA: its state to store, or None to delete it."""
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pending)

    def on_events(self, events: Iterable[IkeEvent]) -> None:
        with self._lock:
            for event in events:
                if isinstance(event, IkeSaChanged):
                    self._pending[event.state.spis] = event.state
                else:
                    self._pending[event.spis] = None

    def take(self) -> IkeBatch:
        """Everything pending, as one batch; nothing is pending after."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return IkeBatch(
            tuple(ike_sa_record(s, self.byteorder) for s in pending.values() if s is not None),
            tuple(spis for spis, s in pending.items() if s is None),
        )

    def clear(self) -> None:
        """Forget what is pending (a full resync sends the whole book instead)."""
        with self._lock:
            self._pending = {}


def plan_ike_resync(
    book: Mapping[IkeSpis, IkeSaState],
    stored: Mapping[IkeSpis, IkeSaRecord],
    complete: bool,
    kernel_spis: Collection[int] = (),
    byteorder: str = sys.byteorder,
) -> IkeBatch:
    """What makes a store's IKE SAs equal to the book's (see the module docstring).

    ``kernel_spis``: the SPIs of the SAs in the kernel; a stored IKE SA that names one
    of them among its CHILD SAs is kept even when the book does not hold it.
    """
    puts = []
    for spis, state in book.items():
        record = ike_sa_record(state, byteorder)
        if stored.get(spis) != record:
            puts.append(record)
    removed: tuple[IkeSpis, ...] = ()
    if complete:
        live = set(kernel_spis)
        removed = tuple(
            spis
            for spis, record in stored.items()
            if spis not in book and live.isdisjoint(record.child_spis)
        )
    return IkeBatch(tuple(puts), removed)
