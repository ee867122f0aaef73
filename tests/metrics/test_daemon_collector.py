"""``DaemonCollector``: every contract metric from a fake daemon, as a scraper parses it."""

from __future__ import annotations

import os
import time
from collections import Counter
from ipaddress import IPv4Address
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from appliance.failover.health import DaemonHealth, StoreProbe
from appliance.failover.ike_link import IkeLink
from appliance.failover.transitions import Role, StandbyMode
from appliance.metrics.daemon_collector import DaemonCollector, GuardCounters, merge_histograms
from appliance.metrics.latency import LatencyHistogram
from appliance.nft.render import COUNTERS
from appliance.strongswan.config import IkeConfig
from appliance.strongswan.relay import RelayAddresses
from tests.strongswan.ha_recordings import datagrams

SID = "192.0.2.1"
S1, S2 = "198.51.100.10", "198.51.100.11"


class Client:
    def __init__(self, server: str, retransmissions: int, rtts: list[float], drops: Any) -> None:
        self.server = server
        self.retransmissions = retransmissions
        self.rtt = LatencyHistogram()
        for r in rtts:
            self.rtt.observe(r)
        self.channel_drops = Counter(drops)


def fake_daemon(role: Role = Role.ACTIVE, ondemand: bool = True) -> Any:
    health = DaemonHealth()
    health.record_probe(S1, StoreProbe(True, None, 0.002, 3, 4, 5, 1000.0))
    health.record_probe(S2, StoreProbe(False, "no answer", None, None, None, None, 1000.0))
    health.record_sync(50.0, 990.0)
    health.record_held(4, 5)
    health.record_transition("BACKUP", True)
    health.record_transition("MASTER", True)
    health.record_transition("FENCED", False)
    health.record_takeover(
        True,
        duration_s=0.3,
        timeline=[{"step": "notify-received", "monotonic": 1.0},
                  {"step": "claim-ownership", "monotonic": 1.1},
                  {"step": "done", "monotonic": 1.3}],
        received_unix=980.0,
    )  # fmt: skip
    health.count_sync(S1, "put", "ok")
    health.count_sync(S1, "put", "ok")
    health.count_sync(S2, "put", "failed")
    installer_client = Client(S1, 1, [0.001], {})
    od = SimpleNamespace(
        status=lambda: {"running": True, "error": None, "queue_num": 3, "queued": 7,
                        "retrievals": 2, "sas": {"installed": 2, "not_found": 1}},
        installer=SimpleNamespace(stores=[installer_client]),
    )  # fmt: skip
    return SimpleNamespace(
        config=SimpleNamespace(
            node=SimpleNamespace(id="gw1", server_id=SID),
            failover=SimpleNamespace(mode=StandbyMode.HOT),
            netns="gw",
        ),
        role=role,
        fenced=False,
        epochs={S1: 3},
        health=health,
        stores=[Client(S1, 2, [0.001, 0.003], {"auth-failed": 1}), Client(S2, 5, [], {})],
        follower=SimpleNamespace(clients=[Client(S1, 1, [0.2], {"replayed": 2})]),
        probe_clients=[Client(S1, 0, [0.001], {})],
        ondemand=od if ondemand else None,
    )


def scrape(collector: DaemonCollector) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted labels: value}, as a scraper reads the text."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def collector(daemon: Any, **kw: Any) -> DaemonCollector:
    def guard(with_held: bool) -> GuardCounters:
        return GuardCounters({"esp_dropped": (3, 300), "ike_accepted": (10, 1000)}, 42)

    kw.setdefault("xfrm_stat", lambda: {"XfrmInStateSeqError": 9, "XfrmInNoStates": 1})
    kw.setdefault("guard", guard)
    kw.setdefault("clock", lambda: 53.5)
    return DaemonCollector(daemon, **kw)


def one(samples: dict[tuple[tuple[str, str], ...], float], **labels: str) -> float:
    return samples[tuple(sorted(labels.items()))]


