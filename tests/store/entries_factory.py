"""Realistic SAD/SPD entries for store tests: a tunnel per SA pair, with its policies."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest

from appliance.model import (
    AeadAlgorithm,
    KeyMaterial,
    ReplayState,
    SadEntry,
    Selector,
    SpdEntry,
    Template,
)
from appliance.store.base import IkeSaRecord, NotFoundError
from appliance.store.client import StoreClient

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
            "rfc4106(gcm(aes))", 160, 128, KeyMaterial(hashlib.sha256(b"key%d" % n).digest()[:20])
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


def store_two_server_ids(client: StoreClient) -> int:
    """gw1: 3 SAs, 3 policies and 1 IKE SA, claimed to epoch 2; gw2: 2 and 2 at epoch 5;
    then one SA_Retr that misses. The SA_Stor messages sent, the claim counted in."""
    messages = client.put_entries(
        "gw1", 1, [make_sa(n) for n in range(3)], [make_policy(n) for n in range(3)]
    )
    messages += client.put_entries(
        "gw2",
        5,
        [make_sa(n, 0x20000000) for n in range(2)],
        [make_policy(n, 0x2000) for n in range(2)],
    )
    messages += client.put_ike_sas(
        "gw1", 1, [IkeSaRecord((0xA1, 0xB1), (make_sa(0).spi,), b"an IKE SA record")]
    )
    assert client.claim("gw1") == 2
    with pytest.raises(NotFoundError):
        client.get_spi(0x30000000, "203.0.113.9")
    return messages + 1
