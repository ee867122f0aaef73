"""The one-rule gate's scripts and its listing parser (pure)."""

from __future__ import annotations

import pytest

from appliance.errors import UsageError
from appliance.nft.gate import (
    GATE_RULE,
    GATE_TABLE,
    LEASE_RULE,
    NftGate,
    lease_rules,
    parse_gate_listing,
    render_add,
    render_close,
    render_discard,
    render_open,
    render_probe,
    render_renew,
)

pytestmark = pytest.mark.unit


def test_close_replaces_the_set_and_ends_with_the_one_rule() -> None:
    lines = render_close([0x20, 0x10, 0x20]).splitlines()
    assert lines[0] == f"add table {GATE_TABLE}"
    assert f"flush set {GATE_TABLE} gated_spis" in lines
    assert f"add element {GATE_TABLE} gated_spis {{ 0x00000010, 0x00000020 }}" in lines
    # flush before the rule: closing twice leaves one rule, not two
    assert lines[-2:] == [
        f"flush chain {GATE_TABLE} outbound",
        f"add rule {GATE_TABLE} outbound {GATE_RULE}",
    ]
    assert "hook postrouting" in render_close([])
    assert "add element" not in render_close([])


def test_open_only_empties_the_chain() -> None:
    script = render_open()
    assert script.splitlines()[-1] == f"flush chain {GATE_TABLE} outbound"
    assert "add rule" not in script and "set" not in script.splitlines()[-1]
    assert "flush set" not in script


def test_add_and_discard_touch_only_the_set() -> None:
    assert (
        render_add([5]).splitlines()[-1] == f"add element {GATE_TABLE} gated_spis {{ 0x00000005 }}"
    )
    lines = render_discard([5]).splitlines()
    # adding first makes deleting an absent element a no-op instead of a failed batch
    assert lines[-2:] == [
        f"add element {GATE_TABLE} gated_spis {{ 0x00000005 }}",
        f"delete element {GATE_TABLE} gated_spis {{ 0x00000005 }}",
    ]
    assert not any("rule" in line or "flush" in line for line in render_add([5]).splitlines())


def test_probe_loads_the_rule_into_an_unhooked_chain_and_removes_it() -> None:
    lines = render_probe().splitlines()
    assert f"add chain {GATE_TABLE} probe" in lines
    assert lines[-3:] == [
        f"add rule {GATE_TABLE} probe {GATE_RULE}",
        f"flush chain {GATE_TABLE} probe",
        f"delete chain {GATE_TABLE} probe",
    ]


@pytest.mark.parametrize("bad", [0, -1, 1 << 32, "7", True])
def test_a_bad_spi_is_refused_before_any_script(bad: object) -> None:
    with pytest.raises(UsageError):
        render_add([bad])  # type: ignore[list-item]


def test_parse_listing() -> None:
    assert parse_gate_listing(None).present is False
    items = [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "ipsec_ha_gate"}},
        {"counter": {"family": "inet", "name": "gate_dropped", "table": "ipsec_ha_gate",
                     "packets": 7, "bytes": 700}},
        {"set": {"family": "inet", "name": "gated_spis", "table": "ipsec_ha_gate",
                 "type": "integer", "elem": [16, 32, 48]}},
        {"chain": {"family": "inet", "table": "ipsec_ha_gate", "name": "outbound"}},
        {"rule": {"family": "inet", "table": "ipsec_ha_gate", "chain": "outbound", "expr": []}},
    ]  # fmt: skip
    status = parse_gate_listing(items)
    assert (status.present, status.closed, status.gated_spis, status.dropped_packets) == (
        True, True, 3, 7,
    )  # fmt: skip
    opened = parse_gate_listing([i for i in items if "rule" not in i])
    assert opened.closed is False
    assert opened.to_dict()["table"] == GATE_TABLE


# -- the lease: an open gate closes itself unless renewed ----------------------------


