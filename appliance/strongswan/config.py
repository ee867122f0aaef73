"""The daemon's ``[ike]`` table: relay the IKE state of strongSwan's charon.

Without the table the daemon syncs kernel SAs only (the IKE daemon is not
relayed; docs/operations.md says what that means for IKE).  With it::

    [ike]
    daemon = "strongswan"     # the only IKE daemon relayed
    relay = "127.0.0.2"       # charon's ha plugin `remote`: the relay binds it
    charon = "127.0.0.1"      # charon's ha plugin `local`: the only source accepted
    feed = true               # hand charon the stored IKE SAs (default; hot: as it follows)
    safety_net = true         # after a takeover, check charon's IKE SAs (default, with feed)
    reinitiate = true         # ... and set the missing ones up again where charon can
    vici = "unix:///var/run/charon.vici"   # charon's vici (default: charon's own default)

With ``feed`` (docs/strongswan.md, "The takeover") a MASTER transition hands
the local charon the server ID's IKE SA records, charon installs their CHILD
SAs, ipsec-ha moves their counters and activates charon; leaving ACTIVE makes
charon's IKE SAs passive and deletes them in charon.  A hot standby's charon
is fed as the store changes, and holds every IKE SA passive until MASTER
(docs/strongswan.md, "The hot standby's charon").  It needs the nftables gate
([failover] gate = "nft"); the daemon's loader checks that.  ``feed = false``
only stores the IKE SAs.

With ``safety_net`` (and ``feed``) the daemon asks charon through vici, once a
takeover is done, whether it holds every IKE SA it was fed
(``strongswan.safety_net``); with ``reinitiate`` it asks charon to set up again
each missing one whose connection names its peer's address.

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
from appliance.strongswan.vici_client import DEFAULT_VICI, ViciAddress

DAEMONS = ("strongswan",)
DEFAULT_VICI_ADDRESS = ViciAddress.parse(DEFAULT_VICI)


@dataclass(frozen=True)
class IkeConfig:
    """``[ike]``: which IKE daemon's state is relayed, and where its plugin talks."""

    daemon: str
    addresses: RelayAddresses
    feed: bool = True
    """Feed the local charon from the store at a takeover and retire its IKE SAs when the
    node leaves ACTIVE (False: the relay only stores what charon reports)."""
    safety_net: bool = True
    """After a takeover with ``feed``, compare charon's IKE SAs (vici) with what it was fed."""
    reinitiate: bool = True
    """The safety net initiates the missing IKE and CHILD SAs that charon can initiate."""
    vici: ViciAddress = DEFAULT_VICI_ADDRESS
    """charon's vici socket (``charon.plugins.vici.socket``)."""


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
    feed = t.get("feed", _bool, "true or false", True)
    safety_net = t.get("safety_net", _bool, "true or false", True)
    reinitiate = t.get("reinitiate", _bool, "true or false", True)
    vici_text = t.get("vici", lambda v: v if isinstance(v, str) else None,
                      '"unix:///path" or "tcp://127.0.0.1:port"', DEFAULT_VICI)  # fmt: skip
    t.finish()
    try:
        vici = ViciAddress.parse(vici_text)
    except ConfigError as exc:
        raise t.fail("vici", str(exc)) from None
    try:
        addresses = RelayAddresses(ipaddress.ip_address(relay), ipaddress.ip_address(charon))
    except ConfigError as exc:
        raise t.fail("relay", str(exc)) from None
    return IkeConfig(daemon, addresses, feed, safety_net, reinitiate, vici)


def _bool(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None
