"""The sans-IO codec against bytes assembled by hand and bytes recorded from Linux 6.18.

The per-packet messages (queued packet in, verdict out) are coded with
precompiled structs; the pyroute2-style declarations in ``messages`` are
the reference they must match, field for field and byte for byte.
"""

from __future__ import annotations

import errno
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.nfqueue import NetlinkError, QueuedPacket, decode
from appliance.nfqueue import codec as nfq
from appliance.nfqueue import constants as c
from appliance.nfqueue.messages import nfqnl_config_msg, nfqnl_packet_msg

pytestmark = pytest.mark.unit


def nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes(-length % 4)


def nlmsg(kind: int, flags: int, seq: int, res_id: int, body: bytes, family: int = 0) -> bytes:
    payload = struct.pack("!BBH", family, 0, res_id) + body
    return struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 0) + payload


# One IPv6 ESP packet (SPI 0x1234, 100 bytes of 'x'), queue 5, copy range 64: what
# the kernel sent, recorded on the dev host (NFQA_PACKET_HDR, IFINDEX_INDEV,
# HWADDR, CAP_LEN, SKB_INFO, PAYLOAD).
RECORDED_IPV6_ESP = bytes.fromhex(
    "8c0000000003000000000000000000000a0000050b0001000000000186dd01000800050000000001"
    "1000090000060000000000000000000008000d000000009408000e000000000444000a0060079"
    "9b7006c324020010db800000000000000000000000120010db8000000000000000000000001000"
    "012340000000178787878787878787878787878787878"
)
# IPv4 ESP (SPI 0x1234, seq 7) queued by a rule that set mark 7, copy range 512 (no
# CAP_LEN: the whole packet fits); and IPv4 UDP of 200 bytes cut at copy range 40.
RECORDED_IPV4_ESP_MARK = bytes.fromhex(
    "78000000000300000000000000000000020000050b0001000000000108000100080005000000000108"
    "000300000000071000090000060000000000000000000008000e000000000430000a004500002c984b"
    "400040321e52c0000201c0000201000012340000000779797979797979797979797979797979"
)
RECORDED_IPV4_UDP_CUT = bytes.fromhex(
    "6c000000000300000000000000000000020000050b000100000000010800010008000500000000011000"
    "090000060000000000000000000008000d00000000e42c000a00450000e415cf40004011a037c0000201"
    "c0000201be59270f00d0bd0a7a7a7a7a7a7a7a7a7a7a7a7a"
)
RECORDED = [RECORDED_IPV6_ESP, RECORDED_IPV4_ESP_MARK, RECORDED_IPV4_UDP_CUT]


def reference_packet(data: bytes) -> QueuedPacket:
    """What the pyroute2 declaration reads from one NFQNL_MSG_PACKET."""
    msg = nfqnl_packet_msg(data)
    msg.decode()
    hdr = msg.get_attr("NFQA_PACKET_HDR")
    payload = msg.get_attr("NFQA_PAYLOAD") or b""
    cap_len = msg.get_attr("NFQA_CAP_LEN")
    return QueuedPacket(
        queue_num=msg["res_id"],
        packet_id=hdr["packet_id"],
        hw_protocol=hdr["hw_protocol"],
        hook=hdr["hook"],
        payload=bytes(payload),
        length=len(payload) if cap_len is None else cap_len,
        indev=msg.get_attr("NFQA_IFINDEX_INDEV"),
        mark=msg.get_attr("NFQA_MARK") or 0,
    )


def reference_verdict(kind: int, queue_num: int, packet_id: int, accept: bool, seq: int) -> bytes:
    msg = nfqnl_packet_msg()
    msg.update({"nfgen_family": 0, "version": 0, "res_id": queue_num})
    msg["attrs"] = [("NFQA_VERDICT_HDR", {"verdict": int(accept), "id": packet_id})]
    msg["header"].update({"type": c.msg_type(kind), "flags": 1, "sequence_number": seq, "pid": 0})
    msg.encode()
    return bytes(msg.data)


def test_bind_bytes() -> None:
    expected = nlmsg(
        0x0302,  # NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_CONFIG
        0x05,  # NLM_F_REQUEST | NLM_F_ACK
        9,
        7,
        nla(1, struct.pack("!BxH", 1, 0))  # NFQA_CFG_CMD: BIND
        + nla(2, struct.pack("!IB", 512, 2))  # NFQA_CFG_PARAMS: 512 bytes, COPY_PACKET
        + nla(3, struct.pack("!I", 100))  # NFQA_CFG_QUEUE_MAXLEN
        + nla(5, struct.pack("!I", 0))  # NFQA_CFG_FLAGS: fail-open off ...
        + nla(4, struct.pack("!I", 1)),  # NFQA_CFG_MASK: ... and that flag only
    )
    assert nfq.encode_bind(7, 9, copy_range=512, maxlen=100) == expected


