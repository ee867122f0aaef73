"""The daemon's ``[ike]`` table: relay the IKE state of strongSwan's charon.

Without the table the daemon syncs kernel SAs only (the IKE daemon is not
relayed; docs/operations.md says what that means for IKE).  With it::

    [ike]
    daemon = "strongswan"     # the only IKE daemon relayed
    relay = "127.0.0.2"       # charon's ha plugin `remote`: the relay binds it
    charon = "127.0.0.1"      # charon's ha plugin `local`: the only source accepted
    feed = true               # at MASTER, hand charon the stored IKE SAs (default)

With ``feed`` (docs/strongswan.md, "The takeover") a MASTER transition hands
the local charon the server ID's IKE SA records, charon installs their CHILD
SAs, ipsec-ha moves their counters and activates charon; leaving ACTIVE makes
charon's IKE SAs passive and deletes them in charon.  It needs the cold
standby and the nftables gate ([failover] mode = "cold", gate = "nft"); the
daemon's loader checks that.  ``feed = false`` only stores the IKE SAs.

Both addresses must be loopback ones (the plugin's datagrams carry DH
secrets in the clear); :class:`~.relay.RelayAddresses` checks that.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config_toml import TomlTable
from appliance.errors import ConfigError
from appliance.strongswan.relay import RelayAddresses

DAEMONS = ("strongswan",)


@dataclass(frozen=True)
class IkeConfig:
    """``[ike]``: which IKE daemon's state is relayed, and where its plugin talks."""

    daemon: str
    addresses: RelayAddresses
    feed: bool = True
    """Feed the local charon from the store at a takeover and retire its IKE SAs when the
    node leaves ACTIVE (False: the relay only stores what charon reports)."""


def _loopback_text(v: Any) -> str | None:
    try:
        return v if isinstance(v, str) and ipaddress.ip_address(v).is_loopback else None
    except ValueError:
        return None


def load_ike_config(path: Path, data: dict[str, Any]) -> IkeConfig | None:
    """``[ike]`` of a parsed daemon config, checked; None when the table is absent."""
    if "ike" not in data:
        return None
    t = TomlTable(path, "ike", data["ike"])
    daemon = t.get("daemon", lambda v: v if v in DAEMONS else None, '"strongswan"')
    relay = t.get("relay", _loopback_text, "a loopback address (charon's ha plugin remote)")
    charon = t.get("charon", _loopback_text, "a loopback address (charon's ha plugin local)")
    feed = t.get("feed", lambda v: v if isinstance(v, bool) else None, "true or false", True)
    t.finish()
    try:
        addresses = RelayAddresses(ipaddress.ip_address(relay), ipaddress.ip_address(charon))
    except ConfigError as exc:
        raise t.fail("relay", str(exc)) from None
    return IkeConfig(daemon, addresses, feed)
