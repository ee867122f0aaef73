"""The plan executor against a fake kernel and a fake store: order, jump, gates, idempotence."""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from appliance import model as m
from appliance.failover import executor as executor_module
from appliance.failover.config import StoreConfig
from appliance.failover.executor import (
    ExecutionError,
    ExecutionTimeout,
    ExecutorSettings,
    FollowedState,
    PlanExecutor,
    etimer_jiffies,
    open_store_clients,
)
from appliance.failover.seqjump import SEQ32_MAX
from appliance.failover.transitions import Role, StandbyMode, Step, plan
from appliance.notify import VrrpState
from appliance.planner import gate_for, is_gate, policy_identity, sa_identity
from appliance.store.client import Retrieved
from appliance.xfrm.types import AeState, BatchFailure

pytestmark = pytest.mark.unit

GW = ipaddress.ip_address("192.0.2.1")
PEER = ipaddress.ip_address("192.0.2.2")
NET_LOCAL = ipaddress.ip_address("198.51.100.0")
NET_REMOTE = ipaddress.ip_address("203.0.113.0")
KEY = m.KeyMaterial(bytes(range(20)))
JUMP = 50_000


def sa(spi: int, src: m.Address, dst: m.Address, oseq: int, seq: int, reqid: int) -> m.SadEntry:
    return m.SadEntry(
        daddr=dst,
        saddr=src,
        spi=spi,
        mode=m.Mode.TUNNEL,
        reqid=reqid,
        replay_window=32,
        aead=m.AeadAlgorithm("rfc4106(gcm(aes))", 160, 128, KEY),
        replay=m.ReplayState(oseq=oseq, seq=seq, bitmap=1),
    )


def policy(direction: int, src: m.Address, dst: m.Address, tsrc: m.Address, tdst: m.Address,
           reqid: int) -> m.SpdEntry:  # fmt: skip
    return m.SpdEntry(
        selector=m.Selector(daddr=dst, saddr=src, prefixlen_d=24, prefixlen_s=24),
        dir=direction,
        templates=(m.Template(daddr=tdst, saddr=tsrc, reqid=reqid, mode=m.Mode.TUNNEL),),
    )


OUT_SA = sa(0x1001, GW, PEER, oseq=7000, seq=0, reqid=1)
IN_SA = sa(0x2002, PEER, GW, oseq=0, seq=4000, reqid=2)
OUT_POL = policy(m.Direction.OUT, NET_LOCAL, NET_REMOTE, GW, PEER, 1)
IN_POL = policy(m.Direction.IN, NET_REMOTE, NET_LOCAL, PEER, GW, 2)
FWD_POL = dataclasses.replace(IN_POL, dir=m.Direction.FWD)
STATE = Retrieved((OUT_SA, IN_SA), (OUT_POL, IN_POL, FWD_POL), "198.51.100.10")


class FakeKernel:
    """A SAD/SPD in memory that answers like XfrmSocket and records every change."""

    def __init__(self) -> None:
        self.sad: dict[tuple[object, ...], m.SadEntry] = {}
        self.spd: dict[tuple[object, ...], m.SpdEntry] = {}
        self.changes: list[tuple[str, object]] = []
        self.refuse_spi: int | None = None
        self.ae_reads: list[int] = []
        """SPIs asked for with GETAE, in order."""

    def dump_sad(self) -> list[m.SadEntry]:
        return list(self.sad.values())

    def dump_spd(self) -> list[m.SpdEntry]:
        return list(self.spd.values())

    def install_batch(
        self,
        operations: Sequence[tuple[str, m.SadEntry | m.SpdEntry]],
        *,
        with_lifetime_cur: bool = False,
    ) -> list[BatchFailure]:
        failures = []
        for i, (op, entry) in enumerate(operations):
            self.changes.append((op, entry))
            if isinstance(entry, m.SadEntry):
                key = sa_identity(entry)
                if op == "add_sa":
                    if key in self.sad or entry.spi == self.refuse_spi:
                        failures.append(BatchFailure(i, errno.EEXIST, f"{op}: refused"))
                        continue
                    self.sad[key] = entry
                elif op == "delete_sa":
                    self.sad.pop(key)
                elif op == "set_replay":
                    self.sad[key] = dataclasses.replace(
                        self.sad[key], replay=entry.replay, replay_esn=entry.replay_esn
                    )
                continue
            key = policy_identity(entry)
            if op == "add_policy":
                assert key not in self.spd
                self.spd[key] = entry
            elif op == "update_policy":
                self.spd[key] = entry
            elif op == "delete_policy":
                self.spd.pop(key)
        return failures

    def get_ae_batch(self, entries: Sequence[m.SadEntry]) -> list[AeState | BatchFailure]:
        answers: list[AeState | BatchFailure] = []
        for i, wanted in enumerate(entries):
            self.ae_reads.append(wanted.spi)
            entry = self.sad.get(sa_identity(wanted))
            if entry is None:
                answers.append(BatchFailure(i, errno.ESRCH, "get_ae: no such SA"))
            else:
                answers.append(AeState(entry.replay, entry.replay_esn, entry.lifetime_cur))
        return answers

    def send_packets(self, spi: int, count: int) -> None:
        key = next(k for k, e in self.sad.items() if e.spi == spi)
        e = self.sad[key]
        assert e.replay is not None
        self.sad[key] = dataclasses.replace(
            e, replay=dataclasses.replace(e.replay, oseq=e.replay.oseq + count)
        )


