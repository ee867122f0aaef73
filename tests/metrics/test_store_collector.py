"""The store server's metrics: a real server (SQLite, loopback UDP) and a real client.

The server runs in this process on an event loop of its own thread, as
``ipsec-ha store serve`` runs it; the collector is read through
prometheus_client's exposition and parser, as a scraper would read it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from appliance.channel.endpoint import ChannelEndpoint, Side
from appliance.channel.events import DropReason
from appliance.errors import ApplianceError
from appliance.metrics.store_collector import UNDECODABLE_REQUEST, StoreServerCollector
from appliance.store.base import SaStore
from appliance.store.client import StoreClient
from appliance.store.config import ServerConfig, SqliteConfig
from appliance.store.server import StoreServer, open_backend, serve

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "store"))
from entries_factory import store_two_server_ids
from store_process import write_psk

pytestmark = pytest.mark.unit

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def server_config(tmp_path: Path, **overrides: Any) -> ServerConfig:
    psk = tmp_path / "cluster.psk"
    if not psk.exists():
        write_psk(psk)
    fields: dict[str, Any] = {
        "listen": "127.0.0.1",
        "port": 0,
        "psk_file": psk,
        "backend": "sqlite",
        "sqlite": SqliteConfig(tmp_path / "s.db"),
        "etcd": None,
        "node_id": "store-t",
    }
    fields.update(overrides)
    return ServerConfig(**fields)


@dataclass
class Running:
    server: StoreServer
    port: int
    psk: bytes
    loop: asyncio.AbstractEventLoop

    def client(self, node_id: str = "gw1") -> StoreClient:
        return StoreClient("127.0.0.1", self.port, self.psk, node_id, timeout=0.2, retries=8)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    """A StoreServer on loopback, its event loop on a thread, as ``serve`` runs it."""
    cfg = server_config(tmp_path)
    psk = cfg.psk_file.read_bytes().rstrip(b"\n")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[asyncio.DatagramTransport, StoreServer]:
        return await loop.create_datagram_endpoint(
            lambda: StoreServer(cfg, open_backend(cfg), psk), local_addr=("127.0.0.1", 0)
        )

    transport, server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    port = transport.get_extra_info("sockname")[1]
    try:
        yield Running(server, port, psk, loop)
    finally:
        loop.call_soon_threadsafe(transport.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        server.close()
        loop.close()


def scrape(collector: StoreServerCollector) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return parse(generate_latest(registry).decode())


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def send_junk(port: int, data: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(data, ("127.0.0.1", port))


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_each_store_metric_shows_what_the_clients_did(running: Running) -> None:
    with running.client() as client:
        done = {"stor_messages": store_two_server_ids(client)}
        send_junk(running.port, b"\x07junk")  # no channel datagram type: malformed
        wait_for(lambda: running.server.live().channel_drops.get("malformed", 0) == 1)
        samples = scrape(StoreServerCollector(running.server))
        live = running.server.live()  # nothing arrives meanwhile: the client is idle

    assert value(samples, "ipsec_ha_store_server_info", backend="sqlite", node="store-t") == 1
    for sid, sas, epoch in (("gw1", 3, 2), ("gw2", 2, 5)):
        assert value(samples, "ipsec_ha_store_server_sas", server_id=sid) == sas
        assert value(samples, "ipsec_ha_store_server_policies", server_id=sid) == sas
        assert value(samples, "ipsec_ha_store_server_epoch", server_id=sid) == epoch
        assert value(samples, "ipsec_ha_store_server_ike_sas", server_id=sid) == (sid == "gw1")
    requests = "ipsec_ha_store_server_requests_total"
    assert value(samples, requests, exchange="sa_stor", status="ok") == done["stor_messages"]
    assert value(samples, requests, exchange="sa_retr", status="not_found") == 1
    assert {labels for name, labels in samples if name == requests} == {
        (("exchange", "sa_stor"), ("status", "ok")),
        (("exchange", "sa_retr"), ("status", "not_found")),
    }
    assert value(samples, "ipsec_ha_store_server_associations") == 1  # the client's
    assert value(samples, "ipsec_ha_store_server_half_open") == 0
    drops = "ipsec_ha_store_server_channel_drops_total"
    assert value(samples, drops, reason="malformed") == 1
    for reason in DropReason:  # every reason is shown, so that rate() works from the start
        if reason is not DropReason.MALFORMED:
            assert value(samples, drops, reason=reason.value) == 0
    assert value(samples, drops, reason=UNDECODABLE_REQUEST) == 0
    assert value(samples, "ipsec_ha_store_server_datagrams_received_total") == (
        live.datagrams_received
    )
    assert live.datagrams_received >= done["stor_messages"] + 1 + 1  # + the miss, the junk
    assert value(samples, "ipsec_ha_store_server_retransmits_answered_total") == 0
    backend = "ipsec_ha_store_server_backend_seconds"
    writes = value(samples, f"{backend}_count", operation="write")
    assert 1 <= writes <= done["stor_messages"]  # requests that queued up share a group
    assert value(samples, f"{backend}_count", operation="read") == 1  # the miss
    assert value(samples, f"{backend}_bucket", operation="read", le="+Inf") == 1
    assert value(samples, f"{backend}_sum", operation="write") > 0


def test_a_live_association_and_a_half_open_handshake_are_counted(running: Running) -> None:
    client = running.client()
    client.connect()
    # A second client completes the handshake but never sends its confirming datagram.
    endpoint = ChannelEndpoint(running.psk, "gw-half", Side.CLIENT)
    addr = ("127.0.0.1", running.port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        endpoint.connect(addr, time.monotonic())
        while not endpoint.established:
            for datagram, _ in endpoint.datagrams_to_send(time.monotonic()):
                sock.sendto(datagram, addr)
            reply, _ = sock.recvfrom(65535)
            endpoint.receive_datagram(reply, addr, time.monotonic())
        try:
            samples = scrape(StoreServerCollector(running.server))
            assert value(samples, "ipsec_ha_store_server_associations") == 2
            assert value(samples, "ipsec_ha_store_server_half_open") == 1
            for datagram, _ in endpoint.datagrams_to_send(time.monotonic()):
                sock.sendto(datagram, addr)  # now it confirms
            wait_for(lambda: running.server.live().half_open == 0)
        finally:
            client.close()


def test_per_server_counts_are_read_at_most_once_per_max_age(running: Running) -> None:
    now = [100.0]
    reads: list[int] = []
    real = running.server.backend_read

    def counted(read: Callable[[SaStore], Any]) -> concurrent.futures.Future[Any]:
        reads.append(1)
        return real(read)

    running.server.backend_read = counted  # type: ignore[method-assign]
    collector = StoreServerCollector(running.server, max_age_s=1.0, clock=lambda: now[0])
    with running.client() as client:
        client.claim("gw1")
        assert value(scrape(collector), "ipsec_ha_store_server_epoch", server_id="gw1") == 1
        client.claim("gw1")
        for _ in range(20):  # a scrape flood within max_age: no backend read, the cached counts
            assert value(scrape(collector), "ipsec_ha_store_server_epoch", server_id="gw1") == 1
        assert len(reads) == 1
        now[0] += 1.0
        assert value(scrape(collector), "ipsec_ha_store_server_epoch", server_id="gw1") == 2
        assert len(reads) == 2


def test_a_failing_backend_read_leaves_out_the_per_server_counts_only(running: Running) -> None:
    with running.client() as client:
        client.claim("gw1")

    def failing(read: Callable[[SaStore], Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_exception(OSError("disk gone"))
        return future

    running.server.backend_read = failing  # type: ignore[method-assign]
    samples = scrape(StoreServerCollector(running.server))
    assert "ipsec_ha_store_server_sas" not in names(samples)
    assert "ipsec_ha_store_server_epoch" not in names(samples)
    assert value(samples, "ipsec_ha_store_server_requests_total", exchange="sa_stor", status="ok")
    assert "ipsec_ha_store_server_associations" in names(samples)


def test_a_slow_backend_shows_the_last_counts_and_keeps_one_read_in_flight(
    running: Running,
) -> None:
    now = [0.0]
    collector = StoreServerCollector(running.server, wait_s=0.05, clock=lambda: now[0])
    with running.client() as client:
        client.claim("gw1")
    assert value(scrape(collector), "ipsec_ha_store_server_epoch", server_id="gw1") == 1
    gate = threading.Event()
    submitted: list[concurrent.futures.Future[Any]] = []
    real = running.server.backend_read

    def slow(read: Callable[[SaStore], Any]) -> concurrent.futures.Future[Any]:
        future = real(lambda store: (gate.wait(10), read(store))[1])
        submitted.append(future)
        return future

    running.server.backend_read = slow  # type: ignore[method-assign]
    now[0] += 5
    try:
        for _ in range(3):  # the backend does not answer in time: the last counts, one read
            assert value(scrape(collector), "ipsec_ha_store_server_epoch", server_id="gw1") == 1
        assert len(submitted) == 1
    finally:
        gate.set()
    submitted[0].result(10)
    assert value(scrape(collector), "ipsec_ha_store_server_epoch", server_id="gw1") == 1
    assert len(submitted) == 1  # the read in flight answered this scrape


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_serve(cfg: ServerConfig) -> tuple[asyncio.AbstractEventLoop, threading.Thread, Any]:
    loop = asyncio.new_event_loop()
    ready = asyncio.Event()
    outcome: concurrent.futures.Future[None] = concurrent.futures.Future()

    def run() -> None:
        try:
            loop.run_until_complete(serve(cfg, ready))
            outcome.set_result(None)
        except BaseException as exc:
            outcome.set_exception(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return loop, thread, (ready, outcome)


def test_serve_answers_scrapes_while_configured_and_stops_with_the_server(tmp_path: Path) -> None:
    port = _free_tcp_port()
    cfg = server_config(tmp_path, metrics_listen=("127.0.0.1", port))
    loop, thread, (ready, outcome) = _run_serve(cfg)
    wait_for(ready.is_set)
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    body = no_proxy.open(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    samples = parse(body.decode())
    assert value(samples, "ipsec_ha_store_server_info", backend="sqlite", node="store-t") == 1
    tasks = asyncio.run_coroutine_threadsafe(_all_tasks(), loop).result(10)
    loop.call_soon_threadsafe(lambda: [t.cancel() for t in tasks])
    thread.join(10)
    with pytest.raises(asyncio.CancelledError):
        outcome.result(0)
    with pytest.raises(OSError):
        no_proxy.open(f"http://127.0.0.1:{port}/metrics", timeout=2)


async def _all_tasks() -> set[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current}


def test_serve_refuses_to_start_when_the_metrics_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = server_config(tmp_path, metrics_listen=("127.0.0.1", port))
        _, thread, (ready, outcome) = _run_serve(cfg)
        thread.join(10)
    assert not ready.is_set()
    with pytest.raises(ApplianceError, match=rf"metrics: cannot listen on 127.0.0.1:{port}: "):
        outcome.result(0)
