"""Bad bytes give RemoteWireError with a useful status, never another exception."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wire_strategies import messages

from appliance.errors import ApplianceError
from appliance.wire import (
    Delete,
    EpochPayload,
    ExchangeType,
    IkeSaPayload,
    LocalWireError,
    Message,
    Notify,
    PagePayload,
    PayloadType,
    ProtocolId,
    RemoteWireError,
    RemovedKind,
    RemovedPayload,
    RevisionPayload,
    ServerIdPayload,
    SpdEntryPayload,
    Status,
    UnknownPayload,
    WireError,
    decode_message,
    encode_message,
)
from appliance.wire.constants import MAX_MESSAGE_LENGTH

pytestmark = pytest.mark.unit


def _decode_or_wire_error(data: bytes) -> Message | None:
    try:
        return decode_message(data)
    except RemoteWireError as error:
        assert str(error)
        assert isinstance(error.status, Status)
        return None


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_wire_error(data: bytes) -> None:
    _decode_or_wire_error(data)


@settings(max_examples=300, deadline=None)
@given(messages(), st.data())
def test_mutated_messages_decode_or_raise_wire_error(message: Message, data: st.DataObject) -> None:
    encoded = bytearray(encode_message(message))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
    _decode_or_wire_error(bytes(encoded))


@settings(max_examples=100, deadline=None)
@given(messages())
def test_every_truncation_is_a_clean_error(message: Message) -> None:
    encoded = encode_message(message)
    for length in range(len(encoded)):
        with pytest.raises(RemoteWireError):
            decode_message(encoded[:length])


def test_wire_error_is_an_appliance_error() -> None:
    assert issubclass(WireError, ApplianceError)
    assert issubclass(LocalWireError, WireError) and issubclass(RemoteWireError, WireError)


def test_trailing_bytes_are_rejected() -> None:
    encoded = encode_message(Message(ExchangeType.HEARTBEAT, 1, (EpochPayload(3),)))
    with pytest.raises(RemoteWireError, match="length"):
        decode_message(encoded + b"\0")


def test_oversized_input_is_rejected_before_parsing() -> None:
    with pytest.raises(RemoteWireError, match="exceeds"):
        decode_message(bytes(MAX_MESSAGE_LENGTH + 1))


def test_oversized_message_cannot_be_encoded() -> None:
    notes = tuple(Notify(Status.OK, data=bytes(60000)) for _ in range(2))
    with pytest.raises(LocalWireError, match="exceeds"):
        encode_message(Message(ExchangeType.SA_STOR, 1, notes))


def test_unknown_major_version_is_unsupported() -> None:
    encoded = bytearray(encode_message(Message(ExchangeType.HEARTBEAT, 1)))
    encoded[1] = 0x20
    with pytest.raises(RemoteWireError) as caught:
        decode_message(bytes(encoded))
    assert caught.value.status is Status.UNSUPPORTED


def test_unknown_exchange_type_is_unsupported() -> None:
    encoded = bytearray(encode_message(Message(ExchangeType.HEARTBEAT, 1)))
    encoded[2] = 34  # IKE_SA_INIT: not ours
    with pytest.raises(RemoteWireError) as caught:
        decode_message(bytes(encoded))
    assert caught.value.status is Status.UNSUPPORTED


def test_unknown_critical_payload_is_unsupported_and_non_critical_is_kept() -> None:
    encoded = bytearray(
        encode_message(Message(ExchangeType.SA_STOR, 1, (UnknownPayload(200, b"x"),)))
    )
    assert decode_message(bytes(encoded)).payloads == (UnknownPayload(200, b"x"),)
    encoded[13] = 0x80  # the critical bit of the first payload
    with pytest.raises(RemoteWireError) as caught:
        decode_message(bytes(encoded))
    assert caught.value.status is Status.UNSUPPORTED


def test_spd_entry_without_its_traffic_selectors_is_malformed(spd: SpdEntryPayload) -> None:
    encoded = encode_message(Message(ExchangeType.SA_STOR, 1, (spd,)))
    spd_length = int.from_bytes(encoded[14:16], "big")
    # Cut the message after the SPD payload and mark it as the last one.
    cut = bytearray(encoded[: 12 + spd_length])
    cut[12] = 0
    cut[8:12] = len(cut).to_bytes(4, "big")
    with pytest.raises(RemoteWireError, match="followed by TSI"):
        decode_message(bytes(cut))


def test_traffic_selector_outside_an_spd_entry_is_malformed(spd: SpdEntryPayload) -> None:
    encoded = encode_message(Message(ExchangeType.SA_STOR, 1, (spd,)))
    spd_length = int.from_bytes(encoded[14:16], "big")
    stray = bytearray(encoded[:12]) + encoded[12 + spd_length :]
    stray[0] = 44
    stray[8:12] = len(stray).to_bytes(4, "big")
    with pytest.raises(RemoteWireError, match="must follow an SPD entry"):
        decode_message(bytes(stray))


def test_more_flag_on_a_request_is_rejected() -> None:
    with pytest.raises(LocalWireError, match="only valid in a response"):
        encode_message(Message(ExchangeType.SA_RETR, 1, more=True))
    encoded = bytearray(encode_message(Message(ExchangeType.SA_RETR, 1)))
    encoded[3] = 0x01
    with pytest.raises(RemoteWireError, match="M \\(more pages\\) flag"):
        decode_message(bytes(encoded))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: EpochPayload(1 << 64), "epoch"),
        (lambda: Delete(ProtocolId.ESP, (1 << 32,)), "delete SPI"),
        (lambda: Delete(ProtocolId.NONE, (1,)), "delete protocol id"),
        (lambda: Delete(ProtocolId.IKE, (0,)), "do not fit 16 octets"),
        (lambda: Delete(ProtocolId.IKE, (1 << 128,)), "do not fit 16 octets"),
        (lambda: IkeSaPayload(0, 0, (), b"x"), "not both 0"),
        (lambda: IkeSaPayload(1 << 64, 0, (), b"x"), "64-bit"),
        (lambda: IkeSaPayload(1, 2, (0,), b"x"), "non-zero and distinct"),
        (lambda: IkeSaPayload(1, 2, (7, 7), b"x"), "non-zero and distinct"),
        (lambda: IkeSaPayload(1, 2, tuple(range(1, 1026)), b"x"), "more than 1024"),
        (lambda: IkeSaPayload(1, 2, (), b""), "record is empty"),
        (lambda: RemovedPayload.for_ike_sa((0, 0)), "not both 0"),
        (lambda: RemovedPayload(RemovedKind.IKE_SA, spi=1, ike_spis=(1, 2)), "only its SPIs"),
        (lambda: RemovedPayload(RemovedKind.SA, 1, 50, 2, ike_spis=(1, 2)), "only a removed IKE"),
        (lambda: PagePayload(0, bytes(65)), "cursor"),
        (lambda: Notify(1 << 16), "notify message type"),
        (lambda: RevisionPayload(1 << 64), "revision"),
        (lambda: RemovedPayload.for_sa(1 << 32, 50, 2, bytes(16)), "removed SA SPI"),
        (lambda: RemovedPayload.for_sa(1, 50, 0, bytes(16)), "family 0"),
        (lambda: RemovedPayload.for_sa(1, 17, 2, bytes(16)), "protocol 17"),
        (lambda: RemovedPayload.for_sa(1, 50, 10, bytes(4)), "16 bytes"),
        (lambda: RemovedPayload.for_sa(1, 50, 2, bytes(15) + b"\1"), "12 zero octets"),
        (lambda: RemovedPayload(RemovedKind.SA, 1, 50, 2, bytes(16), b"x"), "no policy ID"),
        (lambda: RemovedPayload.for_policy(b""), "policy ID is 0 bytes"),
        (lambda: RemovedPayload.for_policy(bytes(33)), "policy ID is 33 bytes"),
        (lambda: RemovedPayload(RemovedKind.SPD_ENTRY, spi=1, policy_id=b"x"), "no SA key"),
        (lambda: RemovedPayload(4, policy_id=b"x"), "kind 4"),  # type: ignore[arg-type]
    ],
)
def test_values_that_do_not_fit_are_refused_when_encoding(build: object, match: str) -> None:
    with pytest.raises(LocalWireError, match=match) as caught:
        encode_message(Message(ExchangeType.SA_STOR, 1, (build(),)))  # type: ignore[operator]
    assert caught.value.status is Status.INTERNAL  # never blamed on the peer


@pytest.mark.parametrize(
    ("id_type", "data", "match"),
    [
        (1, b"\1\2\3", "IPv4 server ID"),
        (5, b"\1" * 4, "IPv6 server ID"),
        (2, b"", "FQDN"),
        (2, b"has space", "printable"),
        (99, b"x", "not supported"),
    ],
)
def test_invalid_server_ids_are_refused(id_type: int, data: bytes, match: str) -> None:
    with pytest.raises(LocalWireError, match=match):
        ServerIdPayload(id_type, data)
    # The same ID from a peer is the peer's fault.
    body = bytes([id_type, 0, 0, 0]) + data
    with pytest.raises(RemoteWireError, match=match):
        decode_message(_message_with_payload(PayloadType.SERVER_ID, body))


V4_DESTINATION = bytes([192, 0, 2, 2]) + bytes(12)


def _removed_sa_body(protocol: int = 50, family: int = 2, daddr: bytes = V4_DESTINATION) -> bytes:
    return (
        bytes([1, 0, 0, 0])
        + (0xC0FFEE01).to_bytes(4, "big")
        + bytes([protocol, 0])
        + (family.to_bytes(2, "big") + daddr)
    )


@pytest.mark.parametrize(
    ("body", "status", "match"),
    [
        (_removed_sa_body()[:-1], Status.MALFORMED, "truncated"),
        (_removed_sa_body() + b"\0", Status.MALFORMED, "trailing"),
        (_removed_sa_body(family=0), Status.MALFORMED, "family 0"),
        (_removed_sa_body(family=10)[:-1], Status.MALFORMED, "truncated"),
        (_removed_sa_body(protocol=17), Status.MALFORMED, "protocol 17"),
        (_removed_sa_body(daddr=bytes(15) + b"\1"), Status.MALFORMED, "12 zero octets"),
        (bytes([1, 0, 0]), Status.MALFORMED, "truncated"),
        (bytes([2, 0, 0, 0]), Status.MALFORMED, "policy ID is 0 bytes"),
        (bytes([2, 0, 0, 0]) + bytes(33), Status.MALFORMED, "policy ID is 33 bytes"),
        (bytes([3, 0, 0, 0]) + bytes(16), Status.MALFORMED, "not both 0"),
        (bytes([3, 0, 0, 0]) + bytes(15) + b"\1" + b"\0", Status.MALFORMED, "trailing"),
        (bytes([3, 0, 0, 0]) + bytes(15), Status.MALFORMED, "truncated"),
        (bytes([4, 0, 0, 0]) + bytes(24), Status.UNSUPPORTED, "kind 4"),
        (bytes([0, 0, 0, 0]), Status.UNSUPPORTED, "kind 0"),
    ],
)
def test_invalid_removed_payloads_are_refused(body: bytes, status: Status, match: str) -> None:
    with pytest.raises(RemoteWireError, match=match) as caught:
        decode_message(_message_with_payload(PayloadType.REMOVED, body))
    assert caught.value.status is status


def test_removed_payloads_at_the_limits_are_accepted() -> None:
    reserved_set = bytes([2, 0xFF, 0xFF, 0xFF]) + bytes(32)  # RESERVED is ignored on receipt
    (removed,) = decode_message(_message_with_payload(PayloadType.REMOVED, reserved_set)).payloads
    assert removed == RemovedPayload.for_policy(bytes(32))
    v6 = _removed_sa_body(family=10, daddr=bytes(range(16)))
    (removed,) = decode_message(_message_with_payload(PayloadType.REMOVED, v6)).payloads
    assert removed == RemovedPayload.for_sa(0xC0FFEE01, 50, 10, bytes(range(16)))
    ike = bytes([3, 0, 0, 0]) + (1).to_bytes(8, "big") + (2**64 - 1).to_bytes(8, "big")
    (removed,) = decode_message(_message_with_payload(PayloadType.REMOVED, ike)).payloads
    assert removed == RemovedPayload.for_ike_sa((1, 2**64 - 1))


def _ike_sa_body(count: int, children: bytes, record: bytes = b"r") -> bytes:
    return (
        (5).to_bytes(8, "big")
        + (6).to_bytes(8, "big")
        + count.to_bytes(2, "big")
        + bytes(2)
        + children
        + record
    )


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (bytes(15), "truncated"),
        (bytes(16) + bytes(4) + b"r", "not both 0"),
        (_ike_sa_body(2, (9).to_bytes(4, "big")), "truncated"),
        (_ike_sa_body(1, (9).to_bytes(4, "big"), b""), "record is empty"),
        (_ike_sa_body(1, bytes(4)), "non-zero and distinct"),
        (_ike_sa_body(2, (9).to_bytes(4, "big") * 2), "non-zero and distinct"),
        (_ike_sa_body(1025, bytes(4 * 1025)), "more than 1024"),
    ],
)
def test_invalid_ike_sa_payloads_are_refused(body: bytes, match: str) -> None:
    with pytest.raises(RemoteWireError, match=match) as caught:
        decode_message(_message_with_payload(PayloadType.IKE_SA, body))
    assert caught.value.status is Status.MALFORMED


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (bytes([1, 4, 0, 1]) + bytes(4), "SPI size is 4, must be 16"),
        (bytes([3, 16, 0, 1]) + bytes(16), "SPI size is 16, must be 4"),
        (bytes([1, 16, 0, 1]) + bytes(16), "SPIs 0 and 0"),
        (bytes([1, 16, 0, 2]) + bytes(15) + b"\1", "truncated"),
    ],
)
def test_invalid_ike_deletes_are_refused(body: bytes, match: str) -> None:
    with pytest.raises(RemoteWireError, match=match):
        decode_message(_message_with_payload(PayloadType.DELETE, body))


def test_ike_sa_payload_and_delete_round_trip() -> None:
    ike = IkeSaPayload(2**64 - 1, 0, (1, 2**32 - 1), b"record")
    delete = Delete.for_ike_sas([(1, 2), (2**64 - 1, 0)])
    decoded = decode_message(encode_message(Message(ExchangeType.SA_STOR, 1, (ike, delete))))
    assert decoded.payloads == (ike, delete)
    assert delete.ike_spis == ((1, 2), (2**64 - 1, 0))
    assert "record" not in repr(ike)


@pytest.mark.parametrize("length", [0, 7, 9, 16])
def test_a_revision_of_another_length_is_malformed(length: int) -> None:
    with pytest.raises(RemoteWireError) as caught:
        decode_message(_message_with_payload(PayloadType.REVISION, bytes(length)))
    assert caught.value.status is Status.MALFORMED


def _message_with_payload(payload_type: int, body: bytes) -> bytes:
    """A one-payload SA_Stor request built by hand (the encoder would refuse a bad body)."""
    payload = bytes([0, 0]) + (4 + len(body)).to_bytes(2, "big") + body
    total = 12 + len(payload)
    header = bytes([payload_type, 0x10, ExchangeType.SA_STOR, 0]) + (1).to_bytes(4, "big")
    return header + total.to_bytes(4, "big") + payload