class FakeStore:
    def __init__(self, state: Retrieved) -> None:
        self.state = state
        self.epoch = 3
        self.calls: list[str] = []

    def claim(self, server_id: str) -> dict[str, int]:
        self.calls.append(f"claim {server_id}")
        self.epoch += 1
        return {"198.51.100.10": self.epoch}

    def fetch(self, server_id: str, stop: object = None) -> Retrieved:
        self.calls.append(f"fetch {server_id}")
        return self.state


class FakeLoops:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def start_publishing(self, epochs: dict[str, int]) -> None:
        self.calls.append(f"start-publishing {sorted(epochs.values())}")

    def stop_publishing(self) -> None:
        self.calls.append("stop-publishing")

    def start_following(self) -> None:
        self.calls.append("start-following")

    def stop_following(self) -> None:
        self.calls.append("stop-following")

    followed: FollowedState | None = None
    """What ``followed_state`` answers (a hot standby's copy)."""

    followed_asked = 0

    def followed_state(self, server_id: str) -> FollowedState | None:
        self.followed_asked += 1  # a question, not a loop action: not in ``calls``
        return self.followed


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.step = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def make(
    kernel: FakeKernel | None = None, state: Retrieved = STATE, timeout: float = 10.0
) -> tuple[PlanExecutor, FakeKernel, FakeStore, FakeLoops, Clock]:
    kernel = kernel or FakeKernel()
    store, loops, clock = FakeStore(state), FakeLoops(), Clock()
    settings = ExecutorSettings("192.0.2.1", JUMP, timeout, 1000, etimer_jiffies(500, 250))
    executor = PlanExecutor(
        kernel, store, loops, settings, local_addresses=lambda: [GW], clock=clock
    )
    return executor, kernel, store, loops, clock


def cold_takeover() -> list[Step]:
    return plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.COLD)


def test_cold_takeover_installs_with_jump_and_opens_outbound() -> None:
    executor, kernel, store, loops, _ = make()
    report = executor.run(cold_takeover())
    assert store.calls == ["claim 192.0.2.1", "fetch 192.0.2.1"]
    out = kernel.sad[sa_identity(OUT_SA)]
    inbound = kernel.sad[sa_identity(IN_SA)]
    assert out.replay == m.ReplayState(oseq=7000 + JUMP, seq=0, bitmap=1)
    assert inbound.replay == IN_SA.replay  # the inbound window as stored
    assert out.replay_thresh == 1000 and out.etimer_thresh == 125
    assert kernel.spd[policy_identity(OUT_POL)] == OUT_POL  # opened: the real policy
    assert kernel.spd[policy_identity(IN_POL)] == IN_POL
    assert report.advanced == [(0x1001, 7000, 7000 + JUMP)]
    assert loops.calls == ["start-publishing [4]"]
    assert report.epochs == {"198.51.100.10": 4}


def test_outbound_is_gated_until_open_outbound() -> None:
    executor, kernel, _, _, _ = make()
    actions = cold_takeover()
    executor.run(actions[: actions.index(Step.OPEN_OUTBOUND)])
    assert is_gate(kernel.spd[policy_identity(OUT_POL)])
    # Every SA went in before any out policy, and the first out policy was a gate.
    first_out = next(
        e for op, e in kernel.changes if isinstance(e, m.SpdEntry) and e.dir == m.Direction.OUT
    )
    assert is_gate(first_out)