@pytest.mark.unit
def test_every_contract_metric_of_an_active_node() -> None:
    m = scrape(collector(fake_daemon()))
    assert one(m["ipsec_ha_info"], node="gw1", server_id=SID, mode="hot") == 1
    assert {k: v for k, v in m["ipsec_ha_role"].items() if v} == {
        (("role", "active"), ("server_id", SID)): 1
    }
    assert len(m["ipsec_ha_role"]) == 3
    assert one(m["ipsec_ha_fenced"], server_id=SID) == 0
    assert one(m["ipsec_ha_epoch"], server_id=SID, store=S1) == 3
    assert one(m["ipsec_ha_store_up"], store=S1) == 1
    assert one(m["ipsec_ha_store_up"], store=S2) == 0
    assert one(m["ipsec_ha_store_epoch"], server_id=SID, store=S1) == 3
    assert one(m["ipsec_ha_store_sas"], server_id=SID, store=S1) == 4
    assert one(m["ipsec_ha_store_policies"], server_id=SID, store=S1) == 5
    assert len(m["ipsec_ha_store_sas"]) == 1  # the store that did not answer has no count
    assert one(m["ipsec_ha_held_sas"], server_id=SID) == 4
    assert one(m["ipsec_ha_held_policies"], server_id=SID) == 5
    assert "ipsec_ha_standby_lag_seconds" not in m  # active: no lag
    assert one(m["ipsec_ha_last_sync_timestamp_seconds"], server_id=SID) == 990.0
    assert one(m["ipsec_ha_transitions_total"], server_id=SID, state="MASTER", result="ok") == 1
    assert one(m["ipsec_ha_transitions_total"], server_id=SID, state="FENCED",
               result="failed") == 1  # fmt: skip
    assert one(m["ipsec_ha_takeovers_total"], server_id=SID, result="ok") == 1
    assert one(m["ipsec_ha_takeovers_total"], server_id=SID, result="failed") == 0
    assert one(m["ipsec_ha_takeover_duration_seconds_count"], server_id=SID) == 1
    assert one(m["ipsec_ha_takeover_duration_seconds_sum"], server_id=SID) == 0.3
    assert one(m["ipsec_ha_takeover_duration_seconds_bucket"], server_id=SID, le="0.25") == 0
    assert one(m["ipsec_ha_takeover_duration_seconds_bucket"], server_id=SID, le="0.5") == 1
    steps = m["ipsec_ha_last_takeover_step_seconds"]
    assert one(steps, server_id=SID, step="claim-ownership") == pytest.approx(0.1)
    assert one(steps, server_id=SID, step="done") == pytest.approx(0.2)
    assert one(m["ipsec_ha_last_takeover_timestamp_seconds"], server_id=SID) == 980.0
    assert one(m["ipsec_ha_sync_messages_total"], store=S1, op="put", result="ok") == 2
    assert one(m["ipsec_ha_sync_messages_total"], store=S2, op="put", result="failed") == 1
    # summed over the daemon's, the follower's, the probe's and on-demand's clients
    assert one(m["ipsec_ha_store_retransmissions_total"], store=S1) == 2 + 1 + 0 + 1
    assert one(m["ipsec_ha_store_retransmissions_total"], store=S2) == 5
    assert one(m["ipsec_ha_store_rtt_seconds_count"], store=S1) == 5
    assert one(m["ipsec_ha_store_rtt_seconds_sum"], store=S1) == pytest.approx(0.206)
    assert one(m["ipsec_ha_store_rtt_seconds_count"], store=S2) == 0
    assert one(m["ipsec_ha_channel_drops_total"], store=S1, reason="auth-failed") == 1
    assert one(m["ipsec_ha_channel_drops_total"], store=S1, reason="replayed") == 2
    assert one(m["ipsec_ha_kernel_xfrm_stat_total"], counter="XfrmInStateSeqError") == 9
    assert one(m["ipsec_ha_guard_packets_total"], counter="esp_dropped") == 3
    assert one(m["ipsec_ha_guard_bytes_total"], counter="ike_accepted") == 1000
    assert one(m["ipsec_ha_ondemand_events_total"], event="queued") == 7
    assert one(m["ipsec_ha_ondemand_events_total"], event="sa_not_found") == 1
    assert ("event", "queue_num") not in {k for s in m["ipsec_ha_ondemand_events_total"]
                                          for k in s}  # fmt: skip
    assert m["ipsec_ha_ondemand_held_spis"] == {(): 42}


