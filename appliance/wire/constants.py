"""Numbers on the wire: exchange types, payload types, status codes; versions and sizes.

Every number here is defined in docs/protocol.md; the comments give the
section.  New numbers come from the private-use ranges of the IKEv2 IANA
registries (RFC 7296 section 3 and its IANA registries), pending assignment.
"""

from __future__ import annotations

import enum


class ExchangeType(enum.IntEnum):
    """Message types (IKEv2 Exchange Types registry, private use 240-255)."""

    SA_STOR = 240
    SA_RETR = 241
    HEARTBEAT = 242


class Flag(enum.IntFlag):
    """Header flag bits; R sits where IKEv2 puts its Response bit."""

    MORE = 0x01
    """Response only: more pages follow; the reply carries a Page payload with the cursor."""
    RESPONSE = 0x20


class PayloadType(enum.IntEnum):
    """Next Payload values (IKEv2 Payload Types registry; 128-255 private use)."""

    NONE = 0
    NOTIFY = 41
    DELETE = 42
    TSI = 44
    TSR = 45
    SAD_ENTRY = 128
    SPD_ENTRY = 129
    IKE_SA = 130
    """Reserved for the IKE SA state; carried opaquely until it is specified."""
    REPLAY_STATE = 131
    SERVER_ID = 132
    EPOCH = 133
    PAGE = 134
    SA_LOOKUP = 135
    REVISION = 136
    """A Server ID's revision: the change feed's position (protocol.md 4.12)."""
    REMOVED = 137
    """One entry removed from a Server ID's state since a revision (protocol.md 4.13)."""


class ProtocolId(enum.IntEnum):
    """Protocol IDs of Notify and Delete (IKEv2 registry; 201-255 private use)."""

    NONE = 0
    IKE = 1
    """In a Delete: IKE SAs, each named by its two SPIs (SPI Size 16)."""
    AH = 2
    ESP = 3
    IPCOMP = 201
    """An IPComp SA: the "SPI" is the 16-bit CPI in a 32-bit field."""
    SPD_INDEX = 202
    """An SPD entry named by its 32-bit policy index."""


class IdType(enum.IntEnum):
    """Server ID types (the IKEv2 Identification types that make sense here)."""

    IPV4_ADDR = 1
    FQDN = 2
    IPV6_ADDR = 5
    KEY_ID = 11


class RemovedKind(enum.IntEnum):
    """What a Removed payload names (protocol.md 4.13)."""

    SA = 1
    """An SA, by its SA key (SPI, protocol, destination), laid out as in SA Lookup."""
    SPD_ENTRY = 2
    """An SPD entry, by the store's opaque policy ID."""
    IKE_SA = 3
    """An IKE SA, by its initiator's and responder's SPIs (8 octets each)."""


class TsType(enum.IntEnum):
    """Traffic selector types (RFC 7296 section 3.13.1)."""

    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8


class Status(enum.IntEnum):
    """Status codes, carried as Notify Message Types (protocol.md 5.3.4).

    Errors take the IKEv2 private-use error range (8192-16383); OK takes the
    private-use status range (40960-65535).
    """

    NOT_FOUND = 8192
    SPI_COLLISION = 8193
    STALE_EPOCH = 8194
    MALFORMED = 8195
    UNSUPPORTED = 8196
    BUSY = 8197
    INTERNAL = 8198
    EPOCH_LIMIT = 8199
    """The epoch would pass 2**63-1 or jump more than 2**32 (protocol.md 5.4)."""
    TOO_LARGE = 8200
    """The response would not fit the requester's or the store's maximum datagram."""
    REVISION_GONE = 8201
    """The store no longer holds the changes since the requested revision (protocol.md 4.1)."""
    OK = 40960
    IN_PROGRESS = 40961
    """The request with this message ID is still being carried out: the answer to a
    retransmission that arrives meanwhile, never cached (protocol.md 5.5)."""


IPPROTO_TO_PROTOCOL_ID = {50: ProtocolId.ESP, 51: ProtocolId.AH, 108: ProtocolId.IPCOMP}
PROTOCOL_ID_TO_IPPROTO = {v: k for k, v in IPPROTO_TO_PROTOCOL_ID.items()}


# -- version, port and sizes ------------------------------------------------
PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0

DEFAULT_PORT = 4501
"""Default UDP port of the store (configurable; not IANA-assigned, see protocol.md)."""

HEADER_LENGTH = 12
"""Fixed message header (protocol.md 5.2.1)."""

GENERIC_HEADER_LENGTH = 4
"""Generic payload header (RFC 7296 section 3.2)."""

DEFAULT_MAX_DATAGRAM = 1400
"""Largest UDP payload a node sends by default: fits a 1500-byte MTU with IPv6 + UDP headers."""

MAX_MESSAGE_LENGTH = 65507
"""No message may be larger than the largest IPv4 UDP payload."""

MAX_CURSOR_LENGTH = 64
"""Longest page cursor a store may hand out (protocol.md 5.1.8)."""

MAX_POLICY_ID_LENGTH = 32
"""Longest opaque policy ID a Removed payload may carry (protocol.md 4.13)."""

CHANNEL_OVERHEAD = 36
"""Bytes the protected channel adds to each message: 20-byte data header + 16-byte tag."""