def test_running_the_same_plan_twice_changes_nothing_in_the_kernel() -> None:
    executor, kernel, _, _, _ = make()
    executor.run(cold_takeover())
    kernel.send_packets(0x1001, 10)
    before_sad, before_spd = dict(kernel.sad), dict(kernel.spd)
    kernel.changes.clear()
    report = executor.run(cold_takeover())
    assert kernel.changes == []
    assert (kernel.sad, kernel.spd) == (before_sad, before_spd)
    assert report.installed_sas == report.opened == 0


def test_sa_that_would_wrap_is_reported_not_installed() -> None:
    near_end = dataclasses.replace(OUT_SA, replay=m.ReplayState(oseq=SEQ32_MAX - 10))
    executor, kernel, _, _, _ = make(state=dataclasses.replace(STATE, sad=(near_end, IN_SA)))
    report = executor.run(cold_takeover())
    assert sa_identity(near_end) not in kernel.sad
    assert sa_identity(IN_SA) in kernel.sad
    assert [spi for spi, _ in report.rekey] == [0x1001]
    assert "rekey" in report.rekey[0][1]


def test_kernel_refusal_stops_before_open_outbound() -> None:
    kernel = FakeKernel()
    kernel.refuse_spi = 0x2002
    executor, kernel, _, loops, _ = make(kernel)
    with pytest.raises(ExecutionError, match="install SAs"):
        executor.run(cold_takeover())
    assert not any(p.dir == m.Direction.OUT and not is_gate(p) for p in kernel.spd.values())
    assert loops.calls == []


def test_timeout_stops_the_plan_with_outbound_gated() -> None:
    executor, kernel, _, _, clock = make(timeout=1.0)
    clock.step = 0.4  # each clock reading advances: the deadline passes mid-plan
    with pytest.raises(ExecutionTimeout, match="outbound stays gated"):
        executor.run(cold_takeover())
    assert all(is_gate(p) for p in kernel.spd.values() if p.dir == m.Direction.OUT)


def test_close_outbound_gates_every_open_out_policy_and_remove_state_keeps_gates() -> None:
    executor, kernel, _, _, _ = make()
    executor.run(cold_takeover())
    report = executor.run(plan(Role.ACTIVE, VrrpState.BACKUP, StandbyMode.COLD))
    assert report.gated == 1
    assert kernel.sad == {}
    assert list(kernel.spd.values()) == [gate_for(OUT_POL)]
    assert executor.loops.calls[-1:] == ["stop-publishing"]  # type: ignore[attr-defined]


def test_hot_takeover_moves_counters_forward_only() -> None:
    executor, kernel, _, _, _ = make()
    # Hot standby: SAs pre-installed with older counters, outbound gated.
    stale_out = dataclasses.replace(OUT_SA, replay=m.ReplayState(oseq=10))
    stale_in = dataclasses.replace(IN_SA, replay=m.ReplayState(seq=100, bitmap=1))
    kernel.install_batch(
        [("add_sa", stale_out), ("add_sa", stale_in), ("add_policy", gate_for(OUT_POL)),
         ("add_policy", IN_POL), ("add_policy", FWD_POL)]
    )  # fmt: skip
    kernel.changes.clear()
    report = executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT))
    assert kernel.sad[sa_identity(OUT_SA)].replay == m.ReplayState(oseq=7000 + JUMP, bitmap=1)
    assert kernel.sad[sa_identity(IN_SA)].replay == IN_SA.replay
    assert report.restored_inbound == 1
    assert kernel.spd[policy_identity(OUT_POL)] == OUT_POL
    # A second run: the counters are ahead (traffic moved them), nothing is rewound.
    kernel.send_packets(0x1001, 5)
    kernel.changes.clear()
    executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT))
    assert kernel.changes == []


class CountingKernel(FakeKernel):
    def __init__(self) -> None:
        super().__init__()
        self.dumps = 0

    def dump_sad(self) -> list[m.SadEntry]:
        self.dumps += 1
        return super().dump_sad()


FOLLOW = [Step.RECONCILE_STATE, Step.RESTORE_INBOUND_REPLAY]


