"""Bulk replies split into pages that each fit one datagram, in order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wire_strategies import sad_entry

from appliance.wire import (
    CHANNEL_OVERHEAD,
    DEFAULT_MAX_DATAGRAM,
    Attribute,
    EpochPayload,
    ExchangeType,
    LocalWireError,
    Message,
    Notify,
    PagePayload,
    ReplayStatePayload,
    SadEntryPayload,
    ServerIdPayload,
    Status,
    encode_message,
    paginate,
)
from appliance.wire.constants import MAX_CURSOR_LENGTH

pytestmark = pytest.mark.unit

FIXED = (Notify(Status.OK), ServerIdPayload.parse("gw-a.example"), EpochPayload(4))


def _sad(spi: int, key_bytes: int = 36) -> SadEntryPayload:
    return SadEntryPayload(
        spi=spi,
        protocol=50,
        family=2,
        mode=1,
        flags=0,
        replay_window=32,
        reqid=spi,
        seq=0,
        daddr=bytes([203, 0, 113, 1]) + bytes(12),
        saddr=bytes([198, 51, 100, 1]) + bytes(12),
        attributes=(Attribute(7, bytes(key_bytes)), Attribute(1, bytes(56))),
    )


def _page_datagram_length(page: list, more: bool) -> int:
    payloads = (*FIXED, *page, PagePayload(0, bytes(MAX_CURSOR_LENGTH)))
    message = Message(ExchangeType.SA_RETR, 1, payloads, response=True, more=more)
    return len(encode_message(message)) + CHANNEL_OVERHEAD


def test_ten_thousand_sas_page_without_ip_fragmentation() -> None:
    entries = [_sad(0x1000 + i) for i in range(10_000)]
    pages = paginate(entries, DEFAULT_MAX_DATAGRAM, FIXED)
    assert len(pages) > 1
    assert [e for page in pages for e in page] == entries
    for index, page in enumerate(pages):
        assert page
        assert _page_datagram_length(page, index < len(pages) - 1) <= DEFAULT_MAX_DATAGRAM


def test_no_entries_give_one_empty_page() -> None:
    assert paginate([], DEFAULT_MAX_DATAGRAM, FIXED) == [[]]


def test_an_entry_too_large_for_any_page_is_refused() -> None:
    with pytest.raises(LocalWireError, match="cannot fit"):
        paginate([_sad(1, key_bytes=2000)], DEFAULT_MAX_DATAGRAM, FIXED)


@settings(max_examples=60, deadline=None)
@given(st.lists(sad_entry, max_size=40), st.integers(600, 9000))
def test_pages_fit_and_keep_order(entries: list[SadEntryPayload], max_datagram: int) -> None:
    try:
        pages = paginate(entries, max_datagram, FIXED)
    except LocalWireError:
        return  # an entry larger than the page: refused, covered above
    assert [e for page in pages for e in page] == entries
    for page in pages:
        assert _page_datagram_length(page, True) <= max_datagram


def test_grouped_entries_stay_together_on_one_page() -> None:
    groups = [(_sad(i), replay) for i in range(200) for replay in [_replay(i)]]
    pages = paginate(groups, DEFAULT_MAX_DATAGRAM, FIXED)
    assert [p for page in pages for p in page] == [p for group in groups for p in group]
    for page in pages:
        assert len(page) % 2 == 0
        assert all(isinstance(p, SadEntryPayload) for p in page[::2])
        assert _page_datagram_length(page, True) <= DEFAULT_MAX_DATAGRAM


def _replay(spi: int) -> ReplayStatePayload:
    return ReplayStatePayload(
        spi=spi, protocol=50, family=2, daddr=bytes(16), oseq=5, seq=4, bitmap=(15,)
    )
