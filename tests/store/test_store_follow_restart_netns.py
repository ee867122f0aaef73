"""A hot standby's follower across a restarted store and a killed etcd leader (issue 13).

Real processes over real UDP: ``ipsec-ha store serve`` in one namespace, the
active node's writer and the standby's follower (``StoreClient`` s built as
the daemon builds them) in another; for etcd, three members in three more.
The store is restarted (SQLite: same database file) or loses its etcd leader
while the follower holds a revision. When the store still holds the changes
after that revision the follower resumes by them (``poll.full`` False); when
they were forgotten (removals pruned beyond its revision) it takes a whole
copy. Either way the copy equals a fresh whole retrieval, and that equals
everything the writer was told was stored.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from entries_factory import make_policy, make_sa
from etcd_process import EtcdMember, leader_of, wait_healthy
from loopback_client import LoopbackClient
from netns_star import in_netns, netns_star
from store_process import StoreProcess, wait_ready, write_config, write_psk

from appliance.failover.config import StoreConfig
from appliance.failover.executor import open_store_clients
from appliance.model import SadEntry, SpdEntry
from appliance.store.base import RevisionGoneError
from appliance.store.client import StoreClient, StoreTimeoutError
from appliance.store.config import load_client_config, load_server_config
from appliance.store.follow import SOURCE_PATIENCE, Follower, Poll
from appliance.store.server import open_backend
from appliance.store.service import StoreService

pytestmark = pytest.mark.netns

_T = TypeVar("_T")

SERVER_ADDR = "192.0.2.1"
CLIENT_ADDR = "192.0.2.2"
ETCD_MEMBERS = {"e1": "192.0.2.11", "e2": "192.0.2.12", "e3": "192.0.2.13"}
PORT = 4501
SID = "gw1"
EPOCH = 1
FIRST = 120
"""SA pairs stored before the follower's first poll."""
PRUNED_HISTORY = 2
"""Removal markers the pruning backend keeps: a few deletes push the horizon past the copy."""


@dataclass
class Ledger:
    """What the writer was told is stored: the store must hold exactly this."""

    sas: dict[int, SadEntry] = field(default_factory=dict)
    policies: dict[int, SpdEntry] = field(default_factory=dict)

    def put(self, writer: StoreClient, tunnels: range) -> None:
        sas, policies = [make_sa(n) for n in tunnels], [make_policy(n) for n in tunnels]
        writer.put_entries(SID, EPOCH, sas, policies)
        self.sas.update((sa.spi, sa) for sa in sas)
        self.policies.update((p.index, p) for p in policies)

    def delete(self, writer: StoreClient, tunnels: range) -> None:
        """Delete each tunnel's SA and policy, one write (one revision) per tunnel."""
        for n in tunnels:
            sa, policy = make_sa(n), make_policy(n)
            writer.delete(SID, EPOCH, [(sa.spi, sa.proto)], [policy.index])
            del self.sas[sa.spi], self.policies[policy.index]

    def count(self, writer: StoreClient, tunnels: range, packets: int) -> None:
        """The tunnels' outbound counters move on (a replay update, not a new SA)."""
        moved = []
        for n in tunnels:
            sa = self.sas[make_sa(n).spi]
            assert sa.replay is not None
            counters = dataclasses.replace(sa.replay, oseq=sa.replay.oseq + packets)
            moved.append(dataclasses.replace(sa, replay=counters))
        writer.update_replay(SID, EPOCH, moved)
        self.sas.update((sa.spi, sa) for sa in moved)

    def churn(self, writer: StoreClient, new: range, gone: range, counted: range) -> None:
        """Puts, deletes and counter updates, as an active node makes them."""
        self.put(writer, new)
        self.delete(writer, gone)
        self.count(writer, counted, 1000)


@dataclass
class Nodes:
    """The active node's writer and the standby's follower, in the client namespace."""

    writer: StoreClient
    follower: Follower

    def close(self) -> None:
        for client in [self.writer, *self.follower.clients]:
            client.close()


def open_nodes(config: Path, psk: Path) -> Nodes:
    """Sockets stay in the namespace they were opened in: call this from the client's."""
    writer = StoreClient.from_config(load_client_config(config))
    # The daemon's follower clients (cli/daemon.py). A poll of a store that is down gives
    # up after 0.2 * (2**4 - 1) = 3 s; that must outlast the channel's dead-peer timeout
    # (1 s), after which a client re-handshakes with a store that restarted and forgot it.
    standby = StoreConfig((SERVER_ADDR,), PORT, psk, timeout_s=0.2, retries=3)
    return Nodes(writer, Follower(open_store_clients(standby, "gw2.follower")))


