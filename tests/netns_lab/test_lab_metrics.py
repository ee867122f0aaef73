"""Metrics and readiness with real keepalived (issue 17): ``netns_lab.scenarios.metrics_readiness``.

gw2, a standby whose keepalived tracks ``ipsec-ha status --ready``, is
ready, then cut from both stores (not ready, priority lowered), then
restored (ready, priority back); then gw1 crashes and gw2's takeover moves
its takeover metrics, scraped from the client over the lab network.

The lab tier runs it as a hot standby with the ESP tunnel keyed (the lab
VM); the netns tier runs it as a cold standby without a tunnel, on the host
kernel (no ESP: the takeover moves no SA, the rest is the same).
"""

from __future__ import annotations

import pytest

from netns_lab.plan import INSIDE, address_of
from netns_lab.scenarios.metrics_readiness import Outcome, Scenario, report_lines

STORES = sorted(address_of(gw, INSIDE) for gw in ("gw1", "gw2"))


def run(mode: str, keyed: bool) -> Outcome:
    outcome = Scenario(mode, keyed=keyed, say=lambda line: print(line, flush=True)).run()
    print("\n".join(report_lines(outcome)))  # in the test log, for whoever reads a failure
    return outcome


@pytest.fixture(scope="module")
def hot_with_tunnel() -> Outcome:
    return run("hot", keyed=True)


def assert_not_ready_while_cut(outcome: Outcome) -> None:
    configured, lowered = outcome.configured_priority, outcome.lowered_priority
    assert lowered < configured
    ready, cut, restored = outcome.ready, outcome.cut, outcome.restored
    assert (ready.exit_status, ready.reasons) == (0, [])
    assert set(ready.priorities.values()) == {configured}
    assert sorted(ready.store_up) == STORES and set(ready.store_up.values()) == {1}

    assert cut.exit_status == 1
    unreachable = sorted(r.split(": ")[1] for r in cut.reasons if r.startswith("store unreachable"))
    assert unreachable == STORES, cut.reasons
    assert set(cut.priorities.values()) == {lowered}
    assert set(cut.store_up.values()) == {0}
    # the cut left VRRP alone: gw1 kept the VIPs
    assert cut.vip_holder == "gw1"

    assert (restored.exit_status, restored.reasons) == (0, [])
    assert set(restored.priorities.values()) == {configured}
    assert set(restored.store_up.values()) == {1}


def assert_takeover_counted(outcome: Outcome) -> None:
    t = outcome.takeover
    assert t.role == {"init": 0, "active": 1, "standby": 0}
    assert t.takeovers_ok[1] == t.takeovers_ok[0] + 1
    assert t.takeovers_failed[1] == t.takeovers_failed[0]
    assert t.duration_count[1] == t.duration_count[0] + 1
    assert t.duration_sum[1] > t.duration_sum[0]
    # a sample per step of the plan the status file reports (the first step starts the clock)
    assert set(t.steps) == set(t.timeline[1:]), (t.steps, t.timeline)
    assert {"claim-ownership", "fetch-state", "advance-outbound-seq", "open-outbound"} <= set(
        t.steps
    )
    assert all(seconds >= 0 for seconds in t.steps.values())


@pytest.mark.lab
def test_a_hot_standby_cut_from_its_stores_is_not_ready_and_keepalived_lowers_its_priority(
    hot_with_tunnel: Outcome,
) -> None:
    assert_not_ready_while_cut(hot_with_tunnel)


@pytest.mark.lab
def test_a_takeover_moves_the_takeover_counter_and_duration(hot_with_tunnel: Outcome) -> None:
    assert len(hot_with_tunnel.tunnel) == 2
    assert_takeover_counted(hot_with_tunnel)
    # the new active holds the tunnel's two SAs, and its own store holds them
    t = hot_with_tunnel.takeover
    assert t.held_sas == 2
    assert t.store_sas.get(address_of("gw2", INSIDE)) == 2


@pytest.mark.netns
def test_without_esp_a_cold_standby_cut_from_its_stores_is_not_ready_and_loses_priority(
    require_root: None,
) -> None:
    outcome = run("cold", keyed=False)
    assert outcome.tunnel == {}
    assert_not_ready_while_cut(outcome)
    assert_takeover_counted(outcome)
    assert outcome.takeover.held_sas == 0
