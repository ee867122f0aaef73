"""The executor with the one-rule gate (``[failover] gate = "nft"``): plans against a fake
kernel and a fake gate that both record what they were asked, in one shared order."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import pytest

from appliance import model as m
from appliance.failover.executor import (
    ExecutionError,
    ExecutorSettings,
    FollowedState,
    PlanExecutor,
)
from appliance.failover.transitions import Role, StandbyMode, Step, plan
from appliance.notify import VrrpState
from appliance.planner import gate_for, is_gate, policy_identity, sa_identity
from appliance.xfrm.types import BatchFailure
from tests.failover.test_executor import (
    GW,
    IN_POL,
    IN_SA,
    JUMP,
    OUT_POL,
    OUT_SA,
    PEER,
    STATE,
    Clock,
    FakeKernel,
    FakeLoops,
    FakeStore,
    etimer_jiffies,
    sa,
)

pytestmark = pytest.mark.unit


class FakeGate:
    """The gate as a set of SPIs and a closed flag; each call lands in ``journal``."""

    def __init__(self, journal: list[tuple[str, object]]) -> None:
        self.journal = journal
        self.spis: set[int] = set()
        self.closed = False

    def close(self, spis: Iterable[int]) -> None:
        self.spis, self.closed = set(spis), True
        self.journal.append(("gate-close", sorted(self.spis)))

    def add(self, spis: Iterable[int]) -> None:
        wanted = set(spis)
        self.spis |= wanted
        self.journal.append(("gate-add", sorted(wanted)))

    def discard(self, spis: Iterable[int]) -> None:
        gone = set(spis)
        self.spis -= gone
        self.journal.append(("gate-discard", sorted(gone)))

    def open(self) -> None:
        self.closed = False
        self.journal.append(("gate-open", None))

    def holds_back(self, spi: int) -> bool:
        return self.closed and spi in self.spis


class JournalKernel(FakeKernel):
    """FakeKernel whose changes and dumps go to the journal it shares with the gate."""

    def __init__(self, journal: list[tuple[str, object]]) -> None:
        super().__init__()
        self.journal = journal

    def dump_spd(self) -> list[m.SpdEntry]:
        self.journal.append(("dump-spd", None))
        return super().dump_spd()

    def install_batch(
        self,
        operations: Sequence[tuple[str, m.SadEntry | m.SpdEntry]],
        *,
        with_lifetime_cur: bool = False,
    ) -> list[BatchFailure]:
        self.journal.extend((op, entry) for op, entry in operations)
        return super().install_batch(operations, with_lifetime_cur=with_lifetime_cur)


def make() -> tuple[PlanExecutor, JournalKernel, FakeGate, FakeLoops, list[tuple[str, object]]]:
    journal: list[tuple[str, object]] = []
    kernel, gate, loops = JournalKernel(journal), FakeGate(journal), FakeLoops()
    settings = ExecutorSettings("192.0.2.1", JUMP, 10.0, 1000, etimer_jiffies(500, 250))
    executor = PlanExecutor(
        kernel, FakeStore(STATE), loops, settings, local_addresses=lambda: [GW], clock=Clock(),
        gate=gate,
    )  # fmt: skip
    return executor, kernel, gate, loops, journal


def emits(kernel: FakeKernel, gate: FakeGate) -> list[int]:
    """SPIs whose ESP would leave now: an SA named by a real out policy, not held back."""
    out_reqids = {
        t.reqid
        for p in kernel.spd.values()
        if p.dir == m.Direction.OUT and not is_gate(p)
        for t in p.templates
    }
    return sorted(
        s.spi
        for s in kernel.sad.values()
        if s.reqid in out_reqids and s.saddr == GW and not gate.holds_back(s.spi)
    )


def test_cold_takeover_puts_real_out_policies_in_and_opens_with_one_gate_call() -> None:
    executor, kernel, gate, _, journal = make()
    executor.run([Step.CLOSE_OUTBOUND])  # init: the gate closes over an empty kernel
    journal.clear()
    report = executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.COLD))
    assert kernel.spd[policy_identity(OUT_POL)] == OUT_POL  # no gate policy, ever
    assert not any(is_gate(e) for _, e in journal if isinstance(e, m.SpdEntry))
    # The SPIs are gated before their SAs exist, and the gate opens last, in one call.
    kinds = [k for k, _ in journal]
    assert kinds.index("gate-add") < kinds.index("add_sa")
    assert kinds[-1] == "gate-open" and kinds.count("gate-open") == 1
    assert "dump-spd" not in kinds[kinds.index("add_policy") :]  # open needs no SPD dump
    assert report.opened == 1
    assert kernel.sad[sa_identity(OUT_SA)].replay == m.ReplayState(oseq=7000 + JUMP, bitmap=1)
    assert emits(kernel, gate) == [OUT_SA.spi]


def test_nothing_leaves_before_open_outbound() -> None:
    executor, kernel, gate, _, _ = make()
    actions = [Step.CLOSE_OUTBOUND, *plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.COLD)]
    executor.run(actions[: actions.index(Step.OPEN_OUTBOUND)])
    assert kernel.spd[policy_identity(OUT_POL)] == OUT_POL
    assert emits(kernel, gate) == []
    executor.run([Step.FETCH_STATE, Step.OPEN_OUTBOUND])  # a run needs its own fetch
    assert emits(kernel, gate) == [OUT_SA.spi]


def test_a_failed_install_leaves_the_gate_closed() -> None:
    executor, kernel, gate, _, _ = make()
    kernel.refuse_spi = IN_SA.spi
    with pytest.raises(ExecutionError, match="install SAs"):
        executor.run([Step.CLOSE_OUTBOUND, *plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.COLD)])
    assert gate.closed
    assert emits(kernel, gate) == []


def test_close_outbound_gates_every_sa_the_kernel_holds_without_touching_policies() -> None:
    executor, kernel, gate, _, journal = make()
    executor.run([Step.CLOSE_OUTBOUND, *plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.COLD)])
    journal.clear()
    report = executor.run([Step.CLOSE_OUTBOUND])
    assert journal == [("gate-close", sorted([OUT_SA.spi, IN_SA.spi]))]
    assert report.gated == 2
    assert emits(kernel, gate) == []


def test_remove_state_turns_out_policies_into_gates_and_forgets_the_spis() -> None:
    executor, kernel, gate, _, _ = make()
    executor.run([Step.CLOSE_OUTBOUND, *plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.COLD)])
    executor.run(plan(Role.ACTIVE, VrrpState.BACKUP, StandbyMode.COLD))
    assert kernel.sad == {}
    # With no SA and no real policy, the tunnel's traffic is dropped, not sent in clear.
    assert list(kernel.spd.values()) == [gate_for(OUT_POL)]
    assert gate.closed and gate.spis == set()
    # The next takeover replaces the gate policy by the real one.
    executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.COLD))
    assert kernel.spd[policy_identity(OUT_POL)] == OUT_POL
    assert emits(kernel, gate) == [OUT_SA.spi]


def test_hot_standby_holds_real_policies_behind_the_gate_and_takes_over_without_an_spd_dump() -> (
    None
):
    executor, kernel, gate, loops, journal = make()
    executor.run(plan(Role.INIT, VrrpState.BACKUP, StandbyMode.HOT))
    executor.run([Step.RECONCILE_STATE, Step.RESTORE_INBOUND_REPLAY], fetched=STATE)
    assert kernel.spd[policy_identity(OUT_POL)] == OUT_POL
    assert gate.spis >= {OUT_SA.spi, IN_SA.spi} and gate.closed
    assert emits(kernel, gate) == []
    loops.followed = FollowedState(STATE, kernel_holds_it=True)
    journal.clear()
    report = executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT))
    assert ("dump-spd", None) not in journal
    assert report.opened == 1
    assert emits(kernel, gate) == [OUT_SA.spi]


def test_reconcile_gates_a_stale_out_policy_and_forgets_only_spis_no_sa_still_uses() -> None:
    executor, kernel, gate, _, _ = make()
    stale_pol = dataclasses.replace(
        OUT_POL, selector=dataclasses.replace(OUT_POL.selector, prefixlen_d=25)
    )
    stale_out = sa(0x4004, GW, PEER, oseq=1, seq=0, reqid=7)
    # Another peer's SA that shares the stale SA's SPI and stays in the store.
    twin = sa(0x4004, PEER, GW, oseq=0, seq=5, reqid=8)
    state = dataclasses.replace(STATE, sad=(*STATE.sad, twin))
    executor.run([Step.CLOSE_OUTBOUND])
    executor.run(
        [Step.RECONCILE_STATE],
        fetched=dataclasses.replace(
            state, sad=(*state.sad, stale_out), spd=(*state.spd, stale_pol)
        ),
    )
    executor.run([Step.RECONCILE_STATE], fetched=state)
    assert kernel.spd[policy_identity(stale_pol)] == gate_for(stale_pol)
    assert sa_identity(stale_out) not in kernel.sad
    assert 0x4004 in gate.spis  # the twin still uses it
    executor.run(
        [Step.RECONCILE_STATE],
        fetched=dataclasses.replace(state, sad=STATE.sad),
    )
    assert 0x4004 not in gate.spis
    assert gate.spis == {OUT_SA.spi, IN_SA.spi}


def test_policy_mode_is_unchanged_by_the_gate_option() -> None:
    # Without a gate object every out policy is its own gate, as before.
    journal: list[tuple[str, object]] = []
    kernel = JournalKernel(journal)
    settings = ExecutorSettings("192.0.2.1", JUMP, 10.0, 1000, etimer_jiffies(500, 250))
    executor = PlanExecutor(kernel, FakeStore(STATE), FakeLoops(), settings,
                            local_addresses=lambda: [GW], clock=Clock())  # fmt: skip
    actions = plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.COLD)
    executor.run(actions[: actions.index(Step.OPEN_OUTBOUND)])
    assert is_gate(kernel.spd[policy_identity(OUT_POL)])
    assert kernel.spd[policy_identity(IN_POL)] == IN_POL
    assert PEER != GW
