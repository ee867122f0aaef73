"""The IKE state that charon's ``ha`` plugin reports, kept per IKE SA (sans-IO).

Theory of operation
-------------------
The plugin sends one datagram per change (``ha_message``).  A passive charon
rebuilds an IKE SA from a few of them: the IKE_ADD that derives its keys, the
IKE_UPDATEs that give it identities, addresses and its configuration, the last
message IDs, and the CHILD_ADD of every CHILD SA, which derives the CHILD SA's
keys from the IKE SA's SK_d and installs it.  :class:`IkeBook` keeps exactly
those messages for every live IKE SA and drops what is superseded, so that
replaying an IKE SA's messages (:meth:`IkeSaState.replay`) into an empty
passive charon gives the same IKE SA with the same CHILD SAs and SPIs.

It takes decoded messages and returns what changed (:class:`IkeSaChanged`,
:class:`IkeSaRemoved`); it opens no socket and reads no clock.  The relay
(``relay.py``) feeds it; the records it gives are serialised by
``ike_record.py``.

What is kept, per IKE SA (compare strongSwan's ``ha_cache.c``, which keeps
the same for IKE but no CHILD SA at all, and rekeys every CHILD SA after a
resync; we keep the CHILD_ADDs so that the client's CHILD SAs stay as they are):

* the IKE_ADD; an IKE_ADD for an IKE SA already held replaces it (and its
  CHILD SAs: charon derives everything again);
* the last *full* IKE_UPDATE (the one charon sends when the SA comes up, with
  LOCAL_ID) and the last IKE_UPDATE that carries only virtual IPs
  (``sync_vips``), in that order;
* the last IKE_MID_INITIATOR, IKE_MID_RESPONDER and IKE_IV;
* the CHILD_ADD of every CHILD SA not deleted, keyed by its INBOUND_SPI.

IKE rekeying.  An IKE_ADD with IKE_REKEY_ID makes a new IKE SA that inherits
the old one's CHILD SAs; the old IKE SA is gone at once (charon destroys it
when it processes that IKE_ADD; the IKE_DELETE that follows names an SA no
longer held, as does any message-ID update for it).  A CHILD SA's keys were
derived from SK_d of the IKE SA it was created in, so an inherited CHILD_ADD
cannot be replayed against the new IKE SA.  The new IKE SA therefore keeps
the *generations* it descends from, each with its IKE_ADD, its full
IKE_UPDATE and the CHILD SAs created in it, as long as one of those CHILD SAs
lives.  The replay is, oldest generation first: IKE_ADD, IKE_UPDATE,
CHILD_ADDs; then the next generation's IKE_ADD, whose IKE_REKEY_ID is set to
the generation replayed before it, so that charon moves the CHILD SAs on, as
it did the first time.  The derivation of a rekeyed IKE SA needs only what
its IKE_ADD carries (OLD_SKD, ALG_OLD_PRF), not the old SA.

Messages the book cannot place (an update, a message ID or a CHILD SA for an
IKE SA it does not hold, a CHILD_DELETE of an unknown SPI) change nothing and
are counted by reason in :attr:`IkeBook.ignored`; a passive charon ignores
them too.  STATUS and SEGMENT_* are not IKE state.  A RESYNC from charon
means it has just started (its plugin asks its peer for the state at start):
it holds no IKE SA, so the book drops every one (as ``lost``: charon did not
delete them, so their peers still hold them), and from then on holds
everything charon does (:attr:`IkeBook.complete`).
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field, replace

from appliance.store.base import IkeSpis as IkeSpis  # re-exported: the book speaks of them
from appliance.store.base import format_spis as format_spis
from appliance.strongswan.ha_message import (
    HaAttributeType,
    HaIkeSaId,
    HaMessage,
    HaMessageError,
    HaMessageType,
    HaNumber,
)

_A = HaAttributeType
_T = HaMessageType

CONTROL_TYPES = frozenset({_T.STATUS, _T.SEGMENT_DROP, _T.SEGMENT_TAKE})
"""Messages about the plugin's segments, not about an IKE SA."""


def spis_of(ike_id: HaIkeSaId) -> IkeSpis:
    return (ike_id.initiator_spi, ike_id.responder_spi)


def kernel_spi(attr: HaNumber, byteorder: str = sys.byteorder) -> int:
    """The SPI the kernel holds for an INBOUND_SPI/OUTBOUND_SPI sent by a charon of
    ``byteorder`` (the plugin passes a value already in network order through htonl)."""
    if byteorder == "big":
        return attr.value
    return int.from_bytes(attr.value.to_bytes(4, "big"), "little")


