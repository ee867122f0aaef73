"""The address-dump codec against recorded kernel bytes and pyroute2's own ifaddrmsg."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from appliance.rtnl import codec
from appliance.rtnl.codec import DumpDone, InterfaceAddress

pytestmark = pytest.mark.unit

# Linux 6.x, an RTM_GETADDR dump (seq 7) of a namespace holding lo (127.0.0.1/8, ::1), a veth
# pair d0/d1 up, and on d0 198.51.100.1/24, 203.0.113.1 peer 203.0.113.2/32 and
# 2001:db8::1/64: seven RTM_NEWADDR in one datagram, then NLMSG_DONE in the next.
RECORDED_ADDRESSES = bytes.fromhex(
    "4c0000001400020007000000e5130000020880fe01000000080001007f000001080002007f00000107000300"
    "6c6f0000080008008000000014000600ffffffffffffffffde833300de8333004c0000001400020007000000"
    "e5130000021880000300000008000100c633640108000200c633640107000300643000000800080080000000"
    "14000600ffffffffffffffffdf833300df8333004c0000001400020007000000e51300000220800003000000"
    "08000100cb00710208000200cb0071010700030064300000080008008000000014000600ffffffffffffffff"
    "df833300df833300500000001400020007000000e51300000a8080fe01000000140001000000000000000000"
    "000000000000000114000600ffffffffffffffffde833300de833300080008008000000005000b0001000000"
    "500000001400020007000000e51300000a40c0fd0200000014000100fe80000000000000844fc8fffea2e2dc"
    "14000600ffffffffffffffffde833300de83330008000800c000000005000b00030000004800000014000200"
    "07000000e51300000a408200030000001400010020010db800000000000000000000000114000600ffffffff"
    "ffffffffdf833300df8333000800080082000000500000001400020007000000e51300000a40c0fd03000000"
    "14000100fe800000000000003cbbb8fffed0223c14000600ffffffffffffffffde833300de83330008000800"
    "c000000005000b0003000000"
)
RECORDED_DONE = bytes.fromhex("140000000300020007000000e513000000000000")


def test_the_dump_request_is_a_header_and_an_empty_ifaddrmsg() -> None:
    request = codec.encode_getaddr_dump(7)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", request)
    assert (length, kind, seq, pid) == (len(request), codec.RTM_GETADDR, 7, 0)
    assert flags == codec.NLM_F_REQUEST | codec.NLM_F_DUMP
    oracle = ifaddrmsg(request)
    oracle.decode()
    assert (oracle["family"], oracle["prefixlen"], oracle["index"]) == (socket.AF_UNSPEC, 0, 0)


def test_a_family_other_than_ip_is_refused() -> None:
    with pytest.raises(ValueError, match="address family 17"):
        codec.encode_getaddr_dump(1, family=17)


def _oracle_messages(buf: bytes) -> list[ifaddrmsg]:
    """Every RTM_NEWADDR of a datagram, decoded by pyroute2's declaration."""
    found, offset = [], 0
    while offset < len(buf):
        length, kind = struct.unpack_from("=IH", buf, offset)
        if kind == codec.RTM_NEWADDR:
            msg = ifaddrmsg(buf[offset : offset + length])
            msg.decode()
            found.append(msg)
        offset += (length + 3) & ~3
    return found


def test_recorded_addresses_match_pyroute2s_declaration() -> None:
    events = codec.decode(RECORDED_ADDRESSES)
    oracle = _oracle_messages(RECORDED_ADDRESSES)
    assert len(events) == len(oracle) == 7
    for event, msg in zip(events, oracle, strict=True):
        assert isinstance(event, InterfaceAddress)
        assert (event.index, event.prefixlen, event.scope) == (
            msg["index"],
            msg["prefixlen"],
            msg["scope"],
        )
        local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        assert event.local == ipaddress.ip_address(local.split("%")[0])
        assert not event.interrupted


def test_a_point_to_point_address_is_the_local_end_not_the_peer() -> None:
    locals_ = [e.local for e in codec.decode(RECORDED_ADDRESSES) if isinstance(e, InterfaceAddress)]
    assert ipaddress.ip_address("203.0.113.1") in locals_
    assert ipaddress.ip_address("203.0.113.2") not in locals_  # IFA_ADDRESS: the peer
    assert ipaddress.ip_address("2001:db8::1") in locals_  # IPv6: IFA_ADDRESS only


def test_the_recorded_done_ends_the_dump() -> None:
    assert codec.decode(RECORDED_DONE) == [DumpDone(seq=7, error=0, interrupted=False)]


def test_an_interrupted_dump_is_flagged() -> None:
    first = bytearray(RECORDED_ADDRESSES[:76])
    struct.pack_into("=H", first, 6, codec.NLM_F_DUMP_INTR | 0x2)  # NLM_F_MULTI | DUMP_INTR
    (event,) = codec.decode(bytes(first))
    assert isinstance(event, InterfaceAddress) and event.interrupted


def test_a_refused_dump_reports_the_errno() -> None:
    request = codec.encode_getaddr_dump(9)
    error = struct.pack("=IHHII", 16 + 4 + len(request), codec.NLMSG_ERROR, 0, 9, 0)
    error += struct.pack("=i", -1) + request
    assert codec.decode(error) == [DumpDone(seq=9, error=-1, interrupted=False)]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:40], "truncated netlink message"),
        (lambda b: struct.pack("=I", 200) + b[4:76], "truncated netlink message"),
        (lambda b: b[:24] + struct.pack("=HH", 2, 1) + b[28:76], "truncated attribute"),
        (lambda b: b[:24] + struct.pack("=HH", 7, 1) + b[28:76], "address attribute 1 of 3 bytes"),
    ],
)
def test_malformed_datagrams_are_value_errors(damage, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        codec.decode(damage(RECORDED_ADDRESSES[:76]))


def test_an_address_message_without_an_address_is_refused() -> None:
    header = struct.pack("=IHHII", 24, codec.RTM_NEWADDR, 2, 7, 0) + struct.pack(
        "=BBBBI", 2, 8, 0, 0, 1
    )
    with pytest.raises(ValueError, match="carries no address"):
        codec.decode(header)


def test_other_families_and_message_types_are_skipped() -> None:
    other_family = struct.pack("=IHHII", 24, codec.RTM_NEWADDR, 2, 7, 0) + struct.pack(
        "=BBBBI", socket.AF_PACKET, 0, 0, 0, 1
    )
    other_type = struct.pack("=IHHII", 16, 99, 0, 7, 0)
    assert codec.decode(other_family + other_type) == []
