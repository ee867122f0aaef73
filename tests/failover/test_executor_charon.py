"""The executor beside a charon fed from the store (``[ike] feed``): charon installs and
removes the CHILD SAs of its IKE SAs; ipsec-ha moves their counters and touches nothing else
of theirs.  A fake charon installs into the fake kernel as the real one does: counters at 0."""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Callable
from typing import Any

import pytest

from appliance import model as m
from appliance.failover.executor import (
    ExecutionError,
    ExecutionTimeout,
    ExecutorSettings,
    PlanExecutor,
)
from appliance.failover.transitions import (
    CHARON_RESTARTED,
    FENCED,
    RECLAIM,
    Role,
    StandbyMode,
    Step,
    plan,
    with_charon,
)
from appliance.notify import VrrpState
from appliance.planner import policy_identity, sa_identity
from appliance.store.client import Retrieved
from appliance.xfrm.types import BatchFailure
from tests.failover.test_executor import (
    FWD_POL,
    GW,
    IN_POL,
    IN_SA,
    JUMP,
    NET_LOCAL,
    NET_REMOTE,
    OUT_POL,
    OUT_SA,
    PEER,
    Clock,
    FakeLoops,
    FakeStore,
    etimer_jiffies,
    policy,
    sa,
)
from tests.failover.test_executor_nft_gate import FakeGate, JournalKernel

pytestmark = pytest.mark.unit

S = Step


class FakeCharon:
    """Installs the fed CHILD SAs (counters 0) and their policies; removes them at retire."""

    def __init__(self, kernel: JournalKernel, journal: list[tuple[str, object]]) -> None:
        self.kernel = kernel
        self.journal = journal
        self.held: list[m.SadEntry | m.SpdEntry] = []
        self.install = True

    def feed(
        self,
        fetched: Retrieved,
        installed: Callable[[frozenset[int]], None],
        make_room: Callable[[frozenset[int]], None],
    ) -> tuple[frozenset[int], frozenset[int]]:
        self.journal.append(("charon-feed", sorted(fetched.ike_sas)))
        spis = frozenset({OUT_SA.spi, IN_SA.spi})
        if self.held:  # a hot standby's charon, fed before: nothing new
            return spis, frozenset()
        make_room(spis)
        if self.install:
            out_tmpl = dataclasses.replace(OUT_POL.templates[0], reqid=7)
            in_tmpl = dataclasses.replace(IN_POL.templates[0], reqid=8)
            for entry in (
                dataclasses.replace(OUT_SA, reqid=7, replay=m.ReplayState()),
                dataclasses.replace(IN_SA, reqid=8, replay=m.ReplayState()),
                dataclasses.replace(OUT_POL, templates=(out_tmpl,)),
                dataclasses.replace(IN_POL, templates=(in_tmpl,)),
            ):
                self.held.append(entry)
                if isinstance(entry, m.SadEntry):
                    self.kernel.sad[sa_identity(entry)] = entry
                else:
                    self.kernel.spd[policy_identity(entry)] = entry
        installed(spis)  # one batch
        return spis, frozenset()

    def activate(self) -> None:
        self.journal.append(("charon-activate", None))

    def retire(self) -> frozenset[int]:
        self.journal.append(("charon-retire", None))
        spis = frozenset(e.spi for e in self.held if isinstance(e, m.SadEntry))
        for entry in self.held:
            if isinstance(entry, m.SadEntry):
                self.kernel.sad.pop(sa_identity(entry), None)
            else:
                self.kernel.spd.pop(policy_identity(entry), None)
        self.held = []
        return spis

    left: frozenset[int] = frozenset()
    """The dead charon's orphans (``orphans``)."""
    refed: frozenset[int] = frozenset()
    """What ``refeed`` was told charon lacks."""

    def refeed(self, spis: frozenset[int]) -> None:
        self.refed |= spis
        self.held = []  # fed whole again at the next feed

    def orphans(self) -> frozenset[int]:
        self.journal.append(("charon-orphans", sorted(self.left)))
        return self.left

    def forget_orphans(self, spis: frozenset[int]) -> None:
        self.left -= spis


# The stored state: charon's tunnel (OUT_SA/IN_SA, reqids 1 and 2 on the old node) and one
# hand-keyed tunnel that no IKE SA names.
HAND_OUT = sa(0x3003, GW, PEER, oseq=10, seq=0, reqid=3)
HAND_POL = policy(m.Direction.OUT, NET_REMOTE, NET_LOCAL, GW, PEER, 3)
IKE_SPIS = (0x1111, 0x2222)
STATE = Retrieved(
    (OUT_SA, IN_SA, HAND_OUT),
    (OUT_POL, IN_POL, FWD_POL, HAND_POL),
    "198.51.100.10",
    ike_sas={IKE_SPIS: object()},  # type: ignore[dict-item]
)


