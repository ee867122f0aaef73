"""XFRM notifications as small typed events.

``parse_events(data)`` is the sans-IO core: it turns one datagram from an
XFRM multicast socket into events.  ``xfrm_events(netns, groups)`` is the
thin asyncio adapter that reads such a socket and yields the events.

Groups (``XFRMNLGRP_*``) and what they carry:

* SA: ``SaAdded`` (NEWSA/UPDSA), ``SaDeleted``, ``SaFlushed``
* POLICY: ``PolicyAdded`` (NEWPOLICY/UPDPOLICY), ``PolicyDeleted``, ``PolicyFlushed``
* EXPIRE: ``SaExpired``, ``PolicyExpired``
* AEVENTS: ``AeChanged``
* ACQUIRE: ``Acquire``
* MIGRATE: ``Migrated``
* MAPPING: ``MappingChanged``
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from appliance.model import Address, SadEntry, Selector, SpdEntry, Template, address_from_xfrm
from appliance.xfrm import codec
from appliance.xfrm import constants as c
from appliance.xfrm import convert as cv
from appliance.xfrm import structs as s
from appliance.xfrm.netlink import RawMessage, iter_messages
from appliance.xfrm.socket import (
    group_mask,
    migration_from_dict,
    open_xfrm_socket,
)
from appliance.xfrm.types import AeState, KmAddress, Migration, XfrmError

DEFAULT_GROUPS = (
    c.XFRMNLGRP_SA,
    c.XFRMNLGRP_POLICY,
    c.XFRMNLGRP_AEVENTS,
    c.XFRMNLGRP_EXPIRE,
    c.XFRMNLGRP_ACQUIRE,
    c.XFRMNLGRP_MIGRATE,
)


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of XFRM events."""

    seq: int
    """``nlmsg_seq`` of the notification (the request's, for changes made by a request)."""
    pid: int
    """``nlmsg_pid``: the port of the socket whose request caused it (0 = the kernel)."""


@dataclass(frozen=True, slots=True)
class SaAdded(Event):
    """An SA was added (NEWSA) or updated (UPDSA)."""

    entry: SadEntry
    """The SA as it now is."""
    updated: bool
    """True for UPDSA."""


@dataclass(frozen=True, slots=True)
class SaDeleted(Event):
    """An SA was deleted (DELSA)."""

    daddr: Address
    """Destination of the SA."""
    spi: int
    """SPI of the SA."""
    proto: int
    """IPPROTO_ESP/AH/COMP."""
    entry: SadEntry | None
    """The deleted SA, when the kernel included it (XFRMA_SA)."""


@dataclass(frozen=True, slots=True)
class SaFlushed(Event):
    """SAs of ``proto`` were flushed (255 = all)."""

    proto: int
    """Protocol flushed."""


@dataclass(frozen=True, slots=True)
class SaExpired(Event):
    """An SA reached a soft or hard limit (EXPIRE)."""

    entry: SadEntry
    """The SA."""
    hard: bool
    """True: the SA is gone; False: soft limit, rekey now."""


@dataclass(frozen=True, slots=True)
class PolicyAdded(Event):
    """A policy was added (NEWPOLICY) or updated (UPDPOLICY)."""

    entry: SpdEntry
    """The policy as it now is."""
    updated: bool
    """True for UPDPOLICY."""


@dataclass(frozen=True, slots=True)
class PolicyDeleted(Event):
    """A policy was deleted (DELPOLICY)."""

    selector: Selector
    """Selector of the deleted policy."""
    dir: int
    """XFRM_POLICY_IN/OUT/FWD."""
    index: int
    """Kernel index of the policy."""
    entry: SpdEntry | None
    """The deleted policy, when the kernel included it (XFRMA_POLICY)."""


@dataclass(frozen=True, slots=True)
class PolicyFlushed(Event):
    """Policies were flushed."""

    ptype: int | None
    """XFRMA_POLICY_TYPE when given (0 main, 1 sub)."""


@dataclass(frozen=True, slots=True)
class PolicyExpired(Event):
    """A policy reached a soft or hard limit (POLEXPIRE)."""

    entry: SpdEntry
    """The policy."""
    hard: bool
    """True: the policy is gone."""


@dataclass(frozen=True, slots=True)
class AeChanged(Event):
    """Replay/lifetime state of an SA changed or was reported (NEWAE)."""

    daddr: Address
    """Destination of the SA."""
    spi: int
    """SPI of the SA."""
    proto: int
    """IPPROTO_ESP/AH/COMP."""
    saddr: Address
    """Source of the SA."""
    reqid: int
    """reqid of the SA."""
    flags: int
    """XFRM_AE_* bits: which values, and the cause (CR replay, CE timer, CU update)."""
    state: AeState
    """The values."""


