"""A 3-member etcd cluster in namespaces: kill the leader during writes, lose nothing acked."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
from etcd_process import EtcdMember, leader_of, wait_healthy
from netns_star import in_netns, netns_star
from store_contract import sa_put

from appliance.store.etcd import EtcdStore

pytestmark = pytest.mark.netns

MEMBERS = {"e1": "192.0.2.11", "e2": "192.0.2.12", "e3": "192.0.2.13"}
BATCHES = 60
PER_BATCH = 20


def test_leader_killed_during_writes_loses_nothing_acknowledged(
    tmp_path: Path, require_root: None
) -> None:
    with netns_star({**MEMBERS, "cli": "192.0.2.20"}) as ns:
        members = [
            EtcdMember(name, addr, 2379, 2380, tmp_path / name / "data", ns[name])
            for name, addr in MEMBERS.items()
        ]
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in members)
        try:
            for m in members:
                m.start(cluster)
            for m in members:
                in_netns(ns["cli"], wait_healthy, m, 30.0)

            def writer() -> tuple[list[int], str]:
                store = EtcdStore([m.endpoint for m in members], timeout=1.0, retry_for=30.0)
                acked: list[int] = []
                killed = ""
                for batch in range(BATCHES):
                    if batch == BATCHES // 4:
                        victim = leader_of(members)
                        killed = victim.name
                        # SIGKILL lands while the next transactions are in flight.
                        threading.Timer(0.005, os.killpg, (victim.proc.pid, signal.SIGKILL)).start()  # type: ignore[union-attr]
                    sas = [sa_put(batch * PER_BATCH + i, "gw1") for i in range(PER_BATCH)]
                    store.put("gw1", 1, sas)
                    acked += [batch * PER_BATCH + i for i in range(PER_BATCH)]
                store.close()
                return acked, killed

            acked, killed = in_netns(ns["cli"], writer)
            assert killed and len(acked) == BATCHES * PER_BATCH
            survivors = [m for m in members if m.name != killed]

            def read_back() -> tuple[dict[int, bytes], dict[str, int]]:
                store = EtcdStore([m.endpoint for m in survivors], timeout=1.0)
                found = {}
                for page in store.iter_server("gw1", 100):
                    for sa in page.sas:
                        found[sa.key.spi - 0x1000] = sa.entry
                counts = {m.name: 0 for m in survivors}
                for m in survivors:  # every surviving member has every write
                    one = EtcdStore([m.endpoint], timeout=1.0)
                    counts[m.name] = one.stats().servers[0].sas
                    one.close()
                store.close()
                return found, counts

            found, counts = in_netns(ns["cli"], read_back)
            for n in acked:
                assert found[n] == sa_put(n, "gw1").entry
            assert set(counts.values()) == {len(acked)}, json.dumps(counts)
        finally:
            for m in members:
                m.stop()