def test_bind_fail_open_and_no_maxlen() -> None:
    data = nfq.encode_bind(1, 1, fail_open=True)
    msg = nfqnl_config_msg(data)
    msg.decode()
    assert msg.get_attr("NFQA_CFG_FLAGS") == 1
    assert msg.get_attr("NFQA_CFG_QUEUE_MAXLEN") is None
    assert msg.get_attr("NFQA_CFG_PARAMS")["copy_range"] == 0xFFFF


def test_unbind_bytes() -> None:
    assert nfq.encode_unbind(65535, 3) == nlmsg(0x0302, 0x05, 3, 65535, nla(1, b"\x02\0\0\0"))


@pytest.mark.parametrize(("accept", "code"), [(True, 1), (False, 0)])
def test_verdict_bytes(accept: bool, code: int) -> None:
    expected = nlmsg(0x0301, 0x01, 4, 5, nla(2, struct.pack("!II", code, 0xDEADBEEF)))
    assert nfq.encode_verdict(5, 0xDEADBEEF, accept, 4) == expected


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: nfq.encode_bind(65536, 1), "queue number 65536 is outside 0-65535"),
        (lambda: nfq.encode_bind(-1, 1), "queue number -1 is outside"),
        (lambda: nfq.encode_bind(1, 1, copy_range=0), "copy range 0 is outside 1-65535"),
        (lambda: nfq.encode_bind(1, 1, maxlen=0), "queue length 0 is outside"),
        (lambda: nfq.encode_verdict(1, 1 << 32, True, 1), "is not a 32-bit number"),
        (lambda: nfq.encode_unbind(70000, 1), "queue number 70000"),
    ],
)
def test_bad_requests_are_refused(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


@pytest.mark.parametrize("data", RECORDED, ids=["ipv6-esp", "ipv4-esp-mark", "ipv4-udp-cut"])
def test_decode_matches_the_pyroute2_declaration_on_recorded_messages(data: bytes) -> None:
    (event,) = decode(data)
    assert event == reference_packet(data)


def test_decode_recorded_ipv4_messages() -> None:
    (esp,) = decode(RECORDED_IPV4_ESP_MARK)
    (udp,) = decode(RECORDED_IPV4_UDP_CUT)
    assert isinstance(esp, QueuedPacket) and isinstance(udp, QueuedPacket)
    assert (esp.queue_num, esp.hw_protocol, esp.mark, esp.indev) == (5, 0x0800, 7, 1)
    assert esp.length == len(esp.payload) == 44
    assert esp.payload[20:28] == struct.pack("!II", 0x1234, 7)
    assert (udp.length, len(udp.payload), udp.mark) == (228, 40, 0)


# Attribute numbers with a payload the kernel could send (fixed sizes where the kernel's are).
_ATTRS = st.one_of(
    st.tuples(st.just(1), st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF),
                                    st.integers(0, 255)).map(lambda t: struct.pack("!IHB", *t))),
    st.tuples(st.sampled_from([3, 5, 6, 7, 8, 12, 13, 14, 16, 17, 21, 22]),
              st.integers(0, 2**32 - 1).map(lambda v: struct.pack("!I", v))),
    st.tuples(st.just(4), st.binary(min_size=16, max_size=16)),
    st.tuples(st.sampled_from([9, 10, 11, 15, 18, 19, 20, 30]), st.binary(max_size=80)),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    hdr=_ATTRS.filter(lambda a: a[0] == 1),
    attrs=st.lists(_ATTRS, max_size=8),
    flags=st.sampled_from([0, c.NLA_F_NESTED, c.NLA_F_NET_BYTEORDER]),
    queue_num=st.integers(0, 0xFFFF),
    family=st.sampled_from([0, 2, 10]),
)
def test_decode_matches_the_pyroute2_declaration_on_constructed_messages(
    hdr: tuple[int, bytes],
    attrs: list[tuple[int, bytes]],
    flags: int,
    queue_num: int,
    family: int,
) -> None:
    """Any order, repeats (the first counts), unknown numbers, flag bits in the type."""
    body = b"".join(nla(kind | flags, value) for kind, value in [*attrs, hdr])
    data = nlmsg(0x0300, 0, 0, queue_num, body, family=family)
    (event,) = decode(data)
    assert event == reference_packet(data)


@settings(max_examples=200, deadline=None)
@given(
    queue_num=st.integers(0, 0xFFFF),
    packet_id=st.integers(0, 2**32 - 1),
    accept=st.booleans(),
    seq=st.integers(0, 2**32 - 1),
)
def test_verdicts_match_the_pyroute2_declaration(
    queue_num: int, packet_id: int, accept: bool, seq: int
) -> None:
    assert nfq.encode_verdict(queue_num, packet_id, accept, seq) == reference_verdict(
        c.NFQNL_MSG_VERDICT, queue_num, packet_id, accept, seq
    )
    assert nfq.encode_verdict_batch(queue_num, packet_id, accept, seq) == reference_verdict(
        c.NFQNL_MSG_VERDICT_BATCH, queue_num, packet_id, accept, seq
    )


