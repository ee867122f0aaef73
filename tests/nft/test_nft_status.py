"""Reading the guard's state from libnftables' JSON listing (captured from nftables 1.0.6)."""

import json
from pathlib import Path

import pytest

from appliance.nft.render import COUNTERS, HA_COUNTER
from appliance.nft.status import CounterValue, GuardStatus, parse_listing, table_listed

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data"


def listing() -> list[dict[str, object]]:
    items: list[dict[str, object]] = json.loads((DATA / "listing_example.json").read_text())[
        "nftables"
    ]
    return items


def test_counters_sets_and_spis_are_read() -> None:
    status = parse_listing("gw", listing(), "table inet ipsec_ha { }")
    assert status.present
    # Recorded from a table applied before the ha plugin's counter existed: an older
    # table is read with what it has.
    assert list(status.counters) == [c for c in COUNTERS if c != HA_COUNTER]
    assert status.counters["esp_accepted"] == CounterValue(packets=42, bytes=5040)
    assert status.counters["sync_dropped"] == CounterValue(packets=3, bytes=252)
    assert status.counters["ike_accepted"] == CounterValue(packets=0, bytes=0)
    assert status.sets == {
        "vips4": ["192.0.2.10"],
        "vips6": ["2001:db8::10"],
        "cluster4": ["192.0.2.2", "198.51.100.5"],
        "cluster6": [],
    }
    assert status.held_spis == [0x100, 0xC0FFEE]
    assert status.rule_count == 17


def test_categories_pair_accepted_and_dropped() -> None:
    categories = parse_listing(None, listing()).categories()
    assert categories["esp"] == {"accepted": 42, "dropped": 0}
    assert categories["sync"] == {"accepted": 0, "dropped": 3}
    assert categories["spi_trap"] == {"queued": 5, "dropped": 0}


def test_json_view_is_serialisable_and_complete() -> None:
    view = parse_listing("gw", listing(), "text").to_dict()
    assert json.loads(json.dumps(view)) == view
    assert view["table"] == "inet ipsec_ha"
    assert view["counters"]["esp_accepted"] == {"packets": 42, "bytes": 5040}
    assert view["ruleset"] == "text"


def test_absent_status_reports_zero_everywhere() -> None:
    view = GuardStatus(netns="gw", present=False).to_dict()
    assert view["present"] is False
    assert view["categories"]["ike"] == {"accepted": 0, "dropped": 0}


def test_other_tables_objects_are_ignored() -> None:
    foreign = {"counter": {"family": "ip", "table": "ipsec_ha", "name": "esp_accepted",
                           "packets": 9, "bytes": 9}}  # fmt: skip
    status = parse_listing(None, [*listing(), foreign])
    assert status.counters["esp_accepted"].packets == 42


def test_table_listed_matches_family_and_name() -> None:
    tables = json.loads((DATA / "tables_example.json").read_text())["nftables"]
    assert table_listed(tables)
    assert not table_listed(
        [
            {"table": {"family": "ip", "name": "ipsec_ha"}},
            {"table": {"family": "inet", "name": "filter"}},
        ]
    )
    assert not table_listed([{"metainfo": {"version": "1.0.6"}}])
