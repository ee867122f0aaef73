"""A fast path through SA_Stor requests and SA_Retr responses for the store.

The store keeps entries as their payload bodies (see :mod:`._convert`), so
it needs each entry checked and its index fields, but never its re-encoding.
:func:`split` walks the generic payload chain of a message (the same checks
as :func:`appliance.wire.messages.decode_message`: version, length, exchange,
payload lengths, critical bits); :func:`parse_stor_items` decodes each payload
with the codec's own ``pull_*`` functions and keeps the entry bodies as they
came (the service then checks each entry against the model before storing).
Stored entries then go back out as they are, without a re-encoding on
either side.  Anything malformed raises ``WireError``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from appliance.wire import Buffer, WireError
from appliance.wire.constants import (
    GENERIC_HEADER_LENGTH,
    HEADER_LENGTH,
    MAX_MESSAGE_LENGTH,
    PROTOCOL_MAJOR,
    ExchangeType,
    Flag,
    PayloadType,
    Status,
)
from appliance.wire.payloads import (
    Delete,
    EpochPayload,
    IkeSaPayload,
    Notify,
    PagePayload,
    Payload,
    ReplayStatePayload,
    SadEntryPayload,
    SaLookupPayload,
    ServerIdPayload,
    SpdEntryPayload,
    TrafficSelector,
    pull_ts_body,
)

_HEADER = struct.Struct("!BBBBII")
_GENERIC = struct.Struct("!BBH")
_LEN = struct.Struct("!H")
CRITICAL = 0x80

_PULLERS: dict[int, Callable[[Buffer], Payload]] = {
    PayloadType.NOTIFY: Notify.pull_body,
    PayloadType.DELETE: Delete.pull_body,
    PayloadType.IKE_SA: IkeSaPayload.pull_body,
    PayloadType.REPLAY_STATE: ReplayStatePayload.pull_body,
    PayloadType.SERVER_ID: ServerIdPayload.pull_body,
    PayloadType.EPOCH: EpochPayload.pull_body,
    PayloadType.PAGE: PagePayload.pull_body,
    PayloadType.SA_LOOKUP: SaLookupPayload.pull_body,
}


@dataclass(frozen=True, slots=True)
class RawMessage:
    exchange: ExchangeType
    message_id: int
    response: bool
    more: bool
    chunks: list[tuple[int, bool, bytes]]


@dataclass(frozen=True, slots=True)
class RawSad:
    """A SAD Entry payload: its body (kept as is) and its decoded payload."""

    ordinal: int
    """1-based among the message's SAD entries (an error names the entry by it)."""
    body: bytes
    payload: SadEntryPayload

    @property
    def spi(self) -> int:
        return self.payload.spi

    @property
    def protocol(self) -> int:
        return self.payload.protocol

    @property
    def family(self) -> int:
        return self.payload.family

    @property
    def daddr(self) -> bytes:
        return self.payload.daddr


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


def split(data: bytes) -> RawMessage:
    """The header and the raw (type, critical, body) payload chain of a message."""
    if len(data) > MAX_MESSAGE_LENGTH:
        raise WireError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE_LENGTH}-byte limit")
    if len(data) < HEADER_LENGTH:
        raise WireError(f"message of {len(data)} bytes is shorter than its header")
    next_type, version, exchange_value, flags, message_id, length = _HEADER.unpack_from(data)
    if version >> 4 != PROTOCOL_MAJOR:
        raise WireError(
            f"protocol major version {version >> 4} is not supported (we speak {PROTOCOL_MAJOR})",
            Status.UNSUPPORTED,
        )
    if length != len(data):
        raise WireError(f"header length {length} does not match the {len(data)} bytes received")
    try:
        exchange = ExchangeType(exchange_value)
    except ValueError:
        raise WireError(
            f"exchange type {exchange_value} is not supported", Status.UNSUPPORTED
        ) from None
    response = bool(flags & Flag.RESPONSE)
    more = bool(flags & Flag.MORE)
    if more and not response:
        raise WireError("the M (more pages) flag is set in a request")
    chunks: list[tuple[int, bool, bytes]] = []
    pos = HEADER_LENGTH
    end = len(data)
    while next_type != PayloadType.NONE:
        if pos + GENERIC_HEADER_LENGTH > end:
            raise WireError(f"payload {next_type} header is truncated")
        this_type = next_type
        next_type, critical, payload_length = _GENERIC.unpack_from(data, pos)
        if payload_length < GENERIC_HEADER_LENGTH or pos + payload_length > end:
            raise WireError(f"payload {this_type} length {payload_length} is invalid")
        chunks.append((this_type, bool(critical & CRITICAL), data[pos + 4 : pos + payload_length]))
        pos += payload_length
    if pos != end:
        raise WireError(f"{end - pos} bytes follow the last payload")
    return RawMessage(exchange, message_id, response, more, chunks)