def make(
    timeout: float = 10.0,
) -> tuple[PlanExecutor, JournalKernel, FakeGate, FakeCharon, list[tuple[str, object]]]:
    journal: list[tuple[str, object]] = []
    kernel, gate = JournalKernel(journal), FakeGate(journal)
    charon = FakeCharon(kernel, journal)
    settings = ExecutorSettings("192.0.2.1", JUMP, timeout, 1000, etimer_jiffies(500, 250))
    executor = PlanExecutor(
        kernel, FakeStore(STATE), FakeLoops(), settings, local_addresses=lambda: [GW],
        clock=Clock(), gate=gate, charon=charon,
    )  # fmt: skip
    return executor, kernel, gate, charon, journal


def takeover() -> list[Step]:
    return with_charon(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.COLD))


def test_the_plans_with_charon() -> None:
    assert takeover() == [
        S.CLAIM_OWNERSHIP, S.FETCH_STATE, S.FEED_CHARON, S.INSTALL_STATE,
        S.ADVANCE_OUTBOUND_SEQ, S.RESTORE_INBOUND_REPLAY, S.ACTIVATE_CHARON,
        S.OPEN_OUTBOUND, S.START_PUBLISHING,
    ]  # fmt: skip
    assert with_charon(plan(Role.ACTIVE, VrrpState.BACKUP, StandbyMode.COLD)) == [
        S.CLOSE_OUTBOUND, S.STOP_PUBLISHING, S.RETIRE_CHARON, S.REMOVE_STATE,
    ]  # fmt: skip
    assert with_charon(plan(Role.INIT, VrrpState.STOP, StandbyMode.COLD)) == [
        S.CLOSE_OUTBOUND, S.RETIRE_CHARON, S.REMOVE_STATE,
    ]  # fmt: skip
    assert with_charon(list(FENCED)) == [S.CLOSE_OUTBOUND, S.STOP_PUBLISHING, S.RETIRE_CHARON]
    # A hot standby's charon holds the fed IKE SAs while it follows: retired when it stops.
    assert with_charon(plan(Role.STANDBY, VrrpState.STOP, StandbyMode.HOT)) == [
        S.STOP_FOLLOWING, S.RETIRE_CHARON, S.REMOVE_STATE,
    ]  # fmt: skip
    assert with_charon(plan(Role.ACTIVE, VrrpState.BACKUP, StandbyMode.HOT)) == [
        S.CLOSE_OUTBOUND, S.STOP_PUBLISHING, S.RETIRE_CHARON, S.START_FOLLOWING,
    ]  # fmt: skip
    assert with_charon(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT)) == [
        S.STOP_FOLLOWING, S.CLAIM_OWNERSHIP, S.FETCH_STATE, S.FEED_CHARON,
        S.RECONCILE_STATE, S.ADVANCE_OUTBOUND_SEQ, S.RESTORE_INBOUND_REPLAY,
        S.ACTIVATE_CHARON, S.OPEN_OUTBOUND, S.START_PUBLISHING,
    ]  # fmt: skip
    assert with_charon(list(RECLAIM)) == takeover()
    assert with_charon([]) == []
    # a restarted charon: gated, counters flushed, the dead charon's SAs out, then RECLAIM
    assert with_charon(list(CHARON_RESTARTED)) == [
        S.CLOSE_OUTBOUND, S.STOP_PUBLISHING, S.RETIRE_CHARON, S.DROP_CHARON_ORPHANS,
        *takeover(),
    ]  # fmt: skip


