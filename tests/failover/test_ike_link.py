"""The daemon's [ike] side over a real store (SQLite behind the real service): the relay's
IKE SAs are published while active, a full resync makes the store's IKE SAs the book's,
and an incomplete book never deletes what it does not know."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_executor import IN_SA, FakeKernel

from appliance.failover.config import load_daemon_config
from appliance.failover.daemon import FailoverDaemon
from appliance.planner import sa_identity
from appliance.store.base import IkeSaRecord
from appliance.store.service import StoreService
from appliance.store.sqlite import SqliteStore
from appliance.strongswan import HaMessage, HaMessageType, decode
from appliance.strongswan.ike_record import decode_record
from appliance.strongswan.publisher import ike_sa_record
from appliance.strongswan.safety_net import Connection, SafetyNetError
from tests.store.loopback_client import LoopbackClient
from tests.strongswan.ha_recordings import datagrams

pytestmark = pytest.mark.unit

SID = "192.0.2.1"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[LoopbackClient]:
    store = SqliteStore(tmp_path / "store.db")
    yield LoopbackClient(StoreService(store, max_datagram=65000), server="198.51.100.10")
    store.close()


def make_daemon(tmp_path: Path, client: LoopbackClient, failover: str, rest: str) -> FailoverDaemon:
    """A daemon on a fake kernel and the loopback store, with ``[failover]`` lines and the
    tables in ``rest``."""
    psk = tmp_path / "cluster.psk"
    psk.write_text("ab" * 32)
    os.chmod(psk, 0o600)
    path = tmp_path / "daemon.toml"
    path.write_text(
        f'[node]\nid = "gw1"\nserver_id = "{SID}"\nnode_index = 0\n'
        f'[store]\nservers = ["198.51.100.10"]\npsk_file = "{psk}"\nmax_datagram = 65000\n'
        f'[failover]\nstatus_file = "{tmp_path}/status.json"\n{failover}' + rest
    )
    client.max_datagram = 65000
    return FailoverDaemon(
        load_daemon_config(path), FakeKernel(), [client], notify_log=tmp_path / "notify.jsonl"
    )


IKE = '[ike]\ndaemon = "strongswan"\nrelay = "127.0.0.2"\ncharon = "127.0.0.1"\n'


@pytest.fixture
def daemon(tmp_path: Path, client: LoopbackClient) -> FailoverDaemon:
    return make_daemon(tmp_path, client, "", IKE + "feed = false\n")


def messages(*steps: str) -> list[HaMessage]:
    """The recorded datagrams of these steps (all of them: none named), decoded."""
    return [decode(r.data) for r in datagrams() if not steps or r.step in steps]


ESTABLISH = ("start", "segment_drop", "segment_take", "initiate", "add_child")
REKEY = ("rekey_child_client", "rekey_child_gateway", "rekey_ike_client")
TERMINATE = ("terminate_child_client", "terminate_ike_client")


def feed(daemon: FailoverDaemon, items: list[HaMessage]) -> None:
    """What the relay does with each datagram (the socket itself: tests/strongswan)."""
    assert daemon.ike is not None
    for m in items:
        daemon.ike._on_events(daemon.ike.book.handle(m))


def stored(client: LoopbackClient) -> dict[Any, IkeSaRecord]:
    return client.get_server(SID).ike_sas


def book_records(daemon: FailoverDaemon) -> dict[Any, IkeSaRecord]:
    assert daemon.ike is not None
    return {s: ike_sa_record(state) for s, state in daemon.ike.book.sas.items()}


def activate(daemon: FailoverDaemon, client: LoopbackClient) -> None:
    daemon.start_publishing({client.server: client.claim(SID)})


def test_the_active_node_publishes_every_ike_sa_change(
    daemon: FailoverDaemon, client: LoopbackClient
) -> None:
    assert daemon.ike is not None
    activate(daemon, client)
    for steps in (ESTABLISH, REKEY):
        feed(daemon, messages(*steps))
        daemon.publish_ike()
        assert stored(client) == book_records(daemon) != {}
    (record,) = stored(client).values()
    assert decode_record(record.record) == daemon.ike.book.sas[record.spis]
    assert len(record.child_spis) == 4  # two CHILD SAs, inbound and outbound
    feed(daemon, messages(*TERMINATE))
    daemon.publish_ike()
    assert stored(client) == {}
    assert daemon.ike.status()["published"] >= 3


def test_nothing_is_published_while_not_active(
    daemon: FailoverDaemon, client: LoopbackClient
) -> None:
    feed(daemon, messages(*ESTABLISH))
    assert daemon.ike is not None and len(daemon.ike.publisher) == 0
    daemon.publish_ike()
    assert stored(client) == {}
    # Publishing starts with a full resync: the whole book goes then.
    activate(daemon, client)
    daemon.full_resync()
    assert stored(client) == book_records(daemon) != {}


def test_a_resync_deletes_stale_ike_sas_only_for_a_complete_book(
    daemon: FailoverDaemon, client: LoopbackClient
) -> None:
    assert daemon.ike is not None
    epoch = client.claim(SID)
    stale = IkeSaRecord((7, 8), (), b"an IKE SA charon no longer has")
    client.put_ike_sas(SID, epoch, [stale])
    # No RESYNC seen: the book may miss IKE SAs charon made before the daemon started.
    without_start = [m for m in messages(*ESTABLISH) if m.type is not HaMessageType.RESYNC]
    feed(daemon, without_start)
    assert not daemon.ike.book.complete
    daemon.start_publishing({client.server: epoch})
    daemon.full_resync()
    assert stored(client) == {**book_records(daemon), stale.spis: stale}
    # charon's RESYNC at its start: it holds nothing, the book knows all from now.
    feed(daemon, [m for m in messages("start") if m.type is HaMessageType.RESYNC])
    feed(daemon, without_start)
    assert daemon.ike.book.complete
    daemon.full_resync()
    assert stored(client) == book_records(daemon) and stale.spis not in stored(client)


def test_a_resync_keeps_an_ike_sa_whose_child_sa_the_kernel_holds(
    daemon: FailoverDaemon, client: LoopbackClient
) -> None:
    # A takeover moved the old active's kernel SAs, not its charon's IKE SAs: the new
    # active's complete book lacks them, and the store holds the only record of them.
    assert daemon.ike is not None and isinstance(daemon.kernel, FakeKernel)
    epoch = client.claim(SID)
    moved = IkeSaRecord((1, 2), (0x0BAD0001, IN_SA.spi), b"the old active's IKE SA")
    gone = IkeSaRecord((3, 4), (0x0BAD0002, 0x0BAD0003), b"its CHILD SAs are gone too")
    client.put_ike_sas(SID, epoch, [moved, gone])
    daemon.kernel.sad[sa_identity(IN_SA)] = IN_SA
    feed(daemon, messages(*ESTABLISH))
    assert daemon.ike.book.complete
    daemon.start_publishing({client.server: epoch})
    daemon.full_resync()
    assert stored(client) == {**book_records(daemon), moved.spis: moved}
    # once the kernel no longer holds that CHILD SA, nothing keeps the record
    del daemon.kernel.sad[sa_identity(IN_SA)]
    daemon.full_resync()
    assert stored(client) == book_records(daemon)


# -- [ike] feed: the link as the executor's CharonControl ----------------------------------------


class SentToCharon:
    """Stands in for the relay's socket: what the link sends charon, in order."""

    def __init__(self) -> None:
        self.sent: list[HaMessage] = []

    def __call__(self, items: Any) -> None:
        self.sent.extend(items)


