"""The unknown-SPI trap on a kernel with nft_queue (the lab VM's stock Debian kernel).

Nobody listens on the queue here, so a trapped packet must vanish: the rule
has no ``bypass``.  An SPI added to ``held_spis`` gets through; above the
rate limit, trapped packets are counted and dropped.
"""

from __future__ import annotations

import socket

import pytest
from nft_lab import PEER4, PEER6, VIP4, VIP6, Lab, counter_packets, esp_packet, receive_all

from appliance.nft import add_spis, apply_guard, parse_nft_section, remove_spis

pytestmark = pytest.mark.lab

QUEUE = 7
CONFIG = parse_nft_section(
    {"vips": [VIP4, VIP6], "peers": [PEER4, PEER6], "trap_queue": QUEUE, "trap_rate": 1,
     "trap_burst": 2}
)  # fmt: skip


def send(lab: Lab, family: int, kind: int, proto: int, to: tuple[str, int], data: bytes) -> None:
    with lab.socket_in(lab.stranger, family, kind, proto) as sock:
        sock.sendto(data, to)


def test_esp_with_an_unknown_spi_is_trapped_and_a_held_spi_passes(lab: Lab) -> None:
    apply_guard(lab.gw, CONFIG)
    with lab.socket_in(lab.gw, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ESP) as esp4:
        send(lab, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ESP, (VIP4, 0),
             esp_packet(0x5001, b"unknown"))  # fmt: skip
        assert receive_all(esp4, 2.0) == []
        assert counter_packets(lab.gw, "spi_trap_queued") == 1
        assert counter_packets(lab.gw, "esp_accepted") == 0

        add_spis(lab.gw, [0x5001])
        send(lab, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ESP, (VIP4, 0),
             esp_packet(0x5001, b"held"))  # fmt: skip
        assert [p[-32:] for p in receive_all(esp4, 2.0)] == [esp_packet(0x5001, b"held")]
        assert counter_packets(lab.gw, "esp_accepted") == 1

        remove_spis(lab.gw, [0x5001])
        send(lab, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ESP, (VIP4, 0),
             esp_packet(0x5001, b"released"))  # fmt: skip
        assert receive_all(esp4, 2.0) == []
    assert counter_packets(lab.gw, "esp_accepted") == 1
    trap_total = counter_packets(lab.gw, "spi_trap_queued") + counter_packets(
        lab.gw, "spi_trap_dropped"
    )
    assert trap_total == 2


def test_ipv6_esp_with_an_unknown_spi_is_trapped(lab: Lab) -> None:
    apply_guard(lab.gw, CONFIG)
    add_spis(lab.gw, [0x6001])
    with lab.socket_in(lab.gw, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ESP) as esp6:
        for spi in (0x6002, 0x6001):
            send(lab, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ESP, (VIP6, 0),
                 esp_packet(spi, b"v6"))  # fmt: skip
        assert receive_all(esp6, 2.0) == [esp_packet(0x6001, b"v6")]
    assert counter_packets(lab.gw, "spi_trap_queued") == 1


def test_esp_in_udp_is_trapped_by_the_spi_after_the_udp_header(lab: Lab) -> None:
    apply_guard(lab.gw, CONFIG)
    add_spis(lab.gw, [0x7001])
    ike = b"\x00\x00\x00\x00" + b"ike-with-non-esp-marker"
    keepalive = b"\xff"  # RFC 3948 NAT-keepalive: too short to hold an SPI
    with lab.socket_in(lab.gw, socket.AF_INET, socket.SOCK_DGRAM) as port4500:
        port4500.bind(("0.0.0.0", 4500))
        for payload in (
            esp_packet(0x7002, b"unknown"),
            ike,
            esp_packet(0x7001, b"held"),
            keepalive,
        ):
            send(lab, socket.AF_INET, socket.SOCK_DGRAM, 0, (VIP4, 4500), payload)
        assert receive_all(port4500, 2.0) == [ike, esp_packet(0x7001, b"held"), keepalive]
    assert counter_packets(lab.gw, "spi_trap_queued") == 1
    assert counter_packets(lab.gw, "ike_accepted") == 1
    assert counter_packets(lab.gw, "esp_in_udp_accepted") == 2


def test_above_the_rate_limit_trapped_packets_are_counted_and_dropped(lab: Lab) -> None:
    apply_guard(lab.gw, CONFIG)  # 1 packet/second, burst 2
    sent = 12
    with (
        lab.socket_in(lab.gw, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ESP) as esp4,
        lab.socket_in(lab.stranger, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ESP) as sock,
    ):
        for index in range(sent):
            sock.sendto(esp_packet(0x8000 + index, b"flood"), (VIP4, 0))
        assert receive_all(esp4, 1.0) == []
    queued = counter_packets(lab.gw, "spi_trap_queued")
    dropped = counter_packets(lab.gw, "spi_trap_dropped")
    assert queued + dropped == sent
    assert queued >= 1
    assert dropped >= 1
