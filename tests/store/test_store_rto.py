"""The store client's learnt retransmission timeout (appliance.store.rto, RFC 6298)."""

from __future__ import annotations

import pytest

from appliance.store.rto import MAX_RTO_S, RetransmissionTimer

pytestmark = pytest.mark.unit


def test_without_samples_the_configured_timeout_is_used() -> None:
    assert RetransmissionTimer(0.2).rto == 0.2


def test_first_sample_sets_srtt_and_half_of_it_as_variation() -> None:
    timer = RetransmissionTimer(0.2)
    timer.observe(1.0)
    assert timer.srtt == 1.0 and timer.rttvar == 0.5
    assert timer.rto == pytest.approx(3.0)  # 1.0 + 4 * 0.5


def test_later_samples_are_smoothed_as_rfc_6298_says() -> None:
    timer = RetransmissionTimer(0.01)
    timer.observe(1.0)
    timer.observe(2.0)
    # RTTVAR = 3/4 * 0.5 + 1/4 * |1.0 - 2.0|; SRTT = 7/8 * 1.0 + 1/8 * 2.0
    assert timer.rttvar == pytest.approx(0.625)
    assert timer.srtt == pytest.approx(1.125)
    assert timer.rto == pytest.approx(1.125 + 4 * 0.625)


def test_a_fast_store_keeps_the_floor() -> None:
    timer = RetransmissionTimer(0.2)
    for _ in range(20):
        timer.observe(0.001)
    assert timer.rto == 0.2


def test_a_slow_store_is_waited_for_up_to_the_ceiling() -> None:
    timer = RetransmissionTimer(0.2)
    for _ in range(20):
        timer.observe(2.5)
    assert 2.5 <= timer.rto <= MAX_RTO_S
    for _ in range(5):
        timer.observe(60.0)
    assert timer.rto == MAX_RTO_S


def test_backoff_from_the_floor_doubles_as_before() -> None:
    timer = RetransmissionTimer(0.2)
    waits = [0.2]
    for attempts in range(1, 5):
        waits.append(timer.backoff(waits[-1], attempts))
    assert waits == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2])


def test_backoff_from_a_learnt_timeout_stops_at_the_ceiling() -> None:
    timer = RetransmissionTimer(0.2)
    assert timer.backoff(4.0, 1) == MAX_RTO_S
    assert timer.backoff(MAX_RTO_S, 2) == MAX_RTO_S


def test_a_nonpositive_floor_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        RetransmissionTimer(0.0)
