"""The daemon's store side with fakes: resync mirrors the kernel, the store's NOT_FOUND asks
for a resync, a stale epoch stops publishing to that store, transitions update the role."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_executor import IN_POL, IN_SA, OUT_POL, OUT_SA, STATE, FakeKernel

from appliance.failover.config import load_daemon_config
from appliance.failover.daemon import FailoverDaemon
from appliance.failover.sync import DeleteEntries, FullResync, PutReplay
from appliance.failover.transitions import Role, StandbyMode
from appliance.model import SadEntry
from appliance.notify import VrrpState
from appliance.store import _convert as conv
from appliance.store.base import (
    FetchCancelled,
    NotFoundError,
    RevisionGoneError,
    SaKey,
    StaleEpochError,
)
from appliance.store.client import RetrievedState, StoreClient, StoreTimeoutError
from appliance.wire.payloads import EpochPayload, RevisionPayload, ServerIdPayload

pytestmark = pytest.mark.unit


class FakeClient:
    """The StoreClient calls the daemon makes, over a dict."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.data: dict[Any, Any] = {}
        self.pols: dict[int, Any] = {}
        self.epoch = 0
        self.calls: list[str] = []
        self.fail_with: Exception | None = None

    fetch = StoreClient.fetch

    def _check(self, epoch: int) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        if epoch < self.epoch:
            raise StaleEpochError("stale", self.epoch)

    def claim(self, server_id: str) -> int:
        self.epoch += 1
        return self.epoch

    def get_server(self, server_id: str, stop: object = None) -> RetrievedState:
        return RetrievedState(
            "192.0.2.1",
            self.epoch,
            sad_entries=[
                conv.sad_entry_bytes(conv.sad_to_payload(sa)) for sa in self.data.values()
            ],
            spd_entries=[conv.spd_entry_bytes(conv.spd_to_payload(p)) for p in self.pols.values()],
            pages=1,
        )

    def get_changes(self, server_id: str, since: int, stop: object = None) -> RetrievedState:
        raise RevisionGoneError("this fake keeps no changes")  # the follower then takes all

    def put_entries(self, sid: str, epoch: int, sad: Any, spd: Any = ()) -> int:
        self._check(epoch)
        self.calls.append("put")
        self.data.update({SaKey.of(sa): sa for sa in sad})
        self.pols.update({p.index: p for p in spd})
        return 1

    def check_epoch(self, sid: str, epoch: int) -> None:
        self._check(epoch)

    def update_replay(self, sid: str, epoch: int, states: Any) -> int:
        self._check(epoch)
        self.calls.append("replay")
        return 1

    def delete(self, sid: str, epoch: int, spis: Any = (), policy_indexes: Any = ()) -> None:
        self._check(epoch)
        self.calls.append("delete")
        for spi, _ in spis:
            self.data = {k: v for k, v in self.data.items() if k.spi != spi}
        for index in policy_indexes:
            self.pols.pop(index, None)

    def server_stats(self, sid: str) -> dict[str, Any] | None:
        if self.fail_with is not None:
            raise self.fail_with
        if not self.data and not self.pols and not self.epoch:
            return None
        return {"server_id": sid, "epoch": self.epoch, "sas": len(self.data),
                "policies": len(self.pols)}  # fmt: skip


@pytest.fixture
def config(tmp_path: Path) -> Any:
    psk = tmp_path / "cluster.psk"
    psk.write_text("ab" * 32)
    os.chmod(psk, 0o600)
    path = tmp_path / "daemon.toml"
    path.write_text(
        '[node]\nid = "gw1"\nserver_id = "192.0.2.1"\nnode_index = 0\n'
        f'[store]\nservers = ["198.51.100.10", "198.51.100.11"]\npsk_file = "{psk}"\n'
        f'[failover]\nstatus_file = "{tmp_path}/status.json"\n'
        "fence_check_ms = 50\nreclaim_interval_s = 0.2\n"
    )
    return load_daemon_config(path)


