"""What a charon is fed from the store, and its segment switch (sans-IO).

A node taking over the tunnels of a server ID hands its local charon the IKE
SA records the store holds (protocol.md 4.6).  Each record rebuilds one IKE
SA with its CHILD SAs (``IkeSaState.replay``).  charon's plugin makes each IKE
SA ``IKE_PASSIVE`` at its IKE_UPDATE and installs each CHILD SA into the
kernel at its CHILD_ADD, with outbound sequence number 0 and an empty replay
window (docs/strongswan.md, "Feeding a charon").

A hot standby's charon is fed as the store changes (:func:`plan_sync`): an
IKE SA the store no longer holds is deleted (IKE_DELETE: charon removes its
CHILD SAs from the kernel, with no message to the peer); a changed one gets
only what changed (:func:`plan_update`: CHILD_DELETE, CHILD_ADD, the IKE_UPDATE
or message IDs), or, when its IKE_ADD changed, a delete and a whole replay;
a new one is replayed whole.  Deletes go first: charon's one dispatcher
thread handles them before the CHILD_ADDs that may install the same SPIs.

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

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from appliance.store.base import IkeSaRecord, IkeSpis
from appliance.strongswan.ha_message import (
    HaAttributeType,
    HaIkeSaId,
    HaMessage,
    HaMessageType,
    HaNumber,
)
from appliance.strongswan.ike_record import IkeRecordError, decode_record
from appliance.strongswan.ike_state import ChildSa, IkeSaState, kernel_spi

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
    return frozenset().union(*(_child_spis(c) for c in state.all_children))


def _child_spis(child: ChildSa) -> frozenset[int]:
    spis: set[int] = set()
    for attr in (HaAttributeType.INBOUND_SPI, HaAttributeType.OUTBOUND_SPI):
        number = child.add.get(attr)
        if isinstance(number, HaNumber):
            spis.add(kernel_spi(number))
    return frozenset(spis)


def read_record(spis: IkeSpis, record: IkeSaRecord) -> IkeSaState | str:
    """The IKE SA the stored ``record`` of ``spis`` rebuilds, or why it does not."""
    if record.unreadable is not None:
        return record.unreadable
    try:
        state = decode_record(record.record)
    except IkeRecordError as exc:
        return str(exc)
    if state.spis != spis:
        return "the record rebuilds another IKE SA than its key names"
    return state


def plan_feed(records: Mapping[IkeSpis, IkeSaRecord]) -> CharonFeed:
    """The feed of ``records``.  A record that does not decode, or that names other SPIs
    than its key, is left out and named in ``unreadable``; the rest is still fed."""
    messages: list[HaMessage] = []
    fed: list[IkeSpis] = []
    child_spis: set[int] = set()
    unreadable: list[tuple[IkeSpis, str]] = []
    for spis in sorted(records):
        state = read_record(spis, records[spis])
        if isinstance(state, str):
            unreadable.append((spis, state))
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


# -- a hot standby's charon, kept equal to the store ------------------------------------


def _ike_id(state: IkeSaState) -> HaIkeSaId:
    ike_id = state.add.get(HaAttributeType.IKE_ID)
    if not isinstance(ike_id, HaIkeSaId):  # decode_record and the book refuse such an add
        raise ValueError("an IKE SA's IKE_ADD names no IKE_ID")
    return ike_id


def ike_delete(state: IkeSaState) -> HaMessage:
    """Make a passive charon delete ``state`` and its CHILD SAs (no message to the peer)."""
    return HaMessage(HaMessageType.IKE_DELETE, (_ike_id(state),))


def child_delete(state: IkeSaState, child: ChildSa) -> HaMessage:
    """Make a passive charon delete one CHILD SA of ``state`` (as the plugin sends it)."""
    return HaMessage(
        HaMessageType.CHILD_DELETE,
        (_ike_id(state), HaNumber(HaAttributeType.INBOUND_SPI, child.inbound_spi)),
    )


@dataclass(frozen=True)
class IkeUpdate:
    """What turns a passive charon's IKE SA into the stored one of the same SPIs."""

    messages: tuple[HaMessage, ...]
    installs: frozenset[int] = frozenset()
    """Kernel SPIs of the CHILD SAs the messages add (charon installs them)."""
    removes: frozenset[int] = frozenset()
    """Kernel SPIs of the CHILD SAs the messages delete (charon removes them)."""


