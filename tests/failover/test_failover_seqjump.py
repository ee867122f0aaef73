"""The outbound sequence jump: the bound, and moving counters without silent wraps."""

import math
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.failover.seqjump import (
    MAX_JUMP,
    SEQ32_MAX,
    SEQ64_MAX,
    Advanced,
    AdvancedSa,
    RekeyRequired,
    SeqJumpError,
    advance_oseq,
    advance_sa,
    check_jump,
    compute_jump,
    unsynced_packets_bound,
)
from appliance.model import ReplayState, ReplayStateEsn, SadEntry, StateFlag

pytestmark = pytest.mark.unit

u32 = st.integers(0, SEQ32_MAX)
jumps = st.integers(0, MAX_JUMP - 1)


def esn_state(oseq64: int, seq: int = 7) -> ReplayStateEsn:
    return ReplayStateEsn(
        bmp_len=1,
        oseq=oseq64 & SEQ32_MAX,
        seq=seq,
        oseq_hi=oseq64 >> 32,
        seq_hi=0,
        replay_window=32,
        bmp=(0xF,),
    )


def test_jump_uses_the_threshold_when_it_fires_before_the_timer() -> None:
    # 1000 pps for 1 s would be 1000 packets; the threshold (100) fires first.
    assert unsynced_packets_bound(1000, 100, 1.0) == 100
    assert compute_jump(1000, 100, 1.0, safety_factor=2.0) == 200


def test_jump_uses_the_timer_when_it_fires_before_the_threshold() -> None:
    assert unsynced_packets_bound(1000, 100_000, 0.5) == 500


def test_jump_adds_the_sync_pipeline_latency() -> None:
    # 10 000 pps, threshold 1000, + 120 ms pipeline = 1200 more packets.
    assert unsynced_packets_bound(10_000, 1000, 1.0, pipeline_latency_s=0.12) == 2200
    assert compute_jump(10_000, 1000, 1.0, 1.5, 0.12) == 3300


def test_jump_with_threshold_disabled_uses_only_the_timer() -> None:
    assert unsynced_packets_bound(300, 0, 2.0) == 600


def test_jump_refuses_both_triggers_disabled() -> None:
    with pytest.raises(SeqJumpError, match="never report"):
        compute_jump(1000, 0, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_pps": 0}, "max_pps"),
        ({"max_pps": float("inf")}, "max_pps"),
        ({"replay_seq_thresh": -1}, "replay_seq_thresh"),
        ({"replay_seq_thresh": True}, "replay_seq_thresh"),
        ({"replay_timer_s": -0.1}, "replay_timer_s"),
        ({"safety_factor": 0.5}, "safety_factor"),
        ({"pipeline_latency_s": float("nan")}, "pipeline_latency_s"),
    ],
)
def test_jump_rejects_bad_parameters_by_name(kwargs: dict[str, float], name: str) -> None:
    args: dict[str, float] = {
        "max_pps": 1000,
        "replay_seq_thresh": 100,
        "replay_timer_s": 1.0,
        "safety_factor": 2.0,
        "pipeline_latency_s": 0.0,
    }
    args.update(kwargs)
    with pytest.raises(SeqJumpError, match=name):
        compute_jump(**args)  # type: ignore[arg-type]


def test_jump_that_an_esn_receiver_could_not_follow_is_refused() -> None:
    with pytest.raises(SeqJumpError, match="2\\^31"):
        compute_jump(100_000_000, 0, 60.0)


@given(
    pps=st.integers(1, 10_000_000),
    thresh=st.integers(0, 1_000_000),
    timer_ds=st.integers(0, 100),
    latency_ms=st.integers(0, 2000),
    factor=st.floats(1.0, 10.0),
)
def test_jump_covers_every_packet_the_rate_bound_allows(
    pps: int, thresh: int, timer_ds: int, latency_ms: int, factor: float
) -> None:
    if thresh == 0 and timer_ds == 0:
        return
    timer_s = timer_ds / 10
    latency_s = latency_ms / 1000
    try:
        jump = compute_jump(pps, thresh, timer_s, factor, latency_s)
    except SeqJumpError:
        return  # refused configurations are covered above
    # Worst case, counted independently of the implementation: the last event the store
    # holds is followed by at most one inter-event gap (below the threshold and within the
    # timer) and by the pipeline latency, all at the full rate.
    gaps = []
    if thresh:
        gaps.append(thresh)
    if timer_ds:
        gaps.append(math.ceil(pps * timer_s))
    worst = min(gaps) + math.ceil(pps * latency_s)
    assert jump > worst - 1
    assert jump >= worst * factor - 1e-6 * worst
    assert jump < MAX_JUMP


@given(oseq=u32, jump=jumps)
def test_legacy_advance_is_exact_or_asks_for_rekey(oseq: int, jump: int) -> None:
    state = ReplayState(oseq=oseq, seq=5, bitmap=0xFF)
    outcome = advance_oseq(state, jump, esn=False)
    if oseq + jump <= SEQ32_MAX:
        assert isinstance(outcome, Advanced)
        assert outcome.new_oseq == oseq + jump >= outcome.old_oseq == oseq
        assert outcome.state == ReplayState(oseq=oseq + jump, seq=5, bitmap=0xFF)
    else:
        # Never a silently wrapped counter.
        assert isinstance(outcome, RekeyRequired)
        assert outcome.limit == SEQ32_MAX
        assert "rekey" in outcome.reason


