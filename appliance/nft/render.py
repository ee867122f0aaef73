"""The guard's ruleset, rendered from a config: pure functions, no I/O.

Theory of operation
-------------------
The appliance owns one nftables table, ``inet ipsec_ha``, and nothing else.
Its single base chain hooks ``input`` with policy *accept*: it decides only
about the traffic the appliance is responsible for (IKE, ESP, ESP-in-UDP,
VRRP and the SA store's sync port) and leaves every other packet to
whatever other tables the host has.  A drop in any table is final, so our
drops hold whatever other tables say; our accepts only end our own chain.

Each apply is ONE libnftables batch, so the kernel commits it whole or not
at all.  The batch *adds* the table, chain, sets and counters (a no-op for
those that exist), *flushes* the chain and the address sets, and re-adds
rules and elements.  Two things survive on purpose: the named counters
(``apply`` is idempotent and does not reset statistics) and the
``held_spis`` set, which the daemon fills at run time.

The script is nftables' own syntax rather than its JSON: nftables 1.0.6
(Debian 12) cannot express ``typeof esp spi`` sets in JSON, and an integer
set without a key length is rejected.  Every value put into the script is
a validated address or integer, so nothing a user types is spliced in raw.

Unknown-SPI trap (draft section 4.4): inbound ESP to a VIP, or ESP-in-UDP
on port 4500, whose SPI is not in ``held_spis`` goes to NFQUEUE
``trap_queue`` within a rate limit, and is counted and dropped above it.
The queue has no ``bypass`` flag: with no listener the kernel drops the
packet instead of letting an SA-less packet through.  In ESP-in-UDP the SPI
follows the 8-byte UDP header (``@th,64,32``); zero there is the non-ESP
marker of IKE (RFC 3948 section 2.2), which an earlier rule accepts as IKE.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from appliance.errors import UsageError
from appliance.nft.config import HA_PORT, IKE_PORT, NAT_T_PORT, IPAddress, NftConfig

TABLE_FAMILY = "inet"
TABLE_NAME = "ipsec_ha"
TABLE = f"{TABLE_FAMILY} {TABLE_NAME}"
CHAIN_NAME = "input"
CHAIN_PRIORITY = "filter - 10"
"""Before the usual ``filter`` chains, so our counters see packets first."""

SPI_SET = "held_spis"
"""Inbound SPIs whose SAs this node holds (filled by the daemon)."""

ADDRESS_SETS = {"vips4": "ipv4_addr", "vips6": "ipv6_addr", "cluster4": "ipv4_addr",
                "cluster6": "ipv6_addr"}  # fmt: skip

CATEGORIES = ("ike", "esp", "esp_in_udp", "vrrp", "sync")
"""Traffic the guard decides about; each has an ``_accepted`` and a ``_dropped`` counter."""

TRAP_COUNTERS = ("spi_trap_queued", "spi_trap_dropped")
"""Unknown-SPI packets handed to the queue, and those dropped above the rate limit."""

HA_COUNTER = "ha_plugin_dropped"
"""With ``ha_relay``: datagrams to strongSwan's ha plugin port from anywhere but loopback."""

COUNTERS = (
    *(f"{category}_{verdict}" for category in CATEGORIES for verdict in ("accepted", "dropped")),
    *TRAP_COUNTERS,
    HA_COUNTER,
)

VRRP_PROTOCOL = 112
ESP_MARKER_FIELD = "@th,64,32"
"""The 32 bits after the UDP header: the SPI in ESP-in-UDP, zero (non-ESP marker) in IKE."""

MAX_SPI = 0xFFFFFFFF

_FAMILIES = (("ip", 4), ("ip6", 6))


def render_ruleset(config: NftConfig) -> str:
    """Return the nftables script that installs or updates the guard in one transaction."""
    lines = [
        f"add table {TABLE}",
        f"add chain {TABLE} {CHAIN_NAME} {{ type filter hook input priority {CHAIN_PRIORITY}; "
        f"policy accept; }}",
        f"flush chain {TABLE} {CHAIN_NAME}",
    ]
    members = {
        "vips4": _family(config.vips, 4),
        "vips6": _family(config.vips, 6),
        "cluster4": _family(config.cluster, 4),
        "cluster6": _family(config.cluster, 6),
    }
    for name, key_type in ADDRESS_SETS.items():
        lines.append(f"add set {TABLE} {name} {{ type {key_type}; }}")
        lines.append(f"flush set {TABLE} {name}")
        if members[name]:
            lines.append(f"add element {TABLE} {name} {{ {', '.join(members[name])} }}")
    lines.append(f"add set {TABLE} {SPI_SET} {{ typeof esp spi; }}")
    lines.extend(f"add counter {TABLE} {counter}" for counter in COUNTERS)
    lines.extend(f"add rule {TABLE} {CHAIN_NAME} {rule}" for rule in _rules(config, members))
    return "\n".join(lines) + "\n"


