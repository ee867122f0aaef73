"""Bytes that are not a version 3 ha message give HaMessageError, and only that."""

from __future__ import annotations

import ipaddress

import pytest
from ha_recordings import datagrams

from appliance.errors import ApplianceError
from appliance.strongswan import (
    HaAttributeType,
    HaChunk,
    HaHost,
    HaIdentity,
    HaIkeSaId,
    HaMessage,
    HaMessageError,
    HaMessageType,
    HaNumber,
    HaText,
    HaTrafficSelector,
    HaValueError,
    HaVersionError,
    decode,
    encode,
)

pytestmark = pytest.mark.unit

A = HaAttributeType
IKE_ID = bytes([A.IKE_ID, 2]) + bytes(range(1, 17)) + b"\x00"


@pytest.mark.parametrize(
    ("version", "speaker"),
    [
        (4, "strongSwan 6.0.1"),
        (5, "strongSwan 6.0.2 or later"),
        (2, "strongSwan 4.5 and 4.6"),
        (1, "strongSwan 4.4"),
        (0, "not a version any strongSwan release used"),
        (6, "not a version any strongSwan release used"),
        (255, "not a version any strongSwan release used"),
    ],
)
def test_other_versions_are_refused_by_name(version: int, speaker: str) -> None:
    with pytest.raises(HaVersionError) as caught:
        decode(bytes([version, HaMessageType.STATUS]) + b"\x22\x00\x01")
    text = str(caught.value)
    assert caught.value.version == version
    assert f"ha message version {version} ({speaker}) is not supported" in text
    assert "speaks version 3 (strongSwan 5.x and 6.0.0)" in text


def test_version_error_is_a_message_error_and_an_appliance_error() -> None:
    assert issubclass(HaVersionError, HaMessageError)
    assert issubclass(HaMessageError, ApplianceError)
    assert issubclass(HaValueError, ApplianceError)
    assert not issubclass(HaValueError, HaMessageError)


@pytest.mark.parametrize("data", [b"", b"\x03"])
def test_a_datagram_shorter_than_the_header_is_refused(data: bytes) -> None:
    with pytest.raises(HaMessageError, match="too short"):
        decode(data)


@pytest.mark.parametrize("message_type", [0, 13, 200, 255])
def test_unknown_message_type_is_refused(message_type: int) -> None:
    with pytest.raises(HaMessageError, match=f"type {message_type} is unknown"):
        decode(bytes([3, message_type]))


@pytest.mark.parametrize("attr_type", [0, 42, 43, 128, 255])
def test_unknown_attribute_type_is_refused(attr_type: int) -> None:
    with pytest.raises(HaMessageError, match=f"attribute type {attr_type} at offset 21"):
        decode(bytes([3, HaMessageType.IKE_DELETE]) + IKE_ID + bytes([attr_type, 0, 0, 0, 0]))


def test_every_truncation_of_every_recorded_datagram_is_an_error_or_a_shorter_message() -> None:
    """The format has no length field: a cut exactly between two attributes is a valid,
    shorter message (the same attributes up to the cut). Every other cut is an error."""
    cuts = errors = 0
    for recorded in datagrams():
        full = decode(recorded.data)
        boundaries = {len(encode(HaMessage(full.type, full.attributes[:k]))): k
                      for k in range(len(full.attributes) + 1)}  # fmt: skip
        for cut in range(len(recorded.data)):
            cuts += 1
            if cut in boundaries:
                assert decode(recorded.data[:cut]) == HaMessage(
                    full.type, full.attributes[: boundaries[cut]]
                )
                continue
            with pytest.raises(HaMessageError):
                decode(recorded.data[:cut])
            errors += 1
    assert cuts > 1000 and errors > 0.9 * cuts


