"""IKE SA records (protocol.md 4.6): every IKE SA of the recorded run encodes and
decodes to itself; bytes that are not a canonical record give IkeRecordError,
never another exception."""

from __future__ import annotations

import random
import struct

import pytest
from ha_recordings import datagrams

from appliance.strongswan import HaMessage, HaMessageType, decode, encode
from appliance.strongswan.ike_record import (
    RECORD_FORMAT_HA,
    IkeRecordError,
    decode_record,
    encode_record,
)
from appliance.strongswan.ike_state import IkeBook, IkeSaState

pytestmark = pytest.mark.unit

T = HaMessageType


def _states() -> list[IkeSaState]:
    """Every state an IKE SA went through in the recorded run."""
    book = IkeBook()
    out: list[IkeSaState] = []
    for r in datagrams():
        book.handle(decode(r.data))
        out.extend(book.sas.values())
    return out


def _record(messages: list[HaMessage], spis: tuple[int, int]) -> bytes:
    body = b"".join(struct.pack("!H", len(d)) + d for d in map(encode, messages))
    return struct.pack("!BBQQH", RECORD_FORMAT_HA, 3, *spis, len(messages)) + body


def test_every_recorded_state_round_trips() -> None:
    states = _states()
    assert len({s.spis for s in states}) == 2  # before and after the IKE rekey
    for state in states:
        record = encode_record(state)
        assert decode_record(record) == state
        assert decode_record(bytearray(record)) == state


def test_the_header_names_the_ike_sa() -> None:
    state = _states()[-1]
    record = encode_record(state)
    assert record[:2] == bytes([RECORD_FORMAT_HA, 3])
    assert struct.unpack("!QQH", record[2:20]) == (*state.spis, len(state.replay()))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: r[:10], "shorter than its 20-byte header"),
        (lambda r: bytes([2]) + r[1:], "format 2 is unknown"),
        (lambda r: r[:1] + bytes([4]) + r[2:], "version 4"),
        (lambda r: r + b"\x00", "1 trailing byte"),
        (lambda r: r[:20] + b"\x00\x10\x03", "runs 15 bytes past the end"),
        (lambda r: r[:20] + b"\x00", "length at offset 20 is cut short"),
        (lambda r: r[:2] + bytes(16) + r[18:], "names IKE SA 0000000000000000_i"),
        (lambda r: r[:18] + bytes(2), "rebuild none"),
        (lambda r: r[:18] + b"\xff\xff" + r[20:], "ends after"),
    ],
)
def test_broken_headers_and_framing(mutate: object, match: str) -> None:
    record = encode_record(_states()[-1])
    with pytest.raises(IkeRecordError, match=match):
        decode_record(mutate(record))  # type: ignore[operator]


def test_what_is_not_ike_sa_state_is_refused() -> None:
    state = _states()[-1]
    status = next(decode(r.data) for r in datagrams() if decode(r.data).type is T.STATUS)
    with pytest.raises(IkeRecordError, match="STATUS message is not IKE SA state"):
        decode_record(_record([*state.replay(), status], state.spis))
    delete = HaMessage(T.IKE_DELETE, (state.add.attributes[0],))
    with pytest.raises(IkeRecordError, match="IKE_DELETE message is not IKE SA state"):
        decode_record(_record([*state.replay(), delete], state.spis))


def test_superseded_messages_are_not_canonical() -> None:
    state = next(s for s in _states() if s.mid_responder is not None)
    assert state.mid_responder is not None
    replay = list(state.replay())
    doubled = [*replay[:1], state.mid_responder, *replay[1:]]
    with pytest.raises(IkeRecordError, match="canonical"):
        decode_record(_record(doubled, state.spis))


def test_a_record_of_two_ike_sas_is_refused() -> None:
    first, last = _states()[0], _states()[-1]
    with pytest.raises(IkeRecordError, match="rebuild"):
        decode_record(_record([*first.replay(), *last.replay()], last.spis))


def test_messages_that_rebuild_nothing_are_refused() -> None:
    state = _states()[-1]
    child = state.all_children[0].add
    with pytest.raises(IkeRecordError, match="rebuild nothing"):
        decode_record(_record([child, *state.replay()], state.spis))


def test_not_bytes() -> None:
    with pytest.raises(IkeRecordError, match="must be bytes, not str"):
        decode_record("00")  # type: ignore[arg-type]


def test_every_truncation_is_refused() -> None:
    record = encode_record(_states()[-1])
    for cut in range(len(record)):
        with pytest.raises(IkeRecordError):
            decode_record(record[:cut])


def test_mutations_give_a_record_or_an_error() -> None:
    rng = random.Random(12)
    records = [encode_record(s) for s in _states()]
    for _ in range(3000):
        data = bytearray(rng.choice(records))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            if rng.random() < 0.7:
                data[at] ^= 1 << rng.randrange(8)
            else:
                del data[at : at + rng.randint(1, 40)]
        try:
            state = decode_record(bytes(data))
        except IkeRecordError:
            continue
        assert encode_record(state) == bytes(data)