def test_attribute_numbers_match_the_declaration() -> None:
    names: Any = [name for name, _ in nfqnl_packet_msg.nla_map]
    for name in ("PACKET_HDR", "VERDICT_HDR", "MARK", "IFINDEX_INDEV", "PAYLOAD", "CAP_LEN"):
        assert names.index(f"NFQA_{name}") == getattr(c, f"NFQA_{name}"), name


def test_batch_verdict_bytes() -> None:
    expected = nlmsg(0x0303, 0x01, 4, 5, nla(2, struct.pack("!II", 1, 77)))
    assert nfq.encode_verdict_batch(5, 77, True, 4) == expected
    with pytest.raises(ValueError, match="is not a 32-bit number"):
        nfq.encode_verdict_batch(5, -1, True, 4)


def test_decode_recorded_packet() -> None:
    (event,) = decode(RECORDED_IPV6_ESP)
    assert isinstance(event, QueuedPacket)
    assert (event.queue_num, event.packet_id, event.hw_protocol, event.hook) == (5, 1, 0x86DD, 1)
    assert event.indev == 1
    assert event.length == 148  # NFQA_CAP_LEN: the packet was cut at the copy range
    assert len(event.payload) == 64
    assert event.payload[0] >> 4 == 6
    assert event.payload[6] == 50  # next header: ESP
    assert event.payload[40:44] == b"\x00\x00\x12\x34"


def test_decode_constructed_packets_in_one_datagram() -> None:
    ip = bytes.fromhex("450000200000400040110000c0000201c0000201") + b"u" * 12

    def packet(pid: int, mark: int) -> bytes:
        body = nla(1, struct.pack("!IHB", pid, 0x0800, 1)) + nla(10, ip)
        if mark:
            body += nla(3, struct.pack("!I", mark))
        return nlmsg(0x0300, 0, 0, 9, body, family=2)

    events = decode(packet(41, 0) + packet(42, 7))
    assert [e.packet_id for e in events if isinstance(e, QueuedPacket)] == [41, 42]
    first, second = events
    assert isinstance(first, QueuedPacket) and isinstance(second, QueuedPacket)
    assert first.payload == ip and first.length == len(ip) and first.indev is None
    assert (first.mark, second.mark) == (0, 7)


def test_decode_ack_and_error() -> None:
    request = nfq.encode_bind(5, 11)
    ack = struct.pack("=IHHII", 36, 2, 0x100, 11, 0) + struct.pack("=i", 0) + request[:16]
    refusal = struct.pack("=IHHII", 36, 2, 0x100, 12, 0) + struct.pack("=i", -errno.EPERM)
    refusal += request[:8] + struct.pack("=II", 12, 0)
    assert decode(ack + refusal) == [
        NetlinkError(0, 11, 0x0302),
        NetlinkError(-errno.EPERM, 12, 0x0302),
    ]


def test_decode_skips_other_messages() -> None:
    done = struct.pack("=IHHII", 20, 3, 0, 1, 0) + b"\0" * 4  # NLMSG_DONE
    assert decode(done) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (RECORDED_IPV6_ESP[:100], "truncated netlink message at offset 0"),
        (struct.pack("=IHHII", 8, 0x0300, 0, 0, 0), r"truncated netlink message .*length 8"),
        (struct.pack("=IHHII", 20, 2, 0, 0, 0) + b"\0" * 4, "truncated NLMSG_ERROR"),
        (nlmsg(0x0300, 0, 0, 1, nla(10, b"abcd")), "without NFQA_PACKET_HDR"),
        (nlmsg(0x0300, 0, 0, 1, nla(1, b"\0\0\0\1\x08\0")), "NFQA_PACKET_HDR of 6 bytes"),
        (nlmsg(0x0300, 0, 0, 1, nla(3, b"\0\1")), "attribute 3 of 2 bytes"),
        (nlmsg(0x0300, 0, 0, 1, struct.pack("=HH", 40, 10) + b"abcd"), "truncated attribute"),
    ],
)
def test_decode_refuses_broken_datagrams(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode(data)


def test_struct_attribute_sizes() -> None:
    """The packed kernel structs keep their C sizes (7 and 5 bytes) on the wire."""
    msg = nfqnl_packet_msg()
    msg["attrs"] = [("NFQA_PACKET_HDR", {"packet_id": 1, "hw_protocol": 2, "hook": 3})]
    msg["header"]["type"] = 0x0300
    msg.encode()
    assert struct.unpack_from("=H", bytes(msg.data), 20)[0] == 4 + 7
    params = nfq.encode_bind(0, 0)
    assert struct.unpack_from("=H", params, 28)[0] == 4 + 5
