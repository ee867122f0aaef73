"""What a charon is fed from the store (strongswan.feed), checked on the recorded run."""

from __future__ import annotations

import pytest
from ha_recordings import datagrams, recording

from appliance.store.base import IkeSaRecord, IkeSpis
from appliance.strongswan import HaAttributeType, HaMessageType, HaNumber, decode
from appliance.strongswan.feed import (
    FEED_BATCH,
    SEGMENT,
    child_kernel_spis,
    feed_batches,
    plan_feed,
    plan_sync,
    plan_update,
    segment_active,
    segment_passive,
)
from appliance.strongswan.ha_message import encode
from appliance.strongswan.ike_record import encode_record
from appliance.strongswan.ike_state import IkeBook, IkeSaState, kernel_spi

pytestmark = pytest.mark.unit

A = HaAttributeType


def _book_after(step_name: str) -> IkeBook:
    """The book once every datagram up to the end of ``step_name`` was handled."""
    book = IkeBook()
    names = [step["step"] for step in recording()["steps"]]
    wanted = names[: names.index(step_name) + 1]
    for r in datagrams():
        if r.step in wanted:
            book.handle(decode(r.data))
    return book


def _records(states: list[IkeSaState]) -> dict[IkeSpis, IkeSaRecord]:
    return {
        s.spis: IkeSaRecord(s.spis, tuple(sorted(child_kernel_spis(s))), encode_record(s))
        for s in states
    }


def _spis_of(state: IkeSaState, attr: HaAttributeType) -> set[int]:
    found = set()
    for child in state.all_children:
        number = child.add.get(attr)
        assert isinstance(number, HaNumber)
        found.add(kernel_spi(number, "little"))  # recorded on x86-64
    return found


@pytest.mark.parametrize(
    "step", ["initiate", "add_child", "rekey_child_gateway", "rekey_ike_client"]
)
def test_the_feed_is_each_ike_sas_replay_and_names_every_child_sa(step: str) -> None:
    states = list(_book_after(step).sas.values())
    assert states, step
    feed = plan_feed(_records(states))
    assert feed.unreadable == ()
    assert feed.ike_sas == tuple(sorted(s.spis for s in states))
    by_spis = {s.spis: s for s in states}
    assert feed.messages == tuple(m for spis in feed.ike_sas for m in by_spis[spis].replay())
    expected = set().union(
        *(_spis_of(s, A.INBOUND_SPI) | _spis_of(s, A.OUTBOUND_SPI) for s in states)
    )
    assert feed.child_spis == expected
    # Every message a passive charon is fed is IKE state: no control message in the feed.
    assert {m.type for m in feed.messages} <= {
        HaMessageType.IKE_ADD,
        HaMessageType.IKE_UPDATE,
        HaMessageType.IKE_MID_INITIATOR,
        HaMessageType.IKE_MID_RESPONDER,
        HaMessageType.CHILD_ADD,
    }


def test_the_child_spis_are_the_gateway_kernels_inbound_ones_and_their_peers() -> None:
    # After add_child the gateway kernel held both CHILD SAs, both directions.
    (state,) = _book_after("add_child").sas.values()
    xfrm = next(s for s in recording()["steps"] if s["step"] == "add_child")["gateway"]
    kernel = {
        int(h, 16) for h in __import__("re").findall(r"spi (0x[0-9a-f]+)", xfrm["xfrm_state"])
    }
    assert plan_feed(_records([state])).child_spis == kernel


def test_an_unreadable_record_is_left_out_and_named_the_rest_is_fed() -> None:
    (state,) = _book_after("add_child").sas.values()
    good = _records([state])
    broken_spis = (1, 2)
    bad = {broken_spis: IkeSaRecord(broken_spis, (), b"\x01\x03garbage")}
    sealed = {(3, 4): IkeSaRecord((3, 4), (), b"", unreadable="the seal does not open")}
    feed = plan_feed({**good, **bad, **sealed})
    assert feed.ike_sas == (state.spis,)
    assert feed.messages == state.replay()
    assert [spis for spis, _why in feed.unreadable] == [broken_spis, (3, 4)]
    assert feed.unreadable[1][1] == "the seal does not open"


