"""The store service (requests in, responses out) over SQLite, and its fast wire path."""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from entries_factory import make_policy, make_sa, make_state
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.errors import ApplianceError
from appliance.store import _convert as conv
from appliance.store import _rawwire
from appliance.store.client import PolicyIndex
from appliance.store.server import ResponseCache
from appliance.store.service import StoreService
from appliance.store.sqlite import SqliteStore
from appliance.wire import RemoteWireError
from appliance.wire.constants import (
    CHANNEL_OVERHEAD,
    ExchangeType,
    ProtocolId,
    RemovedKind,
    Status,
)
from appliance.wire.entries import payload_to_sad, payload_to_spd, replay_update_for
from appliance.wire.messages import Message, decode_message, encode_message
from appliance.wire.payloads import (
    Delete,
    EpochPayload,
    IkeSaPayload,
    Notify,
    PagePayload,
    RemovedPayload,
    RevisionPayload,
    SadEntryPayload,
    SaLookupPayload,
    ServerIdPayload,
    SpdEntryPayload,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def service(tmp_path: Path) -> Iterator[StoreService]:
    store = SqliteStore(tmp_path / "s.db")
    yield StoreService(store)
    store.close()


def call(service: StoreService, exchange: ExchangeType, payloads: tuple, mid: int = 7) -> Message:  # type: ignore[type-arg]
    raw = service.handle_bytes(encode_message(Message(exchange, mid, payloads)))
    response = decode_message(raw)
    assert response.response and response.message_id == mid
    return response


def head(server_id: str = "gw1", epoch: int = 1) -> tuple:  # type: ignore[type-arg]
    return (ServerIdPayload.parse(server_id), EpochPayload(epoch))


def status(response: Message) -> int:
    assert response.status is not None
    return response.status.status


def stor(service: StoreService, n: int, server_id: str = "gw1", epoch: int = 1) -> Message:
    sad, spd = make_sa(n), make_policy(n)
    payloads = (*head(server_id, epoch), conv.sad_to_payload(sad), conv.spd_to_payload(spd))
    return call(service, ExchangeType.SA_STOR, payloads)


def test_stored_sa_comes_back_by_spi_with_its_policy(service: StoreService) -> None:
    bulk_policy = make_policy(99)
    ike = IkeSaPayload(0xA1, 0xB1, (make_sa(1).spi, 0x4242), b"ike state")
    payloads = (
        *head(),
        conv.spd_to_payload(bulk_policy),  # before any SAD entry: a policy without an SA
        ike,  # likewise: IKE SAs stand alone
        conv.sad_to_payload(make_sa(1)),
        conv.spd_to_payload(make_policy(1)),
    )
    assert status(call(service, ExchangeType.SA_STOR, payloads)) == Status.OK
    key = conv.sa_key_of(make_sa(1))
    answer = call(service, ExchangeType.SA_RETR, (conv.lookup_payload(key),))
    assert status(answer) == Status.OK
    assert str(answer.first(ServerIdPayload)) == "gw1"
    assert conv.sad_from_payload(answer.payloads[3]) == make_sa(1)  # type: ignore[arg-type]
    assert [conv.spd_from_payload(p) for p in answer.all(type(payloads[2]))] == [make_policy(1)]
    assert answer.first(IkeSaPayload) == ike  # the IKE SA that names the SA's SPI
    stats = service.store.stats().servers[0]
    assert (stats.sas, stats.policies, stats.ike_sas) == (1, 2, 1)


def test_pages_fit_the_requested_size_and_cover_everything(service: StoreService) -> None:
    sad, spd = make_state(60)
    index = PolicyIndex(spd)
    groups = [
        (conv.sad_to_payload(s), *(conv.spd_to_payload(p) for p in index.policies_for(s)))
        for s in sad
    ]
    for i in range(0, 60, 10):
        flat = tuple(p for g in groups[i : i + 10] for p in g)
        assert status(call(service, ExchangeType.SA_STOR, (*head(), *flat))) == Status.OK
    cursor, seen_sa, seen_pol, pages = b"", [], [], 0
    while True:
        raw = service.handle_bytes(
            encode_message(
                Message(ExchangeType.SA_RETR, pages, (head()[0], PagePayload(700, cursor)))
            )
        )
        assert len(raw) + 36 <= 700  # with the channel overhead, it fits the asked size
        response = decode_message(raw)
        pages += 1
        seen_sa += [conv.sad_from_payload(p) for p in response.all(type(groups[0][0]))]
        seen_pol += [conv.spd_from_payload(p) for p in response.all(type(groups[0][1]))]
        page = response.first(PagePayload)
        if not response.more:
            assert page is None
            break
        assert page is not None and 0 < len(page.cursor) <= 64
        cursor = page.cursor
    assert pages > 10
    assert sorted(seen_sa, key=lambda s: s.spi) == sad
    assert sorted(seen_pol, key=lambda p: p.index) == spd


def change_pages(service: StoreService, since: int, max_length: int = 700) -> list[Message]:
    """Every page of the changes after ``since`` (SA_Retr with a Revision payload)."""
    cursor, pages = b"", []
    while True:
        request = (head()[0], RevisionPayload(since), PagePayload(max_length, cursor))
        raw = service.handle_bytes(
            encode_message(Message(ExchangeType.SA_RETR, len(pages), request))
        )
        assert len(raw) + 36 <= max_length
        response = decode_message(raw)
        assert status(response) == Status.OK
        pages.append(response)
        page = response.first(PagePayload)
        if not response.more:
            assert page is None
            return pages
        assert page is not None
        cursor = page.cursor


def test_changes_since_a_revision_come_in_pages_with_the_removals(service: StoreService) -> None:
    for n in range(20):
        assert status(stor(service, n)) == Status.OK
    whole = call(service, ExchangeType.SA_RETR, (head()[0],))
    since = whole.first(RevisionPayload)
    assert since is not None and since.revision == service.store.revision("gw1")
    for n in range(20, 26):
        stor(service, n)
    spis = tuple(make_sa(n).spi for n in range(3))
    deleted = call(service, ExchangeType.SA_STOR, (*head(), Delete(ProtocolId.ESP, spis)))
    assert status(deleted) == Status.OK
    index = make_policy(4).index
    call(service, ExchangeType.SA_STOR, (*head(), Delete(ProtocolId.SPD_INDEX, (index,))))

    pages = change_pages(service, since.revision, 700)
    assert len(pages) > 2
    assert {p.first(RevisionPayload) for p in pages} == {
        RevisionPayload(service.store.revision("gw1"))
    }
    changed = [conv.sad_from_payload(p) for r in pages for p in r.all(SadEntryPayload)]
    removed = [p for r in pages for p in r.all(RemovedPayload)]
    assert sorted(sa.spi for sa in changed) == [make_sa(n).spi for n in range(20, 26)]
    assert sorted(p.spi for p in removed if p.kind == RemovedKind.SA) == sorted(spis)
    assert [p.policy_id for p in removed if p.kind == RemovedKind.SPD_ENTRY] == [
        conv.policy_id_for_index(index)
    ]
    # Nothing since now: one page with the revision and nothing else.
    (empty,) = change_pages(service, service.store.revision("gw1"))
    assert [type(p) for p in empty.payloads] == [
        Notify,
        ServerIdPayload,
        EpochPayload,
        RevisionPayload,
    ]


def _ike(n: int, size: int = 300) -> IkeSaPayload:
    return IkeSaPayload(0xA0 + n, 0xB0 + n, (make_sa(n).spi,), bytes([n]) * size)


def test_ike_sas_come_after_the_sas_in_pages_and_changes(service: StoreService) -> None:
    for n in range(6):
        stor(service, n)
    ikes = (_ike(n) for n in range(6))
    assert status(call(service, ExchangeType.SA_STOR, (*head(), *ikes))) == Status.OK
    since = service.store.revision("gw1")
    cursor, seen, pages = b"", [], []
    while True:
        page = call(
            service, ExchangeType.SA_RETR, (head()[0], PagePayload(700, cursor)), len(pages)
        )
        pages.append(page)
        # Within a walk, IKE SAs come only after every SA.
        if seen:
            assert page.all(SadEntryPayload) == []
        seen += page.all(IkeSaPayload)
        if not page.more:
            break
        cursor = page.first(PagePayload).cursor  # type: ignore[union-attr]
    assert seen == [_ike(n) for n in range(6)] and len(pages) > 3

    changed = (*head(), _ike(1, 10), Delete.for_ike_sas([_ike(2).spis, (9, 9)]))
    assert status(call(service, ExchangeType.SA_STOR, changed)) == Status.OK
    after = change_pages(service, since)
    assert [p for r in after for p in r.all(IkeSaPayload)] == [_ike(1, 10)]
    removed = [p for r in after for p in r.all(RemovedPayload)]
    assert removed == [RemovedPayload.for_ike_sa(_ike(2).spis)]

    # By SPI: the SA with the IKE SA that names it; none once the IKE SA is gone.
    answer = call(service, ExchangeType.SA_RETR, (conv.lookup_payload(conv.sa_key_of(make_sa(1))),))
    assert answer.first(IkeSaPayload) == _ike(1, 10)
    answer = call(service, ExchangeType.SA_RETR, (conv.lookup_payload(conv.sa_key_of(make_sa(2))),))
    assert status(answer) == Status.OK and answer.first(IkeSaPayload) is None


def test_an_ike_sa_too_large_for_the_page_is_too_large(service: StoreService) -> None:
    assert status(call(service, ExchangeType.SA_STOR, (*head(), _ike(1, 2000)))) == Status.OK
    answer = call(service, ExchangeType.SA_RETR, (head()[0], PagePayload(700, b"")))
    assert status(answer) == Status.TOO_LARGE


def test_a_revision_the_store_cannot_serve_is_revision_gone(service: StoreService) -> None:
    stor(service, 1)
    future = service.store.revision("gw1") + 1
    answer = call(service, ExchangeType.SA_RETR, (head()[0], RevisionPayload(future)))
    assert status(answer) == Status.REVISION_GONE
    assert b"retrieve the whole state" in answer.status.data  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "payloads",
    [
        (RevisionPayload(0),),
        (RevisionPayload(0), ServerIdPayload.parse("gw1")),
        (ServerIdPayload.parse("gw1"), PagePayload(), RevisionPayload(0)),
        (ServerIdPayload.parse("gw1"), RevisionPayload(0), RevisionPayload(1)),
    ],
)
def test_revision_payloads_out_of_place_are_malformed(
    service: StoreService,
    payloads: tuple,  # type: ignore[type-arg]
) -> None:
    assert status(call(service, ExchangeType.SA_RETR, payloads)) == Status.MALFORMED


