"""On-demand SA retrieval through a cold third gateway, with real ESP (lab tier; issue 6).

One run of ``netns_lab.scenarios.ondemand_retrieval`` (one lab: VM time is
precious): the client's ESP is rerouted to gw3, which holds no SA; its
daemon retrieves the SA once and the tunnel (``TUNNEL_RATE`` packets/s)
flows through it without a loss, its SPI held once the queue was drained;
an SPI the store does not know is dropped and counted; a flood of 50,000
random-SPI packets leaves the tunnel running and the retrievals within the
rate.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from netns_lab import build
from netns_lab.scenarios.ondemand_retrieval import (
    TUNNEL_RATE,
    UNKNOWN_PACKETS,
    Outcome,
    Scenario,
    report_lines,
)

pytestmark = pytest.mark.lab

FLOOD = 50_000


@pytest.fixture(scope="module")
def outcome() -> Iterator[Outcome]:
    result = Scenario(flood=FLOOD, rate=TUNNEL_RATE).run()
    print("\n".join(report_lines(result)))  # in the test log, for whoever reads a failure
    yield result


def test_the_first_packets_trigger_one_retrieval_and_none_is_lost(outcome: Outcome) -> None:
    r = outcome.retrieval
    assert r["retrievals"] == 1, r
    assert r["sas"]["installed"] == 1 and r["sas"]["not_found"] == 0, r
    # the packets that came while the SA was fetched were held, then accepted
    assert r["accepted"] >= 1, r
    assert {k: v for k, v in r.items() if k.startswith("dropped_")} == {
        k: 0 for k in r if k.startswith("dropped_")
    }, r
    # every client -> server packet sent before the flood arrived (through gw1, then gw3)
    assert outcome.lost_before_flood == 0, outcome.directions
    assert "XfrmInStateSeqError" not in outcome.gw3_xfrm_errors, outcome.gw3_xfrm_errors


def test_the_spi_is_held_once_its_queue_was_drained(outcome: Outcome) -> None:
    end = outcome.final
    # one hold (the tunnel's SPI), when the queue ran dry, not by the fallback bound
    assert (end["holds"], end["holds_forced"]) == (1, 0), end
    assert end["sas"]["hold_failures"] == 0, end


def test_an_unknown_spi_is_dropped_and_counted(outcome: Outcome) -> None:
    u = outcome.unknown
    # three packets, one retrieval: the store had nothing, so all three were dropped
    assert u["dropped_unknown"] == UNKNOWN_PACKETS, u
    assert (u["retrievals"], u["retrieval_failures"]) == (2, 1), u
    assert u["sas"]["not_found"] == 1, u


def test_a_random_spi_flood_leaves_the_tunnel_running_within_the_rate(outcome: Outcome) -> None:
    f = outcome.flood
    assert f["sent"] > 0.9 * FLOOD, f
    # the flood reached the queue and the rate limit had to act
    assert f["retrievals"] >= 1 and f["rate_limited"] > 0, f
    assert f["retrievals"] <= f["bound"], f
    for store, requests in f["store_sa_retr"].items():
        assert requests <= f["bound"], (store, f)
    # the known tunnel kept carrying traffic during the flood (and after: the scenario waited)
    assert outcome.arrived_during_flood > 0


def test_the_third_gateway_is_removed(outcome: Outcome) -> None:
    assert outcome.gw3_namespace.endswith("-gw3")
    assert not build.netns_path(outcome.gw3_namespace).exists()
