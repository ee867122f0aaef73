"""The probe codec, the receiver's books and the send schedule (sans-IO)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.traffic.probe import (
    HEADER_SIZE,
    Arrival,
    FlowReceiver,
    Probe,
    RateSchedule,
    Receiver,
    TrafficError,
    decode_probe,
    encode_probe,
)

pytestmark = pytest.mark.unit


@given(
    flow=st.integers(0, 2**32 - 1),
    seq=st.integers(0, 2**64 - 1),
    send_ns=st.integers(0, 2**64 - 1),
    size=st.integers(HEADER_SIZE, 1500),
)
def test_probe_round_trips(flow: int, seq: int, send_ns: int, size: int) -> None:
    data = encode_probe(flow, seq, send_ns, size)
    assert len(data) == size
    assert decode_probe(data) == Probe(flow, seq, send_ns)


def test_probe_wire_format_is_fixed() -> None:
    data = encode_probe(7, 258, 1)
    assert data.hex() == "494841540000000700000000000001020000000000000001"


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"IHAT", "too short"), (b"XXXX" + bytes(20), "not a probe")],
)
def test_malformed_probes_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(TrafficError, match=message):
        decode_probe(data)


def test_bad_probe_fields_are_refused() -> None:
    with pytest.raises(TrafficError, match="size"):
        encode_probe(1, 1, 1, size=10)
    with pytest.raises(TrafficError, match="out of range"):
        encode_probe(2**32, 1, 1)


def test_receiver_counts_loss_duplicates_and_reordering() -> None:
    flow = FlowReceiver(1)
    for t, seq in enumerate([0, 1, 3, 2, 3, 6]):
        flow.receive(Probe(1, seq, 0), recv_ns=t)
    assert flow.stats() == {
        "received": 5,
        "lost": 2,  # 4 and 5
        "duplicates": 1,
        "reordered": 1,
        "highest_seq": 6,
    }
    assert flow.lost_with_sent(9) == 4  # 4, 5, 7, 8
    assert flow.arrivals[3] == Arrival(2, 0, 3)


def test_receiver_separates_flows_and_counts_garbage() -> None:
    receiver = Receiver()
    assert receiver.receive(encode_probe(1, 0, 5), 10) == Probe(1, 0, 5)
    receiver.receive(encode_probe(2, 0, 5), 11)
    receiver.receive(encode_probe(2, 1, 5), 12)
    assert receiver.receive(b"hello", 13) is None
    assert {f: r.received for f, r in receiver.flows.items()} == {1: 1, 2: 2}
    assert receiver.malformed == 1


def test_schedule_spaces_probes_at_the_rate() -> None:
    schedule = RateSchedule(rate=100, start_ns=1_000, duration_ns=1_000_000_000)
    assert schedule.total == 100
    assert schedule.due(999) == 0
    assert schedule.due(1_000) == 1
    schedule.mark_sent(1)
    assert schedule.next_due_ns() == 1_000 + 10_000_000
    assert schedule.due(1_000 + 9_999_999) == 0
    # A stall: everything due is sent at once, never more than the run's total.
    assert schedule.due(1_000 + 55_000_000) == 5
    assert schedule.due(10**12) == 99
    schedule.mark_sent(99)
    assert schedule.done and schedule.next_due_ns() is None


@given(rate=st.integers(1, 2_000), duration_ms=st.integers(1, 3_000))
@settings(deadline=None)
def test_schedule_sends_rate_times_duration(rate: int, duration_ms: int) -> None:
    schedule = RateSchedule(rate=rate, start_ns=0, duration_ns=duration_ms * 1_000_000)
    sent = 0
    now = 0
    while not schedule.done:
        due = schedule.next_due_ns()
        assert due is not None and due >= now
        now = due
        count = schedule.due(now)
        assert count >= 1
        schedule.mark_sent(count)
        sent += count
    assert sent == max(1, rate * duration_ms // 1000)


@pytest.mark.parametrize(("rate", "duration"), [(0, 1), (-5, 1), (2_000_000, 1), (10, 0)])
def test_schedule_refuses_bad_rates(rate: float, duration: int) -> None:
    with pytest.raises(TrafficError):
        RateSchedule(rate=rate, start_ns=0, duration_ns=duration)
