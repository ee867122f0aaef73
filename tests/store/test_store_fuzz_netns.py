"""Fuzz the live store server: 100,000 random and mutated datagrams from another namespace.

A valid client keeps storing and retrieving all along; the server must never
crash, must keep answering it, and must count what it drops.  A third of the
junk is authenticated (sealed by a fuzzer that holds the cluster key), so it
reaches the codec and the service, not just the channel.

The second test sends only authenticated garbage over one valid session:
structured mutations of valid SA_Stor, SA_Retr and Heartbeat messages, each
with a message ID of its own, and checks every answer: a request whose header
is readable gets a response with a status other than INTERNAL, anything else
is dropped silently, and the server never logs a failed request.
"""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from entries_factory import make_sa, make_state
from netns_star import in_netns, netns_star
from store_process import StoreProcess, wait_ready, write_config, write_psk

from appliance.channel.endpoint import ChannelEndpoint, Side
from appliance.channel.events import DataReceived
from appliance.errors import ApplianceError
from appliance.store import _convert as conv
from appliance.store.client import StoreClient
from appliance.store.config import load_client_config, load_psk, load_server_config
from appliance.store.server import open_backend
from appliance.wire._errors import WireError
from appliance.wire.constants import HEADER_LENGTH, ExchangeType, PayloadType, ProtocolId, Status
from appliance.wire.entries import payload_to_sad, payload_to_spd, replay_update_for
from appliance.wire.messages import Message, decode_message, encode_message, peek_header
from appliance.wire.payloads import (
    Delete,
    EpochPayload,
    IkeSaPayload,
    PagePayload,
    SadEntryPayload,
    ServerIdPayload,
    SpdEntryPayload,
)

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


