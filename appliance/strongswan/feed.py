"""What a charon is fed from the store at a takeover, and its segment switch (sans-IO).

A node taking over the tunnels of a server ID hands its local charon the IKE
SA records the store holds (protocol.md 4.6).  Each record rebuilds one IKE
SA with its CHILD SAs (``IkeSaState.replay``).  charon's plugin makes each IKE
SA ``IKE_PASSIVE`` at its IKE_UPDATE and installs each CHILD SA into the
kernel at its CHILD_ADD, with outbound sequence number 0 and an empty replay
window (docs/strongswan.md, "Feeding a charon").

The segment is switched by the same socket, not by charon's FIFO: a
SEGMENT_TAKE from the peer makes charon deactivate the segment (its
ESTABLISHED IKE SAs go passive), a SEGMENT_DROP makes it activate it (its
passive IKE SAs become ESTABLISHED).  ``ha_dispatcher.c`` handles those in
``process_segment`` with the very ``activate``/``deactivate`` the FIFO's
``+1``/``-1`` call, and its one dispatcher thread handles datagrams in the
order they came, so a switch sent after the feed acts after the feed.

Pure functions: the relay (``relay.py``) sends the messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from appliance.store.base import IkeSaRecord, IkeSpis
from appliance.strongswan.ha_message import HaAttributeType, HaMessage, HaMessageType, HaNumber
from appliance.strongswan.ike_record import IkeRecordError, decode_record
from appliance.strongswan.ike_state import IkeSaState, kernel_spi

SEGMENT = 1
"""With ``segment_count = 1`` every IKE SA is in segment 1 (docs/strongswan.md)."""
FEED_BATCH = 16
"""IKE SAs fed to charon at once (``feed_batches``). The plugin's socket is plain UDP with
the default receive buffer, and charon reads it with one thread: 100 IKE SAs sent at once
(about 500 datagrams) lost the datagrams of about 10 under TCG (``bench/ike_failover.py``),
so the feed waits for each batch's CHILD SAs to be installed before it sends the next."""


@dataclass(frozen=True)
class CharonFeed:
    """The messages that rebuild a server ID's IKE SAs in a charon, and what they install."""

    messages: tuple[HaMessage, ...]
    """Every IKE SA's replay, in the store's order of IKE SPIs."""
    ike_sas: tuple[IkeSpis, ...]
    """The IKE SAs fed."""
    child_spis: frozenset[int]
    """The kernel SPIs (inbound and outbound) of every CHILD SA fed: charon installs
    these SAs itself, so ipsec-ha must not install them, only move their counters."""
    unreadable: tuple[tuple[IkeSpis, str], ...] = ()
    """Records that do not rebuild an IKE SA, with why: not fed."""


def child_kernel_spis(state: IkeSaState) -> frozenset[int]:
    """The kernel SPIs of every CHILD SA of ``state``, both directions."""
    spis: set[int] = set()
    for child in state.all_children:
        for attr in (HaAttributeType.INBOUND_SPI, HaAttributeType.OUTBOUND_SPI):
            number = child.add.get(attr)
            if isinstance(number, HaNumber):
                spis.add(kernel_spi(number))
    return frozenset(spis)


def plan_feed(records: Mapping[IkeSpis, IkeSaRecord]) -> CharonFeed:
    """The feed of ``records``.  A record that does not decode, or that names other SPIs
    than its key, is left out and named in ``unreadable``; the rest is still fed."""
    messages: list[HaMessage] = []
    fed: list[IkeSpis] = []
    child_spis: set[int] = set()
    unreadable: list[tuple[IkeSpis, str]] = []
    for spis in sorted(records):
        record = records[spis]
        if record.unreadable is not None:
            unreadable.append((spis, record.unreadable))
            continue
        try:
            state = decode_record(record.record)
        except IkeRecordError as exc:
            unreadable.append((spis, str(exc)))
            continue
        if state.spis != spis:
            unreadable.append((spis, "the record rebuilds another IKE SA than its key names"))
            continue
        messages.extend(state.replay())
        fed.append(spis)
        child_spis |= child_kernel_spis(state)
    return CharonFeed(tuple(messages), tuple(fed), frozenset(child_spis), tuple(unreadable))


def feed_batches(
    records: Mapping[IkeSpis, IkeSaRecord], size: int = FEED_BATCH
) -> list[CharonFeed]:
    """The feed of ``records`` in batches of at most ``size`` IKE SAs, in the order of
    :func:`plan_feed` (each IKE SA's messages stay in one batch)."""
    if size < 1:
        raise ValueError(f"a feed batch holds at least one IKE SA, not {size}")
    keys = sorted(records)
    return [
        plan_feed({k: records[k] for k in keys[start : start + size]})
        for start in range(0, len(keys), size)
    ]


def segment_passive(segment: int = SEGMENT) -> HaMessage:
    """Make charon deactivate ``segment``: its IKE SAs there go passive (FIFO ``-N``)."""
    return HaMessage(HaMessageType.SEGMENT_TAKE, (HaNumber(HaAttributeType.SEGMENT, segment),))


def segment_active(segment: int = SEGMENT) -> HaMessage:
    """Make charon activate ``segment``: its passive IKE SAs there become ESTABLISHED
    (FIFO ``+N``).  Only a segment that was inactive flips anything (``ha_segments.c``:
    ``enable_disable``), so :func:`segment_passive` comes first."""
    return HaMessage(HaMessageType.SEGMENT_DROP, (HaNumber(HaAttributeType.SEGMENT, segment),))
