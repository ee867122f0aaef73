"""A full resync sends a store only what it lacks (appliance.failover.resync)."""

from __future__ import annotations

import dataclasses

import pytest

from appliance.failover.resync import plan_resync, without_counters
from appliance.model import LifetimeCur, ReplayState, ReplayStateEsn
from tests.store.entries_factory import make_policy, make_sa

pytestmark = pytest.mark.unit


def test_an_empty_store_gets_everything() -> None:
    sad, spd = [make_sa(n) for n in range(3)], [make_policy(n) for n in range(3)]
    plan = plan_resync(sad, spd, [], [])
    assert plan.put_sad == tuple(sad) and plan.put_spd == tuple(spd)
    assert plan.replay_only == () and plan.stale_sas == () and plan.stale_policies == ()


def test_a_store_that_holds_part_gets_the_rest_and_counters_for_the_part() -> None:
    """A resync that failed after storing two SAs: the next one sends the third only."""
    sad, spd = [make_sa(n) for n in range(3)], [make_policy(n) for n in range(3)]
    # What the store holds of the first two carries older counters.
    stored = [
        dataclasses.replace(
            sa, replay=ReplayState(oseq=1, seq=0, bitmap=0), lifetime_cur=LifetimeCur(bytes=9)
        )
        for sa in sad[:2]
    ]
    plan = plan_resync(sad, spd, stored, spd[:2])
    assert plan.put_sad == (sad[2],)
    assert plan.put_spd == (spd[2],)
    assert plan.replay_only == tuple(sad[:2])
    assert plan.sent_whole == 2


def test_other_content_under_the_same_spi_is_sent_whole() -> None:
    sa = make_sa(0)
    changed = dataclasses.replace(sa, reqid=sa.reqid + 1)
    plan = plan_resync([sa], [], [changed], [])
    assert plan.put_sad == (sa,) and plan.replay_only == ()


def test_a_changed_policy_is_sent_again() -> None:
    pol = make_policy(0)
    plan = plan_resync([], [pol], [], [dataclasses.replace(pol, priority=pol.priority + 1)])
    assert plan.put_spd == (pol,)


def test_what_the_kernel_no_longer_has_is_deleted() -> None:
    kept, gone = make_sa(0), make_sa(1)
    plan = plan_resync([kept], [make_policy(0)], [kept, gone], [make_policy(0), make_policy(1)])
    assert plan.stale_sas == ((gone.spi, gone.proto),)
    assert plan.stale_policies == (make_policy(1).index,)
    assert plan.put_sad == () and plan.put_spd == ()


def test_counters_are_not_content() -> None:
    sa = make_sa(4)
    moved = dataclasses.replace(
        sa,
        replay=ReplayState(oseq=10**6, seq=5, bitmap=0x1F),
        lifetime_cur=LifetimeCur(bytes=1, packets=2),
        replay_thresh=1000,
        lastused=123,
    )
    assert without_counters(moved) == without_counters(sa)
    assert without_counters(dataclasses.replace(sa, spi=sa.spi + 1)) != without_counters(sa)


def test_an_sa_held_with_the_same_counters_gets_nothing() -> None:
    # The lab's 10,000 idle pairs: a resync used to send 20,000 counter updates for them.
    sad = [make_sa(n) for n in range(3)]
    used = dataclasses.replace(sad[1], lifetime_cur=LifetimeCur(bytes=9), lastused=7)
    plan = plan_resync([sad[0], used, sad[2]], [], sad, [])
    assert plan == plan_resync([], [], [], [])  # use counters are not what the store keeps
    moved = dataclasses.replace(sad[2], replay=ReplayState(oseq=99, seq=0, bitmap=0))
    assert plan_resync([sad[0], moved], [], sad[:1] + sad[2:], []).replay_only == (moved,)


def test_counters_of_an_esn_sa_are_not_content_either() -> None:
    # charon's ESN SAs carry a one-word window (replay_window 32): the comparison once built
    # a state with bmp_len 1 and no word, and the ModelError stopped the daemon.
    sa = dataclasses.replace(
        make_sa(5),
        replay=None,
        replay_esn=ReplayStateEsn(bmp_len=1, oseq=7, seq=3, replay_window=32, bmp=(0b111,)),
    )
    moved = dataclasses.replace(
        sa,
        replay_esn=ReplayStateEsn(
            bmp_len=1, oseq=9, seq=5, oseq_hi=1, replay_window=32, bmp=(0b11111,)
        ),
    )
    assert without_counters(moved) == without_counters(sa)
    cleared = without_counters(sa).replay_esn
    assert cleared is not None and cleared.bmp == (0,) and cleared.replay_window == 32
    assert plan_resync([moved], [], [sa], []).replay_only == (moved,)