def test_hot_takeover_from_a_current_copy_needs_no_fetch_and_no_sad_dump() -> None:
    kernel = CountingKernel()
    executor, _, store, loops, _ = make(kernel)
    executor.run(FOLLOW, fetched=STATE)  # the follower put the copy into the kernel
    loops.followed = FollowedState(STATE, kernel_holds_it=True)
    kernel.dumps = 0
    report = executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT))
    assert not [c for c in store.calls if c.startswith("fetch")]
    assert kernel.dumps == 0
    fetch = next(e for e in report.timeline if e.step == "fetch-state")
    assert fetch.detail["followed"] is True
    reconcile = next(e for e in report.timeline if e.step == "reconcile-state")
    assert reconcile.detail["kernel"] == "current"
    assert kernel.sad[sa_identity(OUT_SA)].replay == m.ReplayState(oseq=7000 + JUMP, bitmap=1)
    assert kernel.spd[policy_identity(OUT_POL)] == OUT_POL  # opened


def test_a_copy_with_changes_is_reconciled_from_what_the_follow_left_without_a_dump() -> None:
    kernel = CountingKernel()
    executor, _, store, loops, _ = make(kernel)
    executor.run(FOLLOW, fetched=STATE)
    new_in = sa(0x3003, PEER, GW, oseq=0, seq=9, reqid=3)
    changed = dataclasses.replace(STATE, sad=(*STATE.sad, new_in))
    loops.followed = FollowedState(changed, kernel_holds_it=False)  # the store moved on
    kernel.dumps = 0
    report = executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT))
    assert kernel.dumps == 0
    reconcile = next(e for e in report.timeline if e.step == "reconcile-state")
    assert "kernel" not in reconcile.detail and reconcile.detail["sas"] == 1
    assert sa_identity(new_in) in kernel.sad
    assert not [c for c in store.calls if c.startswith("fetch")]  # the copy still serves


def run_something_else(executor: PlanExecutor, kernel: FakeKernel, between: str) -> None:
    """After a follow run: another plan (``close-outbound``), or a follow that fails."""
    if between == "close-outbound":
        executor.run([Step.CLOSE_OUTBOUND])
        return
    kernel.refuse_spi = 0x5005
    with pytest.raises(ExecutionError):
        executor.run(FOLLOW, fetched=dataclasses.replace(
            STATE, sad=(*STATE.sad, sa(0x5005, PEER, GW, oseq=0, seq=1, reqid=5))
        ))  # fmt: skip
    kernel.refuse_spi = None


@pytest.mark.parametrize("between", ["close-outbound", "failed-follow"])
def test_after_any_other_run_the_takeover_dumps_before_it_plans(between: str) -> None:
    kernel = CountingKernel()
    executor, _, store, loops, _ = make(kernel)
    executor.run(FOLLOW, fetched=STATE)
    run_something_else(executor, kernel, between)
    loops.followed = FollowedState(STATE, kernel_holds_it=True)
    kernel.dumps = 0
    report = executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT))
    assert kernel.dumps >= 1
    reconcile = next(e for e in report.timeline if e.step == "reconcile-state")
    assert "kernel" not in reconcile.detail
    assert not [c for c in store.calls if c.startswith("fetch")]


def test_a_follow_after_a_completed_follow_plans_without_a_dump() -> None:
    kernel = CountingKernel()
    executor, _, _, _, _ = make(kernel)
    executor.run(FOLLOW, fetched=STATE)
    assert kernel.dumps == 1
    gone_out = STATE.sad[1:]  # the store removed the outbound SA
    executor.run(FOLLOW, fetched=dataclasses.replace(STATE, sad=gone_out))
    assert kernel.dumps == 1
    assert sa_identity(OUT_SA) not in kernel.sad
    # the mirror matches a real dump afterwards
    assert set(kernel.sad) == {sa_identity(s) for s in gone_out}
    executor.run(FOLLOW, fetched=STATE)  # and back
    assert kernel.dumps == 1 and sa_identity(OUT_SA) in kernel.sad


def test_without_a_copy_the_takeover_fetches_the_whole_state() -> None:
    executor, _, store, loops, _ = make()
    executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT))
    assert loops.followed_asked == 1
    assert [c for c in store.calls if c.startswith("fetch")] == ["fetch 192.0.2.1"]