def test_open_with_a_lease_puts_the_lease_rule_and_runs_the_lease() -> None:
    lines = render_open(1.5).splitlines()
    assert f"add set {GATE_TABLE} open_lease {{ type nf_proto; flags timeout; }}" in lines
    lease = f"add element {GATE_TABLE} open_lease {{ ipv4 timeout 1500ms, ipv6 timeout 1500ms }}"
    # add, delete, add: a fresh timeout whether or not the elements had expired
    assert lines[-5:] == [
        f"flush chain {GATE_TABLE} outbound",
        lease,
        f"delete element {GATE_TABLE} open_lease {{ ipv4, ipv6 }}",
        lease,
        f"add rule {GATE_TABLE} outbound {LEASE_RULE}",
    ]
    assert "meta nfproto != @open_lease" in LEASE_RULE and LEASE_RULE.endswith("drop")


def test_renew_touches_only_the_lease() -> None:
    lines = render_renew(2).splitlines()
    assert lines[-3].startswith(f"add element {GATE_TABLE} open_lease")
    assert not any("rule" in line or "flush" in line for line in lines)


def test_close_drops_the_lease() -> None:
    assert f"flush set {GATE_TABLE} open_lease" in render_close([1]).splitlines()


@pytest.mark.parametrize("bad", [0, -1, 61, float("nan"), "2", True])
def test_a_bad_lease_is_refused_before_any_script(bad: object) -> None:
    with pytest.raises(ValueError, match="lease"):
        render_renew(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lease"):
        NftGate(None, lease_s=bad)  # type: ignore[arg-type]


def _leased(elements: list[dict[str, object]]) -> list[dict[str, object]]:
    lease_match = {
        "match": {"op": "!=", "left": {"meta": {"key": "nfproto"}}, "right": "@open_lease"}
    }
    return [
        {"table": {"family": "inet", "name": "ipsec_ha_gate"}},
        {"set": {"family": "inet", "name": "open_lease", "table": "ipsec_ha_gate",
                 "type": "nf_proto", "flags": ["timeout"], "elem": elements}},
        {"rule": {"family": "inet", "table": "ipsec_ha_gate", "chain": "outbound",
                  "expr": [lease_match, {"drop": None}]}},
    ]  # fmt: skip


def test_parse_a_leased_gate_and_a_lapsed_one() -> None:
    # as libnftables 1.0.6 lists them (seconds, rounded down)
    running = parse_gate_listing(
        _leased([{"elem": {"val": "ipv4", "timeout": 2, "expires": 1}},
                 {"elem": {"val": "ipv6", "timeout": 2, "expires": 1}}])
    )  # fmt: skip
    assert (running.closed, running.leased, running.lease_expires_s) == (False, True, 1.0)
    assert running.holding is False
    lapsed = parse_gate_listing(_leased([]))
    assert (lapsed.closed, lapsed.leased, lapsed.lease_expires_s) == (False, True, None)
    assert lapsed.holding is True and lapsed.to_dict()["holding"] is True


def test_the_lease_also_covers_the_served_vips_by_outer_source() -> None:
    rules = lease_rules(["192.0.2.1", "2001:db8::1", "192.0.2.1", "198.51.100.7"])
    assert rules == [
        LEASE_RULE,
        "ipsec out ip saddr { 192.0.2.1, 198.51.100.7 } meta nfproto != @open_lease "
        "counter name gate_dropped drop",
        "ipsec out ip6 saddr { 2001:db8::1 } meta nfproto != @open_lease "
        "counter name gate_dropped drop",
    ]
    last = render_open(2, ["192.0.2.1"]).splitlines()[-1]
    assert last == f"add rule {GATE_TABLE} outbound ipsec out ip saddr {{ 192.0.2.1 }} " + (
        "meta nfproto != @open_lease counter name gate_dropped drop"
    )
    with pytest.raises(ValueError, match="IP addresses"):
        NftGate(None, lease_s=2, lease_addresses=["vpn.example.net"])
