"""Read the SPI and destination of a queued inbound packet (sans-IO).

The packet starts at its network header (what NFQUEUE hands us).  ESP is
either plain (IP protocol 50, the SPI is its first 4 bytes, RFC 4303) or
UDP-encapsulated on port 4500 (RFC 3948), where the same port also carries
IKE (the 4 bytes after the UDP header are zero, the non-ESP marker) and
NAT-keepalives (a single 0xFF byte): those are not ours.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass

IPPROTO_UDP = 17
IPPROTO_ESP = 50
IPPROTO_AH = 51
NAT_T_PORT = 4500

# IPv6 extension headers that may come before ESP, and how to skip them.
_IPV6_HOPOPTS, _IPV6_ROUTING, _IPV6_FRAGMENT, _IPV6_DSTOPTS, _IPV6_NONXT = 0, 43, 44, 60, 59
_MAX_EXT_HEADERS = 8
"""More than this many IPv6 extension headers is treated as malformed."""


class MalformedPacket(ValueError):
    """The packet cannot be read far enough to find an SPI; the message says why."""


@dataclass(frozen=True, slots=True)
class EspPacket:
    """An ESP packet: the SA it needs is (``daddr``, ``spi``, ESP)."""

    spi: int
    daddr: str
    """Destination address, compressed text form (as the store's keys use it)."""
    udp_encap: bool
    """ESP-in-UDP (RFC 3948) rather than plain ESP."""


@dataclass(frozen=True, slots=True)
class NotEsp:
    """A packet that needs no SA: IKE or a NAT-keepalive on port 4500, or not ESP at all."""

    what: str


def parse_outer(data: bytes) -> EspPacket | NotEsp:
    """Classify a packet from its IP header on; :class:`MalformedPacket` if unreadable."""
    if not data:
        raise MalformedPacket("empty packet")
    version = data[0] >> 4
    if version == 4:
        return _ipv4(data)
    if version == 6:
        return _ipv6(data)
    raise MalformedPacket(f"IP version {version}")


def _ipv4(data: bytes) -> EspPacket | NotEsp:
    if len(data) < 20:
        raise MalformedPacket(f"IPv4 header truncated ({len(data)} bytes)")
    ihl = (data[0] & 0x0F) * 4
    total, frag, proto = struct.unpack_from("!H2xHxB", data, 2)
    if ihl < 20 or len(data) < ihl:
        raise MalformedPacket(f"IPv4 header length {ihl} invalid for {len(data)} bytes")
    if total < ihl:
        raise MalformedPacket(f"IPv4 total length {total} below header length {ihl}")
    if frag & 0x1FFF:
        raise MalformedPacket("IPv4 non-first fragment (no transport header)")
    daddr = _address(data[16:20])
    # A copy range shorter than the packet cuts it: read what we got.
    return _transport(proto, data[ihl:total], daddr)


def _ipv6(data: bytes) -> EspPacket | NotEsp:
    if len(data) < 40:
        raise MalformedPacket(f"IPv6 header truncated ({len(data)} bytes)")
    (payload_len,) = struct.unpack_from("!H", data, 4)
    if payload_len == 0:
        raise MalformedPacket("IPv6 jumbogram or empty payload")
    nxt = data[6]
    daddr = _address(data[24:40])
    body = data[40 : 40 + payload_len]
    offset = 0
    for _ in range(_MAX_EXT_HEADERS):
        if nxt in (_IPV6_HOPOPTS, _IPV6_ROUTING, _IPV6_DSTOPTS, IPPROTO_AH):
            if len(body) < offset + 2:
                raise MalformedPacket(f"IPv6 extension header {nxt} truncated")
            size = (body[offset + 1] + 2) * 4 if nxt == IPPROTO_AH else (body[offset + 1] + 1) * 8
            nxt = body[offset]
            offset += size
        elif nxt == _IPV6_FRAGMENT:
            if len(body) < offset + 8:
                raise MalformedPacket("IPv6 fragment header truncated")
            (frag,) = struct.unpack_from("!H", body, offset + 2)
            if frag & 0xFFF8:
                raise MalformedPacket("IPv6 non-first fragment (no transport header)")
            nxt = body[offset]
            offset += 8
        elif nxt == _IPV6_NONXT:
            return NotEsp("IPv6 without payload")
        else:
            return _transport(nxt, body[offset:], daddr)
    raise MalformedPacket(f"more than {_MAX_EXT_HEADERS} IPv6 extension headers")


@functools.lru_cache(maxsize=256)
def _address(packed: bytes) -> str:
    # Trapped packets go to a few VIPs: the text form, costly to build, is cached.
    return str(ipaddress.ip_address(packed))


def _transport(proto: int, seg: bytes, daddr: str) -> EspPacket | NotEsp:
    if proto == IPPROTO_ESP:
        return EspPacket(_spi(seg, "ESP"), daddr, udp_encap=False)
    if proto != IPPROTO_UDP:
        return NotEsp(f"IP protocol {proto}")
    if len(seg) < 8:
        raise MalformedPacket(f"UDP header truncated ({len(seg)} bytes)")
    dport, udp_len = struct.unpack_from("!2xHH", seg)
    if dport != NAT_T_PORT:
        return NotEsp(f"UDP port {dport}")
    if udp_len < 8:
        raise MalformedPacket(f"UDP length {udp_len} below its header")
    payload = seg[8:udp_len]
    if payload == b"\xff":
        return NotEsp("NAT-keepalive")
    if len(payload) >= 4 and payload[:4] == b"\0\0\0\0":
        return NotEsp("IKE (non-ESP marker)")
    return EspPacket(_spi(payload, "ESP-in-UDP"), daddr, udp_encap=True)


def _spi(esp: bytes, what: str) -> int:
    if len(esp) < 4:
        raise MalformedPacket(f"{what} header truncated ({len(esp)} bytes)")
    spi: int = struct.unpack_from("!I", esp)[0]
    if spi == 0:
        raise MalformedPacket(f"{what} with SPI 0 (reserved)")
    return spi
