"""parse_events: datagrams from XFRM multicast groups become typed events (sans-IO)."""

import dataclasses
import ipaddress
import struct

import pytest

from appliance.model import AeadAlgorithm, KeyMaterial, SadEntry, Selector, SpdEntry, Template
from appliance.xfrm import codec, codec_migrate
from appliance.xfrm import constants as c
from appliance.xfrm.events import (
    MappingChanged,
    Migrated,
    PolicyAdded,
    PolicyDeleted,
    PolicyFlushed,
    SaAdded,
    SaDeleted,
    SaFlushed,
    UnknownEvent,
    parse_events,
)
from appliance.xfrm.netlink import iter_messages
from appliance.xfrm.types import KmAddress, Migration
from tests.xfrm.oracle import convert as cv
from tests.xfrm.oracle import structs as s
from tests.xfrm.oracle.events import oracle_event

pytestmark = pytest.mark.unit

A = ipaddress.ip_address
SA = SadEntry(
    daddr=A("192.0.2.2"),
    saddr=A("192.0.2.1"),
    spi=0x2001,
    mode=1,
    aead=AeadAlgorithm("rfc4106(gcm(aes))", 160, 128, KeyMaterial(bytes(20))),
)
POLICY = SpdEntry(
    selector=Selector(daddr=A("198.51.100.0"), prefixlen_d=24),
    dir=1,
    templates=(Template(daddr=A("192.0.2.2"), saddr=A("192.0.2.1"), mode=1),),
)


def test_one_datagram_with_several_notifications_gives_them_in_order() -> None:
    data = (
        codec.encode_sa(SA, c.XFRM_MSG_NEWSA, 0, 1, 0)
        + codec.encode_sa(SA, c.XFRM_MSG_UPDSA, 0, 2, 77)
        + codec.encode_policy(POLICY, c.XFRM_MSG_UPDPOLICY, 0, 3, 0)
    )
    events = parse_events(data)
    assert [type(e) for e in events] == [SaAdded, SaAdded, PolicyAdded]
    assert isinstance(events[0], SaAdded) and events[0].entry == SA and not events[0].updated
    assert isinstance(events[1], SaAdded) and events[1].updated and events[1].pid == 77
    assert isinstance(events[2], PolicyAdded) and events[2].entry == POLICY and events[2].updated


def test_delsa_notification_carries_the_deleted_sa() -> None:
    msg = s.xfrm_usersa_id()
    msg["header"].update({"type": c.XFRM_MSG_DELSA, "flags": 0, "sequence_number": 5})
    msg.update(
        {"daddr": A("192.0.2.2").packed + bytes(12), "spi": 0x2001, "family": 2, "proto": 50}
    )
    info = cv.sad_info_dict(SA)
    msg["attrs"] = [("XFRMA_SA", info), *cv._named(cv.sad_attr_values(SA))]
    [event] = parse_events(cv.encode_msg(msg))
    assert isinstance(event, SaDeleted)
    assert (event.daddr, event.spi, event.proto) == (A("192.0.2.2"), 0x2001, 50)
    assert event.entry == SA


def test_delpolicy_and_flush_notifications() -> None:
    msg = s.xfrm_userpolicy_id()
    msg["header"].update({"type": c.XFRM_MSG_DELPOLICY})
    msg.update({"sel": cv.selector_to_dict(POLICY.selector), "index": 9, "dir": 1})
    msg["attrs"] = [
        ("XFRMA_POLICY", cv.spd_info_dict(POLICY)),
        *cv._named(cv.spd_attr_values(POLICY)),
    ]
    flush_sa = s.xfrm_usersa_flush()
    flush_sa["header"]["type"] = c.XFRM_MSG_FLUSHSA
    flush_sa["proto"] = 255
    flush_sa["attrs"] = []
    flush_pol = s.xfrm_flushpolicy()
    flush_pol["header"]["type"] = c.XFRM_MSG_FLUSHPOLICY
    flush_pol["attrs"] = [("XFRMA_POLICY_TYPE", {"type": 1})]
    deleted, sa_flush, pol_flush = parse_events(
        cv.encode_msg(msg) + cv.encode_msg(flush_sa) + cv.encode_msg(flush_pol)
    )
    assert isinstance(deleted, PolicyDeleted) and deleted.entry == POLICY and deleted.index == 9
    assert isinstance(sa_flush, SaFlushed) and sa_flush.proto == 255
    assert isinstance(pol_flush, PolicyFlushed) and pol_flush.ptype == 1