def plan_update(old: IkeSaState, new: IkeSaState) -> IkeUpdate | None:
    """The messages that turn ``old``, held passive by charon, into ``new`` (same SPIs);
    None when only a delete and a whole replay can (another IKE_ADD, or a generation that
    is not one of ``old``'s with the same IKE_ADD and IKE_UPDATE).

    CHILD SAs are matched by INBOUND_SPI: one gone is deleted, one new is added, one whose
    CHILD_ADD changed is deleted first and added again.  The IKE_UPDATEs, message IDs and
    IV that changed are sent as they are now.  A new CHILD SA can only be the current IKE
    SA's: an inherited one was created before the rekey, so ``old`` held it already.
    """
    if old.spis != new.spis or old.add != new.add:
        return None
    generations = {g.spis: (g.add, g.update) for g in old.ancestors}
    if any(generations.get(g.spis) != (g.add, g.update) for g in new.ancestors):
        return None
    held = {c.inbound_spi: c for c in old.all_children}
    inherited = {c.inbound_spi for g in new.ancestors for c in g.children}
    replaced: list[ChildSa] = []
    added: list[ChildSa] = []
    for child in new.all_children:
        before = held.get(child.inbound_spi)
        if before == child:
            continue
        if child.inbound_spi in inherited:
            return None
        if before is not None:
            replaced.append(before)
        added.append(child)
    wanted = {c.inbound_spi for c in new.all_children}
    gone = [c for c in old.all_children if c.inbound_spi not in wanted]
    changed = [
        now
        for was, now in (
            (old.update, new.update),
            (old.vips, new.vips),
            (old.mid_initiator, new.mid_initiator),
            (old.mid_responder, new.mid_responder),
            (old.iv, new.iv),
        )
        if now is not None and now != was
    ]
    # Replaced CHILD SAs out before they go in again; the IKE SA's own state before its new
    # CHILD SAs; CHILD SAs gone last, as charon's own rekey does (the policies stay).
    messages = (
        *(child_delete(old, c) for c in replaced),
        *changed,
        *(c.add for c in added),
        *(child_delete(old, c) for c in gone),
    )
    return IkeUpdate(
        tuple(messages),
        frozenset().union(*(_child_spis(c) for c in added)),
        frozenset().union(*(_child_spis(c) for c in (*replaced, *gone))),
    )


@dataclass(frozen=True)
class CharonSync:
    """What makes a passive charon hold exactly the stored IKE SAs (:func:`plan_sync`)."""

    first: tuple[HaMessage, ...] = ()
    """IKE_DELETEs and updates of held IKE SAs, sent before any feed."""
    feeds: tuple[CharonFeed, ...] = ()
    """IKE SAs to replay whole, in batches (:func:`feed_batches`)."""
    installs: frozenset[int] = frozenset()
    """Kernel SPIs of the CHILD SAs ``first`` adds."""
    removes: frozenset[int] = frozenset()
    """Kernel SPIs of the CHILD SAs ``first`` deletes (and no feed adds again)."""
    deleted: tuple[IkeSpis, ...] = ()
    """Held IKE SAs deleted (those replayed whole again included)."""
    updated: tuple[IkeSpis, ...] = ()
    unreadable: tuple[tuple[IkeSpis, str], ...] = ()
    """Stored records that do not rebuild an IKE SA: not fed (a held one is kept as is)."""

    @property
    def empty(self) -> bool:
        return not self.first and not any(f.messages for f in self.feeds)


def plan_sync(
    held: Mapping[IkeSpis, IkeSaState],
    fed: Mapping[IkeSpis, bytes],
    stored: Mapping[IkeSpis, IkeSaRecord],
    batch: int = FEED_BATCH,
    *,
    refeed: Collection[IkeSpis] = (),
    others: Collection[IkeSpis] = (),
) -> CharonSync:
    """What makes charon, holding ``held`` passive (the IKE SAs it was fed), hold ``stored``.

    ``fed`` has the record each held IKE SA was last fed from: an unchanged record costs
    no decode and sends nothing; one missing there is compared by what is held.  Those in
    ``refeed`` are deleted and fed whole again (charon lost some of their CHILD SAs).
    ``others`` are IKE SAs charon holds of its own: never deleted or changed, and a stored
    one that rebuilds one of them (itself or a generation) is not fed.

    A new record whose generations include a held IKE SA supersedes it (the store holds
    both halves of an IKE rekey): the held one is deleted, since the new one's replay
    rebuilds it, and a stored record of a superseded IKE SA is not fed on its own.
    """
    first: list[HaMessage] = []
    installs: set[int] = set()
    removes: set[int] = set()
    deleted: list[IkeSpis] = []
    updated: list[IkeSpis] = []
    unreadable: list[tuple[IkeSpis, str]] = []
    whole: dict[IkeSpis, IkeSaRecord] = {}

    def delete(spis: IkeSpis) -> None:
        if spis not in deleted:
            first.append(ike_delete(held[spis]))
            removes.update(child_kernel_spis(held[spis]))
            deleted.append(spis)

    states: dict[IkeSpis, IkeSaState] = {}
    for spis in sorted(stored):
        record = stored[spis]
        if spis in others:
            continue
        unchanged = fed.get(spis) == record.record and record.unreadable is None
        if spis in held and spis not in refeed and unchanged:
            continue
        state = read_record(spis, record)
        if isinstance(state, str):
            unreadable.append((spis, state))
        else:
            states[spis] = state
    superseded = {g.spis for k, st in states.items() if k not in held for g in st.ancestors}
    for spis in sorted(held):
        if spis not in stored or spis in superseded:
            delete(spis)
    for spis, state in states.items():
        if spis in superseded or any(g.spis in others for g in state.ancestors):
            continue
        old = held.get(spis)
        update = None if old is None or spis in refeed else plan_update(old, state)
        if update is None:
            if old is not None:
                delete(spis)
            whole[spis] = stored[spis]
        elif update.messages:
            first.extend(update.messages)
            installs |= update.installs
            removes |= update.removes
            updated.append(spis)
    feeds = tuple(feed_batches(whole, batch)) if whole else ()
    again = frozenset().union(installs, *(f.child_spis for f in feeds))
    return CharonSync(
        tuple(first),
        tuple(f for f in feeds if f.messages),
        frozenset(installs),
        frozenset(removes - again),
        tuple(deleted),
        tuple(updated),
        tuple(unreadable),
    )
