"""The on-demand decisions: one retrieval per SA, held packets, limits, caches, timers."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ondemand_packets import esp4, esp6, ipv4, ipv6, natt4, udp

from appliance.ondemand import (
    Hold,
    OnDemandCore,
    OnDemandCounters,
    OnDemandLimits,
    Retrieve,
    Verdict,
    hold_fallback,
)

pytestmark = pytest.mark.unit

VIP = "192.0.2.10"


def core(**limits: float) -> OnDemandCore:
    return OnDemandCore(OnDemandLimits(**limits), now=0.0)  # type: ignore[arg-type]


def nonzero(counters: OnDemandCounters) -> dict[str, int]:
    return {k: v for k, v in counters.as_dict().items() if v}


def test_concurrent_packets_of_one_spi_cause_one_retrieval() -> None:
    c = core()
    first = c.handle_packet(1, esp4(0x100), 0.0)
    assert first == [Retrieve(1, 0x100, VIP)]
    for pid in range(2, 11):
        assert c.handle_packet(pid, esp4(0x100), 0.01 * pid) == []
    assert c.held == 10 and c.in_flight == 1
    assert c.handle_result(1, True, 0.5) == [Verdict(p, True) for p in range(1, 11)]
    assert c.held == 0 and c.in_flight == 0
    assert nonzero(c.counters) == {"queued": 10, "accepted": 10, "retrievals": 1}


def test_same_spi_other_destination_is_another_sa() -> None:
    c = core()
    assert c.handle_packet(1, esp4(5, "192.0.2.10"), 0.0) == [Retrieve(1, 5, "192.0.2.10")]
    assert c.handle_packet(2, esp4(5, "192.0.2.11"), 0.0) == [Retrieve(2, 5, "192.0.2.11")]


def test_failure_drops_all_held_and_is_remembered() -> None:
    c = core(negative_ttl=5.0)
    c.handle_packet(1, esp4(0x200), 0.0)
    c.handle_packet(2, esp4(0x200), 0.1)
    assert c.handle_result(1, False, 0.2) == [Verdict(1, False), Verdict(2, False)]
    # Within the negative time: dropped unasked.
    assert c.handle_packet(3, esp4(0x200), 5.1) == [Verdict(3, False)]
    # After it: asked again.
    assert c.handle_packet(4, esp4(0x200), 5.3) == [Retrieve(2, 0x200, VIP)]
    assert nonzero(c.counters) == {
        "queued": 4,
        "dropped_unknown": 3,
        "retrievals": 2,
        "retrieval_failures": 1,
    }


def test_success_is_remembered_briefly() -> None:
    """Packets queued before the SPI reached the held set are accepted without asking."""
    c = core(positive_ttl=2.0)
    c.handle_packet(1, esp4(0x300), 0.0)
    c.handle_result(1, True, 0.1)
    assert c.handle_packet(2, esp4(0x300), 2.0) == [Verdict(2, True)]
    assert c.handle_packet(3, esp4(0x300), 2.2) == [Retrieve(2, 0x300, VIP)]


def test_timeout_drops_held_and_caches_the_failure() -> None:
    c = core(timeout=2.0, negative_ttl=5.0)
    c.handle_packet(1, esp4(0x400), 0.0)
    c.handle_packet(2, esp4(0x401), 1.0)
    c.handle_packet(3, esp4(0x400), 1.5)
    assert c.get_timer() == 2.0
    assert c.handle_timer(1.99) == []
    assert c.handle_timer(2.0) == [Verdict(1, False), Verdict(3, False)]
    assert c.get_timer() == 3.0
    assert c.handle_packet(4, esp4(0x400), 2.5) == [Verdict(4, False)]  # negative cache
    # The late success: its packets were dropped, but the SA is installed now.
    assert c.handle_result(1, True, 2.6) == []
    assert c.handle_packet(5, esp4(0x400), 2.7) == [Verdict(5, True)]
    assert c.handle_timer(3.0) == [Verdict(2, False)]
    assert c.handle_idle(3.0) == [Hold(0x400, VIP)]
    # A late failure changes nothing.
    assert c.handle_result(2, False, 3.1) == []
    assert c.get_timer() is None
    assert nonzero(c.counters) == {
        "queued": 5,
        "accepted": 1,
        "dropped_timeout": 3,
        "dropped_unknown": 1,
        "retrievals": 2,
        "retrieval_timeouts": 2,
        "late_results": 2,
        "holds": 1,
    }


def test_the_spi_is_held_only_once_the_queue_ran_dry() -> None:
    c = core()
    c.handle_packet(1, esp4(0x700), 0.0)
    c.handle_packet(2, esp4(0x700), 0.1)
    # Dry while the retrieval runs: its packets are held, nothing to hold yet.
    assert c.handle_idle(0.2) == []
    assert c.handle_result(1, True, 0.5) == [Verdict(1, True), Verdict(2, True)]
    assert c.awaiting_hold == 1
    # Packets read after the result are accepted; still no hold while reading goes on.
    assert c.handle_packet(3, esp4(0x700), 0.6) == [Verdict(3, True)]
    assert c.handle_timer(0.6) == []
    # The read came back empty: every packet of the SPI had its verdict.
    assert c.handle_idle(0.7) == [Hold(0x700, VIP)]
    assert c.handle_idle(0.8) == [] and c.awaiting_hold == 0
    # Packets queued before the hold took effect are still accepted.
    assert c.handle_packet(4, esp4(0x700), 1.0) == [Verdict(4, True)]
    assert nonzero(c.counters) == {"queued": 4, "accepted": 4, "retrievals": 1, "holds": 1}


def test_a_failed_retrieval_holds_nothing() -> None:
    c = core()
    c.handle_packet(1, esp4(0x710), 0.0)
    c.handle_result(1, False, 0.1)
    assert c.handle_idle(0.2) == [] and c.get_timer() is None
    assert c.handle_timer(100.0) == []


def test_a_queue_that_never_runs_dry_still_gets_the_spi_held() -> None:
    c = core(positive_ttl=30.0)
    fallback = hold_fallback(c.limits)
    assert 0 < fallback <= 15.0
    c.handle_packet(1, esp4(0x720), 0.0)
    c.handle_packet(2, esp4(0x721), 0.0)
    c.handle_result(1, True, 1.0)
    c.handle_result(2, True, 2.0)
    assert c.get_timer() == 1.0 + fallback
    # Busy until then: packets keep coming, the read never comes back empty.
    for i in range(10):
        assert c.handle_packet(10 + i, esp4(0x720), 1.0 + i * fallback / 10) == [
            Verdict(10 + i, True)
        ]
    assert c.handle_timer(1.0 + fallback - 0.01) == []
    assert c.handle_timer(1.0 + fallback) == [Hold(0x720, VIP)]
    assert c.get_timer() == 2.0 + fallback
    assert c.handle_idle(2.5) == [Hold(0x721, VIP)]
    assert c.get_timer() is None
    assert (c.counters.holds, c.counters.holds_forced) == (2, 1)


def test_the_fallback_leaves_the_positive_cache_time_for_the_hold() -> None:
    assert hold_fallback(OnDemandLimits(positive_ttl=2.0)) == 1.0
    assert hold_fallback(OnDemandLimits(positive_ttl=600.0)) < 600.0 / 2


def test_rate_limit_token_bucket() -> None:
    c = core(rate=2.0, burst=3)
    starts = [c.handle_packet(i, esp4(0x1000 + i), 0.0) for i in range(5)]
    assert [type(a[0]).__name__ for a in starts] == ["Retrieve"] * 3 + ["Verdict"] * 2
    assert starts[3] == [Verdict(3, False)]
    # Half a second later one token is back (2/s), not two.
    assert isinstance(c.handle_packet(10, esp4(0x2000), 0.5)[0], Retrieve)
    assert c.handle_packet(11, esp4(0x2001), 0.5) == [Verdict(11, False)]
    # Packets joining a retrieval under way need no token.
    assert c.handle_packet(12, esp4(0x1000), 0.5) == []
    assert c.counters.dropped_rate_limited == 3
    assert c.counters.retrievals == 4


def test_max_in_flight() -> None:
    c = core(max_in_flight=2, burst=100)
    c.handle_packet(1, esp4(1), 0.0)
    c.handle_packet(2, esp4(2), 0.0)
    assert c.handle_packet(3, esp4(3), 0.0) == [Verdict(3, False)]
    c.handle_result(1, True, 0.1)
    assert c.handle_packet(4, esp4(3), 0.1) == [Retrieve(3, 3, VIP)]
    assert c.counters.dropped_rate_limited == 1


def test_held_packets_are_bounded_per_spi() -> None:
    c = core(max_held_per_spi=3)
    actions = [c.handle_packet(i, esp4(0x500), 0.0) for i in range(5)]
    assert actions[1:3] == [[], []]
    assert actions[3:] == [[Verdict(3, False)], [Verdict(4, False)]]
    assert c.handle_result(1, True, 0.1) == [Verdict(0, True), Verdict(1, True), Verdict(2, True)]
    assert c.counters.dropped_overflow == 2 and c.counters.accepted == 3


def test_malformed_packets_are_dropped_and_counted() -> None:
    c = core()
    assert c.handle_packet(1, b"\x45\0\0", 0.0) == [Verdict(1, False)]
    assert c.handle_packet(2, esp4(0), 0.0) == [Verdict(2, False)]
    assert nonzero(c.counters) == {"queued": 2, "malformed": 2}


def test_ipv6_and_esp_in_udp_are_retrieved() -> None:
    c = core()
    assert c.handle_packet(1, esp6(0x600), 0.0) == [Retrieve(1, 0x600, "2001:db8::10")]
    assert c.handle_packet(2, natt4(0x601), 0.0) == [Retrieve(2, 0x601, VIP)]
    # ESP and ESP-in-UDP with the same SPI and destination need the same SA.
    assert c.handle_packet(3, esp4(0x601), 0.0) == []


def test_ike_and_keepalive_on_4500_pass() -> None:
    c = core()
    assert c.handle_packet(1, ipv4(17, udp(4500, bytes(4) + b"IKE")), 0.0) == [Verdict(1, True)]
    assert c.handle_packet(2, ipv6(17, udp(4500, b"\xff")), 0.0) == [Verdict(2, True)]
    assert nonzero(c.counters) == {"queued": 2, "accepted": 2, "not_esp": 2}


def test_unknown_request_id_is_a_late_result() -> None:
    c = core()
    assert c.handle_result(99, True, 0.0) == []
    assert c.counters.late_results == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rate", 0, "ondemand.rate: 0 is not a positive finite number"),
        ("timeout", float("inf"), "ondemand.timeout: inf"),
        ("negative_ttl", float("nan"), "ondemand.negative_ttl: nan"),
        ("burst", 0, "ondemand.burst: 0 is not an integer of at least 1"),
        ("max_held_per_spi", 1.5, "ondemand.max_held_per_spi: 1.5"),
        ("max_in_flight", True, "ondemand.max_in_flight: True"),
    ],
)
def test_bad_limits_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OnDemandLimits(**{field: value})  # type: ignore[arg-type]


def test_snapshot_is_a_copy() -> None:
    c = core()
    snap = c.snapshot()
    c.handle_packet(1, esp4(1), 0.0)
    assert snap.queued == 0 and c.counters.queued == 1


# A random mix of packets, results and timer ticks; the accounting must add up.
_events = st.lists(
    st.one_of(
        st.tuples(st.just("packet"), st.integers(1, 6), st.sampled_from(["esp", "natt", "bad"])),
        st.tuples(st.just("result"), st.integers(1, 12), st.booleans()),
        st.tuples(st.just("tick"), st.floats(0.0, 3.0), st.just(None)),
        st.tuples(st.just("idle"), st.just(0), st.just(None)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(_events)
def test_every_packet_gets_exactly_one_verdict(events: list[tuple[str, object, object]]) -> None:
    c = OnDemandCore(
        OnDemandLimits(
            rate=1.0, burst=3, timeout=1.0, max_held_per_spi=4, negative_ttl=2.0, positive_ttl=4.0
        )
    )
    now = 0.0
    next_pid = 0
    verdicts: dict[int, bool] = {}
    retrieves = 0
    retrieved: set[int] = set()  # SPIs with a success reported and no hold yet
    holds = 0

    def apply(actions: list[Retrieve | Verdict | Hold]) -> None:
        nonlocal retrieves, holds
        for a in actions:
            if isinstance(a, Verdict):
                assert a.packet_id not in verdicts, "two verdicts for one packet"
                verdicts[a.packet_id] = a.accept
            elif isinstance(a, Hold):
                # Only after a success, and never while packets of the SPI wait for one.
                assert a.spi in retrieved
                assert (a.daddr, a.spi) not in c._by_key
                retrieved.discard(a.spi)
                holds += 1
            else:
                retrieves += 1

    for kind, x, y in events:
        if kind == "packet":
            assert isinstance(x, int)
            data = {"esp": esp4(x), "natt": natt4(x), "bad": b"\x45"}[str(y)]
            next_pid += 1
            apply(c.handle_packet(next_pid, data, now))
        elif kind == "result":
            assert isinstance(x, int)
            key = c._flights[x].key if x in c._flights else c._timed_out.get(x)
            apply(c.handle_result(x, bool(y), now))
            if y and key is not None and key in c._to_hold:
                retrieved.add(key[1])
        elif kind == "idle":
            apply(c.handle_idle(now))
            assert c.awaiting_hold == 0
        else:
            assert isinstance(x, float)
            now += x
            apply(c.handle_timer(now))
        # At most one retrieval per SA at any time.
        keys = [f.key for f in c._flights.values()]
        assert len(keys) == len(set(keys))
        k = c.counters
        dropped = (
            k.dropped_unknown
            + k.dropped_rate_limited
            + k.dropped_timeout
            + k.dropped_overflow
            + k.malformed
        )
        assert k.queued == next_pid == k.accepted + dropped + c.held
        assert len(verdicts) == k.accepted + dropped
        assert sum(verdicts.values()) == k.accepted
        assert retrieves == k.retrievals
        assert holds == k.holds
    apply(c.handle_timer(now + 10))
    assert c.held == 0 and c.awaiting_hold == 0
    assert dataclasses.asdict(c.counters)["queued"] == len(verdicts)
