"""XFRM notifications as small typed events.

``parse_events(data)`` is the sans-IO core: it turns one datagram from an
XFRM multicast socket into events, each message through the decoder that
``EVENT_DECODERS`` names for its type (SAs, policies and AE through
``codec``, MIGRATE through ``codec_migrate``; the fixed parts that only
notifications carry are laid out here).  ``xfrm_events(netns, groups)`` is the
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
import struct
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from appliance.model import Address, SadEntry, Selector, SpdEntry, Template, address_from_xfrm
from appliance.xfrm import codec, codec_migrate
from appliance.xfrm import constants as c
from appliance.xfrm.netlink import RawMessage, iter_messages
from appliance.xfrm.socket import group_mask, open_xfrm_socket
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


EntryT = TypeVar("EntryT", SadEntry, SpdEntry)


@dataclass(frozen=True, slots=True)
class _EntryAdded(Event, Generic[EntryT]):
    """An SA or a policy was added or updated: ``SaAdded`` and ``PolicyAdded``."""

    entry: EntryT
    """The SA or policy as it now is."""
    updated: bool
    """True for UPDSA and UPDPOLICY."""


@dataclass(frozen=True, slots=True)
class _EntryExpired(Event, Generic[EntryT]):
    """An SA or a policy reached a limit: ``SaExpired`` and ``PolicyExpired``."""

    entry: EntryT
    """The SA or policy."""
    hard: bool
    """True: it is gone; False: soft limit, rekey now."""


@dataclass(frozen=True, slots=True)
class SaAdded(_EntryAdded[SadEntry]):
    """An SA was added (NEWSA) or updated (UPDSA)."""


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
class SaExpired(_EntryExpired[SadEntry]):
    """An SA reached a soft or hard limit (EXPIRE)."""


@dataclass(frozen=True, slots=True)
class PolicyAdded(_EntryAdded[SpdEntry]):
    """A policy was added (NEWPOLICY) or updated (UPDPOLICY)."""


@dataclass(frozen=True, slots=True)
class PolicyDeleted(Event):
    """A policy was deleted (DELPOLICY)."""

    selector: Selector
    """Selector of the deleted policy."""
    dir: int
    """XFRM_POLICY_IN/OUT/FWD."""
    index: int
    """Kernel index of the policy. A delete by selector (charon's, ``ip xfrm policy
    delete``) names index 0 in its ``xfrm_userpolicy_id``; the index is then the one of
    the policy the kernel attached (0 only if it attached none)."""
    entry: SpdEntry | None
    """The deleted policy, when the kernel included it (XFRMA_POLICY)."""


@dataclass(frozen=True, slots=True)
class PolicyFlushed(Event):
    """Policies were flushed."""

    ptype: int | None
    """XFRMA_POLICY_TYPE when given (0 main, 1 sub)."""


@dataclass(frozen=True, slots=True)
class PolicyExpired(_EntryExpired[SpdEntry]):
    """A policy reached a soft or hard limit (POLEXPIRE)."""


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


# ---------------------------------------------------------------------------
# Decoders, one per message type. The fixed parts below are those only
# notifications carry; SAs, policies, AE and MIGRATE go through their codec.

_EXPIRE_SIZE = codec.USERSA_INFO_SIZE + 8
"""``struct xfrm_user_expire { struct xfrm_usersa_info state; __u8 hard; }`` (232 bytes)."""
_POLEXPIRE_SIZE = codec.USERPOLICY_INFO_SIZE + 8
"""``struct xfrm_user_polexpire { struct xfrm_userpolicy_info pol; __u8 hard; }`` (176 bytes)."""
_ACQUIRE_ID = struct.Struct("=16sIB3x16s")
"""The head of ``struct xfrm_user_acquire { struct xfrm_id id {xfrm_address_t daddr; __be32 spi;
__u8 proto;}; xfrm_address_t saddr; struct xfrm_selector sel; struct xfrm_userpolicy_info
policy; __u32 aalgos, ealgos, calgos; __u32 seq; }`` (280 bytes)."""
_ACQUIRE_SEL = _ACQUIRE_ID.size
_ACQUIRE_POLICY = _ACQUIRE_SEL + codec.SELECTOR_SIZE
_ACQUIRE_TAIL = struct.Struct("=IIII")
"""``aalgos``, ``ealgos``, ``calgos`` and ``seq`` of ``struct xfrm_user_acquire``."""
_ACQUIRE_SIZE = _ACQUIRE_POLICY + codec.USERPOLICY_INFO_SIZE + _ACQUIRE_TAIL.size
_MAPPING_TAIL = struct.Struct("=I16s16sHH")
"""``struct xfrm_user_mapping { struct xfrm_usersa_id id; __u32 reqid; xfrm_address_t
old_saddr, new_saddr; __be16 old_sport, new_sport; }`` after ``id`` (64 bytes in all)."""


def _attrs(data: bytes, fixed: int) -> list[tuple[int, bytes]]:
    """The attributes after a fixed part of ``fixed`` bytes."""
    return codec.unpack_attrs(data, 16 + fixed, len(data))


def _split(
    attrs: list[tuple[int, bytes]], kind: int
) -> tuple[bytes | None, list[tuple[int, bytes]]]:
    """The payload of the first ``kind`` attribute, and the others."""
    for at, (found, payload) in enumerate(attrs):
        if found == kind:
            return payload, attrs[:at] + attrs[at + 1 :]
    return None, attrs


def _sa_added(raw: RawMessage) -> Event:
    updated = raw.type == c.XFRM_MSG_UPDSA
    return SaAdded(raw.seq, raw.pid, codec.sad_from_bytes(raw.data), updated)


def _sa_deleted(raw: RawMessage) -> Event:
    """DELSA: ``xfrm_usersa_id``, the SA in XFRMA_SA, its attributes after."""
    daddr, spi, _, proto = codec.sa_id_from_bytes(raw.data, 16)
    info, rest = _split(_attrs(raw.data, codec.USERSA_ID_SIZE), c.XFRMA_SA)
    entry = None if info is None else codec.sad_from_parts(info, 0, rest)
    return SaDeleted(raw.seq, raw.pid, daddr, spi, proto, entry)


def _sa_flushed(raw: RawMessage) -> Event:
    """FLUSHSA: ``struct xfrm_usersa_flush { __u8 proto; }``."""
    return SaFlushed(raw.seq, raw.pid, raw.data[16])


def _sa_expired(raw: RawMessage) -> Event:
    entry = codec.sad_from_parts(raw.data, 16, _attrs(raw.data, _EXPIRE_SIZE))
    return SaExpired(raw.seq, raw.pid, entry, bool(raw.data[16 + codec.USERSA_INFO_SIZE]))


def _policy_added(raw: RawMessage) -> Event:
    updated = raw.type == c.XFRM_MSG_UPDPOLICY
    return PolicyAdded(raw.seq, raw.pid, codec.spd_from_bytes(raw.data), updated)


def _policy_deleted(raw: RawMessage) -> Event:
    """DELPOLICY: ``xfrm_userpolicy_id``, the policy in XFRMA_POLICY, its attributes after."""
    selector, index, dir = codec.policy_id_from_bytes(raw.data, 16)
    info, rest = _split(_attrs(raw.data, codec.USERPOLICY_ID_SIZE), c.XFRMA_POLICY)
    entry = None if info is None else codec.spd_from_parts(info, 0, rest)
    if index == 0 and entry is not None:
        index = entry.index  # deleted by selector: the notification echoes the request's 0
    return PolicyDeleted(raw.seq, raw.pid, selector, dir, index, entry)


def _policy_flushed(raw: RawMessage) -> Event:
    """FLUSHPOLICY: no fixed part; XFRMA_POLICY_TYPE when the flush named a type."""
    ptype, _ = _split(_attrs(raw.data, 0), c.XFRMA_POLICY_TYPE)
    return PolicyFlushed(raw.seq, raw.pid, None if ptype is None else ptype[0])


def _policy_expired(raw: RawMessage) -> Event:
    entry = codec.spd_from_parts(raw.data, 16, _attrs(raw.data, _POLEXPIRE_SIZE))
    return PolicyExpired(raw.seq, raw.pid, entry, bool(raw.data[16 + codec.USERPOLICY_INFO_SIZE]))


def _ae_changed(raw: RawMessage) -> Event:
    daddr, spi, proto, saddr, reqid, flags = codec.aevent_id_from_bytes(raw.data)
    state = codec.ae_state_from_bytes(raw.data)
    return AeChanged(raw.seq, raw.pid, daddr, spi, proto, saddr, reqid, flags, state)


def _acquire(raw: RawMessage) -> Event:
    data = raw.data
    daddr, _, proto, saddr = _ACQUIRE_ID.unpack_from(data, 16)
    selector = codec.selector_from_bytes(data, 16 + _ACQUIRE_SEL)
    policy = codec.spd_from_parts(data, 16 + _ACQUIRE_POLICY, _attrs(data, _ACQUIRE_SIZE))
    aalgos, ealgos, calgos, acquire_seq = _ACQUIRE_TAIL.unpack_from(
        data, 16 + _ACQUIRE_SIZE - _ACQUIRE_TAIL.size
    )
    # The addresses are the template's (the SA to negotiate), in its family.
    family = selector.family or policy.selector.family
    if policy.templates:
        family = policy.templates[0].family
    return Acquire(
        raw.seq,
        raw.pid,
        address_from_xfrm(family, daddr),
        address_from_xfrm(family, saddr),
        proto,
        selector,
        policy,
        policy.templates,
        aalgos,
        ealgos,
        calgos,
        acquire_seq,
    )


def _migrated(raw: RawMessage) -> Event:
    selector, _, dir = codec.policy_id_from_bytes(raw.data, 16)
    migrations: tuple[Migration, ...] = ()
    kmaddress = None
    for kind, payload in _attrs(raw.data, codec.USERPOLICY_ID_SIZE):
        if kind == c.XFRMA_MIGRATE:
            migrations = codec_migrate.migrations_from(payload)
        elif kind == c.XFRMA_KMADDRESS:
            kmaddress = codec_migrate.kmaddress_from(payload)
    return Migrated(raw.seq, raw.pid, selector, dir, migrations, kmaddress)


def _mapping_changed(raw: RawMessage) -> Event:
    daddr, spi, family, proto = codec.sa_id_from_bytes(raw.data, 16)
    reqid, old_saddr, new_saddr, old_sport, new_sport = _MAPPING_TAIL.unpack_from(
        raw.data, 16 + codec.USERSA_ID_SIZE
    )
    return MappingChanged(
        raw.seq,
        raw.pid,
        daddr,
        spi,
        proto,
        reqid,
        address_from_xfrm(family, old_saddr),
        address_from_xfrm(family, new_saddr),
        codec.swap16(old_sport),
        codec.swap16(new_sport),
    )


EVENT_DECODERS: dict[int, Callable[[RawMessage], Event]] = {
    c.XFRM_MSG_NEWSA: _sa_added,
    c.XFRM_MSG_UPDSA: _sa_added,
    c.XFRM_MSG_DELSA: _sa_deleted,
    c.XFRM_MSG_FLUSHSA: _sa_flushed,
    c.XFRM_MSG_EXPIRE: _sa_expired,
    c.XFRM_MSG_NEWPOLICY: _policy_added,
    c.XFRM_MSG_UPDPOLICY: _policy_added,
    c.XFRM_MSG_DELPOLICY: _policy_deleted,
    c.XFRM_MSG_FLUSHPOLICY: _policy_flushed,
    c.XFRM_MSG_POLEXPIRE: _policy_expired,
    c.XFRM_MSG_NEWAE: _ae_changed,
    c.XFRM_MSG_ACQUIRE: _acquire,
    c.XFRM_MSG_MIGRATE: _migrated,
    c.XFRM_MSG_MAPPING: _mapping_changed,
}
"""Notification type -> its decoder; other types become ``UnknownEvent``."""


def parse_events(data: bytes) -> list[Event]:
    """Decode one datagram from an XFRM multicast socket into events (sans-IO).

    A message that cannot be decoded becomes an ``UnknownEvent`` carrying the
    reason, so one odd message never hides the others.
    """
    events: list[Event] = []
    for raw in iter_messages(data):
        decode = EVENT_DECODERS.get(raw.type)
        if decode is None:
            events.append(UnknownEvent(raw.seq, raw.pid, raw.type, raw.data))
            continue
        try:
            events.append(decode(raw))
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
            # While notifications keep coming, sock_recv returns at once and never lets
            # the loop run other tasks: yield once per datagram read (a burst of async
            # events after a takeover held a daemon's loop for 11 to 14 s in the lab).
            await asyncio.sleep(0)
    finally:
        sock.close()
