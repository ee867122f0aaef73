"""How far a newly active node moves each outbound sequence number, and moving it.

Pure functions, no I/O. The derivation is in ``docs/failover.md``; in short:

The active node's kernel reports an outbound SA's counter (an XFRM async
event, ``XFRM_MSG_NEWAE``) after at most ``replay_seq_thresh`` packets
(``XFRMA_REPLAY_THRESH``) or ``replay_timer_s`` seconds (``XFRMA_ETIMER_THRESH``),
whichever comes first. The daemon then needs up to ``pipeline_latency_s``
(coalescing delay + store round trip) before the store holds that counter.
So when the active node dies, the counter in the store lags the last
sequence number the node really used by at most::

    unsynced = min(replay_seq_thresh, ceil(max_pps * replay_timer_s))
               + ceil(max_pps * pipeline_latency_s)

and the new active node must start above it. ``compute_jump`` returns
``ceil(unsynced * safety_factor)`` (at least ``unsynced + 1``).

A jump must also stay below 2^31: an ESN receiver rebuilds the high 32 bits
of the sequence number from the low ones and its window (RFC 4303
Appendix A), so a jump near 2^32 would be read as a step back and fail the
ICV check. Beyond 2^31 the configuration is wrong, not the SA.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from appliance.errors import ApplianceError
from appliance.model import ReplayState, ReplayStateEsn, SadEntry

SEQ32_MAX = 0xFFFF_FFFF
"""Last outbound sequence number of a non-ESN SA (RFC 4303 3.3.3: it must not cycle)."""
SEQ64_MAX = 0xFFFF_FFFF_FFFF_FFFF
"""Last outbound sequence number of an ESN SA."""
MAX_JUMP = 1 << 31
"""Largest jump an ESN receiver can follow without misreading the high bits."""


class SeqJumpError(ApplianceError):
    """A jump parameter is out of range; the message names it."""


def unsynced_packets_bound(
    max_pps: float,
    replay_seq_thresh: int,
    replay_timer_s: float,
    pipeline_latency_s: float = 0.0,
) -> int:
    """The most packets one outbound SA can have sent beyond the counter in the store.

    ``replay_seq_thresh`` 0 means the kernel sends no threshold events (only the
    timer bounds); ``replay_timer_s`` 0 means no timer events (only the threshold
    bounds). Both 0 leaves nothing bounded and is refused.
    """
    _check_number("max_pps", max_pps, lo=0.0, lo_open=True)
    _check_int("replay_seq_thresh", replay_seq_thresh, 0, SEQ32_MAX)
    _check_number("replay_timer_s", replay_timer_s, lo=0.0)
    _check_number("pipeline_latency_s", pipeline_latency_s, lo=0.0)
    bounds = []
    if replay_seq_thresh > 0:
        bounds.append(replay_seq_thresh)
    if replay_timer_s > 0:
        bounds.append(math.ceil(max_pps * replay_timer_s))
    if not bounds:
        raise SeqJumpError(
            "replay_seq_thresh and replay_timer_s are both 0: the kernel would never report "
            "the outbound counter, so no jump is safe"
        )
    return min(bounds) + math.ceil(max_pps * pipeline_latency_s)


def compute_jump(
    max_pps: float,
    replay_seq_thresh: int,
    replay_timer_s: float,
    safety_factor: float = 2.0,
    pipeline_latency_s: float = 0.0,
) -> int:
    """The outbound sequence jump for a takeover; see the module docstring.

    ``max_pps``: the highest packet rate one SA may carry; ``safety_factor``
    (>= 1) covers bursts above it and timer slack (the kernel's timer runs in
    jiffies). Raises ``SeqJumpError`` for out-of-range input, or when the
    jump would reach ``MAX_JUMP`` (lower the thresholds instead).
    """
    _check_number("safety_factor", safety_factor, lo=1.0)
    unsynced = unsynced_packets_bound(
        max_pps, replay_seq_thresh, replay_timer_s, pipeline_latency_s
    )
    jump = max(math.ceil(unsynced * safety_factor), unsynced + 1)
    if jump >= MAX_JUMP:
        raise SeqJumpError(
            f"the sequence jump would be {jump}, not below 2^31: lower replay_seq_thresh, "
            "replay_timer_ms or max_pps_per_sa"
        )
    return jump


def check_jump(jump: object, name: str = "jump") -> None:
    """Raise ``SeqJumpError`` unless ``jump`` is an integer 0..MAX_JUMP-1.

    The range ``advance_oseq`` accepts (the module docstring says why it stops
    below 2^31), for callers that must refuse a bad jump before they start.
    ``name`` is what the message calls the value, e.g. a command-line option.
    """
    if isinstance(jump, bool) or not isinstance(jump, int) or not 0 <= jump < MAX_JUMP:
        raise SeqJumpError(
            f"{name} must be an integer 0..{MAX_JUMP - 1} (below 2^31: an ESN receiver "
            f"would read a larger jump as a step back), got {jump!r}"
        )


@dataclass(frozen=True, slots=True)
class Advanced:
    """The outbound counter moved; ``state`` is what to install (or NEWAE)."""

    state: ReplayState | ReplayStateEsn
    old_oseq: int
    """The counter as stored (64-bit for ESN SAs)."""
    new_oseq: int
    """The counter to install: the next packet carries ``new_oseq + 1``."""


@dataclass(frozen=True, slots=True)
class RekeyRequired:
    """The SA cannot be restored with the jump: it would have to wrap. Rekey it instead."""

    old_oseq: int
    jump: int
    limit: int
    """The last sequence number the SA may use (2^32-1, or 2^64-1 with ESN)."""

    @property
    def reason(self) -> str:
        """One line for the operator."""
        space = "64-bit (ESN)" if self.limit == SEQ64_MAX else "32-bit (no ESN)"
        return (
            f"outbound sequence {self.old_oseq} + jump {self.jump} passes the {space} limit "
            f"{self.limit}; not restored, the SA needs a rekey"
        )


OseqOutcome = Advanced | RekeyRequired


def advance_oseq(
    state: ReplayState | ReplayStateEsn, jump: int, *, esn: bool, headroom: int = 0
) -> OseqOutcome:
    """Move the outbound counter of ``state`` by ``jump``, or say the SA needs a rekey.

    ``esn`` is the SA's ``XFRM_STATE_ESN`` flag: the kernel also keeps a non-ESN
    SA's counter in ``ReplayStateEsn`` (windows over 32 packets), so the type
    alone does not say which space the SA counts in. With ESN the carry goes
    into ``oseq_hi``. ``headroom``: sequence numbers the SA must still have
    after the jump to be worth restoring. Only the outbound fields change; the
    inbound window (``seq``, bitmap) is restored as stored.
    """
    check_jump(jump)
    _check_int("headroom", headroom, 0, SEQ64_MAX)
    if esn and not isinstance(state, ReplayStateEsn):
        raise SeqJumpError("an ESN SA needs an ESN replay state (XFRMA_REPLAY_ESN_VAL)")
    if isinstance(state, ReplayStateEsn) and esn:
        old, limit = state.oseq64, SEQ64_MAX
    else:
        old, limit = state.oseq, SEQ32_MAX
    new = old + jump
    if new + headroom > limit:
        return RekeyRequired(old_oseq=old, jump=jump, limit=limit)
    if isinstance(state, ReplayStateEsn):
        moved: ReplayState | ReplayStateEsn = dataclasses.replace(
            state, oseq=new & SEQ32_MAX, oseq_hi=new >> 32 if esn else state.oseq_hi
        )
    else:
        moved = dataclasses.replace(state, oseq=new)
    return Advanced(state=moved, old_oseq=old, new_oseq=new)


@dataclass(frozen=True, slots=True)
class AdvancedSa:
    """``sa`` with its outbound counter moved."""

    sa: SadEntry
    old_oseq: int
    new_oseq: int


def advance_sa(sa: SadEntry, jump: int, *, headroom: int = 0) -> AdvancedSa | RekeyRequired:
    """``advance_oseq`` on the replay state an SA carries (an SA without one counts from 0)."""
    state: ReplayState | ReplayStateEsn
    if sa.replay_esn is not None:
        state = sa.replay_esn
    elif sa.replay is not None:
        state = sa.replay
    else:
        state = ReplayState()
    outcome = advance_oseq(state, jump, esn=sa.esn, headroom=headroom)
    if isinstance(outcome, RekeyRequired):
        return outcome
    if isinstance(outcome.state, ReplayStateEsn):
        moved = dataclasses.replace(sa, replay_esn=outcome.state)
    else:
        moved = dataclasses.replace(sa, replay=outcome.state)
    return AdvancedSa(sa=moved, old_oseq=outcome.old_oseq, new_oseq=outcome.new_oseq)


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SeqJumpError(f"{name} must be an integer {lo}..{hi}, got {value!r}")


def _check_number(name: str, value: object, lo: float, lo_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SeqJumpError(f"{name} must be a finite number, got {value!r}")
    if value < lo or (lo_open and value == lo):
        relation = ">" if lo_open else ">="
        raise SeqJumpError(f"{name} must be {relation} {lo:g}, got {value!r}")
