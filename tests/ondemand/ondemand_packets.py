"""Outer packets for the on-demand tests, built field by field."""

from __future__ import annotations

import ipaddress
import struct


def ipv4(proto: int, body: bytes, dst: str = "192.0.2.10", frag: int = 0) -> bytes:
    src = ipaddress.IPv4Address("198.51.100.7").packed
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, frag, 64, proto, 0, src,
        ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip
    return header + body


def ipv6(nxt: int, body: bytes, dst: str = "2001:db8::10") -> bytes:
    src = ipaddress.IPv6Address("2001:db8::7").packed
    header = struct.pack("!IHBB16s16s", 6 << 28, len(body), nxt, 64, src,
                         ipaddress.IPv6Address(dst).packed)  # fmt: skip
    return header + body


def esp(spi: int, seq: int = 1) -> bytes:
    return struct.pack("!II", spi, seq) + b"\xaa" * 24


def udp(dport: int, payload: bytes, sport: int = 4500) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def esp4(spi: int, dst: str = "192.0.2.10") -> bytes:
    return ipv4(50, esp(spi), dst)


def esp6(spi: int, dst: str = "2001:db8::10") -> bytes:
    return ipv6(50, esp(spi), dst)


def natt4(spi: int, dst: str = "192.0.2.10") -> bytes:
    return ipv4(17, udp(4500, esp(spi)), dst)