@dataclass(frozen=True, slots=True)
class Acquire(Event):
    """Traffic matched a policy template without an SA: negotiate one (ACQUIRE)."""

    daddr: Address
    """Peer the SA is for."""
    saddr: Address
    """Local end."""
    proto: int
    """IPPROTO_ESP/AH/COMP."""
    selector: Selector
    """The triggering flow."""
    policy: SpdEntry
    """The policy that matched (with its templates)."""
    templates: tuple[Template, ...]
    """XFRMA_TMPL: the templates to satisfy."""
    aalgos: int
    """Allowed auth algorithms mask."""
    ealgos: int
    """Allowed encryption algorithms mask."""
    calgos: int
    """Allowed compression algorithms mask."""
    acquire_seq: int
    """``xfrm_user_acquire.seq``: put it in the SA's ``seq`` to answer this acquire."""


@dataclass(frozen=True, slots=True)
class Migrated(Event):
    """SAs and templates of a policy moved to new endpoints (MIGRATE)."""

    selector: Selector
    """Selector of the policy."""
    dir: int
    """Direction of the policy."""
    migrations: tuple[Migration, ...]
    """XFRMA_MIGRATE entries."""
    kmaddress: KmAddress | None
    """XFRMA_KMADDRESS when present."""


@dataclass(frozen=True, slots=True)
class MappingChanged(Event):
    """The NAT mapping of an inbound UDP-encapsulated SA changed (MAPPING)."""

    daddr: Address
    """Destination of the SA."""
    spi: int
    """SPI of the SA."""
    proto: int
    """Protocol of the SA."""
    reqid: int
    """reqid of the SA."""
    old_saddr: Address
    """Previous peer address."""
    new_saddr: Address
    """New peer address."""
    old_sport: int
    """Previous peer port."""
    new_sport: int
    """New peer port."""


@dataclass(frozen=True, slots=True)
class UnknownEvent(Event):
    """A message this module does not decode (or could not): kept raw."""

    type: int
    """``nlmsg_type``."""
    data: bytes
    """The whole message."""
    error: str | None = None
    """Why decoding failed, if it did."""


def _decode(cls: type[s.xfrm_attrs], data: bytes) -> s.xfrm_attrs:
    msg = cls(data)
    msg.decode()
    return msg


def _split(attrs: Iterable[object], kind: int) -> tuple[object | None, list[object]]:
    found = None
    rest = []
    for slot in attrs:
        if found is None and cv.attr_type(slot) == kind:
            found = slot
        else:
            rest.append(slot)
    return found, rest


