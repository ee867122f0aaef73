"""Messages: the fixed header, the generic payload chain, and pagination.

A message is a header (protocol.md 5.2.1) followed by a chain of payloads,
each with the IKEv2 generic payload header (RFC 7296 3.2).  An SPD Entry
payload is always followed by exactly one TSi and one TSr payload carrying
its selector; the three travel as one ``SpdEntryPayload`` object here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from appliance.wire._buffer import Buffer
from appliance.wire._errors import LocalWireError, RemoteWireError
from appliance.wire.constants import (
    CHANNEL_OVERHEAD,
    GENERIC_HEADER_LENGTH,
    HEADER_LENGTH,
    MAX_CURSOR_LENGTH,
    MAX_MESSAGE_LENGTH,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    ExchangeType,
    Flag,
    PayloadType,
    Status,
)
from appliance.wire.payloads import (
    BODY_PULLERS,
    Notify,
    PagePayload,
    Payload,
    SpdEntryPayload,
    UnknownPayload,
    pull_ts_body,
    push_ts_body,
)

CRITICAL = 0x80

_P = TypeVar("_P")

# struct rather than Buffer: the store server splits every request it gets.
_HEADER = struct.Struct("!BBBBII")
_GENERIC = struct.Struct("!BBH")

Chunk = tuple[int, bool, bytes]
"""One payload of a chain as it came: (payload type, critical bit, body)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One SA_Stor, SA_Retr or Heartbeat request or response."""

    exchange: ExchangeType
    message_id: int
    payloads: tuple[Payload, ...] = ()
    response: bool = False
    more: bool = False
    """Response only: more pages follow (the M flag)."""

    def all(self, kind: type[_P]) -> list[_P]:
        """Every payload of one class, in message order."""
        return [p for p in self.payloads if isinstance(p, kind)]

    def first(self, kind: type[_P]) -> _P | None:
        """The first payload of one class, or None."""
        for p in self.payloads:
            if isinstance(p, kind):
                return p
        return None

    @property
    def status(self) -> Notify | None:
        """The status Notify of a response (its first Notify payload)."""
        return self.first(Notify)


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A message whose header is checked and whose payload chain is split, not yet decoded."""

    exchange: ExchangeType
    message_id: int
    response: bool
    more: bool
    chunks: list[Chunk]


def _payload_type(payload: Payload) -> int:
    if isinstance(payload, UnknownPayload):
        return payload.payload_type
    return int(payload.PAYLOAD_TYPE)


def _chunks(payload: Payload) -> list[tuple[int, bytes]]:
    """A payload as (type, body) chunks; an SPD entry gives three (SPD, TSi, TSr)."""
    buf = Buffer()
    payload.push_body(buf)
    chunks = [(_payload_type(payload), buf.getvalue())]
    if isinstance(payload, SpdEntryPayload):
        for ts_type, selector in ((PayloadType.TSI, payload.tsi), (PayloadType.TSR, payload.tsr)):
            ts_buf = Buffer()
            push_ts_body(ts_buf, (selector,))
            chunks.append((int(ts_type), ts_buf.getvalue()))
    return chunks


def encoded_payload_length(payload: Payload) -> int:
    """Bytes the payload takes in a message, generic headers included."""
    return sum(GENERIC_HEADER_LENGTH + len(body) for _, body in _chunks(payload))


def encode_message(message: Message) -> bytes:
    """The message's bytes; LocalWireError if a field does not fit or the message is too long."""
    if message.more and not message.response:
        raise LocalWireError("the M (more pages) flag is only valid in a response")
    chunks = [chunk for payload in message.payloads for chunk in _chunks(payload)]
    body = Buffer()
    for index, (_, chunk_body) in enumerate(chunks):
        next_type = chunks[index + 1][0] if index + 1 < len(chunks) else PayloadType.NONE
        length = GENERIC_HEADER_LENGTH + len(chunk_body)
        if length > 0xFFFF:
            raise LocalWireError(
                f"a payload of {length} bytes exceeds the 65535-byte payload limit"
            )
        body.push_uint8(next_type)
        body.push_uint8(0)
        body.push_uint16(length)
        body.push_bytes(chunk_body)
    total = HEADER_LENGTH + len(body)
    if total > MAX_MESSAGE_LENGTH:
        raise LocalWireError(
            f"message of {total} bytes exceeds the {MAX_MESSAGE_LENGTH}-byte limit"
        )
    flags = (Flag.RESPONSE if message.response else 0) | (Flag.MORE if message.more else 0)
    header = Buffer()
    header.push_uint8(chunks[0][0] if chunks else PayloadType.NONE)
    header.push_uint8((PROTOCOL_MAJOR << 4) | PROTOCOL_MINOR)
    header.push_uint8(message.exchange, "exchange type")
    header.push_uint8(flags)
    header.push_uint32(message.message_id, "message ID")
    header.push_uint32(total)
    return header.getvalue() + body.getvalue()


