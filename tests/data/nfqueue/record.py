"""Record what the kernel sends on an nfnetlink_queue socket into recordings.json.

Run as root (the host kernel will do: nfnetlink_queue needs no ESP):

    .venv/bin/python tests/data/nfqueue/record.py

In a throwaway namespace (``tests/nfqueue/nfq_lab.py``), a rule queues
IPv4 and IPv6 ESP (marking the IPv4 one 7) and UDP to port 9999 to queue
5; raw and UDP sockets send them to the namespace's own addresses.  The
requests are written by the oracle (``tests/nfqueue/nfqueue_oracle.py``),
independently of ``appliance.nfqueue``; every datagram the kernel sends
back (queued packets, acks, refusals) is stored byte for byte with what
produced it.
"""

from __future__ import annotations

import json
import platform
import select
import socket
import struct
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from tests.nfqueue import nfqueue_oracle as oracle  # noqa: E402
from tests.nfqueue.nfq_lab import ADDR4, ADDR6, namespace, open_socket, queue_rule  # noqa: E402

OUT = Path(__file__).with_name("recordings.json")
QUEUE = 5
NETLINK_NETFILTER = 12
# ESP (SPI 0x1234) after its header: the sequence number, then filler.
ESP_IPV6 = struct.pack("!II", 0x1234, 1) + b"x" * 100
ESP_IPV4 = struct.pack("!II", 0x1234, 7) + b"y" * 16
UDP_PAYLOAD = b"z" * 200

records: list[dict[str, Any]] = []


def receive(sock: socket.socket) -> bytes:
    ready, _, _ = select.select([sock], [], [], 2.0)
    if not ready:
        raise SystemExit("the kernel sent nothing within 2 s")
    return sock.recv(1 << 16)


def record(name: str, kind: str, produced_by: str, data: bytes) -> None:
    """Keep ``data`` if it is one message of ``kind`` (an ack: an error 0)."""
    (event,) = oracle.read_events(data)
    read_as, fields = event
    if read_as != ("packet" if kind == "packet" else "error") or (kind == "ack") != (
        fields.get("error") == 0
    ):
        raise SystemExit(f"{name}: expected {kind}, got {event}")
    records.append({"name": name, "kind": kind, "produced_by": produced_by, "hex": data.hex()})


def request(sock: socket.socket, name: str, kind: str, produced_by: str, data: bytes) -> None:
    sock.send(data)
    record(name, kind, produced_by, receive(sock))


def bind(sock: socket.socket, copy_range: int, name: str = "", seq: int = 1) -> None:
    data = oracle.write_bind(QUEUE, seq, copy_range, 16, False)
    if name:
        request(sock, name, "ack", f"CONFIG bind queue {QUEUE}, copy range {copy_range}", data)
    else:
        sock.send(data)
        receive(sock)


def packet(sock: socket.socket, name: str, produced_by: str) -> int:
    data = receive(sock)
    record(name, "packet", produced_by, data)
    (msg,) = oracle.messages(data)
    packet_id: int = oracle.read_packet(msg)["packet_id"]
    return packet_id


def accept(sock: socket.socket, packet_id: int) -> None:
    sock.send(oracle.write_verdict(oracle.NFQNL_MSG_VERDICT, QUEUE, packet_id, True, 9))


def main() -> None:
    with namespace() as ns:
        queue_rule(
            ns,
            QUEUE,
            # Both families get the same rules: the IPv4 ESP packet is the one of 44 bytes.
            "meta l4proto esp meta length 44 meta mark set 7",
            "meta l4proto esp meta length != 44",
            "udp dport 9999",
        )
        nfq = open_socket(ns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        other = open_socket(ns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        esp6 = open_socket(ns, socket.AF_INET6, socket.SOCK_RAW, 50)
        esp4 = open_socket(ns, socket.AF_INET, socket.SOCK_RAW, 50)
        udp = open_socket(ns, socket.AF_INET, socket.SOCK_DGRAM)
        for sock in (nfq, other):
            sock.bind((0, 0))

        bind(nfq, 64, "bind_ack")
        refused = oracle.write_bind(QUEUE, 2, 64, 16, False)
        request(
            other, "bind_refused", "error", "CONFIG bind of a queue another socket holds", refused
        )
        esp6.sendto(ESP_IPV6, (ADDR6, 0))
        packet_id = packet(
            nfq, "packet_ipv6_esp_cut", "IPv6 ESP, SPI 0x1234, 100 bytes of 'x', copy range 64"
        )
        accept(nfq, packet_id)
        unknown = oracle.write_verdict(oracle.NFQNL_MSG_VERDICT, QUEUE, packet_id + 100, True, 3)
        request(
            nfq, "verdict_refused", "error", "VERDICT for an id the queue does not hold", unknown
        )
        request(
            nfq, "unbind_ack", "ack", f"CONFIG unbind queue {QUEUE}", oracle.write_unbind(QUEUE, 4)
        )

        bind(nfq, 512)
        esp4.sendto(ESP_IPV4, (ADDR4, 0))
        why = "IPv4 ESP, SPI 0x1234 seq 7, mark 7 set by the rule, copy range 512"
        accept(nfq, packet(nfq, "packet_ipv4_esp_mark", why))
        nfq.send(oracle.write_unbind(QUEUE, 5))
        receive(nfq)

        bind(nfq, 40)
        udp.sendto(UDP_PAYLOAD, (ADDR4, 9999))
        why = "IPv4 UDP to port 9999, 200 bytes of 'z', copy range 40"
        accept(nfq, packet(nfq, "packet_ipv4_udp_cut", why))
        for sock in (nfq, other, esp6, esp4, udp):
            sock.close()
    OUT.write_text(
        json.dumps(
            {
                "kernel": platform.release(),
                "recorded_by": "tests/data/nfqueue/record.py",
                "messages": records,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"{len(records)} messages written to {OUT}")


if __name__ == "__main__":
    main()
