"""The guard's ruleset is a pure function of the config (golden and structural checks)."""

from pathlib import Path

import pytest

from appliance.errors import UsageError
from appliance.nft.config import parse_nft_section
from appliance.nft.render import (
    COUNTERS,
    render_removal,
    render_ruleset,
    render_spi_addition,
    render_spi_removal,
    validate_spis,
)

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "data" / "ruleset_example.nft"

EXAMPLE = {
    "vips": ["2001:db8::10", "192.0.2.10"],
    "peers": ["192.0.2.2", "2001:db8::2"],
    "store": ["198.51.100.5"],
    "trap_queue": 3,
    "trap_rate": 20,
    "trap_burst": 10,
}


def rules(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("add rule ")]


def test_example_config_renders_the_golden_ruleset() -> None:
    assert render_ruleset(parse_nft_section(EXAMPLE)) == GOLDEN.read_text()


def test_rendering_is_deterministic_whatever_the_input_order() -> None:
    shuffled = {
        **EXAMPLE,
        "vips": ["192.0.2.10", "2001:db8::10"],
        "peers": ["2001:db8::2", "192.0.2.2"],
    }
    assert render_ruleset(parse_nft_section(shuffled)) == GOLDEN.read_text()


def test_trap_off_drops_exactly_the_trap_rules() -> None:
    without = {key: value for key, value in EXAMPLE.items() if key != "trap_queue"}
    script = render_ruleset(parse_nft_section(without))
    golden = GOLDEN.read_text().splitlines()
    expected = [line for line in golden if "spi_trap" not in line or line.startswith("add counter")]
    assert script.splitlines() == expected
    assert " queue num " not in script


def test_trap_queue_has_no_bypass_and_is_rate_limited() -> None:
    script = render_ruleset(parse_nft_section(EXAMPLE))
    queued = [rule for rule in rules(script) if " queue " in rule]
    assert len(queued) == 4  # ESP and ESP-in-UDP, IPv4 and IPv6
    for rule in queued:
        assert rule.endswith("queue num 3")
        assert "limit rate 20/second burst 10 packets" in rule
        assert "bypass" not in rule


def test_ipv6_only_config_has_no_ipv4_rules() -> None:
    script = render_ruleset(parse_nft_section({"vips": ["2001:db8::10"], "peers": ["2001:db8::2"]}))
    assert not any(" ip daddr" in rule or " ip saddr" in rule for rule in rules(script))
    assert "meta l4proto esp ip6 daddr @vips6 counter name esp_accepted accept" in script
    assert "udp dport 4501 ip6 saddr @cluster6 counter name sync_accepted accept" in script
    # The address sets are declared and flushed for both families, so a family dropped from
    # the config loses its elements on the next apply.
    assert "flush set inet ipsec_ha vips4" in script
    assert "add element inet ipsec_ha vips4" not in script


def test_no_cluster_means_vrrp_and_sync_are_only_dropped() -> None:
    script = render_ruleset(parse_nft_section({"vips": ["192.0.2.10"]}))
    assert "vrrp_accepted accept" not in script
    assert "sync_accepted accept" not in script
    assert "udp dport 4501 counter name sync_dropped drop" in script


def test_ha_relay_drops_the_plugins_port_from_the_network_only() -> None:
    script = render_ruleset(parse_nft_section({**EXAMPLE, "ha_relay": True}))
    assert (
        rules(script)[-1]
        == "add rule inet ipsec_ha input udp dport 4510 counter name ha_plugin_dropped drop"
    )
    assert rules(script)[0] == 'add rule inet ipsec_ha input iif "lo" accept'  # loopback first
    without = render_ruleset(parse_nft_section(EXAMPLE))
    assert "4510" not in without and "add counter inet ipsec_ha ha_plugin_dropped" in without


def test_sync_port_is_configurable() -> None:
    script = render_ruleset(parse_nft_section({**EXAMPLE, "sync_port": 4601}))
    assert "udp dport 4601 ip saddr @cluster4 counter name sync_accepted accept" in script
    assert "4501" not in script


def test_every_counter_is_declared_and_every_named_counter_is_declared() -> None:
    script = render_ruleset(parse_nft_section(EXAMPLE))
    for name in COUNTERS:
        assert f"add counter inet ipsec_ha {name}\n" in script
    for rule in rules(script):
        if "counter name " in rule:
            assert rule.split("counter name ")[1].split()[0] in COUNTERS


def test_drops_follow_every_accept() -> None:
    listed = rules(render_ruleset(parse_nft_section(EXAMPLE)))
    last_accept = max(i for i, rule in enumerate(listed) if rule.endswith(" accept"))
    first_drop = min(
        i for i, rule in enumerate(listed) if rule.endswith("_dropped drop") and "spi" not in rule
    )
    assert last_accept < first_drop


def test_only_our_table_is_named() -> None:
    for script in (render_ruleset(parse_nft_section(EXAMPLE)), render_removal()):
        for line in script.splitlines():
            assert " inet ipsec_ha" in line


def test_removal_works_whether_or_not_the_table_exists() -> None:
    assert render_removal() == "add table inet ipsec_ha\ndelete table inet ipsec_ha\n"


def test_spi_scripts() -> None:
    assert render_spi_addition([0x200, 0x100, 0x200]) == (
        "add element inet ipsec_ha held_spis { 0x00000100, 0x00000200 }\n"
    )
    assert render_spi_removal([0xFFFFFFFF]) == (
        "add element inet ipsec_ha held_spis { 0xffffffff }\n"
        "delete element inet ipsec_ha held_spis { 0xffffffff }\n"
    )


@pytest.mark.parametrize(
    ("spis", "words"),
    [
        ([0], "outside"),
        ([1 << 32], "outside"),
        ([-5], "outside"),
        ([], "no SPI"),
        (["0x10"], "not an integer"),
        ([True], "not an integer"),
    ],
)
def test_bad_spis_are_refused(spis: list[object], words: str) -> None:
    with pytest.raises(UsageError, match=words):
        validate_spis(spis)  # type: ignore[arg-type]