def handshake(psk: bytes, node_id: str) -> tuple[socket.socket, ChannelEndpoint, bytes]:
    """A real association with the server: (socket, channel, the first INIT datagram sent)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(SERVER)
    sock.settimeout(0.5)
    channel = ChannelEndpoint(psk, node_id, Side.CLIENT)
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
    assert channel.established, f"the {node_id}'s own handshake failed"
    return sock, channel, captured_init


def fuzz(psk: bytes, seed: int) -> dict[str, int]:
    """From the fuzz namespace: handshake for real, then send TOTAL junk datagrams."""
    rng = random.Random(seed)
    sock, channel, captured_init = handshake(psk, "fuzzer")
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


# -- authenticated garbage over a valid session ----------------------------------------------

GARBAGE = 20_000
"""Authenticated mutated requests (a multiple of BURST); seconds on two busy cores."""
BURST = 32
PAYLOAD_TYPES = [int(t) for t in PayloadType]


def garbage_sources(server_id: str = "garbage") -> list[bytes]:
    """Valid requests of every kind the store takes, to mutate."""
    sad, spd = make_state(4, spi_base=0x70000000 if server_id == "garbage" else 0x71000000)
    head = (ServerIdPayload.parse(server_id), EpochPayload(1))
    stor = (
        conv.spd_to_payload(spd[3]),
        IkeSaPayload(0x1234, 0x5678, (sad[0].spi,), b"ike record"),
        conv.sad_to_payload(sad[0]),
        conv.spd_to_payload(spd[0]),
        replay_update_for(sad[0]),
        conv.sad_to_payload(sad[1]),
    )
    payload_sets = [
        (ExchangeType.SA_STOR, head + stor),
        (ExchangeType.SA_STOR, (*head, replay_update_for(sad[0]))),
        (ExchangeType.SA_STOR, (*head, Delete(ProtocolId.ESP, (sad[0].spi,)))),
        (ExchangeType.SA_STOR, (*head, Delete(ProtocolId.SPD_INDEX, (spd[3].index,)))),
        (ExchangeType.SA_STOR, head),
        (ExchangeType.SA_RETR, (head[0], PagePayload(1400, b""))),
        (ExchangeType.SA_RETR, (conv.lookup_payload(conv.sa_key_of(sad[0])),)),
        (ExchangeType.HEARTBEAT, ()),
    ]
    return [encode_message(Message(ex, 1, payloads)) for ex, payloads in payload_sets]


def payload_offsets(data: bytes) -> list[int]:
    """Where each payload of a valid message starts."""
    offsets, pos = [], HEADER_LENGTH
    next_type = data[0]
    while next_type and pos < len(data):
        offsets.append(pos)
        next_type, length = data[pos], int.from_bytes(data[pos + 2 : pos + 4], "big")
        pos += length
    return offsets


# Where the attributes of an entry payload start (protocol.md 5.1.9, 5.1.11).
ATTRIBUTES_AT = {PayloadType.SAD_ENTRY: 52, PayloadType.SPD_ENTRY: 32}


def mutate_attribute(rng: random.Random, data: bytes, *, cut: bool) -> bytes | None:
    """One attribute of an entry cut short or overwritten, every length fixed up.

    The framing stays valid and only the value breaks (a SELECTOR cut to 8
    bytes, an algorithm name that runs past its attribute...): what only a
    decode to the model can catch.
    """
    offsets = payload_offsets(data)
    types = [data[0]] + [data[o] for o in offsets]  # type of payload i = next field before it
    entries = [(o, t) for o, t in zip(offsets, types, strict=False) if t in ATTRIBUTES_AT]
    if not entries:
        return None
    at, payload_type = rng.choice(entries)
    length = int.from_bytes(data[at + 2 : at + 4], "big")
    attrs, pos = [], at + 4 + ATTRIBUTES_AT[payload_type]
    while pos + 4 <= at + length:
        attrs.append(pos)
        pos += 4 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    if not attrs:
        return None
    a = rng.choice(attrs)
    value_length = int.from_bytes(data[a + 2 : a + 4], "big")
    out = bytearray(data)
    if cut:
        new_length = rng.randrange(0, value_length) if value_length else 0
        del out[a + 4 + new_length : a + 4 + value_length]
        out[a + 2 : a + 4] = new_length.to_bytes(2, "big")
        out[at + 2 : at + 4] = (length - value_length + new_length).to_bytes(2, "big")
        out[8:12] = len(out).to_bytes(4, "big")
    else:
        out[a + 4 : a + 4 + value_length] = rng.randbytes(value_length)
    return bytes(out)


def mutate_structured(rng: random.Random, data: bytes) -> bytes:
    """Bit flips, truncations, length fields changed, payload types swapped, random bodies."""
    out = bytearray(data)
    offsets = payload_offsets(data) or [HEADER_LENGTH]
    at = rng.choice(offsets)
    choice = rng.randrange(8)
    if choice == 0:  # bit flips anywhere past the message ID
        for _ in range(rng.randrange(1, 6)):
            out[rng.randrange(8, len(out))] ^= 1 << rng.randrange(8)
    elif choice == 1:  # truncated
        del out[rng.randrange(min(HEADER_LENGTH, len(out) - 1), len(out)) :]
    elif choice == 2:  # a payload length changed
        out[at + 2 : at + 4] = rng.randrange(0, 1 << 16).to_bytes(2, "big")
    elif choice == 3:  # a payload type swapped (the previous header's next-payload field)
        previous = offsets[offsets.index(at) - 1] if offsets.index(at) else 0
        out[previous] = rng.choice([*PAYLOAD_TYPES, rng.randrange(256)])
    elif choice == 4:  # a payload body replaced by random bytes of the same length
        length = int.from_bytes(out[at + 2 : at + 4], "big")
        out[at + 4 : at + length] = rng.randbytes(max(0, length - 4))
    elif choice == 5:  # a byte inside a payload body set to a random or boundary value
        length = int.from_bytes(out[at + 2 : at + 4], "big")
        if length > 4:
            out[at + rng.randrange(4, length)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
    elif choice == 6:  # random bytes after a valid header
        out[HEADER_LENGTH:] = bytes([rng.choice(PAYLOAD_TYPES)]) + rng.randbytes(
            rng.randrange(0, 600)
        )
        out[0] = rng.choice(PAYLOAD_TYPES)
    else:  # a payload cut short inside, its length fixed up (values break, framing holds)
        length = int.from_bytes(out[at + 2 : at + 4], "big")
        if length > 8:
            cut = rng.randrange(4, length)
            del out[at + cut : at + length]
            out[at + 2 : at + 4] = cut.to_bytes(2, "big")
    if rng.random() < 0.8 and len(out) >= HEADER_LENGTH:
        out[8:12] = len(out).to_bytes(4, "big")  # most reach the payloads, past the length check
    return bytes(out)


def holds_undecodable_entry(data: bytes) -> bool:
    """A well-formed SA_Stor with an entry the model refuses (the codec is the oracle)."""
    try:
        message = decode_message(data)
    except WireError:
        return False
    if message.exchange != ExchangeType.SA_STOR:
        return False
    try:
        for p in message.payloads:
            if isinstance(p, SadEntryPayload):
                payload_to_sad(p)
            elif isinstance(p, SpdEntryPayload):
                payload_to_spd(p)
    except ApplianceError:
        return True
    return False


def send_garbage(psk: bytes, seed: int) -> dict[str, Any]:
    """From the fuzz namespace: GARBAGE mutated requests over one session; every answer."""
    rng = random.Random(seed)
    sock, channel, _ = handshake(psk, "garbage")
    sources = garbage_sources()
    # Attribute mutations go to a server ID of their own, whose epoch no other mutation
    # moves: they must be refused for their entry, not for a stale epoch.
    door = garbage_sources("garbage-door")[0]
    result: dict[str, Any] = {"sent": 0, "expected": 0, "statuses": {}, "bad_replies": []}
    result["undecodable_sent"] = 0
    undecodable: set[int] = set()
    missing: set[int] = set()
    message_id = 1000
    while result["sent"] < GARBAGE:
        waiting: set[int] = set()
        for _ in range(BURST):
            message_id += 1
            if rng.random() < 0.2:
                mutated = mutate_attribute(rng, door, cut=rng.random() < 0.5)
                assert mutated is not None
            else:
                mutated = mutate_structured(rng, rng.choice(sources))
            data = bytearray(mutated)
            if len(data) >= 8:
                data[4:8] = message_id.to_bytes(4, "big")  # each its own request, never cached
            try:
                _, mid, is_response = peek_header(bytes(data))
            except WireError:
                is_response, mid = True, -1  # not even a header: dropped silently
            if not is_response:
                waiting.add(mid)
                if holds_undecodable_entry(bytes(data)):
                    undecodable.add(mid)
                    result["undecodable_sent"] += 1
            sock.send(channel.protect(bytes(data)))
            result["sent"] += 1
        result["expected"] += len(waiting)
        deadline = time.monotonic() + 10
        while waiting and time.monotonic() < deadline:
            try:
                datagram = sock.recv(65535)
            except TimeoutError:
                continue
            for event in channel.receive_datagram(datagram, SERVER, time.monotonic()):
                if not isinstance(event, DataReceived):
                    continue
                try:
                    reply = decode_message(event.data)
                except WireError as exc:
                    result["bad_replies"].append(f"undecodable reply: {exc}")
                    continue
                status = reply.status
                if not reply.response or status is None:
                    result["bad_replies"].append(f"reply {reply.message_id} without a status")
                    continue
                try:
                    name = Status(status.status).name
                except ValueError:
                    name = f"unknown {status.status}"
                result["statuses"][name] = result["statuses"].get(name, 0) + 1
                waiting.discard(reply.message_id)
                if status.status == Status.OK and reply.message_id in undecodable:
                    result["bad_replies"].append(f"{reply.message_id}: undecodable entry stored")
        missing |= waiting
    result["missing"] = sorted(missing)
    sock.close()
    return result


def every_stored_entry(config: Path) -> tuple[int, list[str]]:
    """(entries stored, those that do not decode to the model) in the server's backend."""
    backend = open_backend(load_server_config(config))
    count, undecodable = 0, []
    try:
        for server in backend.stats().servers:
            for page in backend.iter_server(server.server_id):
                for sa in page.sas:
                    count += 1
                    try:
                        conv.sad_from_payload(conv.sad_payload_from_entry(sa.entry))
                    except ApplianceError as exc:
                        undecodable.append(f"{server.server_id} {sa.key}: {exc}")
                for pol in page.policies:
                    count += 1
                    try:
                        conv.spd_from_payload(conv.spd_payload_from_entry(pol.entry))
                    except ApplianceError as exc:
                        undecodable.append(f"{server.server_id} {pol.policy_id.hex()}: {exc}")
    finally:
        backend.close()
    return count, undecodable