class ThresholdKernel(FakeKernel):
    @property
    def thresholds(self) -> list[tuple[int, int | None, int | None]]:
        """(SPI, replay threshold, expiry timer) of each set_thresholds, in order."""
        return [
            (e.spi, e.replay_thresh, e.etimer_thresh)
            for op, e in self.changes
            if op == "set_thresholds" and isinstance(e, SadEntry)
        ]


def make(config: Any, tmp_path: Path) -> tuple[FailoverDaemon, ThresholdKernel, list[FakeClient]]:
    kernel = ThresholdKernel()
    clients = [FakeClient("198.51.100.10"), FakeClient("198.51.100.11")]
    daemon = FailoverDaemon(config, kernel, clients, notify_log=tmp_path / "notify.jsonl")
    daemon.executor.local_addresses = lambda: [OUT_SA.saddr]
    return daemon, kernel, clients


def test_full_resync_makes_every_store_equal_to_the_kernel(config: Any, tmp_path: Path) -> None:
    daemon, kernel, clients = make(config, tmp_path)
    kernel.install_batch([("add_sa", OUT_SA), ("add_policy", IN_POL)])
    stale = IN_SA
    for client in clients:
        client.data[SaKey.of(stale)] = stale
    daemon.start_publishing({"198.51.100.10": 0, "198.51.100.11": 0})
    daemon.apply_ops(daemon.core.pending_ops(float("inf")))
    for client in clients:
        assert list(client.data) == [SaKey.of(OUT_SA)]
        assert list(client.pols.values()) == [IN_POL]
    assert kernel.thresholds == [(OUT_SA.spi, 1000, daemon.etimer)]


def test_not_found_from_the_store_asks_for_a_resync(config: Any, tmp_path: Path) -> None:
    daemon, _, clients = make(config, tmp_path)
    daemon.start_publishing({"198.51.100.10": 0})
    daemon.core.pending_ops(float("inf"))
    clients[0].fail_with = NotFoundError("no such SA")
    daemon.apply_ops([PutReplay((OUT_SA,))])
    assert daemon.core.pending_ops(float("inf")) == [
        FullResync("store 198.51.100.10: no such SA", frozenset({"198.51.100.10"}))
    ]


def test_a_resync_of_one_store_leaves_the_others_and_the_thresholds(
    config: Any, tmp_path: Path
) -> None:
    daemon, kernel, clients = make(config, tmp_path)
    kernel.install_batch([("add_sa", OUT_SA), ("add_policy", IN_POL)])
    daemon.start_publishing({"198.51.100.10": 0, "198.51.100.11": 0})
    daemon.core.pending_ops(float("inf"))  # the start's resync, not applied: both empty
    kernel.thresholds.clear()
    daemon.apply_ops([FullResync("store 198.51.100.11 failed", frozenset({"198.51.100.11"}))])
    assert list(clients[1].data) == [SaKey.of(OUT_SA)]
    assert clients[0].data == {}
    assert kernel.thresholds == []


def test_stale_epoch_stops_publishing_to_that_store_only(config: Any, tmp_path: Path) -> None:
    daemon, _, clients = make(config, tmp_path)
    clients[0].epoch = 5
    daemon.start_publishing({"198.51.100.10": 1, "198.51.100.11": 1})
    daemon.apply_ops(daemon.core.pending_ops(float("inf")))
    assert daemon.epochs == {"198.51.100.11": 1}