def charon_link(tmp_path: Path) -> tuple[Any, SentToCharon]:
    from appliance.failover.ike_link import IkeLink
    from appliance.strongswan.config import IkeConfig
    from appliance.strongswan.relay import RelayAddresses

    config = IkeConfig("strongswan", RelayAddresses(*map(_ip, ("127.0.0.2", "127.0.0.1"))))
    link = IkeLink(config, None, lambda: None)
    sent = SentToCharon()
    link.relay.send = sent  # type: ignore[method-assign]
    return link, sent


def _ip(text: str) -> Any:
    import ipaddress

    return ipaddress.ip_address(text)


def published(tmp_path: Path, *steps: str) -> tuple[Any, dict[Any, IkeSaRecord]]:
    """An active node's link after the recorded ``steps``, and the records it published."""
    active, _ = charon_link(tmp_path)
    for m in messages(*steps):
        active.book.handle(m)
    return active, {s: ike_sa_record(state) for s, state in active.book.sas.items()}


def test_feed_hands_charon_what_it_lacks_and_the_book_follows(tmp_path: Path) -> None:
    from appliance.store.client import Retrieved
    from appliance.strongswan.feed import child_kernel_spis

    # What an active node published: the IKE SA with both CHILD SAs.
    active, records = published(tmp_path, *ESTABLISH)
    (state,) = active.book.sas.values()

    link, sent = charon_link(tmp_path)
    link.book.complete = True  # the relay saw charon start (its RESYNC)
    fetched = Retrieved((), (), "store", ike_sas=records)
    waits: list[frozenset[int]] = []
    rooms: list[frozenset[int]] = []
    spis, removing = link.feed(fetched, waits.append, rooms.append)
    assert sent.sent[0].type is HaMessageType.SEGMENT_TAKE
    assert tuple(sent.sent[1:]) == state.replay()
    assert spis == child_kernel_spis(state) and len(spis) == 4 and removing == frozenset()
    assert waits == [spis]  # the one batch's CHILD SAs were waited for
    assert rooms == [spis]  # room made for them first (none of them was charon's)
    assert set(link.book.sas) == set(records) and link.fed == 1
    # Fed again (a hot standby's next poll): charon holds it already, nothing goes.
    sent.sent.clear()
    assert link.feed(fetched, waits.append, rooms.append) == (spis, frozenset())
    assert sent.sent == []

    link.activate()
    assert sent.sent[-1].type is HaMessageType.SEGMENT_DROP
    # A reclaim once active: the segment goes passive again, charon's IKE SA stays as is.
    sent.sent.clear()
    assert link.feed(fetched, waits.append, rooms.append) == (spis, frozenset())
    assert [m.type for m in sent.sent] == [HaMessageType.SEGMENT_TAKE]

    sent.sent.clear()
    assert link.retire() == spis
    assert [m.type for m in sent.sent] == [HaMessageType.SEGMENT_TAKE, HaMessageType.IKE_DELETE]
    assert sent.sent[1].ike_sa_id == state.add.ike_sa_id
    assert link.book.sas == {} and link.retired == 1
    assert link.status()["fed"] == 1 and link.status()["retired"] == 1