def test_authenticated_garbage_over_a_session_gets_a_status_or_a_silent_drop(
    tmp_path: Path, require_root: None
) -> None:
    with netns_star({"srv": "192.0.2.1", "fuzz": "192.0.2.3"}) as ns:
        psk_file = tmp_path / "cluster.psk"
        write_psk(psk_file)
        config = write_config(
            tmp_path / "store.toml", psk_file, "192.0.2.1", 4501, "sqlite", tmp_path / "s.db"
        )
        server = StoreProcess(config, ns["srv"], tmp_path / "server.log")
        server.start()
        try:

            def ready() -> None:
                with StoreClient.from_config(load_client_config(config)) as client:
                    wait_ready(client, server)

            in_netns(ns["fuzz"], ready)
            result = in_netns(ns["fuzz"], send_garbage, load_psk(psk_file), 20261206)

            def stats() -> dict[str, Any]:
                with StoreClient.from_config(load_client_config(config)) as client:
                    return client.stats()

            st = in_netns(ns["fuzz"], stats)  # still serving
            log = server.log.read_text()
            print("garbage:", {k: v for k, v in result.items() if k != "missing"})
            assert server.alive(), log[-2000:]
            assert result["sent"] == GARBAGE
            assert result["undecodable_sent"] > GARBAGE // 20  # the door was tried
            assert result["bad_replies"] == []  # ... and it held
            assert result["missing"] == []  # every readable request was answered
            assert "INTERNAL" not in result["statuses"], log[-3000:]
            assert "request failed" not in log and "Traceback" not in log, log[-3000:]
            assert st["errors"].get("INTERNAL", 0) == 0
            # Whatever the door let in converts back to the model.
            server.kill()
            stored, undecodable = every_stored_entry(config)
            assert stored > 0 and undecodable == []
            # The garbage reached the service and was refused there, not just dropped.
            assert result["statuses"].get("MALFORMED", 0) > GARBAGE // 10
            assert result["statuses"].get("OK", 0) > 0
        finally:
            server.kill()