def test_cold_takeover_advances_an_outbound_sa_the_kernel_still_held() -> None:
    # A node back from a crash still holds its old outbound SA with an old
    # counter: install-state does not re-add it, advance-outbound-seq moves it.
    executor, kernel, _, _, _ = make()
    stale_out = dataclasses.replace(OUT_SA, replay=m.ReplayState(oseq=10))
    kernel.install_batch([("add_sa", stale_out), ("add_policy", OUT_POL)])
    report = executor.run(plan(Role.INIT, VrrpState.MASTER, StandbyMode.COLD))
    assert kernel.sad[sa_identity(OUT_SA)].replay == m.ReplayState(oseq=7000 + JUMP, bitmap=1)
    assert report.advanced == [(0x1001, 7000, 7000 + JUMP)]


def test_reconcile_deletes_what_the_store_no_longer_has() -> None:
    executor, kernel, _, _, _ = make()
    gone = sa(0x3003, PEER, GW, oseq=0, seq=1, reqid=9)
    kernel.install_batch([("add_sa", gone)])
    executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT))
    assert sa_identity(gone) not in kernel.sad
    assert sa_identity(OUT_SA) in kernel.sad


FOLLOW = [Step.RECONCILE_STATE, Step.RESTORE_INBOUND_REPLAY]


def test_follow_with_prefetched_state_asks_the_store_nothing() -> None:
    executor, kernel, store, _, _ = make()
    report = executor.run(FOLLOW, fetched=STATE)
    assert store.calls == []
    assert sa_identity(IN_SA) in kernel.sad and sa_identity(OUT_SA) in kernel.sad
    assert kernel.spd[policy_identity(OUT_POL)] == gate_for(OUT_POL)  # a standby stays gated
    assert report.installed_sas == 2


def test_follow_reads_an_inbound_counter_again_only_when_the_stored_one_moved() -> None:
    executor, kernel, _, _, _ = make()
    executor.run(FOLLOW, fetched=STATE)
    kernel.ae_reads.clear()
    executor.run(FOLLOW, fetched=STATE)
    assert kernel.ae_reads == []  # nothing moved in the store: no GETAE
    assert IN_SA.replay is not None
    moved = dataclasses.replace(IN_SA, replay=dataclasses.replace(IN_SA.replay, seq=9000))
    newer = Retrieved(
        tuple(moved if s_.spi == IN_SA.spi else s_ for s_ in STATE.sad), STATE.spd, "test"
    )
    kernel.changes.clear()
    executor.run(FOLLOW, fetched=newer)
    assert kernel.ae_reads == [IN_SA.spi]
    assert ("set_replay", moved) in kernel.changes
    # Any other plan forgets what was checked: traffic may have moved the kernel's counters.
    executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT))
    kernel.ae_reads.clear()
    executor.run(FOLLOW, fetched=newer)
    assert kernel.ae_reads == [IN_SA.spi]


def test_counters_move_in_rounds_of_a_read_batch_then_a_write_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(executor_module, "AE_ROUND", 2)
    inbound = tuple(sa(0x3000 + n, PEER, GW, oseq=0, seq=100, reqid=10 + n) for n in range(5))
    state = Retrieved(inbound, (), "test")
    executor, kernel, _, _, _ = make()
    executor.run(FOLLOW, fetched=state)
    rounds: list[list[int]] = []
    real = kernel.get_ae_batch

    def counting(entries: Sequence[m.SadEntry]) -> list[AeState | BatchFailure]:
        rounds.append([e.spi for e in entries])
        return real(entries)

    kernel.get_ae_batch = counting  # type: ignore[method-assign]
    # The store moved three of the five (and one of them backwards: never rewound).
    moved = [
        dataclasses.replace(e, replay=m.ReplayState(0, seq, 1))
        for e, seq in zip(inbound, (500, 100, 600, 50, 700), strict=True)
    ]
    kernel.changes.clear()
    report = executor.run(FOLLOW, fetched=Retrieved(tuple(moved), (), "test"))
    assert rounds == [[0x3000, 0x3002], [0x3003, 0x3004]]  # 0x3001 unchanged: not read
    assert [e.spi for op, e in kernel.changes if op == "set_replay"] == [0x3000, 0x3002, 0x3004]
    assert report.restored_inbound == 3
    assert kernel.sad[sa_identity(inbound[3])].replay == inbound[3].replay  # 100 stays