def test_a_record_stored_under_other_spis_is_not_fed() -> None:
    (state,) = _book_after("add_child").sas.values()
    record = encode_record(state)
    feed = plan_feed({(5, 6): IkeSaRecord((5, 6), (), record)})
    assert feed.messages == () and feed.child_spis == frozenset()
    assert feed.unreadable == (((5, 6), "the record rebuilds another IKE SA than its key names"),)


def test_the_segment_switch_is_what_the_plugin_itself_sends() -> None:
    # record.py wrote -1 and +1 to the gateway charon's FIFO: its plugin told its peer
    # SEGMENT_DROP and SEGMENT_TAKE, the very messages that make a peer do the opposite.
    sent = {decode(r.data).type: r.data for r in datagrams()}
    assert encode(segment_active()) == sent[HaMessageType.SEGMENT_DROP]
    assert encode(segment_passive()) == sent[HaMessageType.SEGMENT_TAKE]
    assert segment_active().get(A.SEGMENT) == HaNumber(A.SEGMENT, SEGMENT)


def test_the_feed_goes_in_batches_cut_only_between_records() -> None:
    (state,) = _book_after("add_child").sas.values()
    real = _records([state])
    (one,) = feed_batches(real)
    assert one == plan_feed(real) and FEED_BATCH >= 1
    # five records in batches of two, in the order of their keys (these name other SPIs
    # than their keys, so each batch only names them as unreadable: the cut is checked)
    (record,) = real.values()
    records = {(n, n + 1): record for n in (8, 0, 4, 2, 6)}
    batches = feed_batches(records, size=2)
    assert [[spis for spis, _ in b.unreadable] for b in batches] == [
        [(0, 1), (2, 3)],
        [(4, 5), (6, 7)],
        [(8, 9)],
    ]
    assert feed_batches({}) == []
    with pytest.raises(ValueError, match="at least one IKE SA"):
        feed_batches(real, size=0)


def test_an_unchanged_record_sends_nothing_and_an_unreadable_one_keeps_what_charon_holds() -> None:
    (state,) = _book_after("rekey_child_gateway").sas.values()
    records = _records([state])
    fed = {state.spis: records[state.spis].record}
    assert plan_sync({state.spis: state}, fed, records).empty
    assert plan_update(state, state) is not None and plan_update(state, state).messages == ()
    # Without the record it was fed from, the held state is compared: still nothing.
    assert plan_sync({state.spis: state}, {}, records).empty
    broken = {state.spis: IkeSaRecord(state.spis, (), b"\x01\x03 broken")}
    plan = plan_sync({state.spis: state}, fed, broken)
    assert plan.empty and plan.deleted == () and len(plan.unreadable) == 1


def test_another_ike_add_for_the_same_spis_is_a_delete_and_a_whole_replay() -> None:
    (old,) = _book_after("add_child").sas.values()
    (rekeyed,) = _book_after("rekey_ike_client").sas.values()
    assert plan_update(old, rekeyed) is None  # other SPIs
    # Old's SPIs with another IKE_ADD (the rekeyed SA's, for the test): only a replay.
    assert plan_update(old, IkeSaState(old.spis, rekeyed.add, update=old.update)) is None
    # The plan: IKE_DELETE first, then the whole record; nothing charon held is "removed"
    # that the replay installs again.
    plan = plan_sync({old.spis: old}, {}, _records([rekeyed]))
    assert [m.type for m in plan.first] == [HaMessageType.IKE_DELETE]
    assert plan.deleted == (old.spis,)
    assert plan.feeds and plan.feeds[0].ike_sas == (rekeyed.spis,)
    assert plan.removes == child_kernel_spis(old) - child_kernel_spis(rekeyed)
