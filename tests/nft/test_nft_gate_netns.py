"""The one-rule gate on the host kernel: the nft binary reads back what NftGate did.

(That the rule drops ESP before the transform is shown in the lab VM, whose
kernel holds ESP SAs: tests/netns_lab/test_lab_ipsec_failover.py.)
"""

from __future__ import annotations

import pytest
from nft_lab import nft, nft_json

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
