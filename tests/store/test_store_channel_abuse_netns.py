"""The real store server under handshake abuse, over UDP between namespaces (issue 14, 3 and 4).

``ipsec-ha store serve`` runs in one namespace; real clients (StoreClient, or
a bare channel endpoint for a key holder that misbehaves) run in others:

* INITs that a client really sent, recorded, replayed from another address
  after a store restart, do not keep a new client out (point 3);
* about 1,100 short sessions, closed or simply abandoned, do not fill the
  association table against a new client (point 4);
* one address that opens handshakes by the hundred does not stop a client
  at another address.

A "first attempt" is asserted on the client's counters (no INIT or request
retransmitted), never on time.  The new client's first retransmission would
come only after 2 s, so a slow machine does not make it fail.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from netns_star import in_netns, netns_star
from store_process import StoreProcess, wait_ready, write_config, write_psk

from appliance.channel.endpoint import ChannelEndpoint, Side
from appliance.store.client import StoreClient
from appliance.store.config import load_client_config, load_psk

pytestmark = pytest.mark.netns

SERVER = ("192.0.2.1", 4501)
NODES = {
    "srv": "192.0.2.1",
    "cli": "192.0.2.2",
    "evil": "192.0.2.3",
    **{f"d{i}": f"192.0.2.{10 + i}" for i in range(5)},
}
TYPE_INIT = 1


@dataclass
class Lab:
    ns: dict[str, str]
    config: Path
    server: StoreProcess

    def client(self, **options: Any) -> StoreClient:
        return StoreClient.from_config(load_client_config(self.config), **options)

    def psk(self) -> bytes:
        return load_psk(load_client_config(self.config).psk_file)

    def wait_ready(self) -> None:
        def body() -> None:
            with self.client() as client:
                wait_ready(client, self.server)

        in_netns(self.ns["cli"], body)

    def first_attempt_client(self, netns: str) -> dict[str, Any]:
        """A new client's heartbeat from ``netns``: its stats and how many retransmissions.

        A retransmitted INIT repeats the same octets, so the INITs on the wire
        show how many handshake attempts it took.
        """

        def body() -> dict[str, Any]:
            sent: list[bytes] = []
            with self.client(timeout=2.0, retries=2) as client:
                client._sock = RecordingSocket(client._sock, sent)  # type: ignore[assignment]
                stats = client.heartbeat()
                inits = [d for d in sent if d[0] == TYPE_INIT]
                return {
                    "stats": stats,
                    "handshake_retransmissions": len(inits) - len(set(inits)),
                    "retransmissions": client.retransmissions,
                }

        return in_netns(self.ns[netns], body)


@pytest.fixture
def lab(tmp_path: Path, require_root: None) -> Iterator[Lab]:
    with netns_star(NODES) as ns:
        psk = tmp_path / "cluster.psk"
        write_psk(psk)
        config = write_config(
            tmp_path / "store.toml", psk, SERVER[0], SERVER[1], "sqlite", tmp_path / "s.db"
        )
        server = StoreProcess(config, ns["srv"], tmp_path / "server.log")
        server.start()
        try:
            lab = Lab(ns, config, server)
            lab.wait_ready()
            yield lab
        finally:
            server.kill()


class RecordingSocket:
    """A client socket that keeps a copy of every datagram it sends."""

    def __init__(self, sock: socket.socket, sent: list[bytes]) -> None:
        self._sock = sock
        self._sent = sent

    def send(self, data: bytes) -> int:
        self._sent.append(bytes(data))
        return self._sock.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_inits_recorded_and_replayed_after_a_restart_do_not_lock_out_a_new_client(
    lab: Lab,
) -> None:
    def record() -> list[bytes]:
        sent: list[bytes] = []
        while len([d for d in sent if d[0] == TYPE_INIT]) < 64:
            with lab.client() as client:
                client._sock = RecordingSocket(client._sock, sent)  # type: ignore[assignment]
                client.heartbeat()
        return [d for d in sent if d[0] == TYPE_INIT][:64]

    inits = in_netns(lab.ns["cli"], record)
    lab.server.kill()
    lab.server.start()
    lab.wait_ready()

    def replay() -> list[bytes]:
        """Every recorded INIT from the other address; whatever comes back."""
        replies = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(SERVER)
            sock.settimeout(0.5)
            for init in inits:
                sock.send(init)
            while True:
                try:
                    replies.append(sock.recv(65535))
                except TimeoutError:
                    return replies

    replies = in_netns(lab.ns["evil"], replay)
    result = lab.first_attempt_client("cli")
    assert result["handshake_retransmissions"] == 0 and result["retransmissions"] == 0
    assert result["stats"]["associations"] == 1  # only the new client's
    assert result["stats"]["drops"].get("cookie-invalid", 0) >= 1
    # Each replay got at most a small COOKIE, which created nothing at the store.
    assert {r[0] for r in replies} <= {4}
    assert all(len(r) <= min(len(i) for i in inits) for r in replies)


def test_1100_short_sessions_that_close_leave_room_for_a_new_client(lab: Lab) -> None:
    def sessions() -> None:
        for _ in range(1100):
            with lab.client() as client:
                client.heartbeat()

    in_netns(lab.ns["cli"], sessions)
    result = lab.first_attempt_client("cli")
    assert result["handshake_retransmissions"] == 0 and result["retransmissions"] == 0
    # Every closed session was forgotten at once: only the new client's association is left.
    assert result["stats"]["associations"] == 1


def _abandoned_sessions(lab: Lab, count: int) -> None:
    """``count`` sessions that exit without closing (a crash or a kill -9 in effect)."""
    for _ in range(count):
        client = lab.client()
        client.heartbeat()
        client._sock.close()  # no CLOSE datagram


def test_abandoned_sessions_filling_the_table_do_not_lock_out_a_new_client(lab: Lab) -> None:
    # 1,100 abandoned sessions from five addresses: more than the 1,024-entry table holds.
    for index in range(5):
        in_netns(lab.ns[f"d{index}"], _abandoned_sessions, lab, 220)
    for netns in ("cli", "d0"):  # a new address, and one that left 220 sessions behind
        result = lab.first_attempt_client(netns)
        assert result["handshake_retransmissions"] == 0 and result["retransmissions"] == 0
        assert result["stats"]["associations"] == 1024  # full; the LRU made room


def test_abandoned_sessions_from_one_address_cost_at_most_its_share(lab: Lab) -> None:
    in_netns(lab.ns["d0"], _abandoned_sessions, lab, 1100)
    result = lab.first_attempt_client("d0")
    assert result["handshake_retransmissions"] == 0 and result["retransmissions"] == 0
    assert result["stats"]["associations"] <= 256 + 1  # its 256, and the waiting client's


def test_one_address_opening_a_hundred_handshakes_cannot_stop_another(lab: Lab) -> None:
    psk = lab.psk()

    def flood() -> int:
        """A key holder that completes handshakes and never confirms them (half-open)."""
        answered = 0
        for index in range(100):
            endpoint = ChannelEndpoint(psk, f"flood-{index}", Side.CLIENT)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.connect(SERVER)
                sock.settimeout(0.2)
                endpoint.connect(SERVER, time.monotonic())
                for _ in range(4):
                    out = [d for d, _ in endpoint.datagrams_to_send(time.monotonic())]
                    out = [d for d in out if d[0] != 3]  # never confirm, never send data
                    if not out:
                        break
                    for datagram in out:
                        sock.send(datagram)
                    try:
                        endpoint.receive_datagram(sock.recv(65535), SERVER, time.monotonic())
                    except TimeoutError:
                        break
                answered += endpoint.established
        return answered

    answered = in_netns(lab.ns["evil"], flood)
    result = lab.first_attempt_client("cli")
    assert result["handshake_retransmissions"] == 0 and result["retransmissions"] == 0
    assert result["stats"]["associations"] <= 16 + 1  # the flood's share, and the client
    assert answered == 100  # the flood's handshakes were answered too: its oldest gave way