def render_removal() -> str:
    """Return the script that removes the table, present or not, in one transaction.

    Adding the table first makes the delete succeed when it is absent (nftables
    1.0.6 has no ``destroy``); the pair touches no other table.
    """
    return f"add table {TABLE}\ndelete table {TABLE}\n"


def render_spi_addition(spis: Iterable[int]) -> str:
    """Return the script that adds ``spis`` to the held set (already held ones are no-ops)."""
    elements = _spi_elements(spis)
    return f"add element {TABLE} {SPI_SET} {{ {elements} }}\n"


def render_spi_removal(spis: Iterable[int]) -> str:
    """Return the script that removes ``spis`` from the held set, held or not.

    ``delete element`` fails on an absent element and would abort the batch;
    adding first makes removal idempotent while staying one transaction.
    """
    elements = _spi_elements(spis)
    return (
        f"add element {TABLE} {SPI_SET} {{ {elements} }}\n"
        f"delete element {TABLE} {SPI_SET} {{ {elements} }}\n"
    )


def validate_spis(spis: Iterable[int]) -> list[int]:
    """Return ``spis`` sorted without duplicates; raise ``UsageError`` naming a bad one."""
    checked = set()
    for spi in spis:
        if isinstance(spi, bool) or not isinstance(spi, int):
            raise UsageError(f"SPI {spi!r} is not an integer")
        # SPI 0 is reserved (RFC 4303 section 2.1) and is the non-ESP marker in ESP-in-UDP.
        if not 0 < spi <= MAX_SPI:
            raise UsageError(f"SPI {spi:#x} is outside 0x1-0xffffffff")
        checked.add(spi)
    if not checked:
        raise UsageError("no SPI given")
    return sorted(checked)


def _spi_elements(spis: Iterable[int]) -> str:
    return ", ".join(f"{spi:#010x}" for spi in validate_spis(spis))


def _family(addresses: Sequence[IPAddress], version: int) -> list[str]:
    return [str(address) for address in addresses if address.version == version]


def _rules(config: NftConfig, members: dict[str, list[str]]) -> list[str]:
    rules = [
        # Loopback carries only local processes' traffic (e.g. a co-located store), never
        # the network's; the guard is for what arrives from outside.
        'iif "lo" accept',
    ]
    for family, version in _FAMILIES:
        if members[f"vips{version}"]:
            rules.extend(_vip_rules(config, f"{family} daddr @vips{version}"))
    for family, version in _FAMILIES:
        if members[f"cluster{version}"]:
            from_cluster = f"{family} saddr @cluster{version}"
            rules.append(
                f"meta l4proto {VRRP_PROTOCOL} {from_cluster} counter name vrrp_accepted accept"
            )
            rules.append(
                f"udp dport {config.sync_port} {from_cluster} counter name sync_accepted accept"
            )
    # Whatever is left and aimed at our ports or protocols came from the wrong place.
    rules.extend(
        [
            "meta l4proto esp counter name esp_dropped drop",
            f"udp dport {IKE_PORT} counter name ike_dropped drop",
            f"udp dport {NAT_T_PORT} {ESP_MARKER_FIELD} 0 counter name ike_dropped drop",
            f"udp dport {NAT_T_PORT} counter name esp_in_udp_dropped drop",
            f"meta l4proto {VRRP_PROTOCOL} counter name vrrp_dropped drop",
            f"udp dport {config.sync_port} counter name sync_dropped drop",
        ]
    )
    if config.ha_relay:
        # Loopback was accepted first: what reaches this came from the network.
        rules.append(f"udp dport {HA_PORT} counter name {HA_COUNTER} drop")
    return rules


def _vip_rules(config: NftConfig, to_vip: str) -> list[str]:
    esp = f"meta l4proto esp {to_vip}"
    natt = f"udp dport {NAT_T_PORT} {to_vip}"
    rules = [*_trap_rules(config, f"{esp} esp spi != @{SPI_SET}")]
    rules.append(f"{esp} counter name esp_accepted accept")
    rules.append(f"udp dport {IKE_PORT} {to_vip} counter name ike_accepted accept")
    rules.append(f"{natt} {ESP_MARKER_FIELD} 0 counter name ike_accepted accept")
    # Zero (IKE) is accepted above, so any SPI reaching the trap is non-zero.
    rules.extend(_trap_rules(config, f"{natt} {ESP_MARKER_FIELD} != @{SPI_SET}"))
    rules.append(f"{natt} counter name esp_in_udp_accepted accept")
    return rules


def _trap_rules(config: NftConfig, unknown_spi: str) -> list[str]:
    if config.trap_queue is None:
        return []
    return [
        f"{unknown_spi} limit rate {config.trap_rate}/second burst {config.trap_burst} packets "
        f"counter name spi_trap_queued queue num {config.trap_queue}",
        f"{unknown_spi} counter name spi_trap_dropped drop",
    ]
