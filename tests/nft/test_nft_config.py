"""The [nft] config loader: valid sections parse, and every error names its key."""

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import ConfigError
from appliance.nft.config import (
    DEFAULT_SYNC_PORT,
    DEFAULT_TRAP_BURST,
    DEFAULT_TRAP_RATE,
    load_config,
    parse_nft_section,
)
from appliance.wire.constants import DEFAULT_PORT

pytestmark = pytest.mark.unit

VALID: dict[str, Any] = {
    "vips": ["192.0.2.10", "2001:db8::10"],
    "peers": ["192.0.2.2"],
    "store": ["198.51.100.5", "192.0.2.2"],
}


def test_valid_section_parses_with_defaults() -> None:
    config = parse_nft_section(VALID)
    assert config.vips == (
        ipaddress.ip_address("192.0.2.10"),
        ipaddress.ip_address("2001:db8::10"),
    )
    assert config.sync_port == DEFAULT_SYNC_PORT
    assert config.trap_queue is None
    assert (config.trap_rate, config.trap_burst) == (DEFAULT_TRAP_RATE, DEFAULT_TRAP_BURST)
    # Peers and store together, deduplicated and sorted.
    assert [str(a) for a in config.cluster] == ["192.0.2.2", "198.51.100.5"]


def test_sync_port_default_is_the_protocol_default() -> None:
    assert DEFAULT_SYNC_PORT == DEFAULT_PORT


def test_addresses_are_sorted_and_deduplicated_for_a_stable_ruleset() -> None:
    config = parse_nft_section({"vips": ["2001:db8::10", "192.0.2.10", "192.0.2.10"]})
    assert [str(a) for a in config.vips] == ["192.0.2.10", "2001:db8::10"]


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        ({"vips": ["192.0.2.300"]}, "nft.vips[0]", "not an IP address"),
        ({"vips": []}, "nft.vips", "empty"),
        ({"vips": "192.0.2.10"}, "nft.vips", "list"),
        ({"vips": ["224.0.0.18"]}, "nft.vips[0]", "unicast"),
        ({"vips": ["fe80::1%eth0"]}, "nft.vips[0]", "zone"),
        ({"peers": ["192.0.2.2", "peer-b"]}, "nft.peers[1]", "not an IP address"),
        ({"peers": ["0.0.0.0"]}, "nft.peers[0]", "unicast"),
        ({"store": [4501]}, "nft.store[0]", "string"),
        ({"sync_port": 70000}, "nft.sync_port", "1-65535"),
        ({"sync_port": 0}, "nft.sync_port", "minimum"),
        ({"sync_port": "4501"}, "nft.sync_port", "integer"),
        ({"sync_port": True}, "nft.sync_port", "integer"),
        ({"sync_port": 4500}, "nft.sync_port", "IKE"),
        ({"sync_port": 500}, "nft.sync_port", "IKE"),
        ({"trap_queue": 65536}, "nft.trap_queue", "queue number"),
        ({"trap_queue": -1}, "nft.trap_queue", "minimum"),
        ({"trap_rate": 0}, "nft.trap_rate", "minimum"),
        ({"trap_burst": 1.5}, "nft.trap_burst", "integer"),
        ({"vip": ["192.0.2.10"]}, "nft.vip", "unknown key"),
        ({"ha_relay": "yes"}, "nft.ha_relay", "true or false"),
        ({"ha_relay": 1}, "nft.ha_relay", "true or false"),
    ],
)
def test_each_error_names_the_bad_key(change: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_nft_section({**VALID, **change})
    assert str(caught.value).startswith(f"{key}: ")
    assert words in str(caught.value)


def test_missing_vips_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^nft\.vips: missing"):
        parse_nft_section({"peers": ["192.0.2.2"]})


def test_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "ipsec-ha.toml"
    path.write_text(
        '[nft]\nvips = ["192.0.2.10"]\npeers = ["192.0.2.2"]\nsync_port = 4601\ntrap_queue = 7\n'
    )
    config = load_config(path)
    assert (config.sync_port, config.trap_queue) == (4601, 7)
    assert [str(a) for a in config.peers] == ["192.0.2.2"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[nft]\nvips = ["192.0.2.10"\n', "not valid TOML"),
        ("[store]\nport = 1\n", "no [nft] section"),
        ("nft = 3\n", "must be a table"),
        ('[nft]\nvips = ["192.0.2.10"]\ntrap_rate = "fast"\n', "nft.trap_rate: must be an integer"),
    ],
)
def test_file_errors_name_the_file_and_key(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert words in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