@dataclass(frozen=True)
class ChildSa:
    """One CHILD SA: the CHILD_ADD that makes it, as charon sent it."""

    inbound_spi: int
    """INBOUND_SPI as sent (see :func:`kernel_spi` for the kernel's SPI)."""
    add: HaMessage


@dataclass(frozen=True)
class Generation:
    """An IKE SA that has been rekeyed away, kept for the CHILD SAs created in it."""

    spis: IkeSpis
    add: HaMessage
    update: HaMessage | None
    children: tuple[ChildSa, ...]


@dataclass(frozen=True)
class IkeSaState:
    """What a passive charon needs to rebuild one IKE SA with its CHILD SAs."""

    spis: IkeSpis
    add: HaMessage
    ancestors: tuple[Generation, ...] = ()
    """Rekeyed-away IKE SAs, oldest first, each still holding a live CHILD SA."""
    update: HaMessage | None = None
    """The last full IKE_UPDATE (the one with LOCAL_ID)."""
    vips: HaMessage | None = None
    """The last IKE_UPDATE with only virtual IPs."""
    mid_initiator: HaMessage | None = None
    mid_responder: HaMessage | None = None
    iv: HaMessage | None = None
    children: tuple[ChildSa, ...] = ()
    """CHILD SAs created in this IKE SA, in the order they were added."""

    @property
    def all_children(self) -> tuple[ChildSa, ...]:
        """Every live CHILD SA, inherited ones first."""
        return tuple(c for g in self.ancestors for c in g.children) + self.children

    @property
    def config_name(self) -> str | None:
        found = None if self.update is None else self.update.get(_A.CONFIG_NAME)
        return getattr(found, "text", None)

    def replay(self) -> tuple[HaMessage, ...]:
        """The messages that rebuild this IKE SA in an empty passive charon, in order."""
        out: list[HaMessage] = []
        previous: HaIkeSaId | None = None
        for spis, add, update, children in (
            *((g.spis, g.add, g.update, g.children) for g in self.ancestors),
            (self.spis, self.add, self.update, self.children),
        ):
            out.append(_with_rekey_id(add, previous))
            previous = add.ike_sa_id
            if update is not None:
                out.append(update)
            if spis == self.spis:
                out.extend(
                    m
                    for m in (self.vips, self.mid_initiator, self.mid_responder, self.iv)
                    if m is not None
                )
            out.extend(c.add for c in children)
        return tuple(out)


def _with_rekey_id(add: HaMessage, previous: HaIkeSaId | None) -> HaMessage:
    """``add`` with IKE_REKEY_ID naming ``previous`` (or without one, if None)."""
    attrs = [a for a in add.attributes if a.type is not _A.IKE_REKEY_ID]
    if previous is not None:
        at = next((i + 1 for i, a in enumerate(attrs) if a.type is _A.IKE_ID), 0)
        attrs.insert(at, replace(previous, type=_A.IKE_REKEY_ID))
    rebuilt = tuple(attrs)
    return add if rebuilt == add.attributes else HaMessage(add.type, rebuilt)


@dataclass(frozen=True)
class IkeSaChanged:
    """An IKE SA was added or changed; ``state`` is all of it now."""

    state: IkeSaState


@dataclass(frozen=True)
class IkeSaRemoved:
    """An IKE SA is gone (deleted, or rekeyed into ``successor``, or ``lost``)."""

    spis: IkeSpis
    successor: IkeSpis | None = None
    lost: IkeSaState | None = None
    """charon restarted (its RESYNC) without deleting it: the IKE SA as the book last held
    it.  The peer still holds it, and so may the kernel its CHILD SAs."""


IkeEvent = IkeSaChanged | IkeSaRemoved