@pytest.mark.unit
def test_a_standby_has_a_lag_and_no_epoch() -> None:
    m = scrape(collector(fake_daemon(Role.STANDBY)))
    assert one(m["ipsec_ha_standby_lag_seconds"], server_id=SID) == 3.5
    assert "ipsec_ha_epoch" not in m
    assert one(m["ipsec_ha_role"], server_id=SID, role="standby") == 1


@pytest.mark.unit
def test_a_hot_standby_counts_its_polls_and_shows_its_revision() -> None:
    daemon = fake_daemon(Role.STANDBY)
    assert "ipsec_ha_follower_revision" not in scrape(collector(daemon))  # never polled
    for result, revision in (("whole", 40), ("unchanged", 40), ("unchanged", 40), ("changes", 47)):
        daemon.health.record_poll(result, revision)
    m = scrape(collector(daemon))
    for result, count in (("whole", 1), ("unchanged", 2), ("changes", 1)):
        assert one(m["ipsec_ha_follower_polls_total"], server_id=SID, result=result) == count
    assert one(m["ipsec_ha_follower_revision"], server_id=SID) == 47


@pytest.mark.unit
def test_without_ondemand_the_held_set_is_not_listed() -> None:
    reads: list[bool] = []

    def guard(with_held: bool) -> GuardCounters:
        reads.append(with_held)
        return GuardCounters({"esp_dropped": (1, 2)})

    m = scrape(collector(fake_daemon(ondemand=False), guard=guard))
    assert reads == [False]
    assert "ipsec_ha_ondemand_events_total" not in m and "ipsec_ha_ondemand_held_spis" not in m


@pytest.mark.unit
def test_a_failing_live_read_gives_no_samples_and_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: Any) -> Any:
        raise OSError("cannot load libnftables")

    c = collector(fake_daemon(ondemand=False), xfrm_stat=broken, guard=broken)
    with caplog.at_level("WARNING", logger="ipsec_ha.metrics"):
        for _ in range(3):
            m = scrape(c)
    assert "ipsec_ha_kernel_xfrm_stat_total" not in m and "ipsec_ha_guard_packets_total" not in m
    assert one(m["ipsec_ha_store_up"], store=S1) == 1  # the rest of the scrape is there
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2  # one per kind of read, not one per scrape


@pytest.mark.unit
def test_histograms_of_the_same_store_add_up() -> None:
    a, b = LatencyHistogram(), LatencyHistogram()
    a.observe(0.001)
    b.observe(0.001)
    b.observe(7.0)
    merged = merge_histograms([a.snapshot(), b.snapshot()])
    assert merged is not None and merged.count == 3 and merged.sum == pytest.approx(7.002)
    assert dict(merged.buckets)[0.001] == 2 and dict(merged.buckets)[float("inf")] == 3
    assert merge_histograms([]) is None


def metrics_threads() -> set[str]:
    """This process's threads whose name in /proc is the metrics' (the bench's count)."""
    found = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip().startswith("ipsec-ha-metric"):
                    found.add(tid)
        except FileNotFoundError:
            continue
    return found


def metrics_threads_soon(expected: set[str]) -> set[str]:
    """``metrics_threads()`` once it is ``expected`` or after 2 s (a joined thread's task
    leaves /proc a moment after ``join`` returns)."""
    deadline = time.monotonic() + 2
    while (found := metrics_threads()) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return found


@pytest.mark.unit
def test_the_live_reads_run_in_one_metrics_thread_that_close_ends() -> None:
    d = fake_daemon(ondemand=False)
    d.config.netns = None  # the live reads of this namespace; the guard's is a stand-in
    before = metrics_threads()
    c = collector(d, xfrm_stat=None)
    for _ in range(3):
        scrape(c)
    assert len(metrics_threads() - before) == 1
    c.close()
    assert metrics_threads_soon(before) == before


