"""The oracle's notification decoder: one XFRM message -> the typed event, through ``structs``.

``appliance.xfrm.events.parse_events`` decodes with the product's codec;
``test_xfrm_events`` and ``test_xfrm_recordings`` hold it to this decoder,
which reads the message through the pyroute2 declarations instead.
"""

from __future__ import annotations

from typing import Any

from appliance.model import address_from_xfrm
from appliance.xfrm import constants as c
from appliance.xfrm.events import (
    Acquire,
    AeChanged,
    Event,
    MappingChanged,
    Migrated,
    PolicyAdded,
    PolicyDeleted,
    PolicyExpired,
    PolicyFlushed,
    SaAdded,
    SaDeleted,
    SaExpired,
    SaFlushed,
    UnknownEvent,
)
from appliance.xfrm.netlink import RawMessage
from appliance.xfrm.types import KmAddress, Migration
from tests.xfrm.oracle import convert as cv
from tests.xfrm.oracle import structs as s


def decode(cls: type[s.xfrm_attrs], data: bytes) -> Any:
    """A declarative message decoded from ``data``."""
    msg = cls(data)
    msg.decode()
    return msg


def _split(attrs: Any, kind: int) -> tuple[Any, list[Any]]:
    found = None
    rest = []
    for slot in attrs:
        if found is None and cv.attr_type(slot) == kind:
            found = slot
        else:
            rest.append(slot)
    return found, rest


def oracle_event(raw: RawMessage) -> Event:
    """The event ``raw`` is, decoded through the declarative classes."""
    t, seq, pid = raw.type, raw.seq, raw.pid
    if t in (c.XFRM_MSG_NEWSA, c.XFRM_MSG_UPDSA):
        msg = decode(s.xfrm_usersa_info, raw.data)
        return SaAdded(seq, pid, cv.sad_from_msg(msg), t == c.XFRM_MSG_UPDSA)
    if t == c.XFRM_MSG_DELSA:
        msg = decode(s.xfrm_usersa_id, raw.data)
        sa_slot, rest = _split(msg["attrs"], c.XFRMA_SA)
        entry = cv.sad_from_info(sa_slot.value, rest) if sa_slot is not None else None
        daddr = address_from_xfrm(msg["family"], msg["daddr"])
        return SaDeleted(seq, pid, daddr, msg["spi"], msg["proto"], entry)
    if t == c.XFRM_MSG_FLUSHSA:
        return SaFlushed(seq, pid, decode(s.xfrm_usersa_flush, raw.data)["proto"])
    if t == c.XFRM_MSG_EXPIRE:
        msg = decode(s.xfrm_user_expire, raw.data)
        return SaExpired(seq, pid, cv.sad_from_info(msg["state"], msg["attrs"]), bool(msg["hard"]))
    if t in (c.XFRM_MSG_NEWPOLICY, c.XFRM_MSG_UPDPOLICY):
        msg = decode(s.xfrm_userpolicy_info, raw.data)
        return PolicyAdded(seq, pid, cv.spd_from_msg(msg), t == c.XFRM_MSG_UPDPOLICY)
    if t == c.XFRM_MSG_DELPOLICY:
        msg = decode(s.xfrm_userpolicy_id, raw.data)
        pol_slot, rest = _split(msg["attrs"], c.XFRMA_POLICY)
        pentry = cv.spd_from_info(pol_slot.value, rest) if pol_slot is not None else None
        selector = cv.selector_from_dict(msg["sel"])
        # The event names the deleted policy's index: a delete by selector echoes index 0.
        index = msg["index"] or (pentry.index if pentry is not None else 0)
        return PolicyDeleted(seq, pid, selector, msg["dir"], index, pentry)
    if t == c.XFRM_MSG_FLUSHPOLICY:
        msg = decode(s.xfrm_flushpolicy, raw.data)
        ptype_slot, _ = _split(msg["attrs"], c.XFRMA_POLICY_TYPE)
        return PolicyFlushed(seq, pid, None if ptype_slot is None else ptype_slot.value["type"])
    if t == c.XFRM_MSG_POLEXPIRE:
        msg = decode(s.xfrm_user_polexpire, raw.data)
        entry = cv.spd_from_info(msg["pol"], msg["attrs"])
        return PolicyExpired(seq, pid, entry, bool(msg["hard"]))
    if t == c.XFRM_MSG_NEWAE:
        msg = decode(s.xfrm_aevent_id, raw.data)
        sa_id = msg["sa_id"]
        family = sa_id["family"]
        return AeChanged(
            seq,
            pid,
            address_from_xfrm(family, sa_id["daddr"]),
            sa_id["spi"],
            sa_id["proto"],
            address_from_xfrm(family, msg["saddr"]),
            msg["reqid"],
            msg["flags"],
            cv.ae_state_from_msg(msg),
        )
    if t == c.XFRM_MSG_ACQUIRE:
        msg = decode(s.xfrm_user_acquire, raw.data)
        policy = cv.spd_from_info(msg["policy"], msg["attrs"])
        family = msg["sel"]["family"] or msg["policy"]["sel"]["family"]
        if policy.templates:
            family = policy.templates[0].family
        return Acquire(
            seq,
            pid,
            address_from_xfrm(family, msg["id"]["daddr"]),
            address_from_xfrm(family, msg["saddr"]),
            msg["id"]["proto"],
            cv.selector_from_dict(msg["sel"]),
            policy,
            policy.templates,
            msg["aalgos"],
            msg["ealgos"],
            msg["calgos"],
            msg["seq"],
        )
    if t == c.XFRM_MSG_MIGRATE:
        msg = decode(s.xfrm_migrate_msg, raw.data)
        migrations: tuple[Migration, ...] = ()
        kmaddress = None
        for slot in msg["attrs"]:
            kind = cv.attr_type(slot)
            if kind == c.XFRMA_MIGRATE:
                migrations = tuple(cv.migration_from_dict(d) for d in slot.value)
            elif kind == c.XFRMA_KMADDRESS:
                v = slot.value
                kmaddress = KmAddress(
                    address_from_xfrm(v["family"], v["local"]),
                    address_from_xfrm(v["family"], v["remote"]),
                    v["reserved"],
                )
        selector = cv.selector_from_dict(msg["sel"])
        return Migrated(seq, pid, selector, msg["dir"], migrations, kmaddress)
    if t == c.XFRM_MSG_MAPPING:
        msg = decode(s.xfrm_user_mapping, raw.data)
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
