"""One set of sequence-jump limits: ``ipsec-ha restore --oseq-jump`` and the failover daemon.

Every case goes to the daemon's ``seqjump.advance_oseq`` and to the restore
path: ``restore.jump_oseq`` for one SA and ``restore.prepare`` (what
``restore`` and the CLI run) for a snapshot holding it as an outbound SA.
All three must accept and refuse the same cases, and agree on the result.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

import pytest

from appliance import model as m
from appliance.failover.seqjump import (
    MAX_JUMP,
    SEQ32_MAX,
    SEQ64_MAX,
    Advanced,
    SeqJumpError,
    advance_oseq,
)
from appliance.restore import RestoreError, jump_oseq, prepare

pytestmark = pytest.mark.unit

LOCAL = ipaddress.ip_address("192.0.2.1")
PEER = ipaddress.ip_address("192.0.2.2")


@dataclass(frozen=True)
class Case:
    """An outbound counter, the SA's ESN flag, a jump, and whether the jump is allowed."""

    state: m.ReplayState | m.ReplayStateEsn
    esn: bool
    jump: int
    allowed: bool


def esn_state(oseq64: int) -> m.ReplayStateEsn:
    return m.ReplayStateEsn(
        bmp_len=2, oseq=oseq64 & SEQ32_MAX, oseq_hi=oseq64 >> 32, replay_window=64, bmp=(0, 0)
    )


CASES = {
    "no jump": Case(m.ReplayState(oseq=100), False, 0, True),
    "largest jump, 2^31-1": Case(m.ReplayState(oseq=100), False, MAX_JUMP - 1, True),
    "jump of 2^31": Case(m.ReplayState(oseq=100), False, MAX_JUMP, False),
    "jump past 2^31 that the 32-bit space would hold": Case(
        m.ReplayState(oseq=0), False, SEQ32_MAX, False
    ),
    "negative jump": Case(m.ReplayState(oseq=100), False, -1, False),
    "32-bit: up to the last number": Case(m.ReplayState(oseq=SEQ32_MAX - 10), False, 10, True),
    "32-bit: wrap": Case(m.ReplayState(oseq=SEQ32_MAX - 10), False, 11, False),
    "32-bit in the ESN structure (window > 32): up to the last number": Case(
        esn_state(SEQ32_MAX - 0xFF), False, 0xFF, True
    ),
    "32-bit in the ESN structure (window > 32): wrap": Case(
        esn_state(SEQ32_MAX - 0xFF), False, 0x100, False
    ),
    "ESN: carry into oseq_hi": Case(esn_state((7 << 32) | 0xFFFF_FFF0), True, 0x20, True),
    "ESN: largest jump, 2^31-1": Case(esn_state(5 << 32), True, MAX_JUMP - 1, True),
    "ESN: jump of 2^31": Case(esn_state(5 << 32), True, MAX_JUMP, False),
    "ESN: jump of 2^32": Case(esn_state(5 << 32), True, 1 << 32, False),
    "ESN: up to the last number": Case(esn_state(SEQ64_MAX - 5), True, 5, True),
    "ESN: past 2^64-1": Case(esn_state(SEQ64_MAX - 5), True, 6, False),
    "ESN flag without an ESN replay state": Case(m.ReplayState(oseq=1), True, 1, False),
}


def outbound_sa(case: Case) -> m.SadEntry:
    state = case.state
    return m.SadEntry(
        daddr=PEER,
        saddr=LOCAL,
        spi=0x1001,
        flags=int(m.StateFlag.ESN) if case.esn else 0,
        replay=state if isinstance(state, m.ReplayState) else None,
        replay_esn=state if isinstance(state, m.ReplayStateEsn) else None,
    )


def replay_of(sa: m.SadEntry) -> m.ReplayState | m.ReplayStateEsn | None:
    return sa.replay_esn if sa.replay_esn is not None else sa.replay


def daemon_moves(case: Case) -> m.ReplayState | m.ReplayStateEsn | None:
    """The state ``advance_oseq`` installs, or None if it refuses the case."""
    try:
        outcome = advance_oseq(case.state, case.jump, esn=case.esn)
    except SeqJumpError:
        return None
    return outcome.state if isinstance(outcome, Advanced) else None


def jump_oseq_moves(case: Case) -> m.ReplayState | m.ReplayStateEsn | None:
    """The state ``restore.jump_oseq`` restores, or None if it refuses the case."""
    try:
        moved = jump_oseq(outbound_sa(case), case.jump)
    except RestoreError:
        return None
    return replay_of(moved)


def prepare_moves(case: Case) -> m.ReplayState | m.ReplayStateEsn | None:
    """The state a restore of a snapshot holding the SA installs, or None if it refuses it."""
    sa = outbound_sa(case)
    snapshot = m.Snapshot("gw-a", datetime.datetime.now(datetime.UTC), (sa,))
    try:
        prepared, refused, _ = prepare(snapshot, case.jump, [LOCAL])
    except RestoreError:
        return None
    if refused:
        return None
    return replay_of(prepared[0])


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_restore_and_the_daemon_accept_and_refuse_the_same_jumps(case: Case) -> None:
    daemon = daemon_moves(case)
    assert (daemon is not None) == case.allowed
    assert jump_oseq_moves(case) == daemon
    assert prepare_moves(case) == daemon


@pytest.mark.parametrize("jump", [MAX_JUMP, -1])
def test_a_jump_out_of_range_stops_the_whole_restore_not_one_sa(jump: int) -> None:
    # Not one refusal per SA, which --keep-going would skip: the jump itself is wrong.
    sa = outbound_sa(CASES["no jump"])
    snapshot = m.Snapshot("gw-a", datetime.datetime.now(datetime.UTC), (sa,))
    with pytest.raises(RestoreError, match=r"^--oseq-jump must be an integer 0\.\.2147483647"):
        prepare(snapshot, jump, [LOCAL])