def test_takeover_from_a_notify_claims_every_store_and_publishes(
    config: Any, tmp_path: Path
) -> None:
    daemon, kernel, clients = make(config, tmp_path)
    for client in clients[:1]:  # the other store (the dead node's) holds nothing
        client.data = {SaKey.of(sa): sa for sa in STATE.sad}
        client.pols = {i: p for i, p in enumerate(STATE.spd)}
    clients[1].fail_with = None
    ok = asyncio.run(daemon.transition(VrrpState.MASTER, time.monotonic()))
    assert ok and daemon.role is Role.ACTIVE
    assert daemon.publishing and daemon.epochs == {"198.51.100.10": 1, "198.51.100.11": 1}
    assert {sa.spi for sa in kernel.sad.values()} == {OUT_SA.spi, IN_SA.spi}
    assert OUT_POL in kernel.spd.values()
    # A repeated MASTER is an empty plan: nothing runs.
    kernel.changes.clear()
    assert asyncio.run(daemon.transition(VrrpState.MASTER, time.monotonic()))
    assert kernel.changes == []


def test_a_fenced_active_node_gates_outbound_then_reclaims_with_the_jump(
    config: Any, tmp_path: Path
) -> None:
    daemon, kernel, clients = make(config, tmp_path)
    for client in clients:
        client.data = {SaKey.of(sa): sa for sa in STATE.sad}
        client.pols = {i: p for i, p in enumerate(STATE.spd)}
    assert asyncio.run(daemon.transition(VrrpState.MASTER, time.monotonic()))
    out_key = next(k for k, sa in kernel.sad.items() if sa.spi == OUT_SA.spi)
    first_oseq = kernel.sad[out_key].replay.oseq
    seen: list[tuple[bool, bool]] = []

    async def split_brain() -> None:
        watch = asyncio.create_task(daemon._owner_watch())
        for client in clients:  # another node claims both stores
            client.epoch += 1
        for _ in range(100):
            await asyncio.sleep(0.02)
            out_open = OUT_POL in kernel.spd.values()
            seen.append((daemon.fenced, out_open))
            if seen[-1] == (False, True) and any(f for f, _ in seen):
                break
        watch.cancel()

    asyncio.run(split_brain())
    # fenced with outbound gated, then owner again with outbound open
    assert (True, False) in seen and seen[-1] == (False, True)
    assert daemon.publishing and daemon.epochs == {"198.51.100.10": 3, "198.51.100.11": 3}
    assert kernel.sad[out_key].replay.oseq >= first_oseq  # never rewound


class BackgroundFetch(FakeClient):
    """A follower's store client whose bulk retrieval lasts until its caller stops it."""

    def __init__(self) -> None:
        super().__init__("198.51.100.10")
        self.started = threading.Event()
        self.stopped = False

    def get_server(self, server_id: str, stop: Any = None) -> RetrievedState:
        self.started.set()
        give_up = time.monotonic() + 10
        while not stop():  # page after page, asking between them
            assert time.monotonic() < give_up, "the background fetch was never stopped"
            time.sleep(0.01)
        self.stopped = True
        raise FetchCancelled("stopped")


def test_a_takeover_does_not_wait_for_the_hot_standbys_background_fetch(
    config: Any, tmp_path: Path
) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text(path.read_text().replace("[failover]\n", '[failover]\nmode = "hot"\n'))
    hot = load_daemon_config(path)
    kernel = ThresholdKernel()
    clients = [FakeClient("198.51.100.10"), FakeClient("198.51.100.11")]
    for client in clients:
        client.data = {SaKey.of(sa): sa for sa in STATE.sad}
        client.pols = {i: p for i, p in enumerate(STATE.spd)}
    background = BackgroundFetch()
    daemon = FailoverDaemon(
        hot, kernel, clients, notify_log=tmp_path / "notify.jsonl", follow_interval_s=0.01,
        follower_stores=[background],
    )  # fmt: skip
    daemon.executor.local_addresses = lambda: [OUT_SA.saddr]
    daemon.role = Role.STANDBY
    daemon.start_following()

    async def takeover_during_a_fetch() -> bool:
        follower = asyncio.create_task(daemon._follower())
        assert await asyncio.to_thread(background.started.wait, 5)
        ok = await asyncio.wait_for(daemon.transition(VrrpState.MASTER, time.monotonic()), 5)
        for _ in range(100):
            if background.stopped:
                break
            await asyncio.sleep(0.01)
        follower.cancel()
        return ok

    assert asyncio.run(takeover_during_a_fetch())
    assert daemon.role is Role.ACTIVE and not daemon.following
    assert background.stopped  # the takeover's stop-following ended the stale fetch
    assert OUT_POL in kernel.spd.values()


