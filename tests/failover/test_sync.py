"""The sync core: bursts coalesce, the latest event wins, gates are never published."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from appliance import model as m
from appliance.failover.sync import (
    DeleteEntries,
    FullResync,
    PutEntries,
    PutReplay,
    SetThresholds,
    SyncCore,
)
from appliance.planner import gate_for
from appliance.xfrm.events import (
    AeChanged,
    PolicyAdded,
    PolicyDeleted,
    SaAdded,
    SaDeleted,
    SaExpired,
    SaFlushed,
)
from appliance.xfrm.types import AeState

pytestmark = pytest.mark.unit

GW = ipaddress.ip_address("192.0.2.1")
PEER = ipaddress.ip_address("192.0.2.2")


def sa(spi: int, oseq: int = 0) -> m.SadEntry:
    return m.SadEntry(
        daddr=PEER, saddr=GW, spi=spi, reqid=1, replay_window=32,
        replay=m.ReplayState(oseq=oseq), mode=m.Mode.TUNNEL,
    )  # fmt: skip


OUT_POL = m.SpdEntry(
    selector=m.Selector(
        daddr=ipaddress.ip_address("203.0.113.0"), saddr=ipaddress.ip_address("198.51.100.0"),
        prefixlen_d=24, prefixlen_s=24,
    ),
    dir=m.Direction.OUT, index=9,
    templates=(m.Template(daddr=PEER, saddr=GW, reqid=1, mode=m.Mode.TUNNEL),),
)  # fmt: skip


def ae(spi: int, oseq: int) -> AeChanged:
    return AeChanged(0, 0, PEER, spi, 50, GW, 1, 16, AeState(m.ReplayState(oseq=oseq), None, None))


def added(entry: m.SadEntry, updated: bool = False) -> SaAdded:
    return SaAdded(0, 0, entry, updated)


def test_nothing_is_due_before_the_coalescing_delay() -> None:
    core = SyncCore(0.02)
    core.resynced([sa(1)], 0.0)
    core.on_event(ae(1, 100), 1.0)
    assert core.get_timer() == pytest.approx(1.02)
    assert core.pending_ops(1.01) == []
    (op,) = core.pending_ops(1.02)
    assert isinstance(op, PutReplay)
    assert core.get_timer() is None


def test_a_burst_of_counter_events_becomes_one_update_with_the_latest() -> None:
    core = SyncCore(0.02)
    core.resynced([sa(1), sa(2)], 0.0)
    for i in range(100):
        core.on_event(ae(1, 1000 + i), 1.0 + i * 0.0001)
    core.on_event(ae(2, 5), 1.015)
    # Later events do not push the deadline back.
    assert core.get_timer() == pytest.approx(1.02)
    (op,) = core.pending_ops(1.02)
    assert isinstance(op, PutReplay)
    assert sorted((s.spi, s.oseq64) for s in op.sas) == [(1, 1099), (2, 5)]
    assert op.sas[0].replay_window == 32  # the SA's window: the event carries none
    assert core.events_coalesced == 99


def test_new_sa_gets_thresholds_at_once_and_is_stored_whole() -> None:
    core = SyncCore(0.05)
    core.on_event(added(sa(7)), 2.0)
    assert core.get_timer() == float("-inf")
    assert core.pending_ops(2.0) == [SetThresholds(sa(7))]
    core.on_event(ae(7, 40), 2.01)  # counters of an SA not stored yet: merged into its put
    (op,) = core.pending_ops(2.05)
    assert isinstance(op, PutEntries)
    assert op.sad[0].replay == m.ReplayState(oseq=40)


def test_add_then_delete_within_the_window_sends_only_the_delete() -> None:
    core = SyncCore(0.02)
    core.on_event(added(sa(7)), 0.0)
    core.on_event(SaDeleted(0, 0, PEER, 7, 50, None), 0.01)
    ops = [op for op in core.pending_ops(0.02) if not isinstance(op, SetThresholds)]
    assert ops == [DeleteEntries(((7, 50),), ())]


def test_hard_expire_deletes_and_soft_expire_does_not() -> None:
    core = SyncCore(0.0)
    core.resynced([sa(1), sa(2)], 0.0)
    core.on_event(SaExpired(0, 0, sa(1), hard=False), 0.0)
    core.on_event(SaExpired(0, 0, sa(2), hard=True), 0.0)
    assert core.pending_ops(0.0) == [DeleteEntries(((2, 50),), ())]


def test_gates_are_never_published() -> None:
    core = SyncCore(0.0)
    gate = gate_for(OUT_POL)
    core.on_event(PolicyAdded(0, 0, gate, updated=True), 0.0)
    core.on_event(PolicyDeleted(0, 0, gate.selector, 1, 9, gate), 0.0)
    assert core.pending_ops(0.0) == []
    core.on_event(PolicyAdded(0, 0, OUT_POL, updated=True), 1.0)
    assert core.pending_ops(1.0) == [PutEntries((), (OUT_POL,))]
    core.on_event(PolicyDeleted(0, 0, OUT_POL.selector, 1, 9, OUT_POL), 2.0)
    assert core.pending_ops(2.0) == [DeleteEntries((), (9,))]


def test_flush_and_unknown_counters_ask_for_a_full_resync_that_replaces_pending() -> None:
    core = SyncCore(0.02)
    core.resynced([sa(1)], 0.0)
    core.on_event(ae(1, 5), 1.0)
    core.on_event(SaFlushed(0, 0, 255), 1.001)
    assert core.get_timer() == 1.001
    assert core.pending_ops(1.001) == [FullResync("kernel flush (SaFlushed)")]
    assert core.pending_ops(5.0) == []
    core.on_event(ae(99, 1), 6.0)
    (op,) = core.pending_ops(6.0)
    assert isinstance(op, FullResync) and "unknown SA" in op.reason


def test_resync_at_a_later_time_waits_and_holds_other_changes() -> None:
    core = SyncCore(0.0)
    core.request_resync("store unreachable", at=10.0)
    core.on_event(added(dataclasses.replace(sa(3))), 1.0)
    assert core.pending_ops(1.0) == [SetThresholds(sa(3))]
    assert core.pending_ops(9.0) == []
    assert core.pending_ops(10.0) == [FullResync("store unreachable")]


def test_a_resync_of_one_store_holds_back_no_change_and_comes_after_them() -> None:
    core = SyncCore(0.0)
    core.request_resync("store 198.51.100.3 failed", at=10.0, store="198.51.100.3")
    core.on_event(added(sa(3)), 1.0)
    assert core.pending_ops(1.0) == [SetThresholds(sa(3)), PutEntries((sa(3),), ())]
    core.on_event(added(sa(4)), 9.5)
    assert core.pending_ops(10.0) == [
        SetThresholds(sa(4)),
        PutEntries((sa(4),), ()),
        FullResync("store 198.51.100.3 failed", frozenset({"198.51.100.3"})),
    ]
    assert core.idle


def test_resyncs_of_stores_add_up_and_one_of_every_store_takes_them_over() -> None:
    core = SyncCore(0.0)
    core.request_resync("a failed", at=10.0, store="a")
    core.request_resync("b failed", at=5.0, store="b")
    assert core.pending_ops(5.0) == [FullResync("a failed", frozenset({"a", "b"}))]
    core.request_resync("a failed", at=10.0, store="a")
    core.request_resync("events lost", at=12.0)
    core.on_event(added(sa(3)), 9.0)
    assert core.pending_ops(9.0) == [SetThresholds(sa(3))]  # held: the dump is newer
    assert core.pending_ops(10.0) == [FullResync("a failed")]  # the earlier time stays
    assert core.idle


@pytest.mark.parametrize("daddr", ["192.0.2.2", "2001:db8:0:0::2"])
def test_one_sa_key_from_the_model_from_raw_payload_fields_and_from_text(daddr: str) -> None:
    from appliance.store import _convert as conv
    from appliance.store.base import SaKey

    addr = ipaddress.ip_address(daddr)
    entry = m.SadEntry(daddr=addr, saddr=addr, spi=0x1234, family=m.family_of(addr))
    payload = conv.sad_to_payload(entry)
    raw = conv.raw_sa_key(payload.spi, payload.family, payload.daddr, payload.protocol)
    key = SaKey.of(entry)
    assert raw == key and hash(raw) == hash(key)
    assert key.daddr == addr and key.dst == raw.dst == addr.compressed
    assert SaKey.make(0x1234, daddr.upper(), "esp") == key
    assert conv.key_of_lookup(conv.lookup_payload(key)) == key