@dataclass(frozen=True, slots=True)
class SadBody:
    """A SAD Entry payload body, not yet checked (a client converts it when used)."""

    body: bytes


@dataclass(frozen=True, slots=True)
class UnreadableReplay:
    """A stored Replay State that does not decode: its SA must not be installed without it."""

    reason: str


def parse_retr_items(chunks: list[tuple[int, bool, bytes]]) -> list[object]:
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
            wanted = [PayloadType.TSI, PayloadType.TSR]
            if [c[0] for c in chunks[index : index + 2]] != wanted:
                raise WireError("an SPD entry payload must be followed by TSi and TSr")
            items.append(RawSpd(0, body, chunks[index][2], chunks[index + 1][2]))
            index += 2
        elif payload_type in (PayloadType.TSI, PayloadType.TSR):
            raise WireError("a TSi or TSr payload must follow an SPD entry payload")
        elif payload_type == PayloadType.REPLAY_STATE:
            try:
                items.append(ReplayStatePayload.pull_body(Buffer(body, "Replay State payload")))
            except WireError as exc:
                items.append(UnreadableReplay(str(exc)))
        elif payload_type in _PULLERS:
            items.append(_PULLERS[payload_type](Buffer(body, f"payload {payload_type}")))
        elif critical:
            raise WireError(
                f"critical payload type {payload_type} is not supported", Status.UNSUPPORTED
            )
    return items


def _entry_error(exc: WireError, kind: str, ordinal: int, body: bytes) -> WireError:
    """``exc`` naming the entry: its place among the message's entries and its SPI or index."""
    name = "SPI" if kind == "SAD" else "policy index"
    ident = f", {name} 0x{body[:4].hex()}" if len(body) >= 4 else ""
    return WireError(f"{kind} entry {ordinal}{ident}: {exc}", exc.status)


def _pull_selector(body: bytes, what: str) -> TrafficSelector:
    """The one selector of a TSi/TSr body (the codec's ``pull_ts_body``, as decode_message)."""
    found = pull_ts_body(Buffer(body, f"{what} payload"))
    if len(found) != 1:
        raise WireError(f"{what} of an SPD entry must hold exactly one selector")
    return found[0]


def parse_stor_items(chunks: list[tuple[int, bool, bytes]]) -> list[object]:
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
        index += 1
        if payload_type == PayloadType.SAD_ENTRY:
            sads += 1
            try:
                sad = SadEntryPayload.pull_body(Buffer(body, "SAD entry payload"))
            except WireError as exc:
                raise _entry_error(exc, "SAD", sads, body) from None
            items.append(RawSad(sads, body, sad))
        elif payload_type == PayloadType.SPD_ENTRY:
            spds += 1
            try:
                fixed = SpdEntryPayload.pull_fixed(Buffer(body, "SPD entry payload"))
                selectors = []
                for wanted in (PayloadType.TSI, PayloadType.TSR):
                    if index >= len(chunks) or chunks[index][0] != wanted:
                        raise WireError(f"an SPD entry payload must be followed by {wanted.name}")
                    selectors.append(_pull_selector(chunks[index][2], wanted.name))
                    index += 1
            except WireError as exc:
                raise _entry_error(exc, "SPD", spds, body) from None
            spd = SpdEntryPayload(tsi=selectors[0], tsr=selectors[1], **fixed)
            tsi, tsr = chunks[index - 2][2], chunks[index - 1][2]
            items.append(RawSpd(spd.index, body, tsi, tsr, spds, spd))
        elif payload_type in (PayloadType.TSI, PayloadType.TSR):
            raise WireError("a TSi or TSr payload must follow an SPD entry payload")
        elif payload_type in _PULLERS:
            items.append(_PULLERS[payload_type](Buffer(body, f"payload {payload_type}")))
        elif critical:
            raise WireError(
                f"critical payload type {payload_type} is not supported", Status.UNSUPPORTED
            )
    return items