def assert_copy_is_the_store(poll: Poll, writer: StoreClient, ledger: Ledger) -> None:
    stored = writer.fetch(SID)
    # Nothing lost, nothing resurrected: the store holds what the writer was told ...
    assert {sa.spi: sa for sa in stored.sad} == ledger.sas
    assert {p.index: p for p in stored.spd} == ledger.policies
    # ... and the copy equals it, SAs with their replay counters, and policies.
    assert set(poll.state.sad) == set(stored.sad)
    assert set(poll.state.spd) == set(stored.spd)
    assert poll.state.skipped == stored.skipped == ()
    assert poll.revision == writer.get_changes(SID, poll.revision).revision


def prune_history(
    config: Path, ledger: Ledger, tunnels: range, endpoints: tuple[str, ...] = ()
) -> None:
    """Delete ``tunnels`` through the store's own backend with a short removal history.

    The store server keeps 100,000 removals and does not configure it; this opens
    the backend it serves (same database, same etcd, sealed the same) keeping only
    ``PRUNED_HISTORY``, so a few deletes forget the removals a follower still needs.
    """
    cfg = load_server_config(config)
    if endpoints:
        assert cfg.etcd is not None
        cfg = dataclasses.replace(cfg, etcd=dataclasses.replace(cfg.etcd, endpoints=endpoints))
    backend = open_backend(cfg)
    try:
        backend.removal_history = PRUNED_HISTORY
        ledger.delete(LoopbackClient(StoreService(backend)), tunnels)
    finally:
        backend.close()


@dataclass
class StoreLab:
    ns: dict[str, str]
    config: Path
    psk: Path
    server: StoreProcess

    def in_client_ns(self, fn: Callable[..., _T], *args: object) -> _T:
        return in_netns(self.ns["cli"], fn, *args)


@pytest.fixture
def sqlite_lab(tmp_path: Path, require_root: None) -> Iterator[StoreLab]:
    with netns_star({"srv": SERVER_ADDR, "cli": CLIENT_ADDR}) as ns:
        psk = tmp_path / "cluster.psk"
        write_psk(psk)
        config = write_config(
            tmp_path / "store.toml", psk, SERVER_ADDR, PORT, "sqlite", db_path=tmp_path / "store.db"
        )
        server = StoreProcess(config, ns["srv"], tmp_path / "server.log")
        server.start()
        try:
            yield StoreLab(ns, config, psk, server)
        finally:
            server.kill()


def followed_store(lab: StoreLab) -> tuple[Nodes, Ledger]:
    """Nodes on a store holding ``FIRST`` tunnels, the follower past its first (whole) poll."""
    nodes = lab.in_client_ns(open_nodes, lab.config, lab.psk)
    wait_ready(nodes.writer, lab.server)
    ledger = Ledger()
    ledger.put(nodes.writer, range(FIRST))
    first = nodes.follower.poll(SID)
    assert (first.full, first.changed) == (True, True)
    assert_copy_is_the_store(first, nodes.writer, ledger)
    return nodes, ledger


def whole_copy_then_changes(nodes: Nodes, ledger: Ledger, gone: int, next_tunnel: int) -> None:
    """The store forgot the changes since ``gone``: the next poll takes a whole copy, and
    the poll after more writes (tunnels from ``next_tunnel``) follows by changes again."""
    with pytest.raises(RevisionGoneError):
        nodes.writer.get_changes(SID, gone)
    whole = nodes.follower.poll(SID)
    assert (whole.full, whole.changed) == (True, True)
    assert_copy_is_the_store(whole, nodes.writer, ledger)
    ledger.churn(nodes.writer, range(next_tunnel, next_tunnel + 5), range(40, 43), range(50, 55))
    resumed = nodes.follower.poll(SID)
    assert (resumed.full, resumed.changed) == (False, True)
    assert_copy_is_the_store(resumed, nodes.writer, ledger)


