"""The transition table: complete, idempotent, and never lets stale sequence numbers out.

The safety checks run every plan against a small abstract node (what its
kernel holds and which loops run), over every sequence of keepalived
states up to a length, in both modes.
"""

import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.failover.transitions import (
    TABLE,
    Role,
    StandbyMode,
    Step,
    plan,
    role_for,
    table_markdown,
)
from appliance.notify import VrrpState

pytestmark = pytest.mark.unit

S = Step
MODES = list(StandbyMode)
STATES = list(VrrpState)


@dataclass
class AbstractNode:
    """What matters for safety, not the kernel itself."""

    mode: StandbyMode
    role: Role = Role.INIT
    outbound_open: bool = True  # unknown at INIT: assume the worst
    holds_state: bool = True  # unknown at INIT
    counters_fresh: bool = False  # outbound counters moved past anything the peer saw
    claimed: bool = False
    fetched: bool = False
    publishing: bool = False
    following: bool = False

    def run(self, action: Step) -> None:
        if action is S.CLOSE_OUTBOUND:
            self.outbound_open = False
        elif action is S.STOP_PUBLISHING:
            self.publishing = False
        elif action is S.STOP_FOLLOWING:
            self.following = False
        elif action is S.CLAIM_OWNERSHIP:
            assert not self.following, "claiming while the follower still writes the kernel"
            self.claimed = True
        elif action is S.FETCH_STATE:
            assert self.claimed, "fetch before claim: the old owner may still publish"
            self.fetched = True
        elif action is S.INSTALL_STATE:
            assert self.fetched and not self.outbound_open
            self.holds_state = True
            self.counters_fresh = True
        elif action is S.RECONCILE_STATE:
            assert self.fetched and self.holds_state and not self.outbound_open
        elif action is S.ADVANCE_OUTBOUND_SEQ:
            assert self.fetched and self.holds_state
            self.counters_fresh = True
        elif action is S.RESTORE_INBOUND_REPLAY:
            assert self.fetched and self.holds_state
        elif action is S.OPEN_OUTBOUND:
            assert self.counters_fresh, "outbound opened with counters the peer may have seen"
            self.outbound_open = True
        elif action is S.START_PUBLISHING:
            assert self.claimed
            self.publishing = True
        elif action is S.START_FOLLOWING:
            assert self.mode is StandbyMode.HOT and not self.outbound_open
            self.following = True
            self.holds_state = True
            self.counters_fresh = False  # the store's counters lag the active node
        elif action is S.REMOVE_STATE:
            assert not self.outbound_open
            self.holds_state = False
            self.counters_fresh = False
        else:  # pragma: no cover - every action is handled above
            raise AssertionError(action)

    def enter(self, state: VrrpState) -> list[Step]:
        actions = plan(self.role, state, self.mode)
        for action in actions:
            self.run(action)
        self.role = role_for(state)
        if self.role is not Role.ACTIVE:
            # Leaving ACTIVE gives up the claim: the next takeover must claim again.
            self.claimed = self.fetched = False
        return actions


def test_table_has_every_role_pair_in_both_modes() -> None:
    targets = {role_for(s) for s in STATES}
    for mode in MODES:
        assert set(TABLE[mode]) == set(itertools.product(list(Role), targets))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("state", STATES)
def test_same_state_twice_plans_nothing_the_second_time(
    mode: StandbyMode, state: VrrpState
) -> None:
    # From INIT and from every role a state leads to.
    for before in [None, *STATES]:
        node = AbstractNode(mode)
        if before is not None:
            node.enter(before)
        node.enter(state)
        assert node.enter(state) == []


@pytest.mark.parametrize("mode", MODES)
def test_every_sequence_of_states_keeps_the_safety_rules(mode: StandbyMode) -> None:
    for length in range(1, 5):
        for states in itertools.product(STATES, repeat=length):
            node = AbstractNode(mode)
            for state in states:
                node.enter(state)
                if node.role is Role.ACTIVE:
                    assert node.outbound_open and node.counters_fresh and node.publishing
                    assert node.holds_state and not node.following
                else:
                    assert not node.outbound_open, f"{states}: outbound open while {node.role}"
                    assert not node.publishing
                if node.role is Role.STANDBY:
                    assert node.following == (mode is StandbyMode.HOT)
                    assert node.holds_state == (mode is StandbyMode.HOT)
                if node.role is Role.STOPPED:
                    assert not node.holds_state and not node.following


@pytest.mark.parametrize("mode", MODES)
def test_only_master_opens_outbound_and_only_after_the_counters_move(mode: StandbyMode) -> None:
    for (_, target), actions in TABLE[mode].items():
        if S.OPEN_OUTBOUND in actions:
            assert target is Role.ACTIVE
            opened = actions.index(S.OPEN_OUTBOUND)
            assert {S.CLAIM_OWNERSHIP, S.FETCH_STATE} <= set(actions[:opened])
            assert S.INSTALL_STATE in actions[:opened] or S.ADVANCE_OUTBOUND_SEQ in actions[:opened]


@pytest.mark.parametrize("mode", MODES)
def test_leaving_active_closes_outbound_first(mode: StandbyMode) -> None:
    for state in (VrrpState.BACKUP, VrrpState.FAULT, VrrpState.STOP, VrrpState.DELETED):
        assert plan(Role.ACTIVE, state, mode)[0] is S.CLOSE_OUTBOUND
        assert plan(Role.INIT, state, mode)[0] is S.CLOSE_OUTBOUND


def test_hot_takeover_moves_counters_instead_of_installing() -> None:
    actions = plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT)
    assert S.INSTALL_STATE not in actions
    assert actions.index(S.ADVANCE_OUTBOUND_SEQ) < actions.index(S.OPEN_OUTBOUND)
    assert S.RESTORE_INBOUND_REPLAY in actions


def test_cold_takeover_installs_everything() -> None:
    assert plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.COLD) == [
        S.CLAIM_OWNERSHIP,
        S.FETCH_STATE,
        S.INSTALL_STATE,
        S.ADVANCE_OUTBOUND_SEQ,  # SAs the kernel still held (a crashed node's) move too
        S.OPEN_OUTBOUND,
        S.START_PUBLISHING,
    ]


def test_fault_is_a_standby_role() -> None:
    assert role_for(VrrpState.FAULT) is Role.STANDBY
    assert plan(Role.STANDBY, VrrpState.FAULT, StandbyMode.HOT) == []


@pytest.mark.parametrize("mode", MODES)
def test_docs_show_the_table_the_code_uses(mode: StandbyMode) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "failover.md").read_text()
    start = doc.index(f"<!-- table:{mode.value} -->\n") + len(f"<!-- table:{mode.value} -->\n")
    shown = doc[start : doc.index("\n<!-- end -->", start)]
    assert shown == table_markdown(mode)
