"""Validation at the door (every SA_Stor entry decodes to the model or the message is refused)
and retrieval that skips, logs and counts a stored entry that does not decode."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from entries_factory import make_policy, make_sa

from appliance.store import _convert as conv
from appliance.store.client import RetrievedState
from appliance.store.service import StoreService
from appliance.store.sqlite import SqliteStore
from appliance.wire.constants import ExchangeType, ProtocolId, Status
from appliance.wire.entries import AttributeType, replay_update_for
from appliance.wire.messages import Message, decode_message, encode_message
from appliance.wire.payloads import (
    Attribute,
    EpochPayload,
    Payload,
    SadEntryPayload,
    ServerIdPayload,
    SpdEntryPayload,
)

pytestmark = pytest.mark.unit


def cut_attribute(payload: SadEntryPayload | SpdEntryPayload, attr_type: int, size: int):  # type: ignore[no-untyped-def]
    """``payload`` with one attribute cut to ``size`` bytes: valid TLV, invalid value."""
    attrs = tuple(
        Attribute(a.type, a.value[:size]) if a.type == attr_type else a for a in payload.attributes
    )
    assert attrs != payload.attributes
    return dataclasses.replace(payload, attributes=attrs)


def bad_sad_payload(n: int) -> SadEntryPayload:
    """The SAD entry of tunnel ``n`` with its SELECTOR attribute cut to 8 bytes."""
    bad = cut_attribute(conv.sad_to_payload(make_sa(n)), AttributeType.SELECTOR, 8)
    assert isinstance(bad, SadEntryPayload)
    return bad


@pytest.fixture
def service(tmp_path: Path) -> Iterator[StoreService]:
    store = SqliteStore(tmp_path / "s.db")
    yield StoreService(store)
    store.close()


def stor(service: StoreService, *payloads: Payload) -> Message:
    head = (ServerIdPayload.parse("gw1"), EpochPayload(1))
    request = Message(ExchangeType.SA_STOR, 7, (*head, *payloads))
    return decode_message(service.handle_bytes(encode_message(request)))


def refusal(response: Message) -> tuple[int, str]:
    assert response.status is not None
    return response.status.status, response.status.text


def test_sad_entry_with_a_cut_selector_is_refused_by_name_with_its_whole_message(
    service: StoreService,
) -> None:
    good, bad = make_sa(1), make_sa(2)
    response = stor(
        service,
        conv.sad_to_payload(good),
        conv.spd_to_payload(make_policy(1)),
        bad_sad_payload(2),
    )
    status, text = refusal(response)
    assert status == Status.MALFORMED
    assert "SAD entry 2" in text and f"0x{bad.spi:08x}" in text and "selector" in text
    assert response.status is not None
    assert (response.status.spi, response.status.protocol_id) == (bad.spi, ProtocolId.ESP)
    # One message, one transaction: the valid SA and its policy are not stored either.
    assert service.store.stats().servers == ()
    assert service.store.get_by_spi(conv.sa_key_of(good)) is None


def test_spd_entry_with_a_cut_template_is_refused_by_name(service: StoreService) -> None:
    pol = cut_attribute(conv.spd_to_payload(make_policy(3)), AttributeType.TEMPLATE, 10)
    status, text = refusal(stor(service, conv.sad_to_payload(make_sa(3)), pol))
    assert status == Status.MALFORMED
    assert "SPD entry 1" in text and f"policy index {make_policy(3).index}" in text
    assert "template" in text
    assert service.store.stats().servers == ()


@pytest.mark.parametrize("with_its_sa", [True, False])
def test_replay_state_that_would_not_apply_is_refused(
    service: StoreService, with_its_sa: bool
) -> None:
    sa = make_sa(4)
    if not with_its_sa:  # a replay-only update needs the SA stored first
        assert refusal(stor(service, conv.sad_to_payload(sa)))[0] == Status.OK
    update = dataclasses.replace(replay_update_for(sa), bitmap=(1, 2))  # legacy SA: one word
    payloads = (conv.sad_to_payload(sa), update) if with_its_sa else (update,)
    status, text = refusal(stor(service, *payloads))
    assert status == Status.MALFORMED
    assert "Replay State 1" in text and f"0x{sa.spi:08x}" in text and "bitmap word" in text
    stored = service.store.get_by_spi(conv.sa_key_of(sa))
    assert (stored is None) if with_its_sa else (stored is not None and stored.sa.replay is None)


def test_valid_entries_are_stored_as_they_came(service: StoreService) -> None:
    sa, pol = make_sa(5), make_policy(5)
    payloads = (conv.sad_to_payload(sa), conv.spd_to_payload(pol), replay_update_for(sa))
    assert refusal(stor(service, *payloads))[0] == Status.OK
    found = service.store.get_by_spi(conv.sa_key_of(sa))
    assert found is not None
    assert found.sa.entry == conv.sad_entry_bytes(conv.sad_to_payload(sa))
    assert conv.sad_from_stored(found.sa.entry) == sa


def test_retrieval_skips_logs_once_and_counts_an_entry_that_does_not_decode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = [make_sa(n) for n in (10, 12)]
    bad = bad_sad_payload(11)
    state = RetrievedState(
        "gw1",
        1,
        sad_entries=[
            conv.sad_entry_bytes(conv.sad_to_payload(good[0])),
            conv.sad_entry_bytes(bad),
            conv.sad_entry_bytes(conv.sad_to_payload(good[1])),
        ],
        spd_entries=[conv.spd_entry_bytes(conv.spd_to_payload(make_policy(10))), b"\x01\x00"],
    )
    with caplog.at_level(logging.WARNING):
        assert state.sad == good
        assert state.spd == [make_policy(10)]
        state.convert()  # again: nothing more logged
    assert len(state.skipped) == 2
    assert state.skipped[0].startswith(f"SAD entry 2 (SPI 0x{bad.spi:08x})")
    assert state.skipped[1].startswith("SPD entry 2 (no index)")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("skipped" in line for line in lines)
    key_hex = make_sa(11).aead.key.data.hex()  # type: ignore[union-attr]
    assert not any(key_hex in line for line in lines)


def test_an_sa_whose_stored_replay_state_does_not_decode_is_skipped() -> None:
    sa = make_sa(20)
    state = RetrievedState(
        "gw1",
        1,
        sad_entries=[conv.sad_entry_bytes(conv.sad_to_payload(sa))],
        unreadable_replay={0: "replay SPI is truncated"},
    )
    assert state.sad == []
    assert state.skipped == [f"SAD entry 1 (SPI 0x{sa.spi:08x}): its replay state: "
                             "replay SPI is truncated"]  # fmt: skip