def no_wait(spis: frozenset[int]) -> None:
    """The executor's wait for charon's installs, with nothing to wait for here."""


def test_feed_with_an_incomplete_book_feeds_nothing(tmp_path: Path) -> None:
    from appliance.store.client import Retrieved

    _active, records = published(tmp_path, *ESTABLISH)
    link, sent = charon_link(tmp_path)  # never saw charon start
    fetched = Retrieved((), (), "store", ike_sas=records)
    assert link.feed(fetched, no_wait, no_wait) == (frozenset(), frozenset())
    assert sent.sent == [] and link.book.sas == {}


def test_a_record_that_does_not_decode_is_not_fed_and_counted(tmp_path: Path) -> None:
    from appliance.store.client import Retrieved

    link, sent = charon_link(tmp_path)
    link.book.complete = True
    bad = {(1, 2): IkeSaRecord((1, 2), (), b"\x01\x03 not a record")}
    fetched = Retrieved((), (), "store", ike_sas=bad)
    assert link.feed(fetched, no_wait, no_wait) == (frozenset(), frozenset())
    assert [m.type for m in sent.sent] == [HaMessageType.SEGMENT_TAKE]
    assert link.unreadable == 1 and link.fed == 0


def test_a_hot_standbys_charon_gets_only_what_changed_in_the_store(tmp_path: Path) -> None:
    from appliance.store.client import Retrieved
    from appliance.strongswan.feed import child_kernel_spis

    active, _ = charon_link(tmp_path)
    standby, sent = charon_link(tmp_path)
    standby.book.complete = True
    rooms: list[frozenset[int]] = []

    def step(*steps: str) -> tuple[frozenset[int], frozenset[int]]:
        """The active charon does ``steps``; the standby is fed what the store then holds."""
        for m in messages(*steps):
            active.book.handle(m)
        records = {s: ike_sa_record(state) for s, state in active.book.sas.items()}
        sent.sent.clear()
        return standby.feed(Retrieved((), (), "store", ike_sas=records), no_wait, rooms.append)

    def same_as_active() -> None:
        assert set(standby.book.sas) == set(active.book.sas)
        for spis, state in active.book.sas.items():
            held = standby.book.sas[spis]
            assert child_kernel_spis(held) == child_kernel_spis(state)

    step(*ESTABLISH)
    same_as_active()
    (first,) = active.book.sas
    # A CHILD rekey by the client: the new CHILD SA and the message ID, no IKE_ADD.
    spis, removing = step("rekey_child_client")
    assert [m.type for m in sent.sent] == [HaMessageType.IKE_MID_RESPONDER,
                                           HaMessageType.CHILD_ADD]  # fmt: skip
    same_as_active()
    assert removing == frozenset() and len(spis) == 6
    # The gateway's CHILD rekey: one CHILD SA in, one deleted (charon removes it).
    spis, removing = step("rekey_child_gateway")
    types = [m.type for m in sent.sent]
    assert HaMessageType.CHILD_ADD in types and types[-1] is HaMessageType.CHILD_DELETE
    assert HaMessageType.IKE_ADD not in types and HaMessageType.IKE_DELETE not in types
    assert len(removing) == 2 and not removing & spis
    same_as_active()
    # An IKE rekey: the old IKE SA deleted, the new one fed whole (it holds the CHILD SAs).
    rooms.clear()
    spis, removing = step("rekey_ike_client")
    types = [m.type for m in sent.sent]
    assert types[0] is HaMessageType.IKE_DELETE and sent.sent[0].ike_sa_id is not None
    assert HaMessageType.IKE_ADD in types[1:]
    assert first not in standby.book.sas
    same_as_active()
    # Room is never asked for the SPIs charon held: it removes those itself first.
    assert all(not room & spis for room in rooms)
    # The IKE SA terminated: deleted, and its CHILD SAs are charon's to remove.
    spis, removing = step("terminate_child_client", "terminate_ike_client")
    assert [m.type for m in sent.sent] == [HaMessageType.IKE_DELETE]
    assert spis == frozenset() and len(removing) >= 2
    assert standby.book.sas == {}


