"""NfQueue on the host kernel: packets queued by a rule reach us; our verdicts decide.

Traffic stays inside one fresh namespace (to its own loopback addresses),
see nfq_lab.  ESP packets are sent with raw sockets: the host has no ESP,
but the queue hook runs before any protocol handler, and a raw socket for
protocol 50 receives what is accepted.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from nfq_lab import ADDR4, ADDR6, namespace, open_socket, queue_rule

from appliance.errors import KernelError
from appliance.nfqueue import NfQueue, QueuedPacket

pytestmark = pytest.mark.netns

QUEUE = 4242


@pytest.fixture
def netns(require_root: None) -> Iterator[str]:
    with namespace() as name:
        yield name


def collect(q: NfQueue, count: int) -> list[QueuedPacket]:
    packets: list[QueuedPacket] = []
    for _ in range(50):
        packets += q.receive(timeout=0.1)
        if len(packets) >= count:
            break
    assert len(packets) == count, f"expected {count} queued packets, got {len(packets)}"
    return packets


def drain(sock: socket.socket) -> list[bytes]:
    """What reached ``sock``: everything verdicted has arrived once a marker comes after it."""
    got = []
    sock.settimeout(2)
    while True:
        data = sock.recv(4096)
        if data.endswith(b"marker"):
            return got
        got.append(data)


def test_udp_accept_one_drop_another(netns: str) -> None:
    queue_rule(netns, QUEUE, "udp dport 9999 udp sport != 9998")
    with NfQueue(netns, QUEUE) as q:
        rx = open_socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind((ADDR4, 9999))
        tx = open_socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
        tx.sendto(b"keep", (ADDR4, 9999))
        tx.sendto(b"lose", (ADDR4, 9999))
        packets = collect(q, 2)
        by_text = {p.payload[28:]: p for p in packets}
        assert set(by_text) == {b"keep", b"lose"}
        for p in packets:
            assert p.queue_num == QUEUE and p.hw_protocol == 0x0800 and p.hook == 1
        q.verdict(by_text[b"keep"].packet_id, True)
        q.verdict(by_text[b"lose"].packet_id, False)
        # The marker is not queued (source port 9998): it arrives after the verdicts.
        marker = open_socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
        marker.bind((ADDR4, 9998))
        marker.sendto(b"marker", (ADDR4, 9999))
        assert drain(rx) == [b"keep"]
        assert q.verdict_errors == 0


@pytest.mark.parametrize(("family", "addr"), [(socket.AF_INET, ADDR4), (socket.AF_INET6, ADDR6)])
def test_esp_accept_one_drop_another(netns: str, family: int, addr: str) -> None:
    queue_rule(netns, QUEUE, "meta l4proto esp @th,0,32 != 0xffffffff")
    with NfQueue(netns, QUEUE) as q:
        rx = open_socket(netns, family, socket.SOCK_RAW, 50)
        tx = open_socket(netns, family, socket.SOCK_RAW, 50)
        for spi in (0x1001, 0x1002):
            tx.sendto(struct.pack("!II", spi, 1) + b"payload", (addr, 0))
        packets = collect(q, 2)
        spis = {}
        for p in packets:
            offset = 20 if family == socket.AF_INET else 40
            spis[struct.unpack_from("!I", p.payload, offset)[0]] = p.packet_id
        assert set(spis) == {0x1001, 0x1002}
        q.verdict(spis[0x1001], True)
        q.verdict(spis[0x1002], False)
        tx.sendto(struct.pack("!II", 0xFFFFFFFF, 1) + b"marker", (addr, 0))  # not queued
        got = drain(rx)
        # An IPv4 raw socket hands over the IP header, an IPv6 one only the payload.
        skip = 20 if family == socket.AF_INET else 0
        assert [struct.unpack_from("!I", d, skip)[0] for d in got] == [0x1001]


def test_copy_range_cuts_payload_and_reports_length(netns: str) -> None:
    queue_rule(netns, QUEUE, "udp dport 9999")
    with NfQueue(netns, QUEUE, copy_range=40) as q:
        tx = open_socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
        tx.sendto(b"z" * 200, (ADDR4, 9999))
        (packet,) = collect(q, 1)
        assert len(packet.payload) == 40
        assert packet.length == 228
        q.verdict(packet.packet_id, False)


def test_second_binder_is_refused_and_close_releases(netns: str) -> None:
    first = NfQueue(netns, QUEUE)
    with pytest.raises(KernelError, match=f"cannot bind NFQUEUE {QUEUE} in network namespace"):
        NfQueue(netns, QUEUE)
    first.close()
    first.close()  # idempotent
    with pytest.raises(KernelError, match="is closed"):
        first.receive()
    NfQueue(netns, QUEUE).close()


def test_missing_namespace_is_a_clear_error(require_root: None) -> None:
    with pytest.raises(KernelError, match="network namespace 'iha-000000-absent' does not exist"):
        NfQueue("iha-000000-absent", QUEUE)


def send_numbered(netns: str, count: int) -> None:
    tx = open_socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(count):
        tx.sendto(b"p%02d" % i, (ADDR4, 9999))
    tx.close()


def send_marker(netns: str) -> None:
    marker = open_socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
    marker.bind((ADDR4, 9998))
    marker.sendto(b"marker", (ADDR4, 9999))
    marker.close()


def test_verdicts_in_one_send_batch_only_what_was_decided(netns: str) -> None:
    """A VERDICT_BATCH for the oldest packets decided alike, one by one behind a held one;
    packets not read yet, or held, are left alone (the kernel would complain later)."""
    queue_rule(netns, QUEUE, "udp dport 9999 udp sport != 9998")
    with NfQueue(netns, QUEUE) as q:
        rx = open_socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind((ADDR4, 9999))
        send_numbered(netns, 12)
        # Read 8 of the 12: the other 4 stay queued in the kernel, unread.
        packets = collect_some(q, 8)
        ids = {p.payload[28:]: p.packet_id for p in packets}
        assert list(ids) == [b"p%02d" % i for i in range(8)]
        # p00-p02 accept, p03 held back, p04 drop, p05-p07 accept.
        q.verdicts([(ids[b"p%02d" % i], i != 4) for i in (0, 1, 2, 4, 5, 6, 7)])
        send_marker(netns)
        assert drain(rx) == [b"p00", b"p01", b"p02", b"p05", b"p06", b"p07"]
        # The held one and the unread ones are still there for their own verdicts.
        rest = collect_some(q, 4)
        assert [p.payload[28:] for p in rest] == [b"p08", b"p09", b"p10", b"p11"]
        q.verdicts([(ids[b"p03"], True)] + [(p.packet_id, True) for p in rest])
        send_marker(netns)
        assert drain(rx) == [b"p03", b"p08", b"p09", b"p10", b"p11"]
        assert q.receive(timeout=0.2) == [] and q.drained
        assert q.verdict_errors == 0
        # A verdict for a packet the kernel does not hold is refused, and counted.
        q.verdict(ids[b"p00"], True)
        assert q.receive(timeout=0.5) == []
        assert q.verdict_errors == 1


def collect_some(q: NfQueue, count: int) -> list[QueuedPacket]:
    """Exactly ``count`` packets, leaving the rest unread."""
    packets: list[QueuedPacket] = []
    for _ in range(50):
        packets += q.receive(timeout=0.1, max_packets=count - len(packets))
        if len(packets) >= count:
            break
    assert len(packets) == count
    assert not q.drained or count == 0
    return packets