def peek_header(data: bytes) -> tuple[int, int, bool]:
    """(exchange type, message ID, response flag) of a message, for error replies.

    Lets a responder answer MALFORMED with the right message ID even when the
    payloads cannot be decoded.  RemoteWireError if not even the header is there.
    """
    buf = Buffer(data, "message header")
    buf.pull_uint8("next payload")
    buf.pull_uint8("version")
    exchange = buf.pull_uint8("exchange type")
    flags = buf.pull_uint8("flags")
    message_id = buf.pull_uint32("message ID")
    return exchange, message_id, bool(flags & Flag.RESPONSE)


def split_message(data: bytes) -> RawMessage:
    """Check a message's header and split its payload chain, decoding no payload.

    The one place the header and the generic payload headers are checked:
    :func:`decode_message` decodes the chunks after it, and the store's fast
    path keeps entry bodies as they came.  RemoteWireError for anything invalid.
    """
    end = len(data)
    if end > MAX_MESSAGE_LENGTH:
        raise RemoteWireError(f"message of {end} bytes exceeds the {MAX_MESSAGE_LENGTH}-byte limit")
    if end < HEADER_LENGTH:
        raise RemoteWireError(f"message of {end} bytes is shorter than its header")
    next_type, version, exchange_value, flags, message_id, length = _HEADER.unpack_from(data)
    if version >> 4 != PROTOCOL_MAJOR:
        raise RemoteWireError(
            f"protocol major version {version >> 4} is not supported (we speak {PROTOCOL_MAJOR})",
            Status.UNSUPPORTED,
        )
    if length != end:
        raise RemoteWireError(f"header length {length} does not match the {end} bytes received")
    try:
        exchange = ExchangeType(exchange_value)
    except ValueError:
        raise RemoteWireError(
            f"exchange type {exchange_value} is not supported", Status.UNSUPPORTED
        ) from None
    response = bool(flags & Flag.RESPONSE)
    more = bool(flags & Flag.MORE)
    if more and not response:
        raise RemoteWireError("the M (more pages) flag is set in a request")
    chunks: list[Chunk] = []
    pos = HEADER_LENGTH
    while next_type != PayloadType.NONE:
        if pos + GENERIC_HEADER_LENGTH > end:
            raise RemoteWireError(f"payload {next_type} header is truncated")
        this_type = next_type
        next_type, critical, payload_length = _GENERIC.unpack_from(data, pos)
        if payload_length < GENERIC_HEADER_LENGTH or pos + payload_length > end:
            raise RemoteWireError(f"payload {this_type} length {payload_length} is invalid")
        body = data[pos + GENERIC_HEADER_LENGTH : pos + payload_length]
        chunks.append((this_type, bool(critical & CRITICAL), body))
        pos += payload_length
    if pos != end:
        raise RemoteWireError(f"{end - pos} bytes follow the last payload")
    return RawMessage(exchange, message_id, response, more, chunks)


def decode_message(data: bytes) -> Message:
    """Decode one message; RemoteWireError (with a status code) for anything invalid."""
    raw = split_message(data)
    return Message(raw.exchange, raw.message_id, _assemble(raw.chunks), raw.response, raw.more)