def test_sqlite_restart_resumes_by_changes_and_loses_nothing(sqlite_lab: StoreLab) -> None:
    nodes, ledger = followed_store(sqlite_lab)
    try:
        ledger.churn(nodes.writer, range(FIRST, FIRST + 10), range(0, 5), range(10, 15))
        before = nodes.follower.poll(SID)
        assert (before.full, before.changed) == (False, True)
        assert_copy_is_the_store(before, nodes.writer, ledger)

        sqlite_lab.server.kill(signal.SIGTERM)
        held = nodes.follower.state
        assert held is not None
        held_sas, held_policies = dict(held.sas), dict(held.policies)
        # Polls while the store is down fail (beyond the patience with the copy's store,
        # too) and keep the copy as it was.
        for _ in range(SOURCE_PATIENCE + 1):
            with pytest.raises(StoreTimeoutError):
                nodes.follower.poll(SID)
        assert nodes.follower.state is held and held.revision == before.revision
        assert (held.sas, held.policies) == (held_sas, held_policies)

        sqlite_lab.server.start()  # the same database file
        wait_ready(nodes.writer, sqlite_lab.server)
        ledger.churn(nodes.writer, range(FIRST + 10, FIRST + 30), range(5, 12), range(20, 40))
        after = nodes.follower.poll(SID)
        assert (after.full, after.changed) == (False, True)
        assert after.revision > before.revision
        assert_copy_is_the_store(after, nodes.writer, ledger)

        quiet = nodes.follower.poll(SID)
        assert (quiet.full, quiet.changed, quiet.revision) == (False, False, after.revision)
    finally:
        nodes.close()


def test_sqlite_restart_after_pruned_history_takes_a_whole_copy(sqlite_lab: StoreLab) -> None:
    nodes, ledger = followed_store(sqlite_lab)
    try:
        ledger.churn(nodes.writer, range(FIRST, FIRST + 10), range(0, 5), range(10, 15))
        before = nodes.follower.poll(SID)
        assert (before.full, before.changed) == (False, True)

        sqlite_lab.server.kill(signal.SIGKILL)
        # While the store is down its history is pruned beyond the follower's revision.
        prune_history(sqlite_lab.config, ledger, range(5, 5 + PRUNED_HISTORY + 3))
        sqlite_lab.server.start()
        wait_ready(nodes.writer, sqlite_lab.server)
        ledger.churn(nodes.writer, range(FIRST + 10, FIRST + 20), range(20, 22), range(30, 40))
        whole_copy_then_changes(nodes, ledger, before.revision, FIRST + 20)
    finally:
        nodes.close()


def test_etcd_leader_killed_resumes_by_changes_then_whole_after_pruning(
    tmp_path: Path, require_root: None
) -> None:
    with netns_star({**ETCD_MEMBERS, "srv": SERVER_ADDR, "cli": CLIENT_ADDR}) as ns:
        members = [
            EtcdMember(name, addr, 2379, 2380, tmp_path / name / "data", ns[name])
            for name, addr in ETCD_MEMBERS.items()
        ]
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in members)
        psk = tmp_path / "cluster.psk"
        write_psk(psk)
        config = write_config(
            tmp_path / "store.toml",
            psk,
            SERVER_ADDR,
            PORT,
            "etcd",
            etcd_endpoints=[m.endpoint for m in members],
        )
        server = StoreProcess(config, ns["srv"], tmp_path / "server.log")
        nodes = None
        try:
            for m in members:
                m.start(cluster)
            for m in members:
                in_netns(ns["cli"], wait_healthy, m, 30.0)
            server.start()
            lab = StoreLab(ns, config, psk, server)
            nodes, ledger = followed_store(lab)

            ledger.churn(nodes.writer, range(FIRST, FIRST + 10), range(0, 5), range(10, 15))
            before = nodes.follower.poll(SID)
            assert (before.full, before.changed) == (False, True)

            leader = in_netns(ns["cli"], leader_of, members)
            leader.stop(signal.SIGKILL)
            survivors = [m for m in members if m is not leader]
            ledger.churn(nodes.writer, range(FIRST + 10, FIRST + 30), range(5, 12), range(20, 40))
            after = nodes.follower.poll(SID)
            assert (after.full, after.changed) == (False, True)
            assert after.revision > before.revision
            assert_copy_is_the_store(after, nodes.writer, ledger)
            assert in_netns(ns["cli"], leader_of, survivors) in survivors

            # Another writer of the same cluster forgets removals past the follower's revision.
            in_netns(
                ns["cli"],
                prune_history,
                config,
                ledger,
                range(12, 12 + PRUNED_HISTORY + 3),
                tuple(m.endpoint for m in survivors),
            )
            whole_copy_then_changes(nodes, ledger, after.revision, FIRST + 30)
        finally:
            if nodes is not None:
                nodes.close()
            server.kill()
            for m in members:
                m.stop()
