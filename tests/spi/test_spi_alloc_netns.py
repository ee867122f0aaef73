"""Both lines of defence against SPI collisions, on the host kernel.

Two nodes (one network namespace each) allocate 10,000 SPIs with
XFRM_MSG_ALLOCSPI from their partition ranges: every SPI lies in its node's
range and the two sets are disjoint.  Then the SA store refuses an SA carrying
one node's SPI under the other node's server ID (SPI_COLLISION).  ALLOCSPI only
creates larval SAs, so the host kernel (no ESP transform) suffices.
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import spi
from appliance.store.base import SaKey, SaPut, SpiCollisionError, Status
from appliance.store.sqlite import SqliteStore
from appliance.xfrm import XfrmSocket

pytestmark = pytest.mark.netns

PER_NODE = 10_000
DST = ipaddress.ip_address("192.0.2.1")


@pytest.fixture
def node_namespaces(require_root: None) -> Iterator[list[str]]:
    prefix = f"iha-{secrets.token_hex(3)}-"
    names = [f"{prefix}node{i}" for i in range(2)]
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
            # Larval SAs expire after net.core.xfrm_acq_expires (30 s); keep them for the
            # whole run so an expired SPI is never handed out twice within one node.
            subprocess.run(
                ["ip", "netns", "exec", name, "sysctl", "-qw", "net.core.xfrm_acq_expires=3600"],
                check=True,
                capture_output=True,
            )
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def allocate(netns: str, rng: spi.SpiRange, count: int) -> list[int]:
    with XfrmSocket(netns=netns) as xs:
        # A distinct reqid and seq per call: the kernel otherwise hands back the larval SA
        # (and SPI) it made for an earlier request with the same reqid and addresses.
        return [
            xs.alloc_spi(DST, 50, rng.spi_min, rng.spi_max, reqid=n + 1, seq=n + 1)
            for n in range(count)
        ]


def test_two_nodes_allocations_never_collide_and_the_store_refuses_a_collision(
    node_namespaces: list[str], tmp_path: Path
) -> None:
    ranges = [spi.partition(i, 2) for i in range(2)]
    allocated = [
        allocate(ns, rng, PER_NODE) for ns, rng in zip(node_namespaces, ranges, strict=True)
    ]

    for rng, spis in zip(ranges, allocated, strict=True):
        assert len(set(spis)) == PER_NODE
        outside = [hex(s) for s in spis if s not in rng]
        assert outside == [], f"node {rng.node_index} got SPIs outside its range"
    assert set(allocated[0]).isdisjoint(allocated[1])

    # Second line: the store.  Each node stores its SAs under its own server ID.
    servers = ("gw-node0", "gw-node1")
    with SqliteStore(tmp_path / "store.db") as store:
        epochs = [store.claim(server) for server in servers]
        for server, epoch, spis in zip(servers, epochs, allocated, strict=True):
            puts = [SaPut(SaKey.make(s, str(DST), "esp"), f"sa {s:#x}".encode()) for s in spis]
            store.put(server, epoch, puts)  # disjoint SPIs: no collision
        stolen = SaKey.make(allocated[0][0], str(DST), "esp")
        with pytest.raises(SpiCollisionError) as err:
            store.put(servers[1], epochs[1], [SaPut(stolen, b"node1 reusing node0's SPI")])
        assert err.value.status == Status.SPI_COLLISION
        owner = store.get_by_spi(stolen)
        assert owner is not None and owner.server_id == servers[0]
        assert owner.sa.entry == f"sa {allocated[0][0]:#x}".encode()