def test_collision_and_stale_epoch_answers(service: StoreService) -> None:
    assert status(stor(service, 1, "gw1", 5)) == Status.OK
    collision = stor(service, 1, "gw2", 1)
    assert status(collision) == Status.SPI_COLLISION
    assert b"belongs to server gw1" in collision.status.data  # type: ignore[union-attr]
    stale = stor(service, 2, "gw1", 4)
    assert status(stale) == Status.STALE_EPOCH
    assert stale.first(EpochPayload) == EpochPayload(5)


def test_an_empty_delete_checks_the_epoch_and_changes_nothing(service: StoreService) -> None:
    assert status(stor(service, 1, "gw1", 3)) == Status.OK
    before = service.store.stats().servers[0]
    probe = (*head("gw1", 3), Delete(ProtocolId.ESP, ()))
    assert status(call(service, ExchangeType.SA_STOR, probe)) == Status.OK
    fenced = call(service, ExchangeType.SA_STOR, (*head("gw1", 2), Delete(ProtocolId.ESP, ())))
    assert status(fenced) == Status.STALE_EPOCH
    assert fenced.first(EpochPayload) == EpochPayload(3)
    assert service.store.stats().servers[0] == before


def test_claim_is_an_sa_stor_without_entries(service: StoreService) -> None:
    stor(service, 1, "gw1", 1)
    claimed = call(service, ExchangeType.SA_STOR, head("gw1", 0))
    assert (status(claimed), claimed.first(EpochPayload)) == (Status.OK, EpochPayload(2))
    assert status(call(service, ExchangeType.SA_STOR, head("gw1", 2))) == Status.STALE_EPOCH
    assert status(stor(service, 3, "gw1", 1)) == Status.STALE_EPOCH


