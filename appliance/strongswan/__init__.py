"""strongSwan integration: the codec for charon's ``ha`` plugin messages (``ha_message``).

Only the codec exists so far (issue 12, step 1); the relay that stores these
messages, standby feeding and takeover are still to come.  See docs/strongswan.md.
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