class FakeVici:
    """charon's vici as the safety net sees it (the adapter: tests/strongswan)."""

    def __init__(self, held: list[Any], error: str | None = None) -> None:
        self.held, self.error = held, error
        self.initiated: list[tuple[str, str | None]] = []

    def list_sas(self) -> list[Any]:
        if self.error:
            raise SafetyNetError(self.error)
        return self.held

    def list_conns(self) -> list[Connection]:
        return [Connection("gw", ("192.0.2.2",), ("net", "net2"))]

    def initiate(self, connection: str, child: str | None, timeout_ms: int) -> None:
        self.initiated.append((connection, child))
        if child == "net2":
            raise SafetyNetError("vici initiate: CHILD_SA 'net2' failed")


def test_the_safety_net_initiates_what_charon_lacks_and_counts_it(daemon: FailoverDaemon) -> None:
    assert daemon.ike is not None
    feed(daemon, messages(*ESTABLISH))
    vici = FakeVici([])
    verdict = daemon.ike.safety_net(vici, lambda: True)  # type: ignore[arg-type]
    assert verdict is not None and verdict.missing == tuple(daemon.ike.book.sas)
    assert vici.initiated == [("gw", "net"), ("gw", "net2")]
    safety = daemon.ike.status()["safety_net"]
    assert (safety["checks"], safety["initiated"], safety["initiate_failed"]) == (1, 1, 1)
    assert safety["last"]["missing"] == 1 and safety["last"]["error"] is None


