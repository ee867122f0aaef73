"""A takeover whose store holds an entry that does not decode: the good SAs go in, the bad
one is skipped and reported (the report reaches the daemon's status file)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from test_executor import IN_SA, OUT_POL, OUT_SA, FakeKernel, FakeLoops, cold_takeover

from appliance.failover.executor import ExecutorSettings, PlanExecutor, StoreAccess
from appliance.notify import summary_line
from appliance.planner import sa_identity
from appliance.store import _convert as conv
from appliance.store.base import SaKey
from appliance.store.client import RetrievedState, StoreClient
from appliance.wire.entries import AttributeType, replay_update_for
from appliance.wire.payloads import Attribute

pytestmark = pytest.mark.unit

BAD_SPI = 0x3003


class OneStoreClient:
    """The part of ``StoreClient`` that ``StoreAccess`` uses, over a prepared state."""

    server = "198.51.100.10"

    def __init__(self, state: RetrievedState) -> None:
        self.state = state

    def claim(self, server_id: str) -> int:
        return 5

    def get_server(self, server_id: str, stop: object = None) -> RetrievedState:
        return self.state

    fetch = StoreClient.fetch


def stored_state() -> RetrievedState:
    bad = conv.sad_to_payload(dataclasses.replace(OUT_SA, spi=BAD_SPI))
    attrs = tuple(
        Attribute(a.type, a.value[:8]) if a.type == AttributeType.SELECTOR else a
        for a in bad.attributes
    )
    entries = [OUT_SA, IN_SA]
    sad = [conv.sad_entry_bytes(conv.sad_to_payload(s)) for s in entries]
    sad.insert(1, conv.sad_entry_bytes(dataclasses.replace(bad, attributes=attrs)))
    # IN_SA's stored replay update carries two bitmap words for a legacy SA: it does not apply.
    broken = dataclasses.replace(replay_update_for(IN_SA), bitmap=(1, 2))
    return RetrievedState(
        "192.0.2.1",
        3,
        sad_entries=sad,
        spd_entries=[conv.spd_entry_bytes(conv.spd_to_payload(OUT_POL))],
        replay={conv.sa_key_of(IN_SA): broken},
    )


def test_takeover_installs_the_good_sas_and_reports_the_skipped_ones() -> None:
    kernel, loops = FakeKernel(), FakeLoops()
    settings = ExecutorSettings("192.0.2.1", 50_000, 10.0, 1000, 125)
    access = StoreAccess([OneStoreClient(stored_state())])
    executor = PlanExecutor(kernel, access, loops, settings, local_addresses=lambda: [OUT_SA.saddr])
    report = executor.run(cold_takeover())
    assert sa_identity(OUT_SA) in kernel.sad
    assert [sa.spi for sa in kernel.sad.values()] == [OUT_SA.spi]
    assert report.installed_sas == 1
    assert report.skipped_entries == 2
    assert f"SPI 0x{BAD_SPI:08x}" in report.skipped[0]
    assert f"spi 0x{IN_SA.spi:08x}" in report.skipped[1] and "bitmap" in report.skipped[1]
    assert report.to_dict()["skipped_entries"] == 2  # what the status file carries
    fetched = next(t for t in report.timeline if t.step == "fetch-state")
    assert fetched.detail["skipped"] == 2


def test_the_notify_summary_names_the_skipped_entries(tmp_path: Path) -> None:
    daemon = {"pid": 1, "role": "active", "installed_sas": 1, "advanced": 1, "skipped_entries": 2}
    out = {"type": "INSTANCE", "name": "VI_1", "state": "MASTER", "daemon": daemon}
    assert "2 stored entries skipped" in summary_line(out, tmp_path / "notify.log")


def test_a_fetch_gives_each_sa_its_latest_stored_counters() -> None:
    moved = dataclasses.replace(IN_SA, replay=dataclasses.replace(IN_SA.replay, seq=9000))  # type: ignore[type-var]
    state = RetrievedState(
        "192.0.2.1",
        3,
        sad_entries=[conv.sad_entry_bytes(conv.sad_to_payload(s)) for s in (OUT_SA, IN_SA)],
        replay={SaKey.of(IN_SA): replay_update_for(moved)},
        pages=2,
    )
    fetched = StoreAccess([OneStoreClient(state)]).fetch("192.0.2.1")
    assert fetched.sad == (OUT_SA, moved) and fetched.skipped == ()
    assert (fetched.source, fetched.server_id, fetched.epoch, fetched.pages) == (
        OneStoreClient.server, "192.0.2.1", 3, 2,
    )  # fmt: skip
