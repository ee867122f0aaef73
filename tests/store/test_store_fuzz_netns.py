"""Fuzz the live store server: 100,000 random and mutated datagrams from another namespace.

A valid client keeps storing and retrieving all along; the server must never
crash, must keep answering it, and must count what it drops.  A third of the
junk is authenticated (sealed by a fuzzer that holds the cluster key), so it
reaches the codec and the service, not just the channel.
"""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from entries_factory import make_sa, make_state
from netns_star import in_netns, netns_star
from store_process import StoreProcess, wait_ready, write_config, write_psk

from appliance.channel.endpoint import ChannelEndpoint, Role
from appliance.store import _convert as conv
from appliance.store.client import StoreClient
from appliance.store.config import load_client_config, load_psk
from appliance.wire.constants import ExchangeType
from appliance.wire.messages import Message, encode_message
from appliance.wire.payloads import EpochPayload, PagePayload, ServerIdPayload

pytestmark = pytest.mark.netns

SERVER = ("192.0.2.1", 4501)
TOTAL = 100_000


def udp_rcvbuf_errors(netns: str) -> int:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    head, values = [line.split() for line in out.splitlines() if line.startswith("Udp:")][:2]
    return int(values[head.index("RcvbufErrors")])


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A copy that always differs: flipped bytes, truncated, or extended."""
    choice = rng.random()
    if choice < 0.15 and len(data) > 1:
        return data[: rng.randrange(len(data))]
    if choice < 0.25:
        return data + rng.randbytes(rng.randrange(1, 64))
    out = bytearray(data)
    for _ in range(rng.randrange(1, 9)):
        out[rng.randrange(len(out))] ^= rng.randrange(1, 256)
    return bytes(out)


def valid_messages() -> list[bytes]:
    sad, spd = make_state(3, spi_base=0x50000000)
    head = (ServerIdPayload.parse("fuzzer"), EpochPayload(1))
    stor = (conv.sad_to_payload(sad[0]), conv.spd_to_payload(spd[0]), conv.sad_to_payload(sad[1]))
    return [
        encode_message(Message(ExchangeType.SA_STOR, 1, head + stor)),
        encode_message(Message(ExchangeType.SA_RETR, 2, (head[0], PagePayload(1400, b"")))),
        encode_message(
            Message(ExchangeType.SA_RETR, 3, (conv.lookup_payload(conv.sa_key_of(sad[0])),))
        ),
        encode_message(Message(ExchangeType.HEARTBEAT, 4, ())),
    ]  # fmt: skip


def fuzz(psk: bytes, seed: int) -> dict[str, int]:
    """From the fuzz namespace: handshake for real, then send TOTAL junk datagrams."""
    rng = random.Random(seed)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(SERVER)
    sock.settimeout(0.5)
    channel = ChannelEndpoint(psk, "fuzzer", Role.CLIENT)
    channel.connect(SERVER, time.monotonic())
    captured_init = b""
    for _ in range(20):
        for datagram, _ in channel.datagrams_to_send(time.monotonic()):
            captured_init = captured_init or datagram
            sock.send(datagram)
        try:
            channel.receive_datagram(sock.recv(65535), SERVER, time.monotonic())
        except TimeoutError:
            channel.handle_timer(time.monotonic() + 1)
        if channel.established:
            break
    assert channel.established, "the fuzzer's own handshake failed"
    plaintexts = valid_messages()
    captured_data = [channel.protect(p) for p in plaintexts]
    counts = {"random": 0, "mutated": 0, "authenticated": 0}
    sock.setblocking(False)
    for n in range(TOTAL):
        kind = rng.random()
        if kind < 0.35:
            data = bytes([rng.randrange(6), rng.choice((1, 1, 2)), 0, 0]) + rng.randbytes(
                rng.randrange(0, 1400)
            )
            counts["random"] += 1
        elif kind < 0.7:
            data = mutate(rng, rng.choice([captured_init, *captured_data]))
            counts["mutated"] += 1
        else:
            data = channel.protect(mutate(rng, rng.choice(plaintexts)))
            counts["authenticated"] += 1
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
            sock.send(data)
        if n % 400 == 399:
            time.sleep(0.03)  # stay near what the server can take; the kernel counts the rest
            try:
                while sock.recv(65535):
                    pass
            except (BlockingIOError, ConnectionRefusedError):
                pass
    sock.close()
    return counts


def test_server_survives_100000_junk_datagrams_and_keeps_serving(
    tmp_path: Path, require_root: None
) -> None:
    with netns_star({"srv": "192.0.2.1", "cli": "192.0.2.2", "fuzz": "192.0.2.3"}) as ns:
        psk_file = tmp_path / "cluster.psk"
        write_psk(psk_file)
        config = write_config(
            tmp_path / "store.toml", psk_file, "192.0.2.1", 4501, "sqlite", tmp_path / "s.db"
        )
        server = StoreProcess(config, ns["srv"], tmp_path / "server.log")
        server.start()
        stop = threading.Event()
        valid: dict[str, object] = {"ops": 0, "errors": []}

        def valid_client() -> None:
            with StoreClient.from_config(load_client_config(config)) as client:
                wait_ready(client, server)
                n = 0
                while not stop.is_set() or n < 20:
                    sa = make_sa(n, spi_base=0x30000000)
                    try:
                        client.put_entries("valid-gw", 1, [sa])
                        answer = client.get_spi(sa.spi, str(sa.daddr))
                        assert answer.sad == sa and answer.server_id == "valid-gw"
                        client.heartbeat()
                    except Exception as exc:  # recorded, asserted below
                        valid["errors"].append(repr(exc))  # type: ignore[attr-defined]
                    n += 1
                    valid["ops"] = n
                valid["final"] = client.get_server("valid-gw")

        try:
            worker = threading.Thread(target=in_netns, args=(ns["cli"], valid_client))
            worker.start()
            while valid["ops"] == 0 and worker.is_alive():
                time.sleep(0.05)
            before = udp_rcvbuf_errors(ns["srv"])
            counts = in_netns(ns["fuzz"], fuzz, load_psk(psk_file), 20261126)
            kernel_dropped = udp_rcvbuf_errors(ns["srv"]) - before
            ops_during_fuzz = valid["ops"]
            stop.set()
            worker.join(120)
            assert not worker.is_alive()
            assert server.alive(), server.log.read_text()[-2000:]

            assert valid["errors"] == []
            assert isinstance(ops_during_fuzz, int) and ops_during_fuzz > 1
            final = valid["final"]
            assert len(final.sad_entries) == valid["ops"]  # type: ignore[attr-defined]

            def stats() -> dict:  # type: ignore[type-arg]
                with StoreClient.from_config(load_client_config(config)) as client:
                    return client.stats()

            st = in_netns(ns["cli"], stats)
            unauthenticated = counts["random"] + counts["mutated"]
            print("fuzz:", counts, "kernel dropped", kernel_dropped, "ops", ops_during_fuzz, st)
            assert sum(counts.values()) == TOTAL
            # Every unauthenticated datagram that reached the server was dropped and counted.
            assert st["drops_total"] >= unauthenticated - kernel_dropped
            assert st["drops"].get("auth-failed", 0) > 0
            assert (
                st["errors"].get("MALFORMED", 0) > 0
            )  # authenticated junk was answered, not fatal
        finally:
            stop.set()
            server.kill()