def _event(raw: RawMessage) -> Event:
    t = raw.type
    seq, pid = raw.seq, raw.pid
    # The frequent ones (installs, replay updates) through the struct codec.
    if t in (c.XFRM_MSG_NEWSA, c.XFRM_MSG_UPDSA):
        return SaAdded(seq, pid, codec.sad_from_bytes(raw.data), t == c.XFRM_MSG_UPDSA)
    if t == c.XFRM_MSG_DELSA:
        msg = _decode(s.xfrm_usersa_id, raw.data)
        sa_slot, rest = _split(msg["attrs"], c.XFRMA_SA)
        entry = cv.sad_from_info(sa_slot.value, rest) if sa_slot is not None else None  # type: ignore[attr-defined]
        return SaDeleted(
            seq,
            pid,
            address_from_xfrm(msg["family"], msg["daddr"]),
            msg["spi"],
            msg["proto"],
            entry,
        )
    if t == c.XFRM_MSG_FLUSHSA:
        return SaFlushed(seq, pid, _decode(s.xfrm_usersa_flush, raw.data)["proto"])
    if t == c.XFRM_MSG_EXPIRE:
        msg = _decode(s.xfrm_user_expire, raw.data)
        return SaExpired(seq, pid, cv.sad_from_info(msg["state"], msg["attrs"]), bool(msg["hard"]))
    if t in (c.XFRM_MSG_NEWPOLICY, c.XFRM_MSG_UPDPOLICY):
        return PolicyAdded(seq, pid, codec.spd_from_bytes(raw.data), t == c.XFRM_MSG_UPDPOLICY)
    if t == c.XFRM_MSG_DELPOLICY:
        msg = _decode(s.xfrm_userpolicy_id, raw.data)
        pol_slot, rest = _split(msg["attrs"], c.XFRMA_POLICY)
        pentry = cv.spd_from_info(pol_slot.value, rest) if pol_slot is not None else None  # type: ignore[attr-defined]
        return PolicyDeleted(
            seq, pid, cv.selector_from_dict(msg["sel"]), msg["dir"], msg["index"], pentry
        )
    if t == c.XFRM_MSG_FLUSHPOLICY:
        msg = _decode(s.xfrm_flushpolicy, raw.data)
        ptype_slot, _ = _split(msg["attrs"], c.XFRMA_POLICY_TYPE)
        ptype = ptype_slot.value["type"] if ptype_slot is not None else None  # type: ignore[attr-defined]
        return PolicyFlushed(seq, pid, ptype)
    if t == c.XFRM_MSG_POLEXPIRE:
        msg = _decode(s.xfrm_user_polexpire, raw.data)
        return PolicyExpired(
            seq, pid, cv.spd_from_info(msg["pol"], msg["attrs"]), bool(msg["hard"])
        )
    if t == c.XFRM_MSG_NEWAE:
        daddr, spi, proto, saddr, reqid, flags = codec.aevent_id_from_bytes(raw.data)
        state = codec.ae_state_from_bytes(raw.data)
        return AeChanged(seq, pid, daddr, spi, proto, saddr, reqid, flags, state)
    if t == c.XFRM_MSG_ACQUIRE:
        msg = _decode(s.xfrm_user_acquire, raw.data)
        policy = cv.spd_from_info(msg["policy"], msg["attrs"])
        family = msg["sel"]["family"] or msg["policy"]["sel"]["family"]
        templates = policy.templates
        if templates:
            family = templates[0].family
        return Acquire(
            seq,
            pid,
            address_from_xfrm(family, msg["id"]["daddr"]),
            address_from_xfrm(family, msg["saddr"]),
            msg["id"]["proto"],
            cv.selector_from_dict(msg["sel"]),
            policy,
            templates,
            msg["aalgos"],
            msg["ealgos"],
            msg["calgos"],
            msg["seq"],
        )
    if t == c.XFRM_MSG_MIGRATE:
        msg = _decode(s.xfrm_migrate_msg, raw.data)
        migrations: tuple[Migration, ...] = ()
        kmaddress = None
        for slot in msg["attrs"]:
            kind = cv.attr_type(slot)
            if kind == c.XFRMA_MIGRATE:
                migrations = tuple(migration_from_dict(d) for d in slot.value)
            elif kind == c.XFRMA_KMADDRESS:
                v = slot.value
                kmaddress = KmAddress(
                    address_from_xfrm(v["family"], v["local"]),
                    address_from_xfrm(v["family"], v["remote"]),
                    v["reserved"],
                )
        return Migrated(
            seq, pid, cv.selector_from_dict(msg["sel"]), msg["dir"], migrations, kmaddress
        )
    if t == c.XFRM_MSG_MAPPING:
        msg = _decode(s.xfrm_user_mapping, raw.data)
        ident = msg["id"]
        family = ident["family"]
        return MappingChanged(
            seq,
            pid,
            address_from_xfrm(family, ident["daddr"]),
            ident["spi"],
            ident["proto"],
            msg["reqid"],
            address_from_xfrm(family, msg["old_saddr"]),
            address_from_xfrm(family, msg["new_saddr"]),
            msg["old_sport"],
            msg["new_sport"],
        )
    return UnknownEvent(seq, pid, t, raw.data)


def parse_events(data: bytes) -> list[Event]:
    """Decode one datagram from an XFRM multicast socket into events (sans-IO).

    A message that cannot be decoded becomes an ``UnknownEvent`` carrying the
    reason, so one odd message never hides the others.
    """
    events: list[Event] = []
    for raw in iter_messages(data):
        try:
            events.append(_event(raw))
        except Exception as exc:  # reported in the event, not lost
            events.append(
                UnknownEvent(raw.seq, raw.pid, raw.type, raw.data, f"{type(exc).__name__}: {exc}")
            )
    return events


class EventsOverrun(XfrmError):
    """The kernel dropped notifications because the reader was too slow (ENOBUFS)."""


async def xfrm_events(
    netns: str | None = None,
    groups: Iterable[int] = DEFAULT_GROUPS,
    *,
    rcvbuf: int = 32 << 20,
    subscribed: Callable[[], None] | None = None,
) -> AsyncIterator[Event]:
    """Yield XFRM notifications of ``netns`` as they arrive.

    Raises ``EventsOverrun`` when the kernel dropped messages (the caller
    should take a fresh dump); closing the generator closes the socket.
    ``subscribed`` is called once the socket is bound to the groups: a dump
    asked for from then on misses nothing that the events do not carry.
    """
    sock = open_xfrm_socket(netns, group_mask(groups), rcvbuf=rcvbuf)
    sock.setblocking(False)
    if subscribed is not None:
        subscribed()
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                data = await loop.sock_recv(sock, 1 << 20)
            except OSError as exc:
                if exc.errno == 105:  # ENOBUFS
                    raise EventsOverrun(
                        "XFRM events were lost (ENOBUFS): the listener fell behind; "
                        "re-read the SAD/SPD",
                        exc.errno,
                    ) from None
                raise
            for event in parse_events(data):
                yield event
    finally:
        sock.close()
