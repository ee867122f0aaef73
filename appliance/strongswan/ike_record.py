"""The IKE SA record: one IKE SA as the store keeps it (protocol.md 4.6), sans-IO.

The record is the body of an IKE SA payload.  It holds the ``ha`` plugin
messages that rebuild the IKE SA in a passive charon, in the order they must
be replayed (:meth:`IkeSaState.replay`), behind a small header::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |    Format     | ha Version    |                               |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
    |                   IKE SA Initiator's SPI (8)                  |
    +                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                               |                               |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
    |                   IKE SA Responder's SPI (8)                  |
    +                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                               |       Message Count           |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |        Message Length         |                               |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
    ~                 ha message (Message Length octets)            ~
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    ~         Message Count (Message Length, ha message) pairs      ~

Format is 1 (strongSwan ``ha`` messages); ha Version is the plugin's protocol
version (3).  The count makes every truncation an error: the ha messages have
no length of their own, and a record cut between two of them would otherwise
be a smaller IKE SA.  A record decodes only if replaying its messages rebuilds exactly
the IKE SA its header names and nothing else, with nothing ignored, and if it
is in the canonical order :func:`encode_record` writes; anything else is an
:class:`IkeRecordError`, never another exception.  The messages carry key
material (nonces, DH secrets, OLD_SKD): the record is sealed at rest like an
SA's keys and never logged.
"""

from __future__ import annotations

import struct

from appliance.errors import ApplianceError
from appliance.strongswan.ha_message import (
    HA_MESSAGE_VERSION,
    HaMessageError,
    HaMessageType,
    decode,
    encode,
)
from appliance.strongswan.ike_state import IkeBook, IkeSaState, format_spis

RECORD_FORMAT_HA = 1
"""Format octet: the record holds strongSwan ``ha`` plugin messages."""

_HEADER = struct.Struct("!BBQQH")
_LENGTH = struct.Struct("!H")


class IkeRecordError(ApplianceError):
    """Bytes that are not a valid IKE SA record (the message says what is wrong)."""


def encode_record(state: IkeSaState) -> bytes:
    """The record of ``state``."""
    replay = state.replay()
    if len(replay) > 0xFFFF:
        raise IkeRecordError(
            f"IKE SA {format_spis(state.spis)} has {len(replay)} messages to keep; a record "
            "holds at most 65535"
        )
    parts = [_HEADER.pack(RECORD_FORMAT_HA, HA_MESSAGE_VERSION, *state.spis, len(replay))]
    for message in replay:
        data = encode(message)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_record(data: bytes) -> IkeSaState:
    """The IKE SA a record rebuilds; :class:`IkeRecordError` for anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise IkeRecordError(f"IKE SA record must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise IkeRecordError(
            f"IKE SA record of {len(data)} bytes is shorter than its {_HEADER.size}-byte header"
        )
    fmt, version, spi_i, spi_r, count = _HEADER.unpack_from(data)
    if fmt != RECORD_FORMAT_HA:
        raise IkeRecordError(
            f"IKE SA record format {fmt} is unknown (this ipsec-ha reads format "
            f"{RECORD_FORMAT_HA}, strongSwan ha messages)"
        )
    if version != HA_MESSAGE_VERSION:
        raise IkeRecordError(
            f"IKE SA record holds ha messages of version {version}; this ipsec-ha "
            f"speaks version {HA_MESSAGE_VERSION}"
        )
    spis = (spi_i, spi_r)
    book = IkeBook()
    pos = _HEADER.size
    for index in range(count):
        if pos == len(data):
            raise IkeRecordError(
                f"IKE SA record ends after {index} of its {count} messages (cut short)"
            )
        if pos + _LENGTH.size > len(data):
            raise IkeRecordError(f"IKE SA record: message length at offset {pos} is cut short")
        (length,) = _LENGTH.unpack_from(data, pos)
        pos += _LENGTH.size
        if pos + length > len(data):
            raise IkeRecordError(
                f"IKE SA record: the message at offset {pos} runs {pos + length - len(data)} "
                "bytes past the end"
            )
        try:
            message = decode(data[pos : pos + length])
            if message.type not in _STATE_TYPES:
                raise HaMessageError(f"a {message.type.name} message is not IKE SA state")
            book.handle(message)
        except HaMessageError as exc:
            raise IkeRecordError(f"IKE SA record: message at offset {pos}: {exc}") from None
        pos += length
    if pos != len(data):
        raise IkeRecordError(
            f"IKE SA record has {len(data) - pos} trailing byte(s) after its {count} messages"
        )
    if book.ignored:
        reasons = ", ".join(sorted(book.ignored))
        raise IkeRecordError(f"IKE SA record holds messages that rebuild nothing ({reasons})")
    if set(book.sas) != {spis}:
        held = ", ".join(format_spis(s) for s in book.sas) or "none"
        raise IkeRecordError(
            f"IKE SA record names IKE SA {format_spis(spis)} but its messages rebuild {held}"
        )
    state = book.sas[spis]
    if encode_record(state) != data:
        raise IkeRecordError("IKE SA record is not in canonical order (superseded messages)")
    return state


_STATE_TYPES = frozenset(
    {
        HaMessageType.IKE_ADD,
        HaMessageType.IKE_UPDATE,
        HaMessageType.IKE_MID_INITIATOR,
        HaMessageType.IKE_MID_RESPONDER,
        HaMessageType.IKE_IV,
        HaMessageType.CHILD_ADD,
    }
)