def test_the_safety_net_initiates_nothing_once_the_node_left_active(
    daemon: FailoverDaemon,
) -> None:
    assert daemon.ike is not None
    feed(daemon, messages(*ESTABLISH))
    vici = FakeVici([])
    daemon.ike.safety_net(vici, lambda: False)  # type: ignore[arg-type]
    assert vici.initiated == [] and daemon.ike.status()["safety_net"]["last"]["missing"] == 1


def test_a_charon_that_does_not_answer_is_counted_not_raised(daemon: FailoverDaemon) -> None:
    assert daemon.ike is not None
    vici = FakeVici([], error="charon's vici at unix:///x: Connection refused")
    assert daemon.ike.safety_net(vici, lambda: True) is None  # type: ignore[arg-type]
    safety = daemon.ike.status()["safety_net"]
    assert safety["errors"] == 1 and "Connection refused" in safety["last"]["error"]


def _resync() -> HaMessage:
    """charon's RESYNC at start, as recorded."""
    return next(m for m in messages("start") if m.type is HaMessageType.RESYNC)


def test_a_charon_that_restarts_without_deleting_keeps_its_ike_sas_in_the_store(
    tmp_path: Path,
) -> None:
    from appliance.strongswan.feed import child_kernel_spis

    link, _ = charon_link(tmp_path)
    restarts: list[None] = []
    link.on_restart = lambda: restarts.append(None)
    link.set_publishing(True)
    for m in messages(*ESTABLISH):
        link._on_events(link.book.handle(m))
    (state,) = link.book.sas.values()
    link.publisher.take()
    # charon crashed and came back: its RESYNC empties the book, but no deletion is
    # published, and the daemon is told to give the IKE SAs back
    link._on_events(link.book.handle(_resync()))
    assert link.book.sas == {} and len(link.publisher) == 0
    assert restarts == [None] and link.status()["charon_restarts"] == 1
    assert link.lost_connections() == {"gw"}
    orphans = link.orphans()
    assert orphans == child_kernel_spis(state) and len(orphans) == 4
    link.forget_orphans(frozenset(list(orphans)[:1]))  # some still in the kernel: kept
    assert len(link.orphans()) == 3 and link.lost_connections() == {"gw"}
    link.forget_orphans(orphans)
    assert link.orphans() == frozenset() and link.lost_connections() == set()


def test_without_feed_a_restarted_charons_ike_sas_leave_the_store(tmp_path: Path) -> None:
    import dataclasses

    link, _ = charon_link(tmp_path)
    link.config = dataclasses.replace(link.config, feed=False)
    link.on_restart = lambda: pytest.fail("nothing to give back without feed")
    link.set_publishing(True)
    for m in messages(*ESTABLISH):
        link._on_events(link.book.handle(m))
    link.publisher.take()
    link._on_events(link.book.handle(_resync()))
    assert len(link.publisher.take().removed) == 1 and link.orphans() == frozenset()


# -- the daemon's answer to a restarted charon (its scheduling; the plan: test_executor_charon)


@pytest.fixture
def feeding(tmp_path: Path, client: LoopbackClient) -> FailoverDaemon:
    """A daemon with [ike] feed (cold, nft gate), its relay's book holding charon's IKE SA."""
    nft = '[nft]\nvips = ["192.0.2.10"]\nha_relay = true\n'
    d = make_daemon(tmp_path, client, 'gate = "nft"\n', nft + IKE)
    assert d.ike is not None and d.ike.on_restart is not None
    d.ike.set_publishing(True)
    for m in messages(*ESTABLISH):
        d.ike._on_events(d.ike.book.handle(m))
    return d


