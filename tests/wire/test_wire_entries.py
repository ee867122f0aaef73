"""SAD / SPD entries survive model -> payload -> bytes -> payload -> model unchanged."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance import model as m
from appliance.wire import (
    Attribute,
    AttributeType,
    ExchangeType,
    Message,
    RemoteWireError,
    SadEntryPayload,
    SpdEntryPayload,
    Status,
    apply_replay_update,
    decode_message,
    describe,
    encode_message,
    payload_to_sad,
    payload_to_spd,
    replay_update_for,
    sad_to_payload,
    spd_to_payload,
)

sys.path.insert(0, str(Path(__file__).parents[1] / "model"))
from model_strategies import sad_entries, spd_entries

pytestmark = pytest.mark.unit


def _through_the_wire(payload: SadEntryPayload | SpdEntryPayload) -> object:
    (decoded,) = decode_message(
        encode_message(Message(ExchangeType.SA_STOR, 1, (payload,)))
    ).payloads
    return decoded


@settings(max_examples=100, deadline=None)
@given(sad_entries())
def test_sad_entries_round_trip_losslessly(entry: m.SadEntry) -> None:
    decoded = _through_the_wire(sad_to_payload(entry))
    assert isinstance(decoded, SadEntryPayload)
    assert payload_to_sad(decoded) == entry


@settings(max_examples=100, deadline=None)
@given(spd_entries)
def test_spd_entries_round_trip_losslessly(entry: m.SpdEntry) -> None:
    decoded = _through_the_wire(spd_to_payload(entry))
    assert isinstance(decoded, SpdEntryPayload)
    assert payload_to_spd(decoded) == entry


def _policy() -> m.SpdEntry:
    return m.SpdEntry(
        selector=m.Selector(
            daddr=ipaddress.IPv4Address("203.0.113.0"),
            saddr=ipaddress.IPv4Address("198.51.100.0"),
            dport=443,
            dport_mask=0xFFFF,
            family=m.AF_INET,
            prefixlen_d=24,
            prefixlen_s=25,
            proto=6,
        ),
        dir=m.Direction.OUT,
        priority=1000,
        index=0x1F9,
        templates=(
            m.Template(
                daddr=ipaddress.IPv4Address("192.0.2.2"),
                saddr=ipaddress.IPv4Address("192.0.2.1"),
                reqid=1,
                mode=m.Mode.TUNNEL,
            ),
        ),
    )


def test_spd_selector_travels_as_ikev2_traffic_selectors() -> None:
    payload = spd_to_payload(_policy())
    assert str(payload.tsi.start_address) == "198.51.100.0"
    assert str(payload.tsi.end_address) == "198.51.100.127"
    assert (payload.tsi.start_port, payload.tsi.end_port) == (0, 0xFFFF)
    assert str(payload.tsr.start_address) == "203.0.113.0"
    assert str(payload.tsr.end_address) == "203.0.113.255"
    assert (payload.tsr.start_port, payload.tsr.end_port) == (443, 443)
    assert payload.tsi.ip_protocol == payload.tsr.ip_protocol == 6


def test_a_traffic_selector_that_is_no_prefix_is_unsupported() -> None:
    payload = spd_to_payload(_policy())
    odd = dataclasses.replace(
        payload,
        tsr=dataclasses.replace(payload.tsr, end_address=ipaddress.IPv4Address("203.0.113.9")),
    )
    with pytest.raises(RemoteWireError, match="not the prefix /24") as caught:
        payload_to_spd(odd)
    assert caught.value.status is Status.UNSUPPORTED


def test_unknown_and_duplicate_attributes_are_refused() -> None:
    payload = spd_to_payload(_policy())
    with pytest.raises(RemoteWireError, match="type 99 is not supported"):
        payload_to_spd(dataclasses.replace(payload, attributes=(Attribute(99, b""),)))
    mark = Attribute(AttributeType.MARK, bytes(8))
    with pytest.raises(RemoteWireError, match="MARK appears twice"):
        payload_to_spd(dataclasses.replace(payload, attributes=(mark, mark)))


@settings(max_examples=60, deadline=None)
@given(sad_entries(), st.data())
def test_corrupt_attribute_values_give_wire_errors(entry: m.SadEntry, data: st.DataObject) -> None:
    payload = sad_to_payload(entry)
    index = data.draw(st.integers(0, len(payload.attributes) - 1))
    attr = payload.attributes[index]
    cut = data.draw(st.integers(0, max(0, len(attr.value) - 1)))
    broken = (*payload.attributes[:index], Attribute(attr.type, attr.value[:cut]))
    # Most truncations are errors; some (a shorter key or context string) stay valid.
    with contextlib.suppress(RemoteWireError):
        payload_to_sad(dataclasses.replace(payload, attributes=broken))


def test_a_sad_entry_without_a_selector_is_refused() -> None:
    payload = sad_to_payload(m.SadEntry(daddr=ipaddress.IPv4Address("192.0.2.2"), spi=0x100))
    with pytest.raises(RemoteWireError, match="no SELECTOR"):
        payload_to_sad(dataclasses.replace(payload, attributes=()))


def test_a_mismatched_family_is_a_wire_error_not_a_model_error() -> None:
    payload = spd_to_payload(_policy())
    with pytest.raises(RemoteWireError, match="SPD family"):
        payload_to_spd(dataclasses.replace(payload, family=m.AF_INET6))


@settings(max_examples=60, deadline=None)
@given(sad_entries())
def test_replay_updates_carry_the_counters(entry: m.SadEntry) -> None:
    update = replay_update_for(entry)
    decoded = _through_the_wire(update)  # type: ignore[arg-type]
    assert decoded == update
    fresh = dataclasses.replace(
        entry, replay=None, replay_esn=None, lifetime_cur=m.LifetimeCur(add_time=7)
    )
    applied = apply_replay_update(fresh, update)
    if entry.replay_esn is not None:
        assert applied.replay_esn == entry.replay_esn
    else:
        assert applied.replay == (entry.replay or m.ReplayState())
        assert applied.replay_window == entry.replay_window
    assert applied.lifetime_cur.bytes == entry.lifetime_cur.bytes
    assert applied.lifetime_cur.packets == entry.lifetime_cur.packets
    assert applied.lifetime_cur.add_time == 7


def test_a_replay_update_for_another_sa_is_refused() -> None:
    entry = m.SadEntry(daddr=ipaddress.IPv4Address("192.0.2.2"), spi=0x100)
    update = replay_update_for(dataclasses.replace(entry, spi=0x200))
    with pytest.raises(RemoteWireError, match="does not match"):
        apply_replay_update(entry, update)


def test_payload_reprs_and_summaries_never_show_key_material() -> None:
    key = bytes.fromhex("5ec12e7" + "0" * 57)
    entry = m.SadEntry(
        daddr=ipaddress.IPv4Address("192.0.2.2"),
        spi=0x100,
        aead=m.AeadAlgorithm("rfc4106(gcm(aes))", 288, 128, m.KeyMaterial(key)),
    )
    payload = sad_to_payload(entry)
    message = Message(ExchangeType.SA_STOR, 1, (payload,))
    for text in (repr(payload), str(payload), repr(message), str(describe(message))):
        assert key.hex() not in text
        assert "5ec12e7" not in text
    assert describe(message)["payloads"] == {"SadEntryPayload": 1}


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.builds(Attribute, st.sampled_from(list(AttributeType)), st.binary(max_size=70)),
        max_size=6,
    ),
    st.integers(0, 0xFFFF),
)
def test_any_attribute_bytes_give_an_entry_or_a_wire_error(
    attributes: list[Attribute], family: int
) -> None:
    sad = dataclasses.replace(
        sad_to_payload(m.SadEntry(daddr=ipaddress.IPv4Address("192.0.2.2"), spi=1)),
        family=family,
    )
    spd = spd_to_payload(_policy())
    for build in (
        lambda: payload_to_sad(dataclasses.replace(sad, attributes=(*sad.attributes, *attributes))),
        lambda: payload_to_sad(dataclasses.replace(sad, attributes=tuple(attributes))),
        lambda: payload_to_spd(dataclasses.replace(spd, attributes=tuple(attributes))),
    ):
        with contextlib.suppress(RemoteWireError):
            build()