def test_a_takeover_lets_charon_install_its_sas_and_only_moves_their_counters() -> None:
    executor, kernel, gate, _charon, journal = make()
    report = executor.run(takeover())
    # Gated before charon installed anything; then fed.
    first_feed = journal.index(("charon-feed", [IKE_SPIS]))
    assert ("gate-add", sorted({OUT_SA.spi, IN_SA.spi, HAND_OUT.spi})) in journal[:first_feed]
    # ipsec-ha added only the hand-keyed SA and its policy, nothing of charon's.
    added = [(op, e) for op, e in journal if op in ("add_sa", "add_policy", "update_policy",
                                                    "delete_sa", "delete_policy")]  # fmt: skip
    assert added == [("add_sa", added[0][1]), ("add_policy", HAND_POL)]
    assert isinstance(added[0][1], m.SadEntry) and added[0][1].spi == HAND_OUT.spi
    # charon's SAs: counters moved by NEWAE, the outbound past the store's plus the jump.
    replays = {e.spi: e for op, e in journal if op == "set_replay" and isinstance(e, m.SadEntry)}
    assert set(replays) == {OUT_SA.spi, IN_SA.spi}
    assert replays[OUT_SA.spi].replay is not None and OUT_SA.replay is not None
    assert replays[OUT_SA.spi].replay.oseq == OUT_SA.replay.oseq + JUMP
    assert replays[IN_SA.spi].replay == IN_SA.replay
    # In order: counters, then charon active, then the gate opens.
    order = [op for op, _ in journal if op in ("set_replay", "charon-activate", "gate-open")]
    assert order == ["set_replay", "set_replay", "charon-activate", "gate-open"]
    assert report.actions == [a.value for a in takeover()]
    # charon's policies (reqids 7 and 8 on this node) are as charon put them.
    assert {p.templates[0].reqid for p in kernel.spd.values()} == {3, 7, 8}
    assert not gate.closed


def test_leaving_active_retires_charon_and_removes_only_what_is_not_charons() -> None:
    executor, kernel, _gate, _charon, journal = make()
    executor.run(takeover())
    journal.clear()
    executor.run(with_charon(plan(Role.ACTIVE, VrrpState.BACKUP, StandbyMode.COLD)))
    assert journal.index(("charon-retire", None)) < next(
        i for i, (op, _) in enumerate(journal) if op == "delete_sa"
    )
    deleted = {e.spi for op, e in journal if op == "delete_sa" and isinstance(e, m.SadEntry)}
    assert deleted == {HAND_OUT.spi}  # charon removed its own
    assert kernel.sad == {}


def test_what_charon_has_not_removed_stays_charons() -> None:
    executor, kernel, _gate, charon, _journal = make(timeout=100.0)
    executor.run(takeover())
    charon.retire = lambda: frozenset({OUT_SA.spi, IN_SA.spi})  # type: ignore[method-assign]
    executor.clock.step = 1.0  # type: ignore[attr-defined]  # the wait for charon ends
    executor.run(with_charon(plan(Role.ACTIVE, VrrpState.STOP, StandbyMode.COLD)))
    assert {e.spi for e in kernel.sad.values()} == {OUT_SA.spi, IN_SA.spi}
    # charon's policies stay; ipsec-ha's own out policy is now a gate (no template).
    assert {p.templates[0].reqid for p in kernel.spd.values() if p.templates} == {7, 8}


def test_a_charon_that_installs_nothing_fails_the_takeover_by_name_with_outbound_gated() -> None:
    executor, _kernel, gate, charon, journal = make(timeout=10.0)
    charon.install = False
    executor.clock.step = 0.5  # type: ignore[attr-defined]
    with pytest.raises(ExecutionTimeout, match=r"feed-charon: 2 of 2 CHILD SAs charon was fed"):
        executor.run(takeover())
    assert ("charon-activate", None) not in journal
    assert not any(op == "gate-open" for op, _ in journal)
    assert gate.spis >= {OUT_SA.spi, IN_SA.spi}
    # the SAs charon was fed stay charon's: a later remove-state must leave them alone
    assert executor._charon_spis == {OUT_SA.spi, IN_SA.spi}


def test_a_restarted_charon_gets_its_ike_sas_back_after_the_dead_ones_sas_are_gone() -> None:
    executor, kernel, gate, charon, journal = make()
    executor.run(takeover())
    # charon crashes: its SAs stay in the kernel (they carried traffic since, so their
    # counters are ahead of the store's); the restarted charon holds nothing
    for entry in (OUT_SA, IN_SA):
        kernel.sad[sa_identity(entry)] = entry
    charon.held = []  # the new charon holds nothing
    charon.left = frozenset({OUT_SA.spi, IN_SA.spi})
    journal.clear()
    report = executor.run(with_charon(list(CHARON_RESTARTED)))
    deleted = [e.spi for op, e in journal if op == "delete_sa" and isinstance(e, m.SadEntry)]
    assert sorted(deleted) == sorted([OUT_SA.spi, IN_SA.spi])  # not the hand-keyed SA
    ops = [op for op, _ in journal]
    # gated first, the dead charon's SAs out before the new one is fed, counters moved
    # before the new charon is activated and outbound opens
    assert ops.index("gate-close") < ops.index("delete_sa") < ops.index("charon-feed")
    assert ops.index("charon-feed") < ops.index("set_replay") < ops.index("charon-activate")
    assert ops.index("charon-activate") < ops.index("gate-open")
    assert {e.spi for e in kernel.sad.values()} == {OUT_SA.spi, IN_SA.spi, HAND_OUT.spi}
    assert report.removed == 2 and not gate.closed and charon.left == frozenset()


