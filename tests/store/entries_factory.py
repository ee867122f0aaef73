"""Realistic SAD/SPD entries for store tests: a tunnel per SA pair, with its policies."""

from __future__ import annotations

import hashlib
import ipaddress

from appliance.model import (
    AeadAlgorithm,
    Key,
    ReplayState,
    SadEntry,
    Selector,
    SpdEntry,
    Template,
)

LOCAL = ipaddress.IPv4Address("198.51.100.1")


def peer(n: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(ipaddress.IPv4Address("203.0.113.0")) + n % 250 + 1)


def make_sa(n: int, spi_base: int = 0x10000000) -> SadEntry:
    """The outbound SA of tunnel ``n`` (reqid n + 1), with an AEAD key derived from n."""
    remote = peer(n)
    return SadEntry(
        daddr=remote,
        spi=spi_base + n,
        proto=50,
        saddr=LOCAL,
        family=2,
        mode=1,
        reqid=n + 1,
        replay_window=32,
        selector=Selector(family=2),
        aead=AeadAlgorithm(
            "rfc4106(gcm(aes))", 160, 128, Key(hashlib.sha256(b"key%d" % n).digest()[:20])
        ),
        replay=ReplayState(oseq=n * 7, seq=0, bitmap=0),
    )


def make_policy(n: int, index_base: int = 0x1000) -> SpdEntry:
    """The outbound policy of tunnel ``n``: 198.18.x.y/32 -> 198.19.x.y/32 via the SA."""
    src = ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.18.0.0")) + n)
    dst = ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.19.0.0")) + n)
    return SpdEntry(
        selector=Selector(daddr=dst, saddr=src, family=2, prefixlen_d=32, prefixlen_s=32),
        dir=1,
        priority=1000,
        index=((index_base + n) << 3) | 1,
        templates=(Template(daddr=peer(n), saddr=LOCAL, proto=50, family=2, reqid=n + 1, mode=1),),
    )


def make_state(count: int, spi_base: int = 0x10000000) -> tuple[list[SadEntry], list[SpdEntry]]:
    return [make_sa(n, spi_base) for n in range(count)], [make_policy(n) for n in range(count)]
