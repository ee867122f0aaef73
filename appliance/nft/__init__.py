"""The appliance's nftables guard: its own table ``inet ipsec_ha``, through libnftables.

It lets IKE, ESP and ESP-in-UDP reach the VIPs, lets VRRP and the SA store's
sync port in only from the cluster, counts and drops the rest of that
traffic, and can trap inbound ESP whose SPI this node does not hold.  See
``render`` for the theory of operation and docs/nft.md for the user's view.
"""

from appliance.nft.config import NftConfig, load_config, parse_nft_section
from appliance.nft.guard import (
    add_spis,
    apply_guard,
    guard_status,
    list_spis,
    remove_guard,
    remove_spis,
    table_present,
)
from appliance.nft.render import COUNTERS, TABLE, render_ruleset
from appliance.nft.status import CounterValue, GuardStatus

__all__ = [
    "COUNTERS",
    "TABLE",
    "CounterValue",
    "GuardStatus",
    "NftConfig",
    "add_spis",
    "apply_guard",
    "guard_status",
    "list_spis",
    "load_config",
    "parse_nft_section",
    "remove_guard",
    "remove_spis",
    "render_ruleset",
    "table_present",
]