def test_only_a_publishing_node_listens_to_xfrm_events_and_it_subscribes_before_the_resync(
    config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, _, _ = make(config, tmp_path)
    log: list[str] = []

    async def fake_events(netns: Any, groups: Any, *, subscribed: Any = None) -> Any:
        log.append("subscribed")
        subscribed()
        try:
            await asyncio.sleep(3600)
            yield None  # pragma: no cover - never reached
        finally:
            log.append("closed")

    monkeypatch.setattr("appliance.failover.daemon.xfrm_events", fake_events)

    async def scenario() -> list[tuple[str, bool, bool]]:
        daemon._loop = asyncio.get_running_loop()
        seen: list[tuple[str, bool, bool]] = []

        def note(when: str) -> None:
            resync = any(isinstance(op, FullResync) for op in daemon.core.pending_ops(1e12))
            seen.append((when, "subscribed" in log, resync))

        events = asyncio.create_task(daemon._events())
        await asyncio.sleep(0.05)
        note("standby")
        await asyncio.to_thread(daemon.start_publishing, {"198.51.100.10": 1})
        await asyncio.sleep(0.05)
        note("publishing")
        await asyncio.to_thread(daemon.stop_publishing)
        await asyncio.sleep(0.05)
        note("stopped")
        events.cancel()
        await asyncio.gather(events, return_exceptions=True)
        return seen

    seen = asyncio.run(scenario())
    assert seen == [
        ("standby", False, False),  # no subscription, so nothing to decode
        ("publishing", True, True),  # subscribed, then the resync was asked for
        ("stopped", True, False),
    ]
    assert log == ["subscribed", "closed"]


# -- health: the probe, the counters, what the node holds (docs/operations.md) ----------


def test_the_probe_records_each_store_and_rewrites_the_status_health(
    config: Any, tmp_path: Path
) -> None:
    kernel = ThresholdKernel()
    up, down = FakeClient("198.51.100.10"), FakeClient("198.51.100.11")
    up.data = {SaKey.of(sa): sa for sa in STATE.sad}
    up.epoch = 3
    down.fail_with = StoreTimeoutError("store 198.51.100.11 port 4501 did not answer")
    daemon = FailoverDaemon(
        config, kernel, [FakeClient("198.51.100.10")], notify_log=tmp_path / "notify.jsonl",
        probe_stores=[up, down],
    )  # fmt: skip
    daemon.role = Role.STANDBY  # cold: reaching a store is being in step

    async def one_probe() -> None:
        daemon._write_status(None, None, ok=True)
        probe = asyncio.create_task(daemon._health_probe())
        await asyncio.sleep(0.1)
        probe.cancel()
        await asyncio.gather(probe, return_exceptions=True)

    before = time.time()
    asyncio.run(one_probe())
    health = json.loads((tmp_path / "status.json").read_text())["health"]
    stores = health["stores"]
    assert stores["198.51.100.10"]["up"] and stores["198.51.100.10"]["error"] is None
    assert (stores["198.51.100.10"]["epoch"], stores["198.51.100.10"]["sas"]) == (3, 2)
    assert stores["198.51.100.11"] == {
        "up": False, "error": "store 198.51.100.11 port 4501 did not answer", "rtt_s": None,
        "epoch": None, "sas": None, "policies": None,
        "checked": stores["198.51.100.11"]["checked"],
    }  # fmt: skip
    assert health["last_sync"] >= before and health["lag_s"] is not None
    assert health["updated"] >= before and health["interval_s"] == 1.0


def test_a_cold_standby_whose_stores_are_all_down_has_no_sync(config: Any, tmp_path: Path) -> None:
    down = FakeClient("198.51.100.10")
    down.fail_with = StoreTimeoutError("no answer")
    daemon = FailoverDaemon(config, ThresholdKernel(), [FakeClient("198.51.100.10")],
                            notify_log=tmp_path / "n.jsonl", probe_stores=[down])  # fmt: skip
    assert asyncio.run(daemon.probe_stores()) is False
    assert daemon.health.snapshot().last_sync_unix is None


def test_publishing_counts_each_operation_per_store_and_result(config: Any, tmp_path: Path) -> None:
    daemon, kernel, clients = make(config, tmp_path)
    kernel.install_batch([("add_sa", OUT_SA), ("add_sa", IN_SA), ("add_policy", IN_POL)])
    clients[0].epoch = 5  # a newer owner at the first store
    daemon.start_publishing({"198.51.100.10": 1, "198.51.100.11": 1})
    daemon.apply_ops(daemon.core.pending_ops(float("inf")))
    clients[1].fail_with = NotFoundError("no such SA")
    daemon.apply_ops([PutReplay((OUT_SA,))])
    snap = daemon.health.snapshot()
    assert snap.sync_messages == {
        ("198.51.100.10", "resync", "stale_epoch"): 1,
        ("198.51.100.11", "resync", "ok"): 1,
        ("198.51.100.11", "replay", "not_found"): 1,
    }
    # the active node holds what it last published: the full resync's dump
    assert (snap.held_sas, snap.held_policies) == (2, 1)
    daemon.apply_ops([DeleteEntries(((OUT_SA.spi, OUT_SA.proto),), ())])
    assert daemon.health.snapshot().held_sas == 1


def test_a_takeover_counts_and_times_its_steps(config: Any, tmp_path: Path) -> None:
    daemon, _, clients = make(config, tmp_path)
    for client in clients:
        client.data = {SaKey.of(sa): sa for sa in STATE.sad}
        client.pols = {i: p for i, p in enumerate(STATE.spd)}
    received = time.monotonic()
    assert asyncio.run(daemon.transition(VrrpState.MASTER, received))
    report = json.loads((tmp_path / "status.json").read_text())["report"]
    assert asyncio.run(daemon.transition(VrrpState.MASTER, time.monotonic()))  # no plan
    snap = daemon.health.snapshot()
    assert snap.transitions == {("MASTER", "ok"): 2}
    assert snap.takeovers == {"ok": 1, "failed": 0}  # the repeat made no node active
    assert snap.takeover_duration.count == 1
    steps = [t["step"] for t in report["timeline"]]
    assert set(snap.last_takeover_steps) == set(steps[1:])
    done = report["timeline"][-1]["monotonic"]
    assert snap.takeover_duration.sum == pytest.approx(done - received)
    assert sum(snap.last_takeover_steps.values()) == pytest.approx(done - received)


def test_a_failed_takeover_counts_as_failed(config: Any, tmp_path: Path) -> None:
    daemon, _, clients = make(config, tmp_path)

    def no_answer(server_id: str) -> int:
        raise StoreTimeoutError("no answer")

    for client in clients:
        client.claim = no_answer  # type: ignore[method-assign]
    assert not asyncio.run(daemon.transition(VrrpState.MASTER, time.monotonic()))
    snap = daemon.health.snapshot()
    assert snap.transitions == {("MASTER", "failed"): 1}
    assert snap.takeovers == {"ok": 0, "failed": 1}
    assert snap.takeover_duration.count == 0


def test_a_hot_standby_records_its_last_follow_and_what_it_holds(
    config: Any, tmp_path: Path
) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text(path.read_text().replace("[failover]\n", '[failover]\nmode = "hot"\n'))
    hot = load_daemon_config(path)
    clients = [FakeClient("198.51.100.10")]
    clients[0].data = {SaKey.of(sa): sa for sa in STATE.sad}
    clients[0].pols = {i: p for i, p in enumerate(STATE.spd)}
    follower = FakeClient("198.51.100.10")
    follower.data, follower.pols = clients[0].data, clients[0].pols
    daemon = FailoverDaemon(hot, ThresholdKernel(), clients, notify_log=tmp_path / "n.jsonl",
                            follow_interval_s=0.01, follower_stores=[follower])  # fmt: skip
    daemon.executor.local_addresses = lambda: [OUT_SA.saddr]
    daemon.role = Role.STANDBY
    daemon.start_following()
    before = time.time()

    async def follow_once() -> None:
        task = asyncio.create_task(daemon._follower())
        for _ in range(200):
            await asyncio.sleep(0.01)
            if daemon.health.snapshot().last_sync_unix is not None:
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(follow_once())
    snap = daemon.health.snapshot()
    assert snap.last_sync_unix is not None and snap.last_sync_unix >= before
    assert (snap.held_sas, snap.held_policies) == (len(STATE.sad), len(STATE.spd))


def _descriptors_of(path: Path) -> int:
    """How many of this process's file descriptors are open on ``path``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is closed by now
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
    return count


def test_run_reads_the_keepalived_fifo_through_one_descriptor_and_closes_it(
    tmp_path: Path,
) -> None:
    psk = tmp_path / "cluster.psk"
    psk.write_text("ab" * 32)
    os.chmod(psk, 0o600)
    fifo = tmp_path / "keepalived.fifo"
    path = tmp_path / "daemon.toml"
    path.write_text(
        '[node]\nid = "gw1"\nserver_id = "192.0.2.1"\nnode_index = 0\n'
        f'[store]\nservers = ["198.51.100.10", "198.51.100.11"]\npsk_file = "{psk}"\n'
        f'[failover]\nstatus_file = "{tmp_path}/status.json"\nkeepalived_fifo = "{fifo}"\n'
    )
    daemon, _, _ = make(load_daemon_config(path), tmp_path)

    async def scenario() -> int:
        task = asyncio.create_task(daemon.run())
        await asyncio.sleep(0.3)  # run() checked the FIFO and _events() opened it
        during = _descriptors_of(fifo)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return during

    assert asyncio.run(scenario()) == 1
    assert _descriptors_of(fifo) == 0


def standby_on_a_real_store(cfg: Any, tmp_path: Path) -> tuple[Any, Any, Any, Any]:
    """A STANDBY daemon whose clients (and follower's) talk to one real SQLite store
    holding STATE: (daemon, kernel, the daemon's own client, the store's backend)."""
    from appliance.store.service import StoreService
    from appliance.store.sqlite import SqliteStore
    from tests.store.loopback_client import LoopbackClient

    backend = SqliteStore(tmp_path / "store.db")
    service = StoreService(backend)
    LoopbackClient(service, "198.51.100.10").put_entries(cfg.node.server_id, 1, STATE.sad,
                                                         STATE.spd)  # fmt: skip
    main = LoopbackClient(service, "198.51.100.10")
    kernel = ThresholdKernel()
    daemon = FailoverDaemon(cfg, kernel, [main], notify_log=tmp_path / "n.jsonl",
                            follow_interval_s=0.01,
                            follower_stores=[LoopbackClient(service, "198.51.100.10")])  # fmt: skip
    daemon.executor.local_addresses = lambda: [OUT_SA.saddr]
    daemon.role = Role.STANDBY
    return daemon, kernel, main, backend


def test_a_hot_takeover_starts_from_the_followers_copy(config: Any, tmp_path: Path) -> None:
    """One follow cycle installs the copy; the takeover then asks the store only for the
    changes since (no bulk retrieval) and leaves the SAD undumped."""
    path = tmp_path / "daemon.toml"
    path.write_text(path.read_text().replace("[failover]\n", '[failover]\nmode = "hot"\n'))
    daemon, kernel, main, backend = standby_on_a_real_store(load_daemon_config(path), tmp_path)
    daemon.start_following()

    async def follow_then_take_over() -> bool:
        task = asyncio.create_task(daemon._follower())
        for _ in range(300):
            await asyncio.sleep(0.01)
            if daemon.health.snapshot().held_sas:
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return await daemon.transition(VrrpState.MASTER, time.monotonic())

    assert asyncio.run(follow_then_take_over())
    backend.close()
    assert daemon.role is Role.ACTIVE
    retrievals = [kinds for kinds in main.requests if ServerIdPayload in kinds]
    retrievals = [k for k in retrievals if EpochPayload not in k]  # SA_Retr, not SA_Stor
    assert retrievals and all(RevisionPayload in k for k in retrievals)
    status = json.loads((tmp_path / "status.json").read_text())
    steps = {e["step"]: e.get("detail", {}) for e in status["report"]["timeline"]}
    assert steps["fetch-state"]["followed"] is True
    assert steps["reconcile-state"].get("kernel") == "current"
    out = next(sa for sa in kernel.sad.values() if sa.spi == OUT_SA.spi)
    assert out.replay is not None and out.replay.oseq > OUT_SA.replay.oseq  # jumped


def test_a_cold_standby_follows_into_memory_and_installs_its_copy_at_takeover(
    config: Any, tmp_path: Path
) -> None:
    """Cold: the follower polls while STANDBY but never touches the kernel; the
    takeover's fetch-state brings the copy up to date by changes and installs it."""
    cold = load_daemon_config(tmp_path / "daemon.toml")
    assert cold.failover.mode is StandbyMode.COLD
    daemon, kernel, main, backend = standby_on_a_real_store(cold, tmp_path)

    async def follow_then_take_over() -> bool:
        task = asyncio.create_task(daemon._follower())
        for _ in range(300):
            await asyncio.sleep(0.01)
            if daemon.health.snapshot().follow_polls.get("unchanged"):
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert kernel.sad == {} and kernel.spd == {}  # memory only
        return await daemon.transition(VrrpState.MASTER, time.monotonic())

    assert asyncio.run(follow_then_take_over())
    backend.close()
    assert daemon.health.snapshot().follow_polls.get("whole") == 1
    retrievals = [kinds for kinds in main.requests if ServerIdPayload in kinds]
    retrievals = [k for k in retrievals if EpochPayload not in k]
    assert retrievals and all(RevisionPayload in k for k in retrievals)  # no bulk SA_Retr
    status = json.loads((tmp_path / "status.json").read_text())
    steps = {e["step"]: e.get("detail", {}) for e in status["report"]["timeline"]}
    assert steps["fetch-state"]["followed"] is True
    assert steps["install-state"]["sas"] == len(STATE.sad)
    out = next(sa for sa in kernel.sad.values() if sa.spi == OUT_SA.spi)
    assert out.replay is not None and out.replay.oseq > OUT_SA.replay.oseq  # jumped


def test_a_cold_node_that_is_not_standby_does_not_follow(config: Any, tmp_path: Path) -> None:
    cold = load_daemon_config(tmp_path / "daemon.toml")
    daemon = FailoverDaemon(cold, ThresholdKernel(), [FakeClient("198.51.100.10")],
                            notify_log=tmp_path / "n.jsonl",
                            follower_stores=[FakeClient("198.51.100.10")])  # fmt: skip
    for role, follows in ((Role.INIT, False), (Role.ACTIVE, False), (Role.STOPPED, False),
                          (Role.STANDBY, True)):  # fmt: skip
        daemon.role = role
        assert daemon._cold_standby_follows() is follows