def test_a_policy_deleted_by_selector_names_the_index_of_the_policy_attached() -> None:
    # The kernel echoes the request's xfrm_userpolicy_id: index 0 for a delete by selector.
    msg = s.xfrm_userpolicy_id()
    msg["header"].update({"type": c.XFRM_MSG_DELPOLICY})
    indexed = dataclasses.replace(POLICY, index=0x109)
    msg.update({"sel": cv.selector_to_dict(POLICY.selector), "index": 0, "dir": 1})
    msg["attrs"] = [("XFRMA_POLICY", cv.spd_info_dict(indexed))]
    (deleted,) = parse_events(cv.encode_msg(msg))
    assert isinstance(deleted, PolicyDeleted) and deleted.index == 0x109


def test_unknown_type_is_kept_raw() -> None:
    data = struct.pack("=IHHII", 20, 0x7F, 0, 1, 0) + b"abcd"
    [event] = parse_events(data)
    assert isinstance(event, UnknownEvent) and event.type == 0x7F and event.data == data


def test_malformed_notification_becomes_unknown_event_with_reason() -> None:
    good = codec.encode_sa(SA, c.XFRM_MSG_NEWSA, 0, 1, 0)
    short = struct.pack("=IHHII", 20, c.XFRM_MSG_NEWSA, 0, 2, 0) + b"\0\0\0\0"
    events = parse_events(short + good)
    assert isinstance(events[0], UnknownEvent) and events[0].error
    assert isinstance(events[1], SaAdded)


def test_truncated_datagram_is_an_error() -> None:
    data = codec.encode_sa(SA)
    with pytest.raises(ValueError, match="truncated netlink message"):
        parse_events(data[:-8])


def test_mapping_notification_decodes_as_the_oracle_does() -> None:
    msg = s.xfrm_user_mapping()
    msg["header"].update({"type": c.XFRM_MSG_MAPPING, "sequence_number": 4})
    msg["id"] = {"daddr": A("2001:db8::1").packed, "spi": 0x2001, "family": 10, "proto": 50}
    msg.update(
        {
            "reqid": 8,
            "old_saddr": A("2001:db8::2").packed,
            "new_saddr": A("2001:db8::3").packed,
            "old_sport": 4500,
            "new_sport": 4501,
        }
    )
    msg["attrs"] = []
    data = cv.encode_msg(msg)
    [event] = parse_events(data)
    assert event == oracle_event(next(iter_messages(data)))
    assert isinstance(event, MappingChanged)
    assert (event.spi, event.new_saddr, event.old_sport, event.new_sport) == (
        0x2001,
        A("2001:db8::3"),
        4500,
        4501,
    )


def test_migrate_notification_with_kmaddress_decodes_as_the_oracle_does() -> None:
    # A MIGRATE notification has the request's layout.
    moves = (
        Migration(A("192.0.2.2"), A("192.0.2.1"), A("2001:db8::2"), A("2001:db8::1"), reqid=3),
    )
    km = KmAddress(A("2001:db8::1"), A("2001:db8::2"))
    data = codec_migrate.encode_migrate(5, POLICY.selector, 1, moves, kmaddress=km)
    [event] = parse_events(data)
    assert event == oracle_event(next(iter_messages(data)))
    assert isinstance(event, Migrated) and event.migrations == moves and event.kmaddress == km


def test_truncated_expire_becomes_unknown_event_with_reason() -> None:
    sa = codec.encode_sa(SA, c.XFRM_MSG_NEWSA, 0, 1, 0)
    short = struct.pack("=IHHII", len(sa), c.XFRM_MSG_EXPIRE, 0, 1, 0) + sa[16:]
    [event] = parse_events(short)  # 224 + 40 bytes: no room for the 232-byte xfrm_user_expire
    assert isinstance(event, UnknownEvent) and event.error