def answer(d: FailoverDaemon, results: list[bool], role: Any = None) -> list[Any]:
    """Run the answer with plans that give ``results`` in turn; the plans asked for."""
    import asyncio

    from appliance.failover import daemon as daemon_module
    from appliance.failover.transitions import Role

    asked: list[Any] = []

    async def run_plan(actions: Any, what: str, at: float, only_if: Any = None) -> bool | None:
        if only_if is not None and not only_if():
            return None
        asked.append((list(actions), what))
        return results.pop(0)

    async def main() -> None:
        d._loop = asyncio.get_running_loop()
        d.role = role or Role.ACTIVE
        d._write_status(None, None, ok=True)
        d.ike._on_events(d.ike.book.handle(_resync()))  # type: ignore[union-attr]
        assert d._restart_answer is not None
        await d._restart_answer
        for task in list(d._background):
            task.cancel()

    d._run_plan = run_plan  # type: ignore[method-assign]
    d.vici = FakeVici([])  # type: ignore[assignment]
    saved = daemon_module.CHARON_RESTART_RETRY_S
    daemon_module.CHARON_RESTART_RETRY_S = 0.0
    try:
        asyncio.run(main())
    finally:
        daemon_module.CHARON_RESTART_RETRY_S = saved
    return asked


def test_a_failed_answer_is_tried_again_and_the_status_says_so_meanwhile(
    feeding: FailoverDaemon,
) -> None:
    from appliance.failover.transitions import CHARON_RESTARTED

    errors: list[Any] = []
    save = feeding._save_status
    feeding._save_status = lambda st: (errors.append(st["error"]), save(st))  # type: ignore[method-assign]
    asked = answer(feeding, [False, False, True])
    assert asked == [(list(CHARON_RESTARTED), "charon-restart")] * 3
    assert any(e and "attempt 2" in e and "outbound stays gated" in e for e in errors), errors
    assert feeding._status is not None and feeding._status["ok"] is True
    assert feeding._status["error"] is None
    assert feeding._status["ike"]["charon_restarts"] == 1


def test_no_answer_once_the_node_is_not_active(feeding: FailoverDaemon) -> None:
    from appliance.failover.transitions import Role

    assert answer(feeding, [], role=Role.STANDBY) == []
    assert feeding.ike is not None and feeding.ike.orphans() == frozenset()


def test_a_hot_standby_feeds_charon_when_its_ike_sas_change_or_charon_restarts(
    tmp_path: Path, client: LoopbackClient
) -> None:
    from appliance.store.client import Retrieved

    nft = '[nft]\nvips = ["192.0.2.10"]\nha_relay = true\n'
    d = make_daemon(tmp_path, client, 'mode = "hot"\ngate = "nft"\n', nft + IKE)
    assert d.ike is not None
    first = Retrieved((), (), "store", ike_sas={})
    assert d._charon_behind(first)  # never fed
    d._charon_followed = (d.ike.relay.resyncs, first.ike_sas)
    assert not d._charon_behind(first)
    # Other IKE SAs, told by identity (an IKE rekey changes no ESP SA): feed.
    assert d._charon_behind(Retrieved((), (), "store", ike_sas={}))
    # charon started again: it holds nothing, feed whatever the store did.
    d.ike.relay.resyncs += 1
    assert d._charon_behind(first)
    # Without [ike] feed nothing is ever behind.
    plain = make_daemon(tmp_path, client, 'mode = "hot"\n', IKE + "feed = false\n")
    assert not plain._charon_behind(first)


def test_a_feed_never_deletes_or_changes_an_ike_sa_charon_made_itself(tmp_path: Path) -> None:
    from appliance.store.client import Retrieved

    link, sent = charon_link(tmp_path)
    link.book.complete = True
    for m in messages(*ESTABLISH):  # charon's own, live, not in the store (yet)
        link.book.handle(m)
    own = dict(link.book.sas)
    spis, removing = link.feed(Retrieved((), (), "store", ike_sas={}), no_wait, no_wait)
    assert [m.type for m in sent.sent] == [HaMessageType.SEGMENT_TAKE]
    assert link.book.sas == own and removing == frozenset() and len(spis) == 4
    # A stored record of it (older than what charon holds) is not fed either.
    sent.sent.clear()
    records = {s: ike_sa_record(state) for s, state in own.items()}
    link.feed(Retrieved((), (), "store", ike_sas=records), no_wait, no_wait)
    assert sent.sent == []


