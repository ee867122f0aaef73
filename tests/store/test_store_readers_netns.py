"""Reads through the real store server do not wait for writes (SQLite WAL readers).

The server runs as ``ipsec-ha store serve`` in one namespace and the clients
in another.  The test holds the database's write lock itself (a separate
SQLite connection in ``BEGIN IMMEDIATE``), so an SA_Stor waits inside the
server's writer for as long as the test wants: a lookup by SPI, a bulk read
and the statistics must be answered meanwhile, and show nothing of the
pending write.  Then the lock goes and the write is acknowledged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from entries_factory import make_policy, make_sa
from netns_star import in_netns, netns_star
from store_process import StoreProcess, wait_ready, write_config, write_psk

from appliance.model import ReplayState
from appliance.store.base import NotFoundError
from appliance.store.client import StoreClient
from appliance.store.config import load_client_config, load_psk

pytestmark = pytest.mark.netns

SERVER_ADDR = "192.0.2.1"
CLIENT_ADDR = "192.0.2.2"
PORT = 4501


@dataclass
class Lab:
    ns: dict[str, str]
    config: Path
    db: Path
    server: StoreProcess

    def client(self, node_id: str, timeout: float, retries: int) -> StoreClient:
        cfg = load_client_config(self.config)
        return StoreClient(
            cfg.server,
            cfg.port,
            load_psk(cfg.psk_file),
            node_id,
            timeout=timeout,
            retries=retries,
            max_datagram=8000,
        )


@pytest.fixture
def lab(tmp_path: Path, require_root: None) -> Iterator[Lab]:
    with netns_star({"srv": SERVER_ADDR, "cli": CLIENT_ADDR}) as ns:
        psk = tmp_path / "cluster.psk"
        write_psk(psk)
        db = tmp_path / "store.db"
        config = write_config(tmp_path / "store.toml", psk, SERVER_ADDR, PORT, "sqlite", db)
        # Replies of up to 8000 bytes: a whole message's SAs come back in one page.
        text = config.read_text().replace("[store]\n", "[store]\nmax_datagram = 8000\n", 1)
        config.write_text(text)
        server = StoreProcess(config, ns["srv"], tmp_path / "server.log")
        server.start()
        try:
            yield Lab(ns, config, db, server)
        finally:
            server.kill()


@contextlib.contextmanager
def write_lock(db: Path) -> Iterator[None]:
    """The database's write lock, held by the test through its own SQLite connection."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=10.0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def _wait_for_pending_write(reader: StoreClient) -> dict[str, Any]:
    """The statistics once the server's writer holds a request (they are a read, too)."""
    deadline = time.monotonic() + 20
    while True:
        stats = reader.stats()
        if stats.get("writes_pending", 0) >= 1:
            return stats
        assert time.monotonic() < deadline, f"the SA_Stor never reached the writer: {stats}"
        time.sleep(0.05)


def test_lookup_is_answered_while_a_write_waits_for_the_database_lock(lab: Lab) -> None:
    stored, pending = make_sa(0), [make_sa(1), make_sa(2)]

    def scenario() -> dict[str, Any]:
        # Patient writer, impatient reader: before WAL readers, every read queued behind
        # the blocked write and the reader gave up after its retransmissions.
        writer = lab.client("gw2", timeout=0.5, retries=8)
        reader = lab.client("gw1", timeout=0.3, retries=2)
        wait_ready(writer, lab.server)
        writer.put_entries("gw1", 1, [stored], [make_policy(0)])
        result: dict[str, Any] = {}

        def write() -> None:
            try:
                result["messages"] = writer.put_entries("gw2", 1, pending)
            except BaseException as exc:  # reported by the test thread
                result["error"] = exc

        thread = threading.Thread(target=write)
        with write_lock(lab.db):
            thread.start()
            result["stats_during"] = _wait_for_pending_write(reader)
            result["answer"] = reader.get_spi(stored.spi, str(stored.daddr))
            with pytest.raises(NotFoundError):
                reader.get_spi(pending[0].spi, str(pending[0].daddr))
            result["gw2_during"] = reader.get_server("gw2")
            result["gw1_during"] = reader.get_server("gw1")
            result["write_done_during_reads"] = "messages" in result or "error" in result
        thread.join(60)
        assert not thread.is_alive(), "the write was never answered after the lock went"
        result["after"] = [reader.get_spi(sa.spi, str(sa.daddr)) for sa in pending]
        writer.close()
        reader.close()
        return result

    result = in_netns(lab.ns["cli"], scenario)
    assert "error" not in result, result.get("error")
    # The reads were answered while the write still waited for the lock ...
    assert not result["write_done_during_reads"]
    assert result["stats_during"]["writes_pending"] >= 1
    assert result["answer"].server_id == "gw1" and result["answer"].sad == stored
    assert result["answer"].spd == [make_policy(0)]
    # ... and showed nothing of it.
    assert result["gw2_during"].sad_entries == []
    assert [sa.spi for sa in result["gw1_during"].sad] == [stored.spi]
    # Then the write was applied and acknowledged: one message, both SAs.
    assert result["messages"] == 1
    assert [(a.server_id, a.sad) for a in result["after"]] == [("gw2", sa) for sa in pending]


def _generation(g: int, count: int) -> list[Any]:
    """``count`` SAs whose replay counter names the generation (one message writes them all)."""
    return [
        dataclasses.replace(make_sa(i), replay=ReplayState(oseq=g, seq=0, bitmap=0))
        for i in range(count)
    ]


def test_a_read_never_sees_half_of_a_message(lab: Lab) -> None:
    count, generations = 12, 150

    def scenario() -> tuple[list[set[int]], int]:
        writer = lab.client("gw2", timeout=0.5, retries=8)
        reader = lab.client("gw1", timeout=0.5, retries=8)
        wait_ready(writer, lab.server)
        assert writer.put_entries("gw1", 1, _generation(0, count)) == 1
        failures: list[BaseException] = []

        def write() -> None:
            try:
                for g in range(1, generations + 1):
                    assert writer.put_entries("gw1", 1, _generation(g, count)) == 1
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=write)
        thread.start()
        seen: list[set[int]] = []
        while thread.is_alive():
            state = reader.get_server("gw1")
            assert state.pages == 1  # one page: one read transaction
            seen.append({sa.replay.oseq for sa in state.sad if sa.replay is not None})
            assert len(state.sad) == count
        thread.join()
        if failures:
            raise failures[0]
        final = reader.get_server("gw1")
        writer.close()
        reader.close()
        return seen, {sa.replay.oseq for sa in final.sad if sa.replay is not None}.pop()

    seen, final = in_netns(lab.ns["cli"], scenario)
    assert final == generations
    assert len(seen) > 1, "the reader must have overlapped the writes"
    mixed = [s for s in seen if len(s) != 1]
    assert not mixed, f"reads saw SAs of two messages at once: {mixed[:3]}"
    # The reads saw the generations advance (they overlapped the writes).
    assert len({min(s) for s in seen}) > 1
