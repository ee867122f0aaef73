"""The ``[nft]`` configuration section, validated.

Every value is checked before anything is rendered, so a bad config never
reaches libnftables; each error names the key (``nft.peers[1]``) and, when it
came from a file, the file.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config_toml import is_integer, read_toml
from appliance.errors import ConfigError
from appliance.wire.constants import DEFAULT_PORT

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_SYNC_PORT = DEFAULT_PORT
"""The SA store's UDP port: the protocol's default, so both ends agree unless configured."""

DEFAULT_TRAP_RATE = 100
"""Unknown-SPI packets per second handed to the trap queue; the rest are dropped."""

DEFAULT_TRAP_BURST = 50
"""Packets the trap queue may take at once above the rate."""

IKE_PORT = 500
NAT_T_PORT = 4500
"""IKE and ESP-in-UDP (RFC 3948) share this port; the non-ESP marker tells them apart."""

HA_PORT = 4510
"""strongSwan's ha plugin (charon to the relay, on loopback only)."""

KEYS = (
    "vips",
    "peers",
    "store",
    "sync_port",
    "trap_queue",
    "trap_rate",
    "trap_burst",
    "ha_relay",
)


@dataclass(frozen=True)
class NftConfig:
    """What the guard lets in. Build it with :func:`parse_nft_section` or :func:`load_config`."""

    vips: tuple[IPAddress, ...]
    """Virtual IPs that IKE, ESP and ESP-in-UDP may reach."""
    peers: tuple[IPAddress, ...] = ()
    """Cluster peers: the only sources of VRRP and of sync-port traffic (with ``store``)."""
    store: tuple[IPAddress, ...] = ()
    """SA store addresses, also allowed to reach the sync port."""
    sync_port: int = DEFAULT_SYNC_PORT
    """UDP port of the SA store protocol."""
    trap_queue: int | None = None
    """NFQUEUE number for inbound ESP whose SPI is not held; ``None`` disables the trap."""
    trap_rate: int = DEFAULT_TRAP_RATE
    """Trapped packets per second passed to the queue."""
    trap_burst: int = DEFAULT_TRAP_BURST
    """Burst above ``trap_rate``, in packets."""
    ha_relay: bool = False
    """The daemon relays charon's ha plugin (``[ike]``): its port ``HA_PORT`` is dropped
    from anything but loopback (its datagrams carry DH secrets in the clear)."""
    cluster: tuple[IPAddress, ...] = field(init=False, repr=False, compare=False)
    """Peers and store together, sorted, without duplicates."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "cluster", _sorted_unique([*self.peers, *self.store]))


def parse_nft_section(section: Mapping[str, Any], where: str = "nft") -> NftConfig:
    """Validate the ``[nft]`` mapping; ``where`` prefixes every key in error messages."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: must be a table of keys, not {type(section).__name__}")
    for key in section:
        if key not in KEYS:
            raise ConfigError(f"{where}.{key}: unknown key (known keys: {', '.join(KEYS)})")
    if "vips" not in section:
        raise ConfigError(f"{where}.vips: missing; the guard needs at least one VIP")
    vips = _addresses(section["vips"], f"{where}.vips")
    if not vips:
        raise ConfigError(f"{where}.vips: empty; the guard needs at least one VIP")
    sync_port = _integer(section.get("sync_port", DEFAULT_SYNC_PORT), f"{where}.sync_port", 1)
    if sync_port > 65535:
        raise ConfigError(f"{where}.sync_port: {sync_port} is not a UDP port (1-65535)")
    if sync_port in (IKE_PORT, NAT_T_PORT):
        raise ConfigError(
            f"{where}.sync_port: {sync_port} is an IKE port; the sync port must differ "
            f"from {IKE_PORT} and {NAT_T_PORT}"
        )
    trap_queue: int | None = None
    if "trap_queue" in section:
        trap_queue = _integer(section["trap_queue"], f"{where}.trap_queue", 0)
        if trap_queue > 65535:
            raise ConfigError(f"{where}.trap_queue: {trap_queue} is not a queue number (0-65535)")
    return NftConfig(
        vips=vips,
        peers=_addresses(section.get("peers", []), f"{where}.peers"),
        store=_addresses(section.get("store", []), f"{where}.store"),
        sync_port=sync_port,
        trap_queue=trap_queue,
        trap_rate=_integer(section.get("trap_rate", DEFAULT_TRAP_RATE), f"{where}.trap_rate", 1),
        trap_burst=_integer(
            section.get("trap_burst", DEFAULT_TRAP_BURST), f"{where}.trap_burst", 1
        ),
        ha_relay=_boolean(section.get("ha_relay", False), f"{where}.ha_relay"),
    )


def _boolean(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false, not {value!r}")
    return value


def load_config(path: Path) -> NftConfig:
    """Read and validate the ``[nft]`` section of the TOML file at ``path``."""
    return parse_nft_section(read_nft_section(path), where=f"{path}: nft")


def read_nft_section(path: Path) -> dict[str, Any]:
    """Return the raw ``[nft]`` table of the TOML file at ``path`` (not yet validated)."""
    document = read_toml(path, label=str(path))
    section = document.get("nft")
    if section is None:
        raise ConfigError(f"{path}: no [nft] section")
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: nft must be a table ([nft]), not {type(section).__name__}")
    return section


def _addresses(value: object, key: str) -> tuple[IPAddress, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigError(f"{key}: must be a list of IP addresses, not {type(value).__name__}")
    found: list[IPAddress] = []
    for index, item in enumerate(value):
        found.append(_address(item, f"{key}[{index}]"))
    return _sorted_unique(found)


def _address(item: object, key: str) -> IPAddress:
    if not isinstance(item, str):
        raise ConfigError(f"{key}: must be an IP address string, not {type(item).__name__}")
    try:
        address = ipaddress.ip_address(item.strip())
    except ValueError:
        raise ConfigError(f"{key}: {item!r} is not an IP address") from None
    # A scoped IPv6 address ("fe80::1%eth0") names an interface nftables sets cannot hold.
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ConfigError(f"{key}: {item!r} has a zone index; give the address alone")
    if address.is_unspecified or address.is_multicast:
        raise ConfigError(f"{key}: {item!r} is not a unicast host address")
    return address


def _integer(value: object, key: str, minimum: int) -> int:
    if not is_integer(value):
        raise ConfigError(f"{key}: must be an integer, not {type(value).__name__}")
    if value < minimum:
        raise ConfigError(f"{key}: {value} is below the minimum {minimum}")
    return value


def _sorted_unique(addresses: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    # IPv4 before IPv6, then numeric: a stable order makes the rendered ruleset reproducible.
    return tuple(sorted(set(addresses), key=lambda a: (a.version, int(a))))
