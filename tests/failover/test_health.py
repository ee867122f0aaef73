"""``DaemonHealth`` and the status file's ``health`` object; the probe against a real store."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.failover.health import DaemonHealth, StoreProbe, step_seconds, to_status
from appliance.store.client import StoreClient
from appliance.store.config import load_server_config
from appliance.store.server import serve

pytestmark = pytest.mark.unit

TIMELINE = [
    {"step": "notify-received", "monotonic": 100.0},
    {"step": "claim-ownership", "monotonic": 100.25},
    {"step": "fetch-state", "monotonic": 100.75},
    {"step": "state-fetched", "monotonic": 100.75},
    {"step": "done", "monotonic": 101.0},
]


def test_each_step_takes_its_entry_minus_the_previous_one() -> None:
    assert step_seconds(TIMELINE) == {
        "claim-ownership": 0.25,
        "fetch-state": 0.5,
        "state-fetched": 0.0,
        "done": 0.25,
    }
    assert step_seconds(TIMELINE[:1]) == {}


def test_takeovers_fill_the_histogram_and_the_last_steps() -> None:
    health = DaemonHealth()
    health.record_takeover(False)
    health.record_takeover(True, duration_s=1.0, timeline=TIMELINE, received_unix=5.0)
    snap = health.snapshot()
    assert snap.takeovers == {"ok": 1, "failed": 1}
    assert snap.takeover_duration.count == 1 and snap.takeover_duration.sum == 1.0
    assert snap.last_takeover_steps["fetch-state"] == 0.5
    assert snap.last_takeover_unix == 5.0


def test_counters_count_by_their_labels() -> None:
    health = DaemonHealth()
    for state, ok in [("MASTER", True), ("MASTER", True), ("BACKUP", False)]:
        health.record_transition(state, ok)
    health.count_sync("198.51.100.10", "put", "ok")
    health.count_sync("198.51.100.10", "put", "ok")
    health.count_sync("198.51.100.11", "put", "failed")
    snap = health.snapshot()
    assert snap.transitions == {("MASTER", "ok"): 2, ("BACKUP", "failed"): 1}
    assert snap.sync_messages == {
        ("198.51.100.10", "put", "ok"): 2,
        ("198.51.100.11", "put", "failed"): 1,
    }


def test_status_has_the_documented_keys_and_lag_only_on_a_standby() -> None:
    health = DaemonHealth()
    health.record_probe("198.51.100.10", StoreProbe(True, None, 0.001, 3, 4, 4, 99.0))
    health.record_sync(50.0, 1000.0)
    health.record_held(4, 4)
    health.record_poll("whole", 11)
    health.record_poll("unchanged", 12)
    args: dict[str, Any] = dict(now_unix=1003.0, now_monotonic=53.0, interval_s=1.0,
                                ready_max_lag_s=10.0)  # fmt: skip
    standby = to_status(health.snapshot(), standby=True, **args)
    assert standby == {
        "updated": 1003.0, "interval_s": 1.0, "ready_max_lag_s": 10.0,
        "stores": {"198.51.100.10": {"up": True, "error": None, "rtt_s": 0.001, "epoch": 3,
                                     "sas": 4, "policies": 4, "checked": 99.0}},
        "last_sync": 1000.0, "lag_s": 3.0, "held_sas": 4, "held_policies": 4,
        "follow_polls": {"whole": 1, "unchanged": 1}, "follow_revision": 12,
    }  # fmt: skip
    assert to_status(health.snapshot(), standby=False, **args)["lag_s"] is None


def test_updates_from_many_threads_are_all_counted() -> None:
    health = DaemonHealth()

    def work() -> None:
        for _ in range(1000):
            health.count_sync("198.51.100.10", "replay", "ok")
            health.snapshot()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert health.snapshot().sync_messages == {("198.51.100.10", "replay", "ok"): 4000}


# -- the probe's client call, against a real store on the loopback ---------------------


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def store_server(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    """A store server on 127.0.0.1 in this process; yields (port, cluster key)."""
    key = os.urandom(32).hex().encode()
    psk = tmp_path / "cluster.psk"
    psk.write_bytes(key + b"\n")
    os.chmod(psk, 0o600)
    port = _free_udp_port()
    config = tmp_path / "store.toml"
    config.write_text(
        f'[store]\nlisten = "127.0.0.1"\nport = {port}\npsk_file = "{psk}"\n'
        f'backend = "sqlite"\n[store.sqlite]\npath = "{tmp_path}/s.db"\n'
    )
    cfg = load_server_config(config)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: list[asyncio.Future[None]] = []

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(serve(cfg, started))
        await started.wait()
        stop.append(asyncio.get_running_loop().create_future())
        ready.set()
        await stop[0]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield port, key
    loop.call_soon_threadsafe(stop[0].set_result, None)
    thread.join(10)
    loop.close()


def test_server_stats_names_what_the_store_holds_for_one_server_id(
    store_server: tuple[int, bytes],
) -> None:
    from test_executor import STATE

    port, key = store_server
    with StoreClient("127.0.0.1", port, key, "gw1", timeout=0.5, retries=3) as writer:
        epoch = writer.claim("192.0.2.1")
        writer.put_entries("192.0.2.1", epoch, STATE.sad, STATE.spd)
        writer.claim("192.0.2.9")
    with StoreClient("127.0.0.1", port, key, "gw1.health", timeout=0.5, retries=3) as probe:
        held = probe.server_stats("192.0.2.1")
        assert held == {"server_id": "192.0.2.1", "epoch": epoch, "sas": len(STATE.sad),
                        "policies": len(STATE.spd)}  # fmt: skip
        assert probe.server_stats("203.0.113.7") is None
        # Karn's rule: only answers to single transmissions; none was retransmitted here.
        assert probe.retransmissions == 0
        assert probe.rtt.snapshot().count == 2
        assert probe.channel_drops == {}


class DroppingRelay:
    """A UDP relay between one client and the store that can drop the client's next datagram."""

    def __init__(self, server_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self.server = ("127.0.0.1", server_port)
        self.client: tuple[str, int] | None = None
        self.drop_next = False
        self.running = True
        self.thread = threading.Thread(target=self._relay, daemon=True)
        self.thread.start()

    def _relay(self) -> None:
        while self.running:
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            if addr == self.server:
                if self.client is not None:
                    self.sock.sendto(data, self.client)
                continue
            self.client = addr
            if self.drop_next:
                self.drop_next = False
                continue
            self.sock.sendto(data, self.server)

    def close(self) -> None:
        self.running = False
        self.thread.join(5)
        self.sock.close()


def test_a_retransmitted_request_is_not_timed(store_server: tuple[int, bytes]) -> None:
    port, key = store_server
    relay = DroppingRelay(port)
    try:
        with StoreClient("127.0.0.1", relay.port, key, "gw1.health", timeout=0.2) as probe:
            assert probe.server_stats("192.0.2.1") is None  # the handshake is over
            assert probe.rtt.snapshot().count == 1
            relay.drop_next = True  # the request's first transmission is lost
            assert probe.server_stats("192.0.2.1") is None
            assert probe.retransmissions == 1
            assert probe.rtt.snapshot().count == 1  # Karn's rule: which copy was answered?
            assert probe.server_stats("192.0.2.1") is None
            assert probe.rtt.snapshot().count == 2
    finally:
        relay.close()