def test_delete_by_spi_and_policy_index(service: StoreService) -> None:
    stor(service, 1)
    stor(service, 2)
    delete = (
        *head(),
        Delete(ProtocolId.ESP, (make_sa(1).spi,)),
        Delete(ProtocolId.SPD_INDEX, (make_policy(2).index,)),
    )
    assert status(call(service, ExchangeType.SA_STOR, delete)) == Status.OK
    assert service.store.get_by_spi(conv.sa_key_of(make_sa(1))) is None
    found = service.store.get_by_spi(conv.sa_key_of(make_sa(2)))
    assert found is not None and found.policies == ()


def test_replay_only_update_is_returned_with_the_sa(service: StoreService) -> None:
    stor(service, 1)
    import dataclasses

    from appliance.model import ReplayState

    newer = dataclasses.replace(make_sa(1), replay=ReplayState(oseq=123456, seq=77, bitmap=3))
    update = replay_update_for(newer)
    assert status(call(service, ExchangeType.SA_STOR, (*head(), update))) == Status.OK
    key = conv.sa_key_of(newer)
    answer = call(service, ExchangeType.SA_RETR, (conv.lookup_payload(key),))
    assert answer.first(type(update)) == update
    unknown = replay_update_for(make_sa(9))
    assert status(call(service, ExchangeType.SA_STOR, (*head(), unknown))) == Status.NOT_FOUND