def _attr(attr_type: HaAttributeType, body: bytes) -> bytes:
    return bytes([3, HaMessageType.IKE_UPDATE]) + bytes([attr_type]) + body


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_attr(A.REMOTE_ADDR, b"\x01\xf4\x00" + bytes(4)), "address family 0"),
        (_attr(A.REMOTE_ADDR, b"\x01\xf4\x1e" + bytes(16)), "address family 30"),
        (_attr(A.REMOTE_ADDR, b"\x01\xf4\x0a" + bytes(15)), "truncated"),
        (_attr(A.LOCAL_TS, b"\x09\x00\x00\x00\xff\xff\x00" + bytes(8)), "has type 9"),
        (_attr(A.LOCAL_TS, b"\x07\x00\x00\x00\xff\xff\x02" + bytes(8)), "dynamic flag is 2"),
        (_attr(A.LOCAL_TS, b"\x08\x00\x00\x00\xff\xff\x00" + bytes(31)), "truncated"),
        (_attr(A.IKE_ID, b"\x02" + bytes(16) + b"\x07"), "initiator flag is 7"),
        (_attr(A.NONCE_I, b"\xff\xff" + bytes(100)), "NONCE_I needs 65535 bytes"),
        (_attr(A.SECRET, b"\x01"), "truncated"),
        (_attr(A.LOCAL_ID, b"\x02\xff" + b"x" * 20), "needs 255 bytes"),
        (_attr(A.CONFIG_NAME, b"no terminator"), "has no NUL"),
        (_attr(A.MID, b"\x00\x00\x01"), "MID needs 4 bytes"),
        (_attr(A.SEGMENT, b"\x00"), "SEGMENT needs 2 bytes"),
        (_attr(A.IPSEC_MODE, b""), "IPSEC_MODE needs 1 bytes"),
    ],
)
def test_hostile_attribute_bodies_are_refused(data: bytes, match: str) -> None:
    with pytest.raises(HaMessageError, match=match):
        decode(data)


def test_decode_refuses_what_is_not_bytes() -> None:
    with pytest.raises(HaMessageError, match="must be bytes"):
        decode("0301")  # type: ignore[arg-type]


V4 = ipaddress.IPv4Address("192.0.2.1")
V6 = ipaddress.IPv6Address("2001:db8::1")


@pytest.mark.parametrize(
    "build",
    [
        lambda: HaNumber(A.NONCE_I, 1),
        lambda: HaNumber(A.SEGMENT, 1 << 16),
        lambda: HaNumber(A.IPSEC_MODE, -1),
        lambda: HaNumber(A.MID, True),
        lambda: HaChunk(A.MID, b""),
        lambda: HaChunk(A.SECRET, bytes(0x10000)),
        lambda: HaIkeSaId(A.LOCAL_ID, 2, 1, 2, True),
        lambda: HaIkeSaId(A.IKE_ID, 2, 1 << 64, 2, True),
        lambda: HaIkeSaId(A.IKE_ID, 2, 1, 2, 1),
        lambda: HaIdentity(A.LOCAL_ID, 2, b"x" * 256),
        lambda: HaHost(A.LOCAL_ADDR, V4, 70000),
        lambda: HaHost(A.LOCAL_ADDR, "192.0.2.1", 500),
        lambda: HaText(A.CONFIG_NAME, "a\0b"),
        lambda: HaText(A.CONFIG_NAME, "\ud800"),
        lambda: HaTrafficSelector(A.LOCAL_TS, 0, 0, 65535, False, V4, V6),
        lambda: HaTrafficSelector(A.REMOTE_TS, 256, 0, 65535, False, V4, V4),
        lambda: HaMessage(99, ()),  # type: ignore[arg-type]
        lambda: HaMessage(HaMessageType.STATUS, [HaNumber(A.SEGMENT, 1)]),  # type: ignore[arg-type]
    ],
)
def test_values_the_format_cannot_carry_are_refused_when_built(build: object) -> None:
    with pytest.raises(HaValueError):
        build()  # type: ignore[operator]