@dataclass
class IkeBook:
    """Every live IKE SA the plugin reported, with what rebuilds it."""

    sas: dict[IkeSpis, IkeSaState] = field(default_factory=dict)
    ignored: Counter[str] = field(default_factory=Counter)
    """Messages that changed nothing, by reason (for the log and the metrics)."""
    complete: bool = False
    """The book has seen charon start (its RESYNC): it holds every IKE SA charon holds.
    A book started beside a running charon does not know the IKE SAs made before."""

    def handle(self, message: HaMessage) -> list[IkeEvent]:
        """Apply one message; return what changed (nothing for control messages)."""
        if message.type in CONTROL_TYPES:
            return []
        if message.type is _T.RESYNC:
            removed: list[IkeEvent] = [IkeSaRemoved(s, lost=sa) for s, sa in self.sas.items()]
            self.sas.clear()
            self.complete = True
            return removed
        ike_id = message.ike_sa_id
        if ike_id is None:
            raise HaMessageError(f"ha {message.type.name} message names no IKE SA (no IKE_ID)")
        spis = spis_of(ike_id)
        if message.type is _T.IKE_ADD:
            return self._add(spis, message)
        current = self.sas.get(spis)
        if current is None:
            self.ignored[f"{message.type.name.lower()} of an unknown IKE SA"] += 1
            return []
        if message.type is _T.IKE_DELETE:
            del self.sas[spis]
            return [IkeSaRemoved(spis)]
        if message.type is _T.CHILD_ADD:
            updated = self._child_add(current, message)
        elif message.type is _T.CHILD_DELETE:
            found = self._child_delete(current, message)
            if found is None:
                return []
            updated = found
        elif message.type is _T.IKE_UPDATE:
            if message.get(_A.LOCAL_ID) is not None:  # the full update of ike_updown
                updated = replace(current, update=message)
            else:  # sync_vips: virtual IPs only
                updated = replace(current, vips=message)
        elif message.type is _T.IKE_MID_INITIATOR:
            updated = replace(current, mid_initiator=message)
        elif message.type is _T.IKE_MID_RESPONDER:
            updated = replace(current, mid_responder=message)
        else:  # IKE_IV, the only type left
            updated = replace(current, iv=message)
        self.sas[spis] = updated
        return [IkeSaChanged(updated)]

    def child_owner(self, inbound_spi: int) -> IkeSaState | None:
        """The IKE SA holding the CHILD SA with this INBOUND_SPI (as sent), if any."""
        for sa in self.sas.values():
            if any(c.inbound_spi == inbound_spi for c in sa.all_children):
                return sa
        return None

    # -- the message types ---------------------------------------------------

    def _add(self, spis: IkeSpis, message: HaMessage) -> list[IkeEvent]:
        events: list[IkeEvent] = []
        ancestors: tuple[Generation, ...] = ()
        rekeyed = message.get(_A.IKE_REKEY_ID)
        if isinstance(rekeyed, HaIkeSaId):
            old_spis = spis_of(rekeyed)
            old = self.sas.pop(old_spis, None)
            if old is None:
                self.ignored["rekey of an unknown IKE SA"] += 1
            else:
                own = Generation(old.spis, old.add, old.update, old.children)
                ancestors = tuple(g for g in (*old.ancestors, own) if g.children)
                events.append(IkeSaRemoved(old_spis, successor=spis))
        if spis in self.sas:
            self.ignored["ike_add replacing a held IKE SA"] += 1
        state = IkeSaState(spis, message, ancestors)
        self.sas[spis] = state
        events.append(IkeSaChanged(state))
        return events

    def _child_add(self, sa: IkeSaState, message: HaMessage) -> IkeSaState:
        spi = message.get(_A.INBOUND_SPI)
        if not isinstance(spi, HaNumber):
            raise HaMessageError("ha CHILD_ADD message has no INBOUND_SPI")
        # A CHILD_ADD for an SPI already held replaces it wherever it was.
        cleared = _without_child(sa, spi.value) or sa
        child = ChildSa(spi.value, message)
        return replace(cleared, children=(*cleared.children, child))

    def _child_delete(self, sa: IkeSaState, message: HaMessage) -> IkeSaState | None:
        spi = message.get(_A.INBOUND_SPI)
        if not isinstance(spi, HaNumber):
            raise HaMessageError("ha CHILD_DELETE message has no INBOUND_SPI")
        updated = _without_child(sa, spi.value)
        if updated is None:
            self.ignored["child_delete of an unknown CHILD SA"] += 1
        return updated


def _without_child(sa: IkeSaState, inbound_spi: int) -> IkeSaState | None:
    """``sa`` without that CHILD SA (dropping generations left empty), or None if
    it holds no such CHILD SA."""
    if not any(c.inbound_spi == inbound_spi for c in sa.all_children):
        return None

    def keep(children: tuple[ChildSa, ...]) -> tuple[ChildSa, ...]:
        return tuple(c for c in children if c.inbound_spi != inbound_spi)

    ancestors = tuple(replace(g, children=keep(g.children)) for g in sa.ancestors)
    return replace(
        sa, ancestors=tuple(g for g in ancestors if g.children), children=keep(sa.children)
    )