@pytest.mark.parametrize(
    "payloads",
    [
        (),  # SA_Stor without server ID and epoch
        (ServerIdPayload.parse("gw1"),),
        (*head(), conv.sad_to_payload(make_sa(1)), IkeSaPayload(1, 2, (), b"after a SAD entry")),
    ],
)
def test_incomplete_sa_stor_is_malformed(service: StoreService, payloads: tuple) -> None:  # type: ignore[type-arg]
    assert status(call(service, ExchangeType.SA_STOR, payloads)) == Status.MALFORMED


def test_retrieve_needs_a_lookup_or_server_id(service: StoreService) -> None:
    assert status(call(service, ExchangeType.SA_RETR, ())) == Status.MALFORMED
    any_dst = SaLookupPayload(1, 50, 0, bytes(16))
    assert status(call(service, ExchangeType.SA_RETR, (any_dst,))) == Status.MALFORMED
    absent = conv.lookup_payload(conv.sa_key_of(make_sa(5)))
    assert status(call(service, ExchangeType.SA_RETR, (absent,))) == Status.NOT_FOUND


def test_undecodable_request_gets_error_with_its_message_id(service: StoreService) -> None:
    sa = conv.sad_to_payload(make_sa(1))
    good = encode_message(Message(ExchangeType.SA_STOR, 4242, (*head(), sa)))
    broken = good[:-3] + b"\xff\xff\xff"
    broken = broken[:8] + len(broken).to_bytes(4, "big") + broken[12:]
    response = decode_message(service.handle_bytes(broken[:-20] + b"\0" * 20))
    assert response.message_id == 4242 and response.status is not None
    assert response.status.status in (Status.MALFORMED, Status.UNSUPPORTED)
    assert service.store.stats().servers == ()


def test_heartbeat_carries_the_summary(service: StoreService) -> None:
    stor(service, 1)
    response = call(service, ExchangeType.HEARTBEAT, ())
    stats = json.loads(response.status.data)  # type: ignore[union-attr]
    assert stats["server_count"] == 1 and stats["requests"]["SA_STOR"] == 1
    assert "servers" not in stats and not response.more