def pull_spd_entry(chunks: Sequence[Chunk], index: int) -> tuple[SpdEntryPayload, int]:
    """The SPD entry whose SPD Entry payload is ``chunks[index]``, with its TSi and TSr.

    Returns the entry and the index of the chunk after its TSr.
    """
    fixed = SpdEntryPayload.pull_fixed(Buffer(chunks[index][2], "SPD entry payload"))
    selectors = []
    for wanted in (PayloadType.TSI, PayloadType.TSR):
        index += 1
        if index >= len(chunks) or chunks[index][0] != wanted:
            raise RemoteWireError(f"an SPD entry payload must be followed by {wanted.name}")
        found = pull_ts_body(Buffer(chunks[index][2], f"{wanted.name} payload"))
        if len(found) != 1:
            raise RemoteWireError(f"{wanted.name} of an SPD entry must hold exactly one selector")
        selectors.append(found[0])
    return SpdEntryPayload(tsi=selectors[0], tsr=selectors[1], **fixed), index + 1


def pull_payload(payload_type: int, critical: bool, body: bytes) -> Payload | None:
    """A payload other than an SPD entry and its selectors; None for an unknown one.

    An unknown payload without the critical bit is ignored, as in IKEv2;
    with it, the message is UNSUPPORTED.
    """
    pull = BODY_PULLERS.get(payload_type)
    if pull is not None:
        return pull(Buffer(body, f"payload {payload_type}"))
    if payload_type in (PayloadType.TSI, PayloadType.TSR):
        raise RemoteWireError("a TSi or TSr payload must follow an SPD entry payload")
    if critical:
        raise RemoteWireError(
            f"critical payload type {payload_type} is not supported", Status.UNSUPPORTED
        )
    return None


def _assemble(chunks: list[Chunk]) -> tuple[Payload, ...]:
    payloads: list[Payload] = []
    index = 0
    while index < len(chunks):
        payload_type, critical, body = chunks[index]
        if payload_type == PayloadType.SPD_ENTRY:
            spd, index = pull_spd_entry(chunks, index)
            payloads.append(spd)
            continue
        index += 1
        payload = pull_payload(payload_type, critical, body)
        payloads.append(UnknownPayload(payload_type, body) if payload is None else payload)
    return tuple(payloads)


def page_budget(max_datagram: int, fixed_payloads: Iterable[Payload] = ()) -> int:
    """Bytes left for entries in one response page.

    ``max_datagram`` is the largest UDP payload after channel protection.  The
    header, the channel overhead, the fixed payloads (status, server ID,
    epoch...) and a Page payload with the longest cursor are set aside.
    """
    reserved = (
        CHANNEL_OVERHEAD
        + HEADER_LENGTH
        + sum(encoded_payload_length(p) for p in fixed_payloads)
        + encoded_payload_length(PagePayload(0, bytes(MAX_CURSOR_LENGTH)))
    )
    return max_datagram - reserved


def paginate(
    entries: Sequence[Payload | Sequence[Payload]],
    max_datagram: int,
    fixed_payloads: Iterable[Payload] = (),
) -> list[list[Payload]]:
    """Split entries into pages whose responses each fit ``max_datagram`` bytes on the wire.

    An entry is one payload, or a sequence of payloads that must stay together
    (a SAD Entry with its Replay State and IKE SA).  Order is kept; an entry
    never spans pages; pages hold the payloads flattened.  Always returns at
    least one (possibly empty) page.  LocalWireError if one entry alone cannot fit.
    """
    budget = page_budget(max_datagram, fixed_payloads)
    pages: list[list[Payload]] = [[]]
    used = 0
    for entry in entries:
        group: Sequence[Payload] = entry if isinstance(entry, list | tuple) else (entry,)
        size = sum(encoded_payload_length(p) for p in group)
        if size > budget:
            raise LocalWireError(
                f"an entry of {size} bytes cannot fit a {max_datagram}-byte datagram "
                f"({budget} bytes available for entries)"
            )
        if used + size > budget:
            pages.append([])
            used = 0
        pages[-1].extend(group)
        used += size
    return pages


def describe(message: Message) -> dict[str, Any]:
    """A log-safe summary (types and counts, never key material)."""
    counts: dict[str, int] = {}
    for payload in message.payloads:
        name = type(payload).__name__
        counts[name] = counts.get(name, 0) + 1
    return {
        "exchange": message.exchange.name,
        "message_id": message.message_id,
        "response": message.response,
        "more": message.more,
        "payloads": counts,
    }