def test_the_segment_goes_passive_again_when_charon_took_it(tmp_path: Path) -> None:
    import time

    from appliance.store.client import Retrieved

    link, sent = charon_link(tmp_path)
    link.book.complete = True
    link.relay.resyncs, link.relay.last_resync = 1, time.monotonic() - 60.0
    fetched = Retrieved((), (), "store", ike_sas={})
    link.feed(fetched, no_wait, no_wait)
    assert [m.type for m in sent.sent] == [HaMessageType.SEGMENT_TAKE]
    sent.sent.clear()
    link.feed(fetched, no_wait, no_wait)
    assert sent.sent == []  # passive already
    link.relay.segment_takes += 1  # charon took the segment (its watchdog)
    link.feed(fetched, no_wait, no_wait)
    assert [m.type for m in sent.sent] == [HaMessageType.SEGMENT_TAKE]
    # A retire before charon's watchdog could fire does not count as passive for long.
    sent.sent.clear()
    link.relay.resyncs, link.relay.last_resync = 2, time.monotonic()
    link.retire()
    assert link._passive_since is None
    link.relay.last_resync = time.monotonic() - 60.0  # (the feed would wait for it)
    sent.sent.clear()
    link.feed(fetched, no_wait, no_wait)
    assert [m.type for m in sent.sent] == [HaMessageType.SEGMENT_TAKE]


def test_both_halves_of_an_ike_rekey_in_the_store_leave_charon_one_ike_sa(tmp_path: Path) -> None:
    from appliance.store.client import Retrieved
    from appliance.strongswan.feed import child_kernel_spis

    active, _ = charon_link(tmp_path)
    standby, sent = charon_link(tmp_path)
    standby.book.complete = True
    for m in messages(*ESTABLISH, "rekey_child_client"):
        active.book.handle(m)
    old = {s: ike_sa_record(st) for s, st in active.book.sas.items()}
    standby.feed(Retrieved((), (), "store", ike_sas=old), no_wait, no_wait)
    for m in messages("rekey_ike_client"):
        active.book.handle(m)
    new = {s: ike_sa_record(st) for s, st in active.book.sas.items()}
    # The store between the successor's put and the old one's delete: it holds both.
    sent.sent.clear()
    standby.feed(Retrieved((), (), "store", ike_sas={**old, **new}), no_wait, no_wait)
    types = [m.type for m in sent.sent]
    assert types[0] is HaMessageType.IKE_DELETE and types.count(HaMessageType.IKE_DELETE) == 1
    assert set(standby.book.sas) == set(new)
    (state,) = active.book.sas.values()
    assert child_kernel_spis(standby.book.sas[state.spis]) == child_kernel_spis(state)
    # The old record's deletion lands: nothing more to send.
    sent.sent.clear()
    standby.feed(Retrieved((), (), "store", ike_sas=new), no_wait, no_wait)
    assert sent.sent == []


def test_an_ike_sa_charon_lost_child_sas_of_is_fed_again_whole(tmp_path: Path) -> None:
    from appliance.store.client import Retrieved
    from appliance.strongswan.feed import child_kernel_spis

    active, records = published(tmp_path, *ESTABLISH)
    (state,) = active.book.sas.values()
    link, sent = charon_link(tmp_path)
    link.book.complete = True
    fetched = Retrieved((), (), "store", ike_sas=records)
    link.feed(fetched, no_wait, no_wait)
    link.refeed(frozenset(list(child_kernel_spis(state))[:1]))
    sent.sent.clear()
    link.feed(fetched, no_wait, no_wait)
    assert sent.sent[0].type is HaMessageType.IKE_DELETE
    assert tuple(sent.sent[1:]) == state.replay()
