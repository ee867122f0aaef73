"""Verdict planning: a VERDICT_BATCH only where it covers exactly the packets decided alike."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.nfqueue import VerdictMessage, VerdictPlanner

pytestmark = pytest.mark.unit


def planner(*ids: int) -> VerdictPlanner:
    p = VerdictPlanner()
    for i in ids:
        p.received(i)
    return p


def test_a_run_of_accepts_at_the_front_is_one_batch() -> None:
    p = planner(10, 11, 12, 13)
    assert p.plan([(10, True), (11, True), (12, True)]) == [VerdictMessage(12, True, True)]
    assert p.waiting == 1
    assert p.plan([(13, True)]) == [VerdictMessage(13, True, False)]
    assert p.waiting == 0


def test_stretches_of_equal_verdicts() -> None:
    p = planner(1, 2, 3, 4, 5, 6)
    assert p.plan([(1, True), (2, True), (3, False), (4, True), (5, False), (6, False)]) == [
        VerdictMessage(2, True, True),
        VerdictMessage(3, False, False),
        VerdictMessage(4, True, False),
        VerdictMessage(6, False, True),
    ]


def test_a_held_packet_ends_the_run_and_the_rest_go_one_by_one() -> None:
    p = planner(1, 2, 3, 4, 5)
    # 3 waits for its retrieval: a batch up to 5 would decide it too.
    assert p.plan([(5, True), (1, True), (2, True), (4, True)]) == [
        VerdictMessage(2, True, True),
        VerdictMessage(5, True, False),
        VerdictMessage(4, True, False),
    ]
    assert p.waiting == 1
    assert p.plan([(3, False)]) == [VerdictMessage(3, False, False)]


def test_unknown_ids_are_sent_alone() -> None:
    p = planner(7)
    assert p.plan([(99, True), (7, True)]) == [
        VerdictMessage(7, True, False),
        VerdictMessage(99, True, False),
    ]


def test_ids_wrap_in_received_order() -> None:
    # The kernel's ids wrap at 2**32; the order received is what counts.
    p = planner(0xFFFFFFFE, 0xFFFFFFFF, 0, 1)
    assert p.plan([(i, True) for i in (0xFFFFFFFE, 0xFFFFFFFF, 0)]) == [
        VerdictMessage(0, True, True)
    ]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 8), st.lists(st.booleans(), max_size=3)), max_size=30))
def test_the_kernel_gives_each_packet_the_verdict_decided(
    rounds: list[tuple[int, list[bool]]],
) -> None:
    """Model of the kernel's queue: a VERDICT names one packet, a batch every one up to
    its id; each packet must get exactly the verdict decided, none an undecided one."""
    p = VerdictPlanner()
    kernel: list[int] = []  # queued packets, in id order
    decided: dict[int, bool] = {}
    given_verdicts: dict[int, bool] = {}
    next_id = 0
    for arriving, choices in rounds:
        for _ in range(arriving):
            kernel.append(next_id)
            p.received(next_id)
            next_id += 1
        # Decide some of the waiting packets (random ones, not only the oldest).
        undecided = [i for i in kernel if i not in decided]
        verdicts = []
        for n, accept in enumerate(choices):
            if undecided:
                pick = undecided.pop((n * 7 + len(undecided)) % len(undecided))
                decided[pick] = accept
                verdicts.append((pick, accept))
        for m in p.plan(verdicts):
            if m.batch:
                covered = [i for i in kernel if i <= m.packet_id]
                assert len(covered) > 1
            else:
                covered = [m.packet_id]
                assert m.packet_id in kernel
            for i in covered:
                assert decided.get(i) == m.accept, (i, m)
                given_verdicts[i] = m.accept
                kernel.remove(i)
    assert given_verdicts == decided
    assert p.waiting == len(kernel)