@pytest.mark.netns
def test_the_figures_of_a_real_guard_in_the_served_namespace(require_root: None) -> None:
    from appliance.netns import temporary_netns
    from appliance.nft import add_spis, apply_guard, parse_nft_section

    with temporary_netns("collector") as ns:
        apply_guard(ns, parse_nft_section({"vips": ["192.0.2.1"], "peers": ["198.51.100.3"]}))
        add_spis(ns, [0x1001, 0x1002, 0x1003])
        d = fake_daemon()
        d.config.netns = ns
        c = DaemonCollector(d)
        try:
            m = scrape(c)
            assert one(m["ipsec_ha_guard_packets_total"], counter="esp_dropped") == 0
            assert len(m["ipsec_ha_guard_bytes_total"]) == len(COUNTERS)
            assert m["ipsec_ha_ondemand_held_spis"] == {(): 3}
            if os.path.exists("/proc/net/xfrm_stat"):
                assert one(m["ipsec_ha_kernel_xfrm_stat_total"], counter="XfrmOutPolBlock") == 0
        finally:
            c.close()


@pytest.mark.unit
def test_the_ike_relays_figures_with_ike_configured() -> None:
    addresses = RelayAddresses(IPv4Address("127.0.0.2"), IPv4Address("127.0.0.1"))
    link = IkeLink(IkeConfig("strongswan", addresses), None, lambda: None)
    recorded = [r.data for r in datagrams() if r.step in ("start", "initiate", "add_child")]
    for data in [*recorded, b"\x04\x01"]:  # what the relay's socket does with each datagram
        link.relay.datagram_received(data, ("127.0.0.1", 4510))
    d = fake_daemon(ondemand=False)
    d.ike = link
    m = scrape(collector(d))
    assert m["ipsec_ha_ike_sas"] == {(("server_id", SID),): 1}
    assert m["ipsec_ha_ike_child_sas"] == {(("server_id", SID),): 2}
    assert m["ipsec_ha_ike_book_complete"] == {(("server_id", SID),): 1}
    assert (
        one(m["ipsec_ha_ike_datagrams_total"], server_id=SID, result="received")
        == len(recorded) + 1
    )
    assert (
        one(m["ipsec_ha_ike_datagrams_total"], server_id=SID, result="dropped: HaVersionError") == 1
    )
    assert m["ipsec_ha_ike_records_published_total"] == {(("server_id", SID),): 0}
    assert 0 <= one(m["ipsec_ha_ike_charon_silent_seconds"], server_id=SID) < 60
    assert one(m["ipsec_ha_ike_safety_net_total"], server_id=SID, outcome="checks") == 0
    assert len(m["ipsec_ha_ike_safety_net_total"]) == 5
    assert m["ipsec_ha_ike_charon_restarts_total"] == {(("server_id", SID),): 0}
    assert "ipsec_ha_ike_sas" not in scrape(collector(fake_daemon(ondemand=False)))


@pytest.mark.unit
def test_the_gate_lease_with_the_nft_gate_leased() -> None:
    from types import SimpleNamespace

    from appliance.failover.gate_lease import LeasedGate

    class Gate:
        lease_s = 2.0

        def renew(self) -> None:
            pass

        def stop_renewals(self) -> None:
            pass

    leased = LeasedGate(Gate())  # type: ignore[arg-type]
    leased._open.set()  # as after open(), without the renewal thread
    leased.renew_once()
    d = fake_daemon(ondemand=False)
    d.executor = SimpleNamespace(gate=leased)
    m = scrape(collector(d))
    assert m["ipsec_ha_gate_lease_open"] == {(("server_id", SID),): 1}
    assert one(m["ipsec_ha_gate_lease_renewals_total"], server_id=SID, result="ok") == 1
    assert one(m["ipsec_ha_gate_lease_renewals_total"], server_id=SID, result="failed") == 0
    assert "ipsec_ha_gate_lease_open" not in scrape(collector(fake_daemon(ondemand=False)))