def test_an_sa_gone_before_its_counter_is_read_fails_the_step_by_name() -> None:
    executor, kernel, _, _, _ = make()
    executor.run(FOLLOW, fetched=STATE)
    executor.run([Step.CLOSE_OUTBOUND])  # a plan since the follow: its counters are not facts
    real = kernel.get_ae_batch

    def vanished(entries: Sequence[m.SadEntry]) -> list[AeState | BatchFailure]:
        kernel.sad.pop(sa_identity(OUT_SA), None)  # gone between the dump and the GETAE
        return real(entries)

    kernel.get_ae_batch = vanished  # type: ignore[method-assign]
    with pytest.raises(
        ExecutionError, match="advance-outbound-seq: the kernel could not read 1 of 1 replay states"
    ):
        executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT))


def test_timeline_names_the_steps_and_never_logs_keys(caplog: pytest.LogCaptureFixture) -> None:
    executor, _, _, _, _ = make()
    with caplog.at_level(logging.INFO, logger="ipsec_ha.failover"):
        report = executor.run(cold_takeover(), received_at=99.0)
    steps = [t.step for t in report.timeline]
    for milestone in ("notify-received", "state-fetched", "sas-installed", "done"):
        assert milestone in steps
    assert steps[0] == "notify-received" and steps[-1] == "done"
    assert report.timeline[0].monotonic == 99.0
    times = [t.monotonic for t in report.timeline]
    assert times == sorted(times)
    assert KEY.data.hex() not in caplog.text
    assert "0001020304" not in caplog.text


def test_install_without_fetch_is_refused() -> None:
    executor, kernel, _, _, _ = make()
    with pytest.raises(ExecutionError, match="fetch-state first"):
        executor.run([Step.INSTALL_STATE])
    assert kernel.changes == []


def test_etimer_jiffies_rounds_up() -> None:
    assert etimer_jiffies(500, 250) == 125
    assert etimer_jiffies(100, 300) == 30
    assert etimer_jiffies(100, 1000) == 100
    assert etimer_jiffies(0, 250) == 0


def test_store_clients_take_the_store_table_and_the_given_node_id(tmp_path: Path) -> None:
    psk = tmp_path / "cluster.psk"
    psk.write_text("ab" * 32)
    psk.chmod(0o600)
    store = StoreConfig(("127.0.0.1", "::1"), 4501, psk, 0.3, 2, max_datagram=9000)
    clients = open_store_clients(store, "gw1.follower")
    try:
        assert [c.server for c in clients] == ["127.0.0.1", "::1"]
        for c in clients:
            assert (c.node_id, c.port, c.timeout, c.retries) == ("gw1.follower", 4501, 0.3, 2)
            assert c.max_datagram == 9000
    finally:
        for c in clients:
            c.close()


def moved_on(state: Retrieved, oseq: int) -> Retrieved:
    """``state`` after the active node published a later outbound counter."""
    assert OUT_SA.replay is not None
    out = dataclasses.replace(OUT_SA, replay=dataclasses.replace(OUT_SA.replay, oseq=oseq))
    return dataclasses.replace(state, sad=(out, IN_SA))


def test_hot_takeover_moves_a_counter_a_follow_gave_without_reading_it() -> None:
    executor, kernel, _, loops, _ = make()
    executor.run(FOLLOW, fetched=STATE)  # OUT_SA in with 7000 + JUMP
    later = moved_on(STATE, 9000)
    executor.run(FOLLOW, fetched=later)  # held: the follow leaves its counter alone
    loops.followed = FollowedState(later, kernel_holds_it=True)
    kernel.ae_reads.clear()
    report = executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT))
    assert OUT_SA.spi not in kernel.ae_reads  # one NEWAE batch, no GETAE
    assert kernel.sad[sa_identity(OUT_SA)].replay == m.ReplayState(oseq=9000 + JUMP, bitmap=1)
    assert report.advanced == [(OUT_SA.spi, 9000, 9000 + JUMP)]
    advance = next(e for e in report.timeline if e.step == "advance-outbound-seq")
    assert advance.detail["unread"] == 1


