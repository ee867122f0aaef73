"""Encoded payloads are exactly the layouts of docs/protocol.md section 4.

The expected bytes are written out here field by field from the document's
diagrams, so that a change of layout cannot pass unnoticed; and every status code
and payload type of ours is documented there.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from pathlib import Path

import pytest

from appliance import model as m
from appliance.wire import (
    ExchangeType,
    Message,
    Payload,
    PayloadType,
    RemovedPayload,
    RevisionPayload,
    SaLookupPayload,
    Status,
    decode_message,
    encode_message,
    payload_to_sad,
    payload_to_spd,
    replay_update_for,
    sad_to_payload,
    spd_to_payload,
)

pytestmark = pytest.mark.unit

GW_A = ipaddress.IPv4Address("192.0.2.1")
GW_B = ipaddress.IPv4Address("192.0.2.2")
KEY = bytes(range(36))


def _addr16(address: ipaddress.IPv4Address) -> bytes:
    return address.packed + bytes(12)


def _sa() -> m.SadEntry:
    return m.SadEntry(
        daddr=GW_B,
        spi=0xC0FFEE01,
        proto=m.IPPROTO_ESP,
        saddr=GW_A,
        family=m.AF_INET,
        mode=m.Mode.TUNNEL,
        reqid=7,
        flags=m.StateFlag.ESN,
        aead=m.AeadAlgorithm("rfc4106(gcm(aes))", 288, 128, m.KeyMaterial(KEY)),
        replay_esn=m.ReplayStateEsn(1, 100, 90, 0, 0, 32, (0xFFFFFFFF,)),
        if_id=3,
    )


def _message(payload_type: int, body: bytes) -> bytes:
    length = 12 + 4 + len(body)
    header = struct.pack("!BBBBII", payload_type, 0x10, 240, 0, 1, length)
    return header + struct.pack("!BBH", 0, 0, 4 + len(body)) + body


def test_sad_entry_payload_layout() -> None:
    fixed = struct.pack("!IHBBBBHII", 0xC0FFEE01, 2, 50, 1, 128, 0, 0, 7, 0)
    fixed += _addr16(GW_B) + _addr16(GW_A)
    selector = bytes(32) + struct.pack("!HHHHHBBB3xII", 0, 0, 0, 0, 2, 0, 0, 0, 0, 0)
    name = b"rfc4106(gcm(aes))"
    aead = struct.pack("!IIB", 288, 128, len(name)) + name + KEY
    esn = struct.pack("!7I", 1, 100, 90, 0, 0, 32, 0xFFFFFFFF)
    attributes = (
        struct.pack("!HH", 1, len(selector))
        + selector
        + struct.pack("!HH", 10, len(aead))
        + aead
        + struct.pack("!HH", 13, len(esn))
        + esn
        + struct.pack("!HHI", 18, 4, 3)
    )
    expected = _message(128, fixed + attributes)
    payload = sad_to_payload(_sa())
    assert encode_message(Message(ExchangeType.SA_STOR, 1, (payload,))) == expected
    (decoded,) = decode_message(expected).payloads
    assert payload_to_sad(decoded) == _sa()  # type: ignore[arg-type]


def test_replay_state_payload_layout() -> None:
    body = struct.pack("!IBBH", 0xC0FFEE01, 50, 0x01, 2) + _addr16(GW_B)
    body += struct.pack("!5IQQHH", 100, 90, 0, 0, 32, 0, 0, 1, 0) + struct.pack("!I", 0xFFFFFFFF)
    payload = replay_update_for(_sa())
    assert encode_message(Message(ExchangeType.SA_STOR, 1, (payload,))) == _message(131, body)


def test_spd_entry_with_its_traffic_selectors_layout() -> None:
    policy = m.SpdEntry(
        selector=m.Selector(
            daddr=ipaddress.IPv4Address("203.0.113.0"),
            saddr=ipaddress.IPv4Address("198.51.100.0"),
            family=m.AF_INET,
            prefixlen_d=24,
            prefixlen_s=24,
        ),
        dir=m.Direction.OUT,
        priority=375423,
        index=0x209,
        templates=(m.Template(daddr=GW_B, saddr=GW_A, reqid=7, mode=m.Mode.TUNNEL),),
    )
    template = _addr16(GW_B) + struct.pack("!IBBBBH2x", 0, 50, 1, 0, 0, 2) + _addr16(GW_A)
    template += struct.pack("!4I", 7, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    spd = struct.pack(
        "!IIBBBBBBBBHHHHII", 0x209, 375423, 1, 0, 0, 0, 0, 24, 24, 0, 2, 0, 0, 0, 0, 0
    )
    spd += struct.pack("!HH", 26, 60) + template
    tsi = struct.pack("!B3xBBHHH", 1, 7, 0, 16, 0, 0xFFFF)
    tsi += bytes([198, 51, 100, 0, 198, 51, 100, 255])
    tsr = struct.pack("!B3xBBHHH", 1, 7, 0, 16, 0, 0xFFFF)
    tsr += bytes([203, 0, 113, 0, 203, 0, 113, 255])
    body = (
        struct.pack("!BBH", 44, 0, 4 + len(spd))
        + spd
        + struct.pack("!BBH", 45, 0, 4 + len(tsi))
        + tsi
        + struct.pack("!BBH", 0, 0, 4 + len(tsr))
        + tsr
    )
    expected = struct.pack("!BBBBII", 129, 0x10, 240, 0, 1, 12 + len(body)) + body
    payload = spd_to_payload(policy)
    assert encode_message(Message(ExchangeType.SA_STOR, 1, (payload,))) == expected
    (decoded,) = decode_message(expected).payloads
    assert payload_to_spd(decoded) == policy  # type: ignore[arg-type]


def _round_trip_layout(payload: Payload, payload_type: int, body: bytes) -> None:
    expected = _message(payload_type, body)
    assert encode_message(Message(ExchangeType.SA_STOR, 1, (payload,))) == expected
    assert decode_message(expected).payloads == (payload,)


def test_revision_payload_layout() -> None:
    body = struct.pack("!Q", 0x0102030405060708)
    _round_trip_layout(RevisionPayload(0x0102030405060708), 136, body)


def test_removed_sa_payload_layout() -> None:
    body = struct.pack("!B3x", 1) + struct.pack("!IBBH", 0xC0FFEE01, 50, 0, 2) + _addr16(GW_B)
    assert len(body) == 28  # payload length 32, as the diagram says
    removed = RemovedPayload.for_sa(0xC0FFEE01, 50, 2, _addr16(GW_B))
    _round_trip_layout(removed, 137, body)


def test_removed_sa_data_is_the_sa_lookup_body() -> None:
    destination = ipaddress.IPv6Address("2001:db8::2").packed
    removed = encode_message(
        Message(ExchangeType.SA_RETR, 1, (RemovedPayload.for_sa(7, 108, 10, destination),))
    )
    lookup = encode_message(
        Message(ExchangeType.SA_RETR, 1, (SaLookupPayload(7, 108, 10, destination),))
    )
    assert removed[12 + 4 + 4 :] == lookup[12 + 4 :]


def test_removed_spd_entry_payload_layout() -> None:
    policy_id = bytes(range(1, 21))
    body = struct.pack("!B3x", 2) + policy_id
    _round_trip_layout(RemovedPayload.for_policy(policy_id), 137, body)


PROTOCOL_MD = Path(__file__).parents[2] / "docs" / "protocol.md"


def _section(number: str) -> str:
    """The text of one section of protocol.md, from its heading to the next heading."""
    text = PROTOCOL_MD.read_text()
    start = text.index(f"\n### {number} ")
    return text[start : text.index("\n### ", start + 1)]


def test_every_status_code_has_its_row_in_the_notify_table() -> None:
    rows = re.findall(r"^\| (\d+) \| ([A-Z_]+) \|", _section("4.1"), re.MULTILINE)
    assert sorted((int(code), name) for code, name in rows) == sorted(
        (int(status), status.name) for status in Status
    )


def test_every_payload_type_of_ours_has_its_section() -> None:
    headings = re.findall(r"^### 4\.\d+ .*\((\d+)\)", PROTOCOL_MD.read_text(), re.MULTILINE)
    ours = {int(t) for t in PayloadType if t >= 128}
    assert ours <= {int(number) for number in headings}