def test_the_summary_counts_lookups_by_spi_apart_from_bulk_reads(service: StoreService) -> None:
    stor(service, 1)
    key = conv.sa_key_of(make_sa(1))
    for _ in range(2):
        assert status(call(service, ExchangeType.SA_RETR, (conv.lookup_payload(key),))) == Status.OK
    call(service, ExchangeType.SA_RETR, (head()[0],))  # a bulk read: an SA_Retr, not by SPI
    stats = service.summary()
    assert (stats["requests"]["SA_RETR"], stats["spi_lookups"]) == (3, 2)


def test_a_summary_that_outgrows_the_datagram_leaves_keys_out(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    drops = {f"reason-{n}": n for n in range(100)}  # far more than 576 bytes of counters
    service = StoreService(store, lambda: {"drops": drops, "drops_total": 4950}, max_datagram=576)
    raw = service.handle_bytes(encode_message(Message(ExchangeType.HEARTBEAT, 1, ())))
    assert len(raw) + CHANNEL_OVERHEAD <= 576
    summary = json.loads(decode_message(raw).status.data)  # type: ignore[union-attr]
    assert summary["truncated"] is True and "drops" not in summary
    assert summary["backend"] == "sqlite" and summary["drops_total"] == 4950
    store.close()


def server_pages(service: StoreService, max_length: int) -> tuple[list[dict], list[bytes]]:  # type: ignore[type-arg]
    """Every Heartbeat server page, as the client walks them; and the raw replies."""
    servers, replies, cursor = [], [], b""
    while True:
        raw = service.handle_bytes(
            encode_message(
                Message(ExchangeType.HEARTBEAT, len(replies), (PagePayload(max_length, cursor),))
            )
        )
        replies.append(raw)
        response = decode_message(raw)
        assert status(response) == Status.OK, response.status
        servers += json.loads(response.status.data)["servers"]  # type: ignore[union-attr]
        page = response.first(PagePayload)
        if not response.more:
            assert page is None
            return servers, replies
        assert page is not None
        cursor = page.cursor


def test_heartbeat_pages_through_a_thousand_server_ids(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    ids = [f"gw-{n:04d}.example.net" for n in range(1100)]
    for sid in ids:
        store.claim(sid)
    service = StoreService(store, max_datagram=1400)
    summary = call(service, ExchangeType.HEARTBEAT, ())
    assert json.loads(summary.status.data)["server_count"] == 1100  # type: ignore[union-attr]
    servers, replies = server_pages(service, 65000)  # asks for more than the store allows
    assert [s["server_id"] for s in servers] == ids
    assert all(
        s == {"server_id": s["server_id"], "epoch": 1, "sas": 0, "policies": 0} for s in servers
    )
    assert len(replies) > 50
    assert max(len(r) for r in replies) + CHANNEL_OVERHEAD <= 1400
    small, _ = server_pages(service, 576)
    assert small == servers
    store.close()


@pytest.mark.parametrize(
    "payloads",
    [
        (PagePayload(1400, b"\x00\x01"),),  # a cursor this store never hands out
        (PagePayload(1400, b""), PagePayload(1400, b"")),
        (PagePayload(100, b""),),  # below the smallest page
    ],
)
def test_heartbeat_page_requests_that_make_no_sense_are_malformed(
    service: StoreService,
    payloads: tuple,  # type: ignore[type-arg]
) -> None:
    assert status(call(service, ExchangeType.HEARTBEAT, payloads)) == Status.MALFORMED


def test_every_reply_fits_the_stores_max_datagram(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    service = StoreService(store, max_datagram=1400)
    sad, spd = make_state(100)
    index = PolicyIndex(spd)
    for s in sad:
        pols = tuple(conv.spd_to_payload(p) for p in index.policies_for(s))
        payloads = (*head(), conv.sad_to_payload(s), *pols)
        assert status(call(service, ExchangeType.SA_STOR, payloads)) == Status.OK
    cursor, replies, seen = b"", [], []
    while True:
        request = (head()[0], PagePayload(65000, cursor))  # the requester asks for 65,000 bytes
        raw = service.handle_bytes(
            encode_message(Message(ExchangeType.SA_RETR, len(replies), request))
        )
        replies.append(raw)
        response = decode_message(raw)
        seen += [conv.sad_from_payload(p) for p in response.all(SadEntryPayload)]
        if not response.more:
            break
        cursor = response.first(PagePayload).cursor  # type: ignore[union-attr]
    assert sorted(seen, key=lambda s: s.spi) == sad
    assert len(replies) > 10
    assert max(len(r) for r in replies) + CHANNEL_OVERHEAD <= 1400
    store.close()


def test_a_reply_that_cannot_fit_is_too_large_never_oversized(tmp_path: Path) -> None:
    import dataclasses

    store = SqliteStore(tmp_path / "s.db")
    service = StoreService(store, max_datagram=1400)
    sa = make_sa(1)
    policies = [dataclasses.replace(make_policy(1), index=(i << 3) | 1) for i in range(1, 13)]
    payloads = (*head(), conv.sad_to_payload(sa), *(conv.spd_to_payload(p) for p in policies))
    assert status(call(service, ExchangeType.SA_STOR, payloads)) == Status.OK
    raw = service.handle_bytes(
        encode_message(Message(ExchangeType.SA_RETR, 9, (conv.lookup_payload(conv.sa_key_of(sa)),)))
    )
    assert len(raw) + CHANNEL_OVERHEAD <= 1400
    answer = decode_message(raw)
    assert answer.message_id == 9 and status(answer) == Status.TOO_LARGE
    assert b"raise [store] max_datagram" in answer.status.data  # type: ignore[union-attr]
    # Counted under the status it left with, not the OK it was built with.
    assert service.response_counts() == {("sa_stor", "ok"): 1, ("sa_retr", "too_large"): 1}
    # The same store at 65,000 bytes answers it.
    roomy = StoreService(store, max_datagram=65000)
    found = call(roomy, ExchangeType.SA_RETR, (conv.lookup_payload(conv.sa_key_of(sa)),))
    assert status(found) == Status.OK and len(found.all(SpdEntryPayload)) == 12
    store.close()


def test_a_long_error_text_is_cut_to_fit() -> None:
    service = StoreService(None, max_datagram=576)  # type: ignore[arg-type]
    error = Message(
        ExchangeType.SA_STOR,
        5,
        (Notify(Status.MALFORMED, data="é".encode() * 600), EpochPayload(3)),
        response=True,
    )
    raw = service.fit(error)
    assert len(raw) + CHANNEL_OVERHEAD == 576 or len(raw) + CHANNEL_OVERHEAD == 575
    cut = decode_message(raw)
    assert status(cut) == Status.MALFORMED and cut.first(EpochPayload) == EpochPayload(3)
    assert set(cut.status.text) == {"é"}  # type: ignore[union-attr]


def test_claims_that_could_overflow_the_epoch_get_epoch_limit(service: StoreService) -> None:
    stor(service, 1, "gw1", 3)
    for epoch in (2**63 - 1, 3 + 2**32 + 1):
        refused = call(service, ExchangeType.SA_STOR, head("gw1", epoch))
        assert status(refused) == Status.EPOCH_LIMIT
        assert refused.first(EpochPayload) == EpochPayload(3)  # the current epoch
        assert b"refused" in refused.status.data  # type: ignore[union-attr]
    beyond = call(service, ExchangeType.SA_STOR, head("gw1", 2**64 - 1))
    assert status(beyond) == Status.EPOCH_LIMIT and beyond.first(EpochPayload) is None
    assert status(stor(service, 2, "gw1", 2**62)) == Status.EPOCH_LIMIT  # a write, too
    assert service.store.epoch("gw1") == 3
    assert service.store.get_by_spi(conv.sa_key_of(make_sa(2))) is None
    claimed = call(service, ExchangeType.SA_STOR, head("gw1", 0))
    assert (status(claimed), claimed.first(EpochPayload)) == (Status.OK, EpochPayload(4))


def valid_message(rng: random.Random) -> bytes:
    n = rng.randrange(1000)
    payloads = (
        *head(),
        conv.spd_to_payload(make_policy(n + 1)),
        conv.sad_to_payload(make_sa(n)),
        conv.spd_to_payload(make_policy(n)),
        replay_update_for(make_sa(n)),
        Notify(Status.OK),
    )
    return encode_message(Message(ExchangeType.SA_STOR, n, payloads))


@settings(max_examples=300, deadline=None)
@given(st.randoms(use_true_random=False), st.data())
def test_fast_path_agrees_with_the_codec_and_raises_only_remote_wire_errors(
    rng: random.Random, data: st.DataObject
) -> None:
    message = bytearray(valid_message(rng))
    for _ in range(data.draw(st.integers(0, 4))):
        message[data.draw(st.integers(0, len(message) - 1))] = data.draw(st.integers(0, 255))
    raw_bytes = bytes(message)
    try:
        decoded = decode_message(raw_bytes)
    except RemoteWireError:
        decoded = None
    try:
        raw = _rawwire.split(raw_bytes)
        items = _rawwire.parse_stor_items(raw.chunks)
    except RemoteWireError:
        raw = None
    if decoded is None:
        return  # the fast path may be more lenient than the codec; the converter checks later
    if raw is None:
        # Stricter than the codec only where the converter would refuse the entry anyway.
        with pytest.raises(ApplianceError):
            for p in decoded.payloads:
                if isinstance(p, SadEntryPayload):
                    payload_to_sad(p)
                elif isinstance(p, SpdEntryPayload):
                    payload_to_spd(p)
        return
    assert raw.message_id == decoded.message_id and raw.exchange == decoded.exchange
    # The kept bodies decode to exactly what the codec decoded (reserved bits aside).
    kept = [
        conv.sad_payload_from_entry(b"\x01" + i.body)
        for i in items
        if isinstance(i, _rawwire.RawSad)
    ]
    assert kept == decoded.all(SadEntryPayload)
    kept_spd = [
        conv.spd_payload_from_entry(b"\x01" + i.stored())
        for i in items
        if isinstance(i, _rawwire.RawSpd)
    ]
    assert kept_spd == decoded.all(SpdEntryPayload)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fast_path_on_random_bytes_raises_only_remote_wire_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteWireError):
        _rawwire.parse_stor_items(_rawwire.split(data).chunks)


def test_response_cache_is_bounded() -> None:
    cache = ResponseCache(max_peers=2, per_peer=3)
    for peer in ("a", "b", "c"):
        for mid in range(5):
            cache.put(peer, mid, b"r%d" % mid)
    assert cache.get("a", 4) == (False, None)  # the least recently used peer went
    assert cache.get("c", 1) == (False, None)  # only the last 3 per peer stay
    assert cache.get("c", 4) == (True, b"r4")
    assert len(cache) == 6


def test_group_commit_keeps_each_message_all_or_nothing(service: StoreService) -> None:
    stor(service, 1, "gw1", 1)

    def message(mid: int, server_id: str, *ns: int) -> bytes:
        entries = [p for n in ns for p in (conv.sad_to_payload(make_sa(n)),)]
        return encode_message(Message(ExchangeType.SA_STOR, mid, (*head(server_id), *entries)))

    replies = service.handle_many(
        [message(1, "gw2", 10, 11), message(2, "gw2", 12, 1), message(3, "gw2", 13)]
    )
    assert [status(decode_message(r)) for r in replies] == [
        Status.OK,
        Status.SPI_COLLISION,
        Status.OK,
    ]
    owners = {n: service.store.get_by_spi(conv.sa_key_of(make_sa(n))) for n in (1, 10, 11, 12, 13)}
    assert owners[12] is None  # the refused message left nothing behind
    assert {n: o.server_id for n, o in owners.items() if o} == {  # type: ignore[union-attr]
        1: "gw1",
        10: "gw2",
        11: "gw2",
        13: "gw2",
    }


def test_collision_notify_names_the_spi(service: StoreService) -> None:
    stor(service, 1, "gw1")
    notify = stor(service, 1, "gw2").status
    assert notify is not None
    assert (notify.status, notify.spi, notify.protocol_id) == (
        Status.SPI_COLLISION,
        make_sa(1).spi,
        ProtocolId.ESP,
    )


@pytest.mark.parametrize(
    ("exchange", "payloads"),
    [
        (ExchangeType.SA_STOR, (*head(), PagePayload(1400, b""))),
        (ExchangeType.SA_STOR, (*head(), ServerIdPayload.parse("gw2"))),
        (ExchangeType.SA_RETR, (ServerIdPayload.parse("gw1"), EpochPayload(1))),
        (ExchangeType.SA_RETR, (conv.lookup_payload(conv.sa_key_of(make_sa(1))), *head())),
        (ExchangeType.HEARTBEAT, (EpochPayload(1),)),
    ],
)
def test_payloads_an_exchange_does_not_allow_are_malformed(
    service: StoreService,
    exchange: ExchangeType,
    payloads: tuple,  # type: ignore[type-arg]
) -> None:
    assert status(call(service, exchange, payloads)) == Status.MALFORMED
    assert service.store.stats().servers == ()


def test_policy_without_index_is_replaced_by_identity(service: StoreService) -> None:
    import dataclasses

    first = dataclasses.replace(make_policy(1), index=0, priority=100)
    second = dataclasses.replace(first, priority=200)  # same identity, new content
    other = dataclasses.replace(first, dir=0)  # another direction: another policy
    for pol in (first, second, other):
        payloads = (*head(), conv.spd_to_payload(pol))
        assert status(call(service, ExchangeType.SA_STOR, payloads)) == Status.OK
    pages = list(service.store.iter_server("gw1"))
    stored = [
        conv.spd_from_payload(conv.spd_payload_from_entry(p.entry))
        for pg in pages
        for p in pg.policies
    ]
    assert sorted((p.dir, p.priority) for p in stored) == [(0, 100), (1, 200)]


def test_responses_are_counted_by_exchange_and_status(service: StoreService) -> None:
    stor(service, 1)
    stor(service, 2)
    stor(service, 1, "gw2")  # another server ID's SPI: refused
    absent = conv.lookup_payload(conv.sa_key_of(make_sa(5)))
    call(service, ExchangeType.SA_RETR, (absent,))
    call(service, ExchangeType.HEARTBEAT, ())
    heartbeat = encode_message(Message(ExchangeType.HEARTBEAT, 8, ()))
    service.handle_read(heartbeat)
    service.handle_bytes(heartbeat[:2] + bytes([250]) + heartbeat[3:])  # no exchange of ours
    service.handle_bytes(b"\x00")  # not even a header: no response, nothing counted
    assert service.response_counts() == {
        ("sa_stor", "ok"): 2,
        ("sa_stor", "spi_collision"): 1,
        ("sa_retr", "not_found"): 1,
        ("heartbeat", "ok"): 2,
        ("unknown", "unsupported"): 1,
    }


def test_a_failed_group_commit_counts_its_requests_busy_not_ok(tmp_path: Path) -> None:
    from appliance.store.base import StoreUnavailableError

    class FailingCommit(SqliteStore):
        @contextlib.contextmanager
        def group(self) -> Iterator[None]:
            yield
            raise StoreUnavailableError("disk full")

    store = FailingCommit(tmp_path / "s.db")
    service = StoreService(store)
    claim = encode_message(Message(ExchangeType.SA_STOR, 1, head()))
    replies = service.handle_many([claim, claim[:4] + (2).to_bytes(4, "big") + claim[8:]])
    assert [status(decode_message(r)) for r in replies] == [Status.BUSY, Status.BUSY]
    assert service.response_counts() == {("sa_stor", "busy"): 2}
    store.close()
