"""Every message and payload survives encode -> decode unchanged."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wire_strategies import ALL_PAYLOADS, messages

from appliance.wire import (
    ExchangeType,
    Message,
    Notify,
    PayloadType,
    ServerIdPayload,
    SpdEntryPayload,
    Status,
    decode_message,
    encode_message,
    encoded_payload_length,
    peek_header,
)
from appliance.wire.constants import HEADER_LENGTH

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", sorted(ALL_PAYLOADS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_each_payload_round_trips_inside_a_message(name: str, data: st.DataObject) -> None:
    payload = data.draw(ALL_PAYLOADS[name])
    message = Message(ExchangeType.SA_STOR, 7, (payload,))
    encoded = encode_message(message)
    assert len(encoded) == HEADER_LENGTH + encoded_payload_length(payload)
    assert decode_message(encoded) == message


@settings(max_examples=300, deadline=None)
@given(messages())
def test_any_message_round_trips(message: Message) -> None:
    encoded = encode_message(message)
    assert decode_message(encoded) == message
    assert peek_header(encoded) == (message.exchange, message.message_id, message.response)


def test_header_layout_matches_the_spec() -> None:
    message = Message(
        ExchangeType.SA_RETR, 0x01020304, (Notify(Status.OK),), response=True, more=True
    )
    encoded = encode_message(message)
    # Next payload 41 (Notify), version 1.0, exchange 241, flags R|M, ID, length 12+8.
    assert encoded[:12] == bytes.fromhex("29 10 f1 21 01020304 00000014")
    # Generic header: no next payload, not critical, length 8; then proto 0, SPI size 0, type.
    assert encoded[12:] == bytes.fromhex("00 00 0008 00 00 a000")


def test_spd_entry_travels_as_spd_then_tsi_then_tsr(spd: SpdEntryPayload) -> None:
    encoded = encode_message(Message(ExchangeType.SA_STOR, 1, (spd,)))
    assert encoded[0] == PayloadType.SPD_ENTRY
    first_length = int.from_bytes(encoded[14:16], "big")
    assert encoded[12] == PayloadType.TSI
    assert encoded[12 + first_length] == PayloadType.TSR


def test_server_id_parses_addresses_and_names() -> None:
    assert str(ServerIdPayload.parse("192.0.2.1")) == "192.0.2.1"
    assert str(ServerIdPayload.parse("2001:db8::1")) == "2001:db8::1"
    assert str(ServerIdPayload.parse("gw-a.example")) == "gw-a.example"
    assert ServerIdPayload.parse("192.0.2.1").data == bytes([192, 0, 2, 1])
