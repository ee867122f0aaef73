"""strongSwan integration: ipsec-ha as the peer of charon's ``ha`` plugin (docs/strongswan.md).

- ``ha_message``: the codec of the plugin's messages (sans-IO);
- ``ike_state``: the book of the IKE SAs the plugin reports, with what rebuilds each (sans-IO);
- ``ike_record``: one IKE SA as the store keeps it (protocol.md 4.6);
- ``publisher``: the active node's IKE SA changes as store records, coalesced;
- ``relay``: the socket on the plugin's ``remote`` address (loopback);
- ``feed``: what a charon is fed from the store at a takeover, and its segment switch;
- ``safety_net``: the check of charon's IKE SAs after a takeover (sans-IO);
- ``vici_client``: charon's vici socket, for that check (adapter);
- ``config``: the daemon's ``[ike]`` table.
"""

from appliance.strongswan.ha_message import (
    HA_MESSAGE_VERSION,
    HA_PORT,
    KIND_OF,
    SECRET_ATTRIBUTES,
    HaAttribute,
    HaAttributeType,
    HaChunk,
    HaHost,
    HaIdentity,
    HaIkeSaId,
    HaKind,
    HaMessage,
    HaMessageError,
    HaMessageType,
    HaNumber,
    HaText,
    HaTrafficSelector,
    HaValueError,
    HaVersionError,
    decode,
    encode,
    spi_from_little_endian_sender,
)

__all__ = [
    "HA_MESSAGE_VERSION",
    "HA_PORT",
    "KIND_OF",
    "SECRET_ATTRIBUTES",
    "HaAttribute",
    "HaAttributeType",
    "HaChunk",
    "HaHost",
    "HaIdentity",
    "HaIkeSaId",
    "HaKind",
    "HaMessage",
    "HaMessageError",
    "HaMessageType",
    "HaNumber",
    "HaText",
    "HaTrafficSelector",
    "HaValueError",
    "HaVersionError",
    "decode",
    "encode",
    "spi_from_little_endian_sender",
]
