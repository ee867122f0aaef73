"""The IKE book, fed the datagrams recorded from the real plugin, holds after
every recorded step exactly the IKE SA and CHILD SAs the gateway's charon and
kernel held then; and its replay rebuilds each IKE SA."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from ha_recordings import datagrams, recording

from appliance.strongswan import HaAttributeType, HaIkeSaId, HaMessage, HaMessageType, decode
from appliance.strongswan.ha_message import HaMessageError, HaNumber
from appliance.strongswan.ike_state import (
    IkeBook,
    IkeSaChanged,
    IkeSaRemoved,
    format_spis,
    kernel_spi,
    spis_of,
)

pytestmark = pytest.mark.unit

A = HaAttributeType
T = HaMessageType
GW, CLIENT = "192.0.2.1", "192.0.2.2"


def _steps() -> list[tuple[str, list[HaMessage], dict[str, str]]]:
    by_step: dict[str, list[HaMessage]] = {}
    for r in datagrams():
        by_step.setdefault(r.step, []).append(decode(r.data))
    return [(s["step"], by_step.get(s["step"], []), s["gateway"]) for s in recording()["steps"]]


def _kernel_spis(xfrm: str, src: str, dst: str) -> set[int]:
    pattern = rf"src {re.escape(src)} dst {re.escape(dst)}\s+proto esp spi (0x[0-9a-f]+)"
    return {int(s, 16) for s in re.findall(pattern, xfrm)}


def _child_spis(book: IkeBook, attr: HaAttributeType) -> set[int]:
    out = set()
    for sa in book.sas.values():
        for child in sa.all_children:
            found = child.add.get(attr)
            assert isinstance(found, HaNumber)
            out.add(kernel_spi(found, "little"))  # recorded on x86-64
    return out


def test_after_every_step_the_book_holds_what_the_gateway_held() -> None:
    book = IkeBook()
    for name, messages, gateway in _steps():
        for m in messages:
            book.handle(m)
        xfrm = gateway["xfrm_state"]
        assert _child_spis(book, A.INBOUND_SPI) == _kernel_spis(xfrm, CLIENT, GW), name
        # A rekeyed CHILD SA's outbound SA leaves the kernel at once, its inbound one
        # only with the CHILD_DELETE (delete_rekeyed_delay): the book keeps both till then.
        assert _child_spis(book, A.OUTBOUND_SPI) >= _kernel_spis(xfrm, GW, CLIENT), name
        shown = set(re.findall(r"([0-9a-f]{16}_i [0-9a-f]{16}_r)", gateway["list_sas"]))
        assert {format_spis(s) for s in book.sas} == shown, name
    assert book.sas == {}
    # After the IKE rekey, the old SA's IKE_DELETE and one late message-ID update
    # name an SA that is gone; a passive charon ignores them too.
    assert dict(book.ignored) == {
        "ike_delete of an unknown IKE SA": 1,
        "ike_mid_responder of an unknown IKE SA": 1,
    }


def _book_after(step_name: str) -> IkeBook:
    book = IkeBook()
    for name, messages, _ in _steps():
        for m in messages:
            book.handle(m)
        if name == step_name:
            return book
    raise AssertionError(step_name)


def test_an_ike_rekey_keeps_the_generation_the_child_sas_were_made_in() -> None:
    book = _book_after("rekey_ike_client")
    (sa,) = book.sas.values()
    assert len(sa.ancestors) == 1 and sa.children == ()
    (old,) = sa.ancestors
    # Both remaining CHILD SAs were created under the old IKE SA, whose SK_d keyed them.
    assert {c.add.ike_sa_id for c in old.children} == {old.add.ike_sa_id}
    replay = sa.replay()
    assert [m.type for m in replay] == [
        T.IKE_ADD,
        T.IKE_UPDATE,
        T.CHILD_ADD,
        T.CHILD_ADD,
        T.IKE_ADD,
        T.IKE_UPDATE,
    ]
    # The first generation replays without IKE_REKEY_ID; the next names it.
    assert replay[0].get(A.IKE_REKEY_ID) is None
    rekey_id = replay[4].get(A.IKE_REKEY_ID)
    assert isinstance(rekey_id, HaIkeSaId) and old.add.ike_sa_id is not None
    assert (rekey_id.initiator_spi, rekey_id.responder_spi) == old.spis


def test_replay_rebuilds_the_same_state_at_every_step() -> None:
    book = IkeBook()
    for name, messages, _ in _steps():
        for m in messages:
            book.handle(m)
        for sa in book.sas.values():
            fresh = IkeBook()
            for m in sa.replay():
                fresh.handle(m)
            assert fresh.sas == {sa.spis: sa}, name
            assert not fresh.ignored, name


def test_events() -> None:
    book = IkeBook()
    for _, messages, _ in _steps():
        for m in messages:
            events = book.handle(m)
            if m.type in (T.STATUS, T.SEGMENT_DROP, T.SEGMENT_TAKE, T.RESYNC):
                assert events == []
            elif m.type is T.IKE_ADD and m.get(A.IKE_REKEY_ID) is not None:
                removed, changed = events
                assert isinstance(removed, IkeSaRemoved) and isinstance(changed, IkeSaChanged)
                assert removed.successor == changed.state.spis
            elif m.type is T.IKE_DELETE and events:
                assert m.ike_sa_id is not None
                assert events == [IkeSaRemoved(spis_of(m.ike_sa_id))]
            elif events:
                (changed,) = events
                assert (
                    isinstance(changed, IkeSaChanged)
                    and changed.state is book.sas[changed.state.spis]
                )


def _first(name: str, message_type: HaMessageType) -> HaMessage:
    for step_name, messages, _ in _steps():
        if step_name == name:
            return next(m for m in messages if m.type is message_type)
    raise AssertionError(name)


def test_a_second_full_update_replaces_the_first_and_vips_are_kept_beside_it() -> None:
    book = _book_after("initiate")
    (sa,) = book.sas.values()
    ike_id = sa.add.get(A.IKE_ID)
    assert ike_id is not None
    vips = HaMessage(T.IKE_UPDATE, (ike_id,))
    book.handle(vips)
    assert book.sas[sa.spis].vips == vips and book.sas[sa.spis].update == sa.update
    assert sa.update is not None
    book.handle(sa.update)
    assert book.sas[sa.spis].vips == vips
    assert book.sas[sa.spis].config_name == "gw"


def test_a_child_add_for_a_held_spi_replaces_it() -> None:
    book = _book_after("add_child")
    (sa,) = book.sas.values()
    first = sa.children[0].add
    book.handle(first)
    after = book.sas[sa.spis]
    assert len(after.children) == 2 and after.children[-1].add == first


@pytest.mark.parametrize(
    ("message_type", "reason"),
    [
        (T.IKE_UPDATE, "ike_update of an unknown IKE SA"),
        (T.IKE_MID_INITIATOR, "ike_mid_initiator of an unknown IKE SA"),
        (T.CHILD_ADD, "child_add of an unknown IKE SA"),
        (T.IKE_DELETE, "ike_delete of an unknown IKE SA"),
    ],
)
def test_messages_for_an_unknown_ike_sa_change_nothing(
    message_type: HaMessageType, reason: str
) -> None:
    book = _book_after("initiate")
    before = dict(book.sas)
    (sa,) = before.values()
    ike_id = sa.add.get(A.IKE_ID)
    assert isinstance(ike_id, HaIkeSaId)
    stranger = replace(ike_id, initiator_spi=ike_id.initiator_spi ^ 1)
    assert book.handle(HaMessage(message_type, (stranger,))) == []
    assert book.sas == before and book.ignored[reason] == 1


def test_a_child_delete_of_an_unknown_spi_changes_nothing() -> None:
    book = _book_after("initiate")
    before = dict(book.sas)
    delete = _first("rekey_child_gateway", T.CHILD_DELETE)
    spi = delete.get(A.INBOUND_SPI)
    assert isinstance(spi, HaNumber)
    other = HaMessage(
        T.CHILD_DELETE,
        tuple(replace(a, value=a.value ^ 1) if a is spi else a for a in delete.attributes),
    )
    assert book.handle(other) == []
    assert book.sas == before and book.ignored["child_delete of an unknown CHILD SA"] == 1


def test_state_messages_without_what_they_need_are_refused() -> None:
    book = _book_after("initiate")
    with pytest.raises(HaMessageError, match="names no IKE SA"):
        book.handle(HaMessage(T.IKE_UPDATE, ()))
    (sa,) = book.sas.values()
    ike_id = sa.add.get(A.IKE_ID)
    assert ike_id is not None
    with pytest.raises(HaMessageError, match="no INBOUND_SPI"):
        book.handle(HaMessage(T.CHILD_ADD, (ike_id,)))
    with pytest.raises(HaMessageError, match="no INBOUND_SPI"):
        book.handle(HaMessage(T.CHILD_DELETE, (ike_id,)))


def test_child_owner() -> None:
    book = _book_after("rekey_ike_client")
    (sa,) = book.sas.values()
    for child in sa.all_children:
        assert book.child_owner(child.inbound_spi) is sa
    assert book.child_owner(0) is None


def test_kernel_spi_follows_the_senders_byte_order() -> None:
    spi = HaNumber(A.INBOUND_SPI, 0x2E12D8C1)
    assert kernel_spi(spi, "little") == 0xC1D8122E
    assert kernel_spi(spi, "big") == 0x2E12D8C1


def test_no_secret_in_the_repr_of_a_state() -> None:
    book = _book_after("add_child")
    (sa,) = book.sas.values()
    text = repr(sa) + str(book.sas)
    for m in sa.replay():
        for a in m.attributes:
            data = getattr(a, "data", b"")
            if a.type in (A.SECRET, A.NONCE_I, A.NONCE_R) and data:
                assert data.hex() not in text


def test_charons_resync_at_start_empties_the_book_and_makes_it_complete() -> None:
    fresh = IkeBook()
    assert not fresh.complete
    # The plugin asks its peer for the state at start (the recording's "start" step).
    first = next(m for m in map(decode, (r.data for r in datagrams())) if m.type is T.RESYNC)
    assert fresh.handle(first) == [] and fresh.complete

    book = _book_after("add_child")
    book.complete = False
    (sa,) = book.sas.values()
    assert book.handle(first) == [IkeSaRemoved(sa.spis, lost=sa)]
    assert book.sas == {} and book.complete
