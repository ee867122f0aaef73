"""A fast path through SA_Stor requests and SA_Retr responses for the store.

The store keeps entries as their payload bodies (see :mod:`._convert`), so
it needs each entry checked and its index fields, but never its re-encoding.
:func:`split` is the codec's :func:`~appliance.wire.split_message` (the one
check of the header and the payload chain); :func:`parse_stor_items` decodes
each payload with the codec's own functions and keeps the entry bodies as
they came (the service then checks each entry against the model before
storing).  Stored entries then go back out as they are, without a
re-encoding on either side.  Anything malformed raises ``RemoteWireError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from appliance.wire import (
    Buffer,
    Chunk,
    PayloadType,
    RawMessage,
    RemoteWireError,
    ReplayStatePayload,
    SadEntryPayload,
    SpdEntryPayload,
    WireError,
    pull_payload,
    pull_spd_entry,
    split_message,
)

__all__ = [
    "RawMessage",
    "RawSad",
    "RawSpd",
    "SadBody",
    "UnreadableReplay",
    "parse_retr_items",
    "parse_stor_items",
    "split",
]

_LEN = struct.Struct("!H")

split = split_message
"""The header and the raw (type, critical, body) payload chain of a message."""


@dataclass(frozen=True, slots=True)
class RawSad:
    """A SAD Entry payload: its body (kept as is) and its decoded payload."""

    ordinal: int
    """1-based among the message's SAD entries (an error names the entry by it)."""
    body: bytes
    payload: SadEntryPayload


@dataclass(frozen=True, slots=True)
class RawSpd:
    """An SPD Entry payload's index and its three bodies (SPD, TSi, TSr).

    ``payload`` is the decoded entry in an SA_Stor request (None in a
    retrieval, where the client decodes later).
    """

    index: int
    body: bytes
    tsi: bytes
    tsr: bytes
    ordinal: int = 0
    payload: SpdEntryPayload | None = None

    def stored(self) -> bytes:
        return b"".join(_LEN.pack(len(p)) + p for p in (self.body, self.tsi, self.tsr))


@dataclass(frozen=True, slots=True)
class SadBody:
    """A SAD Entry payload body, not yet checked (a client converts it when used)."""

    body: bytes


@dataclass(frozen=True, slots=True)
class UnreadableReplay:
    """A stored Replay State that does not decode: its SA must not be installed without it."""

    reason: str


def parse_retr_items(chunks: list[Chunk]) -> list[object]:
    """SA_Retr response payloads for a client: entry bodies kept as they are, unchecked.

    The client turns them into model objects later (``entries.payload_to_sad``),
    which checks everything; decoding them here as well would double the cost
    of a bulk retrieval.  A Replay State that does not decode (stored by an
    older version, or put straight into the backend) becomes
    :class:`UnreadableReplay` rather than failing the whole page.
    """
    items: list[object] = []
    index = 0
    while index < len(chunks):
        payload_type, critical, body = chunks[index]
        index += 1
        if payload_type == PayloadType.SAD_ENTRY:
            items.append(SadBody(body))
        elif payload_type == PayloadType.SPD_ENTRY:
            if [c[0] for c in chunks[index : index + 2]] != [PayloadType.TSI, PayloadType.TSR]:
                raise RemoteWireError("an SPD entry payload must be followed by TSi and TSr")
            items.append(RawSpd(0, body, chunks[index][2], chunks[index + 1][2]))
            index += 2
        elif payload_type == PayloadType.REPLAY_STATE:
            try:
                items.append(ReplayStatePayload.pull_body(Buffer(body, "Replay State payload")))
            except WireError as exc:
                items.append(UnreadableReplay(str(exc)))
        else:
            payload = pull_payload(payload_type, critical, body)
            if payload is not None:
                items.append(payload)
    return items


def _entry_error(exc: WireError, kind: str, ordinal: int, body: bytes) -> RemoteWireError:
    """``exc`` naming the entry: its place among the message's entries and its SPI or index."""
    name = "SPI" if kind == "SAD" else "policy index"
    ident = f", {name} 0x{body[:4].hex()}" if len(body) >= 4 else ""
    return RemoteWireError(f"{kind} entry {ordinal}{ident}: {exc}", exc.status)


def parse_stor_items(chunks: list[Chunk]) -> list[object]:
    """SA_Stor payloads: entries as :class:`RawSad` / :class:`RawSpd`, the rest decoded.

    Each entry is decoded with the codec's own ``pull_*`` functions, once; its
    body is kept as it came for storage, its payload for the model check the
    service runs before storing (``_convert.admit_*``).
    """
    items: list[object] = []
    index = 0
    sads = spds = 0
    while index < len(chunks):
        payload_type, critical, body = chunks[index]
        if payload_type == PayloadType.SAD_ENTRY:
            sads += 1
            try:
                sad = SadEntryPayload.pull_body(Buffer(body, "SAD entry payload"))
            except WireError as exc:
                raise _entry_error(exc, "SAD", sads, body) from None
            items.append(RawSad(sads, body, sad))
            index += 1
        elif payload_type == PayloadType.SPD_ENTRY:
            spds += 1
            try:
                spd, after = pull_spd_entry(chunks, index)
            except WireError as exc:
                raise _entry_error(exc, "SPD", spds, body) from None
            tsi, tsr = chunks[index + 1][2], chunks[index + 2][2]
            items.append(RawSpd(spd.index, body, tsi, tsr, spds, spd))
            index = after
        else:
            payload = pull_payload(payload_type, critical, body)
            if payload is not None:
                items.append(payload)
            index += 1
    return items
