"""The store server and client in different network namespaces, over the protected channel.

The server runs as ``ipsec-ha store serve`` in one namespace, the client
library in another (a thread that joined it), with SQLite and with a real
etcd: 10,000 SAs with their policies go in and come back by server ID and by
SPI; a SIGKILL in the middle of a bulk store loses nothing acknowledged and
half-writes nothing; collisions and stale epochs are refused.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from entries_factory import make_sa, make_state
from etcd_process import EtcdMember, wait_healthy
from netns_star import in_netns, netns_star
from store_process import StoreProcess, wait_ready, write_config, write_psk

from appliance.store import _convert as conv
from appliance.store.base import FetchCancelled, SpiCollisionError, StaleEpochError
from appliance.store.client import StoreClient, StoreTimeoutError
from appliance.store.config import load_client_config
from appliance.wire.constants import ExchangeType

pytestmark = pytest.mark.netns

SERVER_ADDR = "192.0.2.1"
CLIENT_ADDR = "192.0.2.2"
PORT = 4501
N = 10_000


@dataclass
class Lab:
    ns: dict[str, str]
    config: Path
    server: StoreProcess
    tmp: Path

    def client(self, **kw: object) -> StoreClient:
        return StoreClient.from_config(load_client_config(self.config), **kw)

    def run(self, fn, *args, **client_options):  # type: ignore[no-untyped-def]
        """Run ``fn(client, *args)`` in the client namespace with a fresh client."""

        def body():  # type: ignore[no-untyped-def]
            with self.client(**{"max_datagram": 8000, **client_options}) as client:
                wait_ready(client, self.server)
                return fn(client, *args)

        return in_netns(self.ns["cli"], body)


@pytest.fixture(params=["sqlite", "etcd"])
def lab(request: pytest.FixtureRequest, tmp_path: Path, require_root: None) -> Iterator[Lab]:
    with netns_star({"srv": SERVER_ADDR, "cli": CLIENT_ADDR, "fuzz": "192.0.2.3"}) as ns:
        etcd = None
        psk = tmp_path / "cluster.psk"
        write_psk(psk)
        if request.param == "etcd":
            etcd = EtcdMember("e1", "127.0.0.1", 2379, 2380, tmp_path / "etcd" / "e1", ns["srv"])
            etcd.start(f"e1={etcd.peer_url}")
            in_netns(ns["srv"], wait_healthy, etcd)
        config = write_config(
            tmp_path / "store.toml",
            psk,
            SERVER_ADDR,
            PORT,
            request.param,
            db_path=tmp_path / "store.db",
            etcd_endpoints=[etcd.endpoint] if etcd else None,
            server_max_datagram=8000,
        )
        server = StoreProcess(config, ns["srv"], tmp_path / "server.log")
        server.start()
        try:
            yield Lab(ns, config, server, tmp_path)
        finally:
            server.kill()
            if etcd is not None:
                etcd.stop()


def test_10000_sas_round_trip_by_server_id_and_by_spi(lab: Lab) -> None:
    sad, spd = make_state(N)

    def scenario(client: StoreClient):  # type: ignore[no-untyped-def]
        client.put_entries("gw1", 1, sad, spd)
        state = client.get_server("gw1")
        picks = random.Random(1).sample(range(N), 300)
        answers = [client.get_spi(sad[i].spi, str(sad[i].daddr)) for i in picks]
        return state, picks, answers, client.stats()

    state, picks, answers, stats = lab.run(scenario)
    # Every entry comes back exactly as sent: compared as the wire encoding, which is
    # lossless for the model, and through the model for a sample.
    assert sorted(conv.sad_entry_bytes(p) for p in state.sad_payloads) == sorted(
        conv.sad_entry_bytes(conv.sad_to_payload(s)) for s in sad
    )
    assert sorted(conv.spd_entry_bytes(p) for p in state.spd_payloads) == sorted(
        conv.spd_entry_bytes(conv.spd_to_payload(p)) for p in spd
    )
    by_spi = {conv.sa_key_of_payload(p): p for p in state.sad_payloads}
    for i in picks[:100]:
        assert conv.sad_from_payload(by_spi[conv.sa_key_of(sad[i])]) == sad[i]
    assert state.epoch == 1 and state.pages > 1
    for i, answer in zip(picks, answers, strict=True):
        assert answer.server_id == "gw1" and answer.epoch == 1
        assert answer.sad == sad[i]
        assert answer.spd == [spd[i]]
    (server,) = stats["servers"]
    assert (server["sas"], server["policies"], server["epoch"]) == (N, N, 1)
    assert stats["requests_served"] > 0


def test_spi_collision_and_stale_epoch_are_refused_over_the_wire(lab: Lab) -> None:
    sa = make_sa(1)

    def scenario(client: StoreClient):  # type: ignore[no-untyped-def]
        client.put_entries("gw1", 3, [sa])
        with pytest.raises(SpiCollisionError, match="belongs to server gw1"):
            client.put_entries("gw2", 1, [make_sa(2), sa])
        with pytest.raises(StoreTimeoutError.__mro__[2]) as err:  # NotFoundError via base
            client.get_spi(make_sa(2).spi, str(make_sa(2).daddr))
        assert type(err.value).__name__ == "NotFoundError"
        assert client.claim("gw1") == 4
        with pytest.raises(StaleEpochError) as stale:
            client.put_entries("gw1", 3, [make_sa(3)])
        assert stale.value.current_epoch == 4
        with pytest.raises(StaleEpochError):
            client.claim("gw1", 4)
        client.put_entries("gw1", 4, [make_sa(3)])
        return client.get_server("gw1"), client.get_spi(sa.spi, str(sa.daddr))

    state, answer = lab.run(scenario)
    assert sorted(p.spi for p in state.sad_payloads) == sorted([sa.spi, make_sa(3).spi])
    assert (answer.server_id, answer.epoch) == ("gw1", 4)


@pytest.mark.parametrize("lab", ["sqlite"], indirect=True)
def test_kill_9_in_bulk_store_keeps_every_acknowledged_entry(lab: Lab) -> None:
    """(etcd's own durability is the cluster test's subject.)"""
    sad, spd = make_state(N)

    def bulk(client: StoreClient):  # type: ignore[no-untyped-def]
        index = __import__("appliance.store.client", fromlist=["PolicyIndex"]).PolicyIndex(spd)
        groups = [
            [conv.sad_to_payload(sa)] + [conv.spd_to_payload(p) for p in index.policies_for(sa)]
            for sa in sad
        ]
        messages = client._pack("gw1", 1, groups)
        acked: list[list[int]] = []
        unknown: list[list[int]] = []
        spis = [[p.spi for p in m if hasattr(p, "reqid")] for m in messages]
        chunk = client.window
        for start in range(0, len(messages), chunk):
            if start == chunk * 6:
                # Kill while the next window of requests is in flight.
                threading.Timer(0.003, os.killpg, (lab.server.pid, signal.SIGKILL)).start()
            try:
                client.exchange(
                    [(ExchangeType.SA_STOR, m) for m in messages[start : start + chunk]]
                )
            except StoreTimeoutError:
                unknown = spis[start:]
                break
            acked += spis[start : start + chunk]
        return acked, unknown

    acked, unknown = lab.run(bulk, retries=2)
    assert acked and unknown, "the kill must land in the middle of the bulk store"
    lab.server.proc.wait(10)  # type: ignore[union-attr]
    lab.server.start()
    state = lab.run(lambda client: client.get_server("gw1"))
    stored = {p.spi: p for p in state.sad_payloads}
    expected = {s.spi: conv.sad_entry_bytes(conv.sad_to_payload(s)) for s in sad}
    for message in acked:
        for spi in message:
            assert conv.sad_entry_bytes(stored[spi]) == expected[spi]
    # Messages in flight at the kill: each entirely there or entirely absent.
    for message in unknown:
        present = [spi in stored for spi in message]
        assert all(present) or not any(present)
    policies = {p.index for p in state.spd_payloads}
    for spi in stored:
        assert ((0x1000 + spi - 0x10000000) << 3 | 1) in policies


def test_retransmitted_request_is_answered_from_cache_not_reapplied(lab: Lab) -> None:
    from appliance.wire.messages import Message, encode_message
    from appliance.wire.payloads import EpochPayload, ServerIdPayload

    def scenario(client: StoreClient):  # type: ignore[no-untyped-def]
        client.connect()
        claim = Message(ExchangeType.SA_STOR, 77, (ServerIdPayload.parse("gw9"), EpochPayload(0)))
        data = encode_message(claim)
        answers = []
        for _ in range(3):  # the same request (same message ID) three times, one after another
            waiting: dict = {77: None}
            client._channel.send(data, time.monotonic())
            client._flush()
            deadline = time.monotonic() + 5
            while waiting[77] is None and time.monotonic() < deadline:
                client._pump(time.monotonic() + 0.2, waiting)
            answers.append(waiting[77])
        return answers, client.claim("gw9"), client.stats()

    answers, next_epoch, stats = lab.run(scenario)
    assert all(a is not None and a.first(EpochPayload).epoch == 1 for a in answers)
    assert next_epoch == 2  # the first claim was applied once, the repeats were not
    assert stats["retransmits_answered"] == 2


def test_bulk_retrieval_stops_between_pages_when_asked(lab: Lab) -> None:
    sad, spd = make_state(200)

    def scenario(client: StoreClient):  # type: ignore[no-untyped-def]
        client.put_entries("gw1", 1, sad, spd)
        asked: list[int] = []

        def stop_after_two_pages() -> bool:
            asked.append(1)
            return len(asked) >= 2

        with pytest.raises(FetchCancelled, match="stopped after 2 pages"):
            client.get_server("gw1", stop_after_two_pages)
        # The client stays usable, and a retrieval nobody stops is whole.
        return client.get_server("gw1", lambda: False)

    state = lab.run(scenario, max_datagram=1400)
    assert len(state.sad_entries) == 200 and len(state.spd_entries) == len(spd)
    assert state.pages > 2
