"""Whose fault: encoders raise LocalWireError, decoders RemoteWireError, both are WireError."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wire_strategies import messages

import appliance
from appliance.wire import (
    Buffer,
    EpochPayload,
    ExchangeType,
    LocalWireError,
    Message,
    RemoteWireError,
    Status,
    WireError,
    decode_message,
    encode_message,
    split_message,
)

pytestmark = pytest.mark.unit


def test_a_read_past_the_end_is_the_peers_fault() -> None:
    with pytest.raises(RemoteWireError, match="truncated") as caught:
        Buffer(b"\x01", "probe").pull_uint32("counter")
    assert isinstance(caught.value, WireError)
    assert caught.value.status is Status.MALFORMED


def test_a_value_out_of_range_is_the_callers_fault() -> None:
    with pytest.raises(LocalWireError, match="counter = 256") as caught:
        Buffer().push_uint8(256, "counter")
    assert isinstance(caught.value, WireError)
    assert not isinstance(caught.value, RemoteWireError)
    assert caught.value.status is Status.INTERNAL


def test_encoding_an_epoch_out_of_range_raises_local_and_decoding_garbage_raises_remote() -> None:
    with pytest.raises(LocalWireError, match="epoch"):
        encode_message(Message(ExchangeType.HEARTBEAT, 1, (EpochPayload(-1),)))
    with pytest.raises(RemoteWireError):
        decode_message(b"\xff" * 40)


@settings(max_examples=300, deadline=None)
@given(messages(), st.data())
def test_split_and_decode_refuse_the_same_bytes(message: Message, data: st.DataObject) -> None:
    encoded = bytearray(encode_message(message))
    for _ in range(data.draw(st.integers(1, 3))):
        encoded[data.draw(st.integers(0, len(encoded) - 1))] = data.draw(st.integers(0, 255))
    # decode_message runs split_message first, so a bad header or chain is refused by
    # both with the same message; past the chain only decode_message looks further.
    try:
        raw = split_message(bytes(encoded))
    except RemoteWireError as split_error:
        with pytest.raises(RemoteWireError) as caught:
            decode_message(bytes(encoded))
        assert str(caught.value) == str(split_error)
        return
    try:
        decoded = decode_message(bytes(encoded))
    except RemoteWireError:
        return
    assert (decoded.exchange, decoded.message_id) == (raw.exchange, raw.message_id)
    assert (decoded.response, decoded.more) == (raw.response, raw.more)


def test_no_code_raises_the_base_class_without_saying_whose_fault() -> None:
    root = Path(appliance.__file__).parent
    bare = re.compile(r"(?<![\w.])WireError\(")
    offenders = [
        f"{path.relative_to(root)}:{number}"
        for path in sorted(root.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if bare.search(line) and not line.lstrip().startswith("class ")
    ]
    assert offenders == []