def test_orphans_the_kernel_refused_to_delete_are_tried_again() -> None:
    executor, kernel, _gate, charon, _journal = make()
    executor.run(takeover())
    charon.held = []
    charon.left = frozenset({OUT_SA.spi, IN_SA.spi})

    def refuse_deletes(operations: Any, **kw: Any) -> list[BatchFailure]:
        return [BatchFailure(i, errno.EPERM, "delete_sa: refused")
                for i, (op, _) in enumerate(operations) if op == "delete_sa"]  # fmt: skip

    kernel.install_batch = refuse_deletes  # type: ignore[method-assign]
    with pytest.raises(ExecutionError, match="drop-charon-orphans: the kernel refused"):
        executor.run(with_charon(list(CHARON_RESTARTED)))
    assert charon.left == {OUT_SA.spi, IN_SA.spi}  # still to drop at the next answer


def test_no_orphans_drops_nothing() -> None:
    executor, _kernel, _gate, _charon, journal = make()
    executor.run(takeover())
    journal.clear()
    executor.run(with_charon(list(CHARON_RESTARTED)))
    assert ("charon-orphans", []) in journal
    assert not any(op == "delete_sa" for op, _ in journal)


FOLLOW = [S.FETCH_STATE, S.FEED_CHARON, S.RECONCILE_STATE, S.RESTORE_INBOUND_REPLAY]
"""A hot standby's follow run beside a fed charon (``FailoverDaemon._follower``)."""


def test_a_hot_follow_leaves_charons_sas_to_charon_and_moves_only_inbound_counters() -> None:
    executor, kernel, gate, _charon, journal = make()
    executor.run(FOLLOW)
    added = [e for op, e in journal if op == "add_sa"]
    assert [e.spi for e in added if isinstance(e, m.SadEntry)] == [HAND_OUT.spi]
    # charon's inbound SA gets its stored window; its outbound one waits for the takeover
    replays = [e for op, e in journal if op == "set_replay" and isinstance(e, m.SadEntry)]
    assert [e.spi for e in replays] == [IN_SA.spi]
    assert kernel.sad[sa_identity(IN_SA)].replay == IN_SA.replay
    assert not any(op == "delete_sa" for op, _ in journal)
    # A second follow of the same state: charon is asked, nothing is touched.
    journal.clear()
    executor.run(FOLLOW)
    assert [op for op, _ in journal if op in ("add_sa", "delete_sa", "set_replay")] == []
    # The takeover from there: charon's outbound counter moves past the store's + the jump.
    journal.clear()
    takeover_plan = with_charon(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT))
    executor.run(takeover_plan)
    moved = [e for op, e in journal if op == "set_replay" and isinstance(e, m.SadEntry)]
    assert [e.spi for e in moved] == [OUT_SA.spi]
    assert moved[0].replay is not None and OUT_SA.replay is not None
    assert moved[0].replay.oseq == OUT_SA.replay.oseq + JUMP
    order = [op for op, _ in journal if op in ("set_replay", "charon-activate", "gate-open")]
    assert order == ["set_replay", "charon-activate", "gate-open"]
    assert not gate.closed


def test_sas_a_hot_follow_installed_before_their_ike_sa_came_make_room_for_charons() -> None:
    executor, kernel, _gate, charon, journal = make()
    # The store's SAs came before the IKE record that names them: ipsec-ha installed them.
    kernel.sad[sa_identity(OUT_SA)] = OUT_SA
    kernel.sad[sa_identity(IN_SA)] = IN_SA
    executor.run(FOLLOW)
    deleted = [e.spi for op, e in journal if op == "delete_sa" and isinstance(e, m.SadEntry)]
    assert sorted(deleted) == sorted([OUT_SA.spi, IN_SA.spi])
    # the feed asked for room (the fake charon installs right after)
    ops = [op for op, _ in journal]
    assert ops.index("charon-feed") < ops.index("delete_sa")
    # charon's now (reqids 7 and 8), with the inbound window restored from the store
    assert kernel.sad[sa_identity(IN_SA)].reqid == 8
    assert kernel.sad[sa_identity(IN_SA)].replay == IN_SA.replay
    assert {e.spi for e in charon.held if isinstance(e, m.SadEntry)} == {OUT_SA.spi, IN_SA.spi}


