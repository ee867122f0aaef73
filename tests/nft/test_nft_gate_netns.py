"""The one-rule gate on the host kernel: the nft binary reads back what NftGate did.

(That the rule drops ESP before the transform is shown in the lab VM, whose
kernel holds ESP SAs: tests/netns_lab/test_lab_ipsec_failover.py.)
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from nft_lab import nft, nft_json

from appliance.failover.gate_lease import LeasedGate
from appliance.nft.gate import GATE_TABLE, NftGate

pytestmark = pytest.mark.netns


def chain_rules(netns: str) -> list[str]:
    return [
        item["rule"]["chain"]
        for item in nft_json(netns, "list", "table", *GATE_TABLE.split())
        if "rule" in item
    ]


def gated(netns: str) -> list[int]:
    for item in nft_json(netns, "list", "set", *GATE_TABLE.split(), "gated_spis"):
        if "set" in item:
            return sorted(item["set"].get("elem", []))
    raise AssertionError("set gated_spis not listed")


def test_gate_closes_opens_and_keeps_its_set(netns_name: str) -> None:
    gate = NftGate(netns_name)
    assert gate.status().present is False
    gate.probe()  # creates the empty table, changes nothing else
    assert chain_rules(netns_name) == []
    gate.close([0x100, 0x200])
    gate.close([0x100, 0x300])  # a second close replaces the set, still one rule
    assert chain_rules(netns_name) == ["outbound"]
    assert gated(netns_name) == [0x100, 0x300]
    gate.add([0x400, 0x100])
    gate.discard([0x300, 0x999])  # an absent SPI is no error
    assert gated(netns_name) == [0x100, 0x400]
    status = gate.status()
    assert (status.present, status.closed, status.gated_spis) == (True, True, 2)
    gate.open()
    assert chain_rules(netns_name) == []
    assert gated(netns_name) == [0x100, 0x400]
    assert gate.status().closed is False
    text = nft(netns_name, "list", "table", *GATE_TABLE.split())
    assert "hook postrouting" in text


def test_the_gate_never_touches_other_tables(netns_name: str) -> None:
    nft(netns_name, "-f", "-", stdin="add table inet other\nadd chain inet other c\n")
    gate = NftGate(netns_name)
    gate.close([1])
    gate.open()
    tables = [i["table"]["name"] for i in nft_json(netns_name, "list", "tables") if "table" in i]
    assert sorted(tables) == ["ipsec_ha_gate", "other"]


def _wait(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.1)


def test_an_open_gate_whose_lease_is_not_renewed_closes_itself(netns_name: str) -> None:
    gate = NftGate(netns_name, lease_s=1.0)
    gate.close([0x100])
    assert gate.status().holding is True
    gate.open()
    status = gate.status()
    assert (status.closed, status.leased, status.holding) == (False, True, False)
    # the kernel expires the lease's elements: the lease rule drops again
    _wait("the lease to lapse", lambda: gate.status().holding)
    assert gate.status().closed is False  # nothing but the kernel's timeout closed it
    gate.renew()
    assert gate.status().holding is False
    gate.close([0x100])
    status = gate.status()
    assert (status.closed, status.leased, status.lease_expires_s) == (True, False, None)


def test_leased_gate_renews_while_open_and_lets_the_lease_lapse_once_stopped(
    netns_name: str,
) -> None:
    leased = LeasedGate(NftGate(netns_name, lease_s=3.0), interval_s=0.2)
    leased.close([0x100])
    leased.open()
    try:
        # renewed past the first lease: still open
        _wait("two renewals", lambda: leased.counters.renewals >= 2)
        first = leased.gate.status()
        _wait("a lease's worth of renewals", lambda: leased.counters.renewals >= 20)
        assert first.holding is False and leased.gate.status().holding is False
        assert leased.counters.failures == 0
    finally:
        leased.stop()
    renewals = leased.counters.renewals
    _wait("the lease to lapse after the renewals stopped", lambda: leased.gate.status().holding)
    assert leased.counters.renewals == renewals