def test_hot_takeover_leaves_a_counter_a_follow_gave_when_the_store_did_not_move() -> None:
    executor, kernel, _, loops, _ = make()
    executor.run(FOLLOW, fetched=STATE)
    loops.followed = FollowedState(STATE, kernel_holds_it=True)
    kernel.ae_reads.clear()
    kernel.changes.clear()
    report = executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT))
    assert OUT_SA.spi not in kernel.ae_reads
    assert report.advanced == []
    assert not [c for c in kernel.changes if c[0] == "set_replay" and c[1].spi == OUT_SA.spi]  # type: ignore[attr-defined]


@pytest.mark.parametrize("between", ["close-outbound", "failed-follow"])
def test_counters_a_follow_gave_are_read_again_once_anything_else_ran(between: str) -> None:
    executor, kernel, _, loops, _ = make()
    executor.run(FOLLOW, fetched=STATE)
    run_something_else(executor, kernel, between)
    later = moved_on(STATE, 9000)
    loops.followed = FollowedState(later, kernel_holds_it=True)
    kernel.ae_reads.clear()
    executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT))
    assert OUT_SA.spi in kernel.ae_reads
    assert kernel.sad[sa_identity(OUT_SA)].replay == m.ReplayState(oseq=9000 + JUMP, bitmap=1)


def test_hot_takeover_opens_outbound_before_it_restores_inbound_windows() -> None:
    actions = plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT)
    assert actions.index(Step.OPEN_OUTBOUND) < actions.index(Step.RESTORE_INBOUND_REPLAY)


class CountingClassifier:
    """``classify_outbound`` as the executor calls it, counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = executor_module.classify_outbound

        def counted(*args: object, **kwargs: object) -> list[bool]:
            self.calls += 1
            return real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(executor_module, "classify_outbound", counted)


def test_hot_takeover_of_the_followed_state_repeats_no_per_sa_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    classifier = CountingClassifier(monkeypatch)
    executor, kernel, _, loops, _ = make()
    executor.run(FOLLOW, fetched=STATE)
    assert classifier.calls == 1
    assert executor.kernel_holds(dataclasses.replace(STATE, source="another"))  # same tuples
    loops.followed = FollowedState(STATE, kernel_holds_it=True)
    kernel.ae_reads.clear()
    kernel.changes.clear()
    report = executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT))
    assert classifier.calls == 1  # the follow's flags
    assert kernel.ae_reads == []  # neither the outbound counter nor the inbound window
    assert [c[0] for c in kernel.changes] == ["update_policy"]  # the gate opened; no NEWAE
    assert report.restored_inbound == 0 and report.advanced == []
    assert not executor.kernel_holds(STATE)  # a takeover is not a follow


def test_a_copy_rebuilt_with_equal_content_is_not_the_followed_state() -> None:
    executor, _, _, _, _ = make()
    executor.run(FOLLOW, fetched=STATE)
    rebuilt = Retrieved(tuple(list(STATE.sad)), tuple(list(STATE.spd)), STATE.source)
    assert rebuilt == STATE and not executor.kernel_holds(rebuilt)


def test_an_address_that_turns_an_sa_outbound_at_takeover_is_classified_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An SA no out policy names is outbound only by its source being local (rule 2); the
    # follow saw it inbound, and at MASTER its source arrives (a second VIP).
    classifier = CountingClassifier(monkeypatch)
    alt = ipaddress.ip_address("192.0.2.7")
    lone = sa(0x4004, alt, ipaddress.ip_address("192.0.2.9"), oseq=100, seq=0, reqid=4)
    state = Retrieved((*STATE.sad, lone), STATE.spd, STATE.source)
    local = [GW]
    kernel, store, loops = FakeKernel(), FakeStore(state), FakeLoops()
    settings = ExecutorSettings("192.0.2.1", JUMP, 10.0, 1000, etimer_jiffies(500, 250))
    executor = PlanExecutor(kernel, store, loops, settings, local_addresses=lambda: list(local))
    executor.run(FOLLOW, fetched=state)
    assert kernel.sad[sa_identity(lone)].replay == lone.replay  # installed as inbound
    local.append(alt)
    loops.followed = FollowedState(state, kernel_holds_it=True)
    report = executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT))
    assert classifier.calls == 2
    assert (lone.spi, 100, 100 + JUMP) in report.advanced
    assert kernel.sad[sa_identity(lone)].replay == m.ReplayState(oseq=100 + JUMP, bitmap=1)