def test_what_a_feed_deletes_stays_charons_until_gone() -> None:
    executor, kernel, _gate, charon, journal = make(timeout=100.0)
    gone = frozenset({0x9999})
    stale = dataclasses.replace(IN_SA, spi=0x9999)
    kernel.sad[sa_identity(stale)] = stale  # charon is slow to remove it

    def feed(
        fetched: Retrieved,
        installed: Callable[[frozenset[int]], None],
        make_room: Callable[[frozenset[int]], None],
    ) -> tuple[frozenset[int], frozenset[int]]:
        return frozenset(), gone

    charon.feed = feed  # type: ignore[method-assign]
    executor.clock.step = 1.0  # type: ignore[attr-defined]  # the wait for charon ends
    executor.run(FOLLOW)
    assert sa_identity(stale) in kernel.sad  # not in the store, but not ipsec-ha's either
    assert not any(op == "delete_sa" and getattr(e, "spi", 0) == 0x9999 for op, e in journal)


def _charon_installs(kernel: JournalKernel) -> None:
    """What the fake charon installs for the fed IKE SA (counters at 0)."""
    out_tmpl = dataclasses.replace(OUT_POL.templates[0], reqid=7)
    for entry in (
        dataclasses.replace(OUT_SA, reqid=7, replay=m.ReplayState()),
        dataclasses.replace(IN_SA, reqid=8, replay=m.ReplayState()),
    ):
        kernel.sad[sa_identity(entry)] = entry
    pol = dataclasses.replace(OUT_POL, templates=(out_tmpl,))
    kernel.spd[policy_identity(pol)] = pol


def test_a_feed_that_fails_after_making_room_leaves_no_counter_believed_moved() -> None:
    # A follow installed the store's SAs (counters moved past the store's + the jump);
    # then their IKE record came: room is made, but charon installs them (counters 0) only
    # after the wait gave up.  The takeover must still move the outbound counter.
    executor, kernel, gate, charon, journal = make(timeout=100.0)
    spis = frozenset({OUT_SA.spi, IN_SA.spi})
    phase = {"n": 0}

    def feed(
        fetched: Retrieved,
        installed: Callable[[frozenset[int]], None],
        make_room: Callable[[frozenset[int]], None],
    ) -> tuple[frozenset[int], frozenset[int]]:
        if phase["n"] == 0:  # the IKE record has not come yet
            return frozenset(), frozenset()
        if phase["n"] == 1:
            make_room(spis)
            executor.clock.step = 1.0  # type: ignore[attr-defined]
            try:
                installed(spis)
            finally:
                executor.clock.step = 0.0  # type: ignore[attr-defined]
                _charon_installs(kernel)  # charon, late
        return spis, frozenset()

    charon.feed = feed  # type: ignore[method-assign]
    executor.run(FOLLOW)
    assert any(i[2] == OUT_SA.spi for i in executor._follow_oseq)
    phase["n"] = 1
    with pytest.raises(ExecutionTimeout):
        executor.run(FOLLOW)
    phase["n"] = 2
    executor.run(FOLLOW)  # charon holds them now: verified, nothing to feed
    journal.clear()
    executor.run(with_charon(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT)))
    moved = {e.spi: e for op, e in journal if op == "set_replay" and isinstance(e, m.SadEntry)}
    assert OUT_SA.spi in moved and OUT_SA.replay is not None
    assert kernel.sad[sa_identity(OUT_SA)].replay.oseq == OUT_SA.replay.oseq + JUMP  # type: ignore[union-attr]
    assert not gate.closed


def test_after_a_failed_feed_a_follow_checks_charon_holds_what_it_was_fed() -> None:
    executor, kernel, _gate, charon, _journal = make(timeout=100.0)
    spis = frozenset({OUT_SA.spi, IN_SA.spi})

    def fails(*args: Any) -> tuple[frozenset[int], frozenset[int]]:
        raise ExecutionTimeout("feed-charon: not in the kernel in time")

    def holds(*args: Any) -> tuple[frozenset[int], frozenset[int]]:
        return spis, frozenset()  # what charon was fed, as the book says; nothing new

    charon.feed = fails  # type: ignore[method-assign]
    with pytest.raises(ExecutionTimeout):
        executor.run(FOLLOW)
    charon.feed = holds  # type: ignore[method-assign]
    with pytest.raises(ExecutionError, match="charon does not hold 2 CHILD SAs it was fed"):
        executor.run(FOLLOW)
    assert charon.refed == spis
    # Once the kernel holds them, the check passes and is not made again.
    _charon_installs(kernel)
    executor.run(FOLLOW)
    kernel.sad.clear()
    executor.run(FOLLOW)  # verified: no dump-and-compare any more
