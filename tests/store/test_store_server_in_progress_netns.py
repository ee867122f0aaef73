"""A store that is slow, not silent: retransmissions of a request still being carried out
are answered IN_PROGRESS, and the client waits on (protocol.md 5.5). And a store that
closes answers nothing more.

The store server runs in this process, on loopback, with its group commits slowed to
1 s; the client's own patience is 0.05 + 0.1 + 0.2 s, far shorter.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from entries_factory import make_policy, make_sa
from etcd_process import free_port

from appliance.store import service as service_module
from appliance.store.client import StoreClient, StoreTimeoutError
from appliance.store.config import ServerConfig, SqliteConfig
from appliance.store.server import serve

pytestmark = pytest.mark.netns

PSK = b"in-progress-test-cluster-key-0123456789"
COMMIT_S = 1.0


@pytest.fixture
def slow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    real = service_module.StoreService.handle_many

    def slow(self: Any, requests: list[bytes]) -> list[bytes]:
        time.sleep(COMMIT_S)
        return real(self, requests)

    monkeypatch.setattr(service_module.StoreService, "handle_many", slow)
    psk = tmp_path / "psk"
    psk.touch(mode=0o600)
    psk.write_bytes(PSK)
    port = free_port()
    cfg = ServerConfig("127.0.0.1", port, psk, "sqlite", SqliteConfig(tmp_path / "s.db"), None)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    done = asyncio.Event()

    async def run() -> None:
        up = asyncio.Event()
        server = asyncio.ensure_future(serve(cfg, up))
        await up.wait()
        ready.set()
        await done.wait()
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the store server did not start"
    yield port
    loop.call_soon_threadsafe(done.set)
    thread.join(10)
    loop.close()


def test_a_slow_commit_is_waited_for_not_given_up(slow_store: int) -> None:
    client = StoreClient("127.0.0.1", slow_store, PSK, "gw1", timeout=0.05, retries=2)
    try:
        client.put_entries("gw1", 1, [make_sa(n) for n in range(3)], [make_policy(0)])
        assert client.retransmissions > 2  # beyond its retries: each one answered IN_PROGRESS
        assert len(client.fetch("gw1").sad) == 3
    finally:
        client.close()


def test_a_silent_store_is_still_given_up_on(tmp_path: Path) -> None:
    client = StoreClient("127.0.0.1", free_port(), PSK, "gw1", timeout=0.05, retries=2)
    try:
        with pytest.raises(StoreTimeoutError):
            client.put_entries("gw1", 1, [make_sa(0)])
    finally:
        client.close()


def test_a_request_finished_while_the_server_closes_is_not_answered(tmp_path: Path) -> None:
    # A reader thread finishing after SIGTERM closed the socket used to raise in the loop.
    from appliance.store.server import StoreServer
    from appliance.store.sqlite import SqliteStore

    class ClosingTransport:
        sent: list[bytes] = []

        def is_closing(self) -> bool:
            return True

        def sendto(self, data: bytes, addr: object) -> None:
            self.sent.append(data)

        def get_extra_info(self, name: str) -> None:
            return None

    psk = tmp_path / "psk"
    psk.touch(mode=0o600)
    psk.write_bytes(PSK)
    cfg = ServerConfig("127.0.0.1", 9, psk, "sqlite", SqliteConfig(tmp_path / "s.db"), None)
    server = StoreServer(cfg, SqliteStore(tmp_path / "s.db"), PSK)
    transport = ClosingTransport()
    server._transport = transport  # type: ignore[assignment]
    server.channel.datagrams_to_send = lambda now: [(b"answer", ("127.0.0.1", 4501))]  # type: ignore[method-assign]
    try:
        server._flush()
        assert transport.sent == []
    finally:
        server.close()
