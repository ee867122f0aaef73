"""The service behind the guard's real trap, on a kernel with nft_queue (the lab VM).

A sender namespace reaches the gateway over a veth pair (the guard accepts
loopback before the trap, so one namespace would not do).  The fake
retrieval holds the SPI in the guard's real ``held_spis`` set, as the
daemon's will: afterwards the SPI no longer traps.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from appliance.nft import add_spis, apply_guard, parse_nft_section
from appliance.ondemand import OnDemandService
from tests.nfqueue.nfq_lab import open_socket, run
from tests.nft.nft_lab import counter_packets, esp_packet, receive_all

pytestmark = pytest.mark.lab

QUEUE = 9
GW4, VIP4, SENDER4 = "192.0.2.1", "192.0.2.10", "192.0.2.3"
GW6, VIP6, SENDER6 = "2001:db8::1", "2001:db8::10", "2001:db8::3"
GOOD, BAD = 0x7001, 0x7002


@pytest.fixture
def pair(require_root: None) -> Iterator[tuple[str, str]]:
    prefix = f"iha-{secrets.token_hex(3)}-"
    gw, sender = prefix + "gw", prefix + "tx"
    created = []
    try:
        for name in (gw, sender):
            run("ip", "netns", "add", name)
            created.append(name)
            run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "-n", gw, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
            "netns", sender)  # fmt: skip
        for name, a4, a6 in ((gw, GW4, GW6), (sender, SENDER4, SENDER6)):
            run("ip", "-n", name, "link", "set", "eth0", "up")
            run("ip", "-n", name, "addr", "add", f"{a4}/24", "dev", "eth0")
            run("ip", "-n", name, "addr", "add", f"{a6}/64", "dev", "eth0", "nodad")
        run("ip", "-n", gw, "addr", "add", f"{VIP4}/32", "dev", "eth0")
        run("ip", "-n", gw, "addr", "add", f"{VIP6}/128", "dev", "eth0", "nodad")
        yield gw, sender
    finally:
        for name in created:
            run("ip", "netns", "del", name, check=False)


def test_unknown_spi_is_retrieved_once_then_held(pair: tuple[str, str]) -> None:
    gw, sender = pair
    apply_guard(gw, parse_nft_section({"vips": [VIP4, VIP6], "trap_queue": QUEUE}))
    gate = threading.Event()
    calls: list[tuple[int, str]] = []

    def retrieve(spi: int, daddr: str) -> bool:
        calls.append((spi, daddr))
        if spi != GOOD:
            return False
        gate.wait(30)
        add_spis(gw, [spi])
        return True

    rx4 = open_socket(gw, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ESP)
    rx_natt = open_socket(gw, socket.AF_INET6, socket.SOCK_DGRAM)
    rx_natt.bind((VIP6, 4500))
    tx4 = open_socket(sender, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ESP)
    tx_natt = open_socket(sender, socket.AF_INET6, socket.SOCK_DGRAM)
    with OnDemandService(gw, QUEUE, retrieve) as service:
        for i in range(3):
            tx4.sendto(esp_packet(GOOD, b"early%d" % i), (VIP4, 0))
            tx4.sendto(esp_packet(BAD, b"bad%d" % i), (VIP4, 0))
        tx_natt.sendto(esp_packet(BAD, b"natt-bad"), (VIP6, 4500))
        tx_natt.sendto(b"\0\0\0\0ike", (VIP6, 4500))  # the guard accepts IKE itself
        for _ in range(250):
            if service.counters().queued == 7:
                break
            time.sleep(0.02)
        assert receive_all(rx4, 0.5) == []  # GOOD's packets wait for the retrieval
        gate.set()
        got = [p[-32:] for p in receive_all(rx4, 3.0)]
        assert sorted(got) == [esp_packet(GOOD, b"early%d" % i) for i in range(3)]
        # The SPI is held now: the next packet passes the guard without the queue.
        tx4.sendto(esp_packet(GOOD, b"late"), (VIP4, 0))
        assert [p[-32:] for p in receive_all(rx4, 2.0)] == [esp_packet(GOOD, b"late")]
        assert receive_all(rx_natt, 0.5) == [b"\0\0\0\0ike"]
        counters = service.counters()
    assert sorted(calls) == [(GOOD, VIP4), (BAD, VIP4), (BAD, VIP6)]
    assert (counters.queued, counters.accepted, counters.dropped_unknown) == (7, 3, 4)
    assert counter_packets(gw, "spi_trap_queued") == 7
    assert counter_packets(gw, "esp_accepted") == 1
