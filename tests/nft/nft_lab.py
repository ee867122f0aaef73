"""Helpers for the guard's tests: a three-host lab on a bridge, and nft as a reference.

The lab lives in network namespaces named ``iha-<hex>-<role>`` that are
always removed, whatever the test does.  ``nft`` (the binary) is used only
here, as an independent reader of the state the appliance wrote through
libnftables.
"""

from __future__ import annotations

import json
import secrets
import socket
import struct
import subprocess
from dataclasses import dataclass
from typing import Any

from appliance.netns import run_in_netns

GW4, VIP4, PEER4, STRANGER4 = "192.0.2.1", "192.0.2.10", "192.0.2.2", "192.0.2.3"
GW6, VIP6, PEER6, STRANGER6 = "2001:db8::1", "2001:db8::10", "2001:db8::2", "2001:db8::3"
ROLES = {"peer": (PEER4, PEER6), "stranger": (STRANGER4, STRANGER6), "gw": (GW4, GW6)}


def run(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def nft(netns: str, *args: str, stdin: str | None = None) -> str:
    """Run the nft binary in ``netns`` (the reference reader)."""
    return run("ip", "netns", "exec", netns, "nft", *args, stdin=stdin)


def nft_json(netns: str, *args: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(nft(netns, "-j", *args))["nftables"]
    return items


def counter_packets(netns: str, name: str) -> int:
    for item in nft_json(netns, "list", "counter", "inet", "ipsec_ha", name):
        if "counter" in item:
            return int(item["counter"]["packets"])
    raise AssertionError(f"counter {name} not listed")


@dataclass(frozen=True)
class Lab:
    """Three hosts on one bridge: the gateway (owns the VIPs), a cluster peer, a stranger."""

    gw: str
    peer: str
    stranger: str
    switch: str

    def socket_in(self, netns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
        """A socket that belongs to ``netns`` (created there by a worker thread)."""
        return run_in_netns(netns, lambda: socket.socket(family, kind, proto))


def fresh_prefix() -> str:
    return f"iha-{secrets.token_hex(4)}-"


def esp_packet(spi: int, tag: bytes) -> bytes:
    """An ESP payload: the SPI, sequence number 1, and ``tag`` padded to 24 bytes."""
    return struct.pack("!II", spi, 1) + tag.ljust(24, b".")


def receive_all(sock: socket.socket, wait: float) -> list[bytes]:
    """Datagrams that arrive within ``wait`` seconds of the last one."""
    sock.settimeout(wait)
    got = []
    try:
        while True:
            got.append(sock.recv(4096))
    except TimeoutError:
        return got