@given(oseq64=st.integers(0, SEQ64_MAX), jump=jumps)
def test_esn_advance_carries_into_the_high_word(oseq64: int, jump: int) -> None:
    outcome = advance_oseq(esn_state(oseq64), jump, esn=True)
    if oseq64 + jump <= SEQ64_MAX:
        assert isinstance(outcome, Advanced)
        assert isinstance(outcome.state, ReplayStateEsn)
        assert outcome.state.oseq64 == oseq64 + jump
        assert outcome.state.oseq_hi == (oseq64 + jump) >> 32
        # The inbound side is untouched.
        assert (outcome.state.seq, outcome.state.bmp) == (7, (0xF,))
    else:
        assert isinstance(outcome, RekeyRequired)
        assert outcome.limit == SEQ64_MAX


def test_esn_carry_at_the_32_bit_boundary() -> None:
    outcome = advance_oseq(esn_state(SEQ32_MAX - 1), 3, esn=True)
    assert isinstance(outcome, Advanced)
    assert isinstance(outcome.state, ReplayStateEsn)
    assert (outcome.state.oseq_hi, outcome.state.oseq) == (1, 1)


@given(oseq=u32, jump=jumps)
def test_non_esn_sa_with_an_esn_structure_still_counts_in_32_bits(oseq: int, jump: int) -> None:
    outcome = advance_oseq(esn_state(oseq), jump, esn=False)
    if oseq + jump > SEQ32_MAX:
        assert isinstance(outcome, RekeyRequired)
    else:
        assert isinstance(outcome, Advanced)
        assert isinstance(outcome.state, ReplayStateEsn)
        assert (outcome.state.oseq_hi, outcome.state.oseq) == (0, oseq + jump)


@given(oseq=u32, jump=jumps, more=jumps)
def test_advancing_is_monotonic_in_the_jump(oseq: int, jump: int, more: int) -> None:
    small = advance_oseq(ReplayState(oseq=oseq), jump, esn=False)
    large = advance_oseq(ReplayState(oseq=oseq), min(jump + more, MAX_JUMP - 1), esn=False)
    if isinstance(large, Advanced):
        assert isinstance(small, Advanced)
        assert large.new_oseq >= small.new_oseq >= oseq
    if isinstance(small, RekeyRequired):
        assert isinstance(large, RekeyRequired)


def test_headroom_asks_for_rekey_before_the_limit() -> None:
    state = ReplayState(oseq=SEQ32_MAX - 1000)
    assert isinstance(advance_oseq(state, 500, esn=False), Advanced)
    assert isinstance(advance_oseq(state, 500, esn=False, headroom=501), RekeyRequired)


def test_esn_sa_without_esn_state_is_refused() -> None:
    with pytest.raises(SeqJumpError, match="ESN replay state"):
        advance_oseq(ReplayState(), 1, esn=True)


@pytest.mark.parametrize("jump", [-1, MAX_JUMP, True])
def test_bad_jump_is_refused(jump: int) -> None:
    with pytest.raises(SeqJumpError, match="jump"):
        advance_oseq(ReplayState(), jump, esn=False)


@pytest.mark.parametrize("jump", [0, MAX_JUMP - 1])
def test_check_jump_accepts_the_range_advance_oseq_accepts(jump: int) -> None:
    check_jump(jump)
    assert isinstance(advance_oseq(ReplayState(), jump, esn=False), Advanced)


@pytest.mark.parametrize("jump", [-1, MAX_JUMP, True, 1.0])
def test_check_jump_names_the_value_and_the_2_31_limit(jump: object) -> None:
    with pytest.raises(SeqJumpError, match=r"^--oseq-jump must be .*0\.\.2147483647 .*2\^31"):
        check_jump(jump, name="--oseq-jump")


def _sa(**kwargs: object) -> SadEntry:
    return SadEntry(daddr=IPv4Address("198.51.100.2"), spi=0x1234, **kwargs)  # type: ignore[arg-type]


def test_advance_sa_moves_the_legacy_counter() -> None:
    outcome = advance_sa(_sa(replay=ReplayState(oseq=10, seq=3)), 90)
    assert isinstance(outcome, AdvancedSa)
    assert outcome.sa.replay == ReplayState(oseq=100, seq=3)
    assert (outcome.old_oseq, outcome.new_oseq) == (10, 100)


def test_advance_sa_moves_the_esn_counter_of_an_esn_sa() -> None:
    sa = _sa(flags=int(StateFlag.ESN), replay_esn=esn_state((5 << 32) | SEQ32_MAX))
    outcome = advance_sa(sa, 2)
    assert isinstance(outcome, AdvancedSa)
    assert outcome.sa.replay_esn is not None
    assert outcome.sa.replay_esn.oseq64 == (6 << 32) | 1


def test_advance_sa_reports_a_non_esn_sa_that_would_wrap() -> None:
    outcome = advance_sa(_sa(replay=ReplayState(oseq=SEQ32_MAX - 10)), 11)
    assert isinstance(outcome, RekeyRequired)


def test_advance_sa_without_replay_state_counts_from_zero() -> None:
    outcome = advance_sa(_sa(), 42)
    assert isinstance(outcome, AdvancedSa)
    assert outcome.sa.replay == ReplayState(oseq=42)
