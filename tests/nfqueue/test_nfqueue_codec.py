"""The codec against bytes assembled by hand, bytes recorded from Linux, and the oracle.

The oracle (``nfqueue_oracle``: pyroute2-style declarations of the kernel's
structs) is what every message the codec reads or writes must match, field
for field and byte for byte; the recordings are in tests/data/nfqueue.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.nfqueue import NetlinkError, QueuedPacket, decode
from appliance.nfqueue import codec as nfq
from appliance.nfqueue import constants as c
from tests.nfqueue import nfqueue_oracle as oracle

pytestmark = pytest.mark.unit

RECORDINGS = json.loads(
    (Path(__file__).parents[1] / "data" / "nfqueue" / "recordings.json").read_text()
)["messages"]
RECORDED = {m["name"]: bytes.fromhex(m["hex"]) for m in RECORDINGS}


def nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes(-length % 4)


def nlmsg(kind: int, flags: int, seq: int, res_id: int, body: bytes, family: int = 0) -> bytes:
    payload = struct.pack("!BBH", family, 0, res_id) + body
    return struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 0) + payload


def as_oracle_reads(events: list[nfq.Event]) -> list[tuple[str, dict[str, Any]]]:
    """The codec's events in the oracle's terms."""
    return [
        ("packet" if isinstance(e, QueuedPacket) else "error", dataclasses.asdict(e))
        for e in events
    ]


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
    (msg,) = oracle.messages(data)
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


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_decode_matches_the_oracle_on_recorded_messages(name: str) -> None:
    data = RECORDED[name]
    assert as_oracle_reads(decode(data)) == oracle.read_events(data)


def test_every_recorded_kind_is_read() -> None:
    kinds = {m["kind"] for m in RECORDINGS}
    assert kinds == {"packet", "ack", "error"}
    for m in RECORDINGS:
        (event,) = decode(RECORDED[m["name"]])
        assert isinstance(event, QueuedPacket if m["kind"] == "packet" else NetlinkError)
        assert m["kind"] != "ack" or event == NetlinkError(0, event.seq, 0x0302)


def test_the_codec_writes_the_requests_the_kernel_echoed() -> None:
    """A refusal carries the whole request: the kernel read those bytes, ours must be them."""
    bind = RECORDED["bind_refused"][20:]
    assert nfq.encode_bind(5, 2, copy_range=64, maxlen=16) == bind
    (refused,) = decode(RECORDED["bind_refused"])
    assert refused == NetlinkError(-errno.EPERM, 2, 0x0302)
    verdict = RECORDED["verdict_refused"][20:]
    (packet_id,) = struct.unpack_from("!I", verdict, len(verdict) - 4)
    assert nfq.encode_verdict(5, packet_id, True, 3) == verdict
    (unknown,) = decode(RECORDED["verdict_refused"])
    assert unknown == NetlinkError(-errno.ENOENT, 3, 0x0301)


def test_decode_recorded_ipv4_messages() -> None:
    (esp,) = decode(RECORDED["packet_ipv4_esp_mark"])
    (udp,) = decode(RECORDED["packet_ipv4_udp_cut"])
    assert isinstance(esp, QueuedPacket) and isinstance(udp, QueuedPacket)
    assert (esp.queue_num, esp.hw_protocol, esp.mark, esp.indev) == (5, 0x0800, 7, 1)
    assert esp.length == len(esp.payload) == 44
    assert esp.payload[20:28] == struct.pack("!II", 0x1234, 7)
    assert (udp.length, len(udp.payload), udp.mark) == (228, 40, 0)


# NFQA_PACKET_HDR (1): every queued packet has one.
_PACKET_HDR = st.tuples(
    st.just(1),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF), st.integers(0, 255)).map(
        lambda t: struct.pack("!IHB", *t)
    ),
)
# Attribute numbers with a payload the kernel could send (fixed sizes where the kernel's are).
_ATTRS = st.one_of(
    _PACKET_HDR,
    st.tuples(st.sampled_from([3, 5, 6, 7, 8, 12, 13, 14, 16, 17, 21, 22]),
              st.integers(0, 2**32 - 1).map(lambda v: struct.pack("!I", v))),
    st.tuples(st.just(4), st.binary(min_size=16, max_size=16)),
    st.tuples(st.sampled_from([9, 10, 11, 15, 18, 19, 20, 30]), st.binary(max_size=80)),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    hdr=_PACKET_HDR,
    attrs=st.lists(_ATTRS, max_size=8),
    flags=st.sampled_from([0, c.NLA_F_NESTED, c.NLA_F_NET_BYTEORDER]),
    queue_num=st.integers(0, 0xFFFF),
    family=st.sampled_from([0, 2, 10]),
)
def test_decode_matches_the_oracle_on_constructed_messages(
    hdr: tuple[int, bytes],
    attrs: list[tuple[int, bytes]],
    flags: int,
    queue_num: int,
    family: int,
) -> None:
    """Any order, repeats (the first counts), unknown numbers, flag bits in the type."""
    body = b"".join(nla(kind | flags, value) for kind, value in [*attrs, hdr])
    data = nlmsg(0x0300, 0, 0, queue_num, body, family=family)
    assert as_oracle_reads(decode(data)) == oracle.read_events(data)


@settings(max_examples=200, deadline=None)
@given(
    queue_num=st.integers(0, 0xFFFF),
    packet_id=st.integers(0, 2**32 - 1),
    accept=st.booleans(),
    seq=st.integers(0, 2**32 - 1),
)
def test_verdicts_match_the_oracle(queue_num: int, packet_id: int, accept: bool, seq: int) -> None:
    assert nfq.encode_verdict(queue_num, packet_id, accept, seq) == oracle.write_verdict(
        oracle.NFQNL_MSG_VERDICT, queue_num, packet_id, accept, seq
    )
    assert nfq.encode_verdict_batch(queue_num, packet_id, accept, seq) == oracle.write_verdict(
        oracle.NFQNL_MSG_VERDICT_BATCH, queue_num, packet_id, accept, seq
    )


@settings(max_examples=200, deadline=None)
@given(
    queue_num=st.integers(0, 0xFFFF),
    seq=st.integers(0, 2**32 - 1),
    copy_range=st.integers(1, 0xFFFF),
    maxlen=st.none() | st.integers(1, 2**32 - 1),
    fail_open=st.booleans(),
)
def test_config_requests_match_the_oracle(
    queue_num: int, seq: int, copy_range: int, maxlen: int | None, fail_open: bool
) -> None:
    data = nfq.encode_bind(
        queue_num, seq, copy_range=copy_range, maxlen=maxlen, fail_open=fail_open
    )
    assert data == oracle.write_bind(queue_num, seq, copy_range, maxlen, fail_open)
    assert nfq.encode_unbind(queue_num, seq) == oracle.write_unbind(queue_num, seq)


def test_numbers_match_the_oracle() -> None:
    """Attribute numbers are positions in the oracle's maps; message types its own."""
    packet_attrs: Any = [name for name, _ in oracle.nfqnl_packet_msg.nla_map]
    for name in ("PACKET_HDR", "VERDICT_HDR", "MARK", "IFINDEX_INDEV", "PAYLOAD", "CAP_LEN"):
        assert packet_attrs.index(f"NFQA_{name}") == getattr(c, f"NFQA_{name}"), name
    config_attrs: Any = [name for name, _ in oracle.nfqnl_config_msg.nla_map]
    for name in ("CMD", "PARAMS", "QUEUE_MAXLEN", "MASK", "FLAGS"):
        assert config_attrs.index(f"NFQA_CFG_{name}") == getattr(c, f"NFQA_CFG_{name}"), name
    for kind in ("PACKET", "VERDICT", "CONFIG", "VERDICT_BATCH"):
        number = getattr(c, f"NFQNL_MSG_{kind}")
        assert c.msg_type(number) == oracle.message_type(getattr(oracle, f"NFQNL_MSG_{kind}"))


def test_the_codec_decodes_the_message_types_a_receiver_sees() -> None:
    assert set(nfq.DECODERS) == set(oracle.READERS)


def test_batch_verdict_bytes() -> None:
    expected = nlmsg(0x0303, 0x01, 4, 5, nla(2, struct.pack("!II", 1, 77)))
    assert nfq.encode_verdict_batch(5, 77, True, 4) == expected
    with pytest.raises(ValueError, match="is not a 32-bit number"):
        nfq.encode_verdict_batch(5, -1, True, 4)


def test_decode_recorded_packet() -> None:
    (event,) = decode(RECORDED["packet_ipv6_esp_cut"])
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
        (RECORDED["packet_ipv6_esp_cut"][:100], "truncated netlink message at offset 0"),
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
    msg = oracle.nfqnl_packet_msg()
    msg["attrs"] = [("NFQA_PACKET_HDR", {"packet_id": 1, "hw_protocol": 2, "hook": 3})]
    msg["header"]["type"] = 0x0300
    msg.encode()
    assert struct.unpack_from("=H", bytes(msg.data), 20)[0] == 4 + 7
    params = nfq.encode_bind(0, 0)
    assert struct.unpack_from("=H", params, 28)[0] == 4 + 5
