"""Events the channel endpoint reports to its user (one small dataclass each)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

NetworkAddress = Any
"""Whatever the socket adapter uses as an address (e.g. ``(host, port)``); passed through."""


class DropReason(enum.Enum):
    """Why a received datagram was dropped (each counted in ``ChannelEndpoint.drops``)."""

    MALFORMED = "malformed"
    """Too short, unknown datagram type or version, non-zero reserved bits."""
    WRONG_ROLE = "wrong-role"
    """A handshake message the endpoint's role never accepts (e.g. an INIT at a client)."""
    UNKNOWN_ASSOCIATION = "unknown-association"
    """A data datagram for an association this endpoint does not have (or no longer has)."""
    AUTH_FAILED = "auth-failed"
    """The AEAD tag did not verify: forged, corrupted, or sealed under another key."""
    REPLAYED = "replayed"
    """A sequence number already received in the anti-replay window."""
    OUTSIDE_WINDOW = "outside-window"
    """A sequence number older than the anti-replay window."""
    HANDSHAKE_AUTH_FAILED = "handshake-auth-failed"
    """A handshake message whose HMAC under the cluster key did not verify."""
    HANDSHAKE_UNEXPECTED = "handshake-unexpected"
    """A handshake response that answers no handshake in progress."""
    HANDSHAKE_REPLAYED = "handshake-replayed"
    """A handshake request with a valid cookie seen before whose association is gone."""
    COOKIE_INVALID = "cookie-invalid"
    """An INIT whose cookie is forged, for another address, or stale (minted before a
    rotation or a restart); it creates nothing and is answered with a fresh cookie."""


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """A new association is ready to carry data."""

    association: bytes
    """Our 8-byte association ID (the handle for ``send`` / ``protect``)."""
    peer_node_id: str
    """The node ID the peer claimed in its authenticated handshake message."""
    addr: NetworkAddress


@dataclass(frozen=True, slots=True)
class DataReceived:
    """An authenticated, decrypted, non-replayed datagram payload."""

    data: bytes = field(repr=False)
    association: bytes
    peer_node_id: str
    addr: NetworkAddress


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """The handshake got no valid answer after every retransmission."""

    addr: NetworkAddress
    reason: str


@dataclass(frozen=True, slots=True)
class AssociationClosed:
    """An association was removed (expired, idle, evicted, replaced by a rekey, or closed)."""

    association: bytes
    peer_node_id: str
    reason: str


Event = HandshakeCompleted | DataReceived | HandshakeFailed | AssociationClosed
