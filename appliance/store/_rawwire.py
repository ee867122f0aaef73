"""A fast path through SA_Stor requests and SA_Retr responses for the store.

The store keeps entries as their payload bodies (see :mod:`._convert`), so
it needs each entry checked and its index fields, but never its re-encoding.
:func:`split` walks the generic payload chain of a message (the same checks
as :func:`appliance.wire.messages.decode_message`: version, length, exchange,
payload lengths, critical bits); :func:`parse_stor_items` checks each payload
with the codec's own ``pull_*`` functions and keeps the entry bodies as they
came.  Stored entries then go back out as they are, without a decode and an
encode per entry on either side.  Anything malformed raises ``WireError``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from appliance.wire._buffer import Buffer
from appliance.wire._errors import WireError
from appliance.wire.constants import (
    GENERIC_HEADER_LENGTH,
    HEADER_LENGTH,
    MAX_MESSAGE_LENGTH,
    PROTOCOL_MAJOR,
    ExchangeType,
    Flag,
    PayloadType,
    Status,
    TsType,
)
from appliance.wire.entries import AttributeType
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
)

_HEADER = struct.Struct("!BBBBII")
_GENERIC = struct.Struct("!BBH")
_LEN = struct.Struct("!H")
_ATTR = struct.Struct("!HH")
_ATTRIBUTE_TYPES = frozenset(int(t) for t in AttributeType)
_TS_HEAD = struct.Struct("!BBH")
_E = TypeVar("_E", SadEntryPayload, SpdEntryPayload)
_PROBE_TS = TrafficSelector(ipaddress.IPv4Address(0), ipaddress.IPv4Address(0))
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
    """A SAD Entry payload's index fields and its body (kept as is)."""

    spi: int
    protocol: int
    family: int
    daddr: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class RawSpd:
    """An SPD Entry payload's index and its three bodies (SPD, TSi, TSr)."""

    index: int
    body: bytes
    tsi: bytes
    tsr: bytes

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


def _probe(cls: type[_E]) -> _E:
    """An entry payload with every field zero (addresses: 16 zero bytes), no attributes."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in ("tsi", "tsr"):
            values[f.name] = _PROBE_TS
        elif f.name.endswith("addr"):
            values[f.name] = bytes(16)
        elif f.name == "attributes":
            values[f.name] = ()
        else:
            values[f.name] = 0
    return cls(**values)


def _fixed_length(payload: SadEntryPayload | SpdEntryPayload) -> int:
    buf = Buffer()
    payload.push_body(buf)
    return len(buf.getvalue())


# The fixed part of each entry payload precedes its attributes; its length comes
# from the codec itself, so this module follows any change of the layout.
_SAD_FIXED = _fixed_length(_probe(SadEntryPayload))
_SPD_FIXED = _fixed_length(_probe(SpdEntryPayload))


def _check_attributes(body: bytes, start: int, what: str) -> None:
    """The attribute list is well formed and names only attribute types the converter knows."""
    pos = start
    end = len(body)
    while pos < end:
        if pos + 4 > end:
            raise WireError(f"{what}: attribute header is truncated")
        attr_type, length = _ATTR.unpack_from(body, pos)
        if attr_type not in _ATTRIBUTE_TYPES:
            # The converter refuses these too: an entry it cannot install is not stored.
            raise WireError(
                f"{what} attribute type {attr_type} is not supported", Status.UNSUPPORTED
            )
        pos += 4 + length
    if pos != end:
        raise WireError(f"{what}: attribute length runs past the payload")


def _check_one_selector(body: bytes, what: str) -> None:
    """A TS payload body with exactly one IPv4 or IPv6 range selector (RFC 7296 3.13.1).

    The same checks as the codec's ``pull_ts_body`` without building address
    objects: the count, the selector type and its length.
    """
    if len(body) < 8 or body[0] != 1:
        raise WireError(f"{what} of an SPD entry must hold exactly one selector")
    ts_type, _, length = _TS_HEAD.unpack_from(body, 4)
    wanted = {TsType.IPV4_ADDR_RANGE: 16, TsType.IPV6_ADDR_RANGE: 40}.get(ts_type)
    if wanted is None:
        raise WireError(f"traffic selector type {ts_type} is not supported", Status.UNSUPPORTED)
    if length != wanted or len(body) != 4 + length:
        raise WireError(f"{what}: traffic selector length {length} is wrong for type {ts_type}")


@dataclass(frozen=True, slots=True)
class SadBody:
    """A SAD Entry payload body, not yet checked (a client converts it when used)."""

    body: bytes


def parse_retr_items(chunks: list[tuple[int, bool, bytes]]) -> list[object]:
    """SA_Retr response payloads for a client: entry bodies kept as they are, unchecked.

    The client turns them into model objects later (``entries.payload_to_sad``),
    which checks everything; decoding them here as well would double the cost
    of a bulk retrieval.
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
        elif payload_type in _PULLERS:
            items.append(_PULLERS[payload_type](Buffer(body, f"payload {payload_type}")))
        elif critical:
            raise WireError(
                f"critical payload type {payload_type} is not supported", Status.UNSUPPORTED
            )
    return items


def parse_stor_items(chunks: list[tuple[int, bool, bytes]]) -> list[object]:
    """SA_Stor payloads: entries as :class:`RawSad` / :class:`RawSpd`, the rest decoded."""
    items: list[object] = []
    index = 0
    while index < len(chunks):
        payload_type, critical, body = chunks[index]
        index += 1
        if payload_type == PayloadType.SAD_ENTRY:
            sad = SadEntryPayload.pull_body(Buffer(body[:_SAD_FIXED], "SAD entry payload"))
            _check_attributes(body, _SAD_FIXED, "SAD entry")
            items.append(RawSad(sad.spi, sad.protocol, sad.family, sad.daddr, body))
        elif payload_type == PayloadType.SPD_ENTRY:
            fixed = SpdEntryPayload.pull_fixed(Buffer(body[:_SPD_FIXED], "SPD entry payload"))
            _check_attributes(body, _SPD_FIXED, "SPD entry")
            selectors = []
            for wanted in (PayloadType.TSI, PayloadType.TSR):
                if index >= len(chunks) or chunks[index][0] != wanted:
                    raise WireError(f"an SPD entry payload must be followed by {wanted.name}")
                ts_body = chunks[index][2]
                _check_one_selector(ts_body, wanted.name)
                selectors.append(ts_body)
                index += 1
            policy_index = fixed["index"]
            assert isinstance(policy_index, int)
            items.append(RawSpd(policy_index, body, selectors[0], selectors[1]))
        elif payload_type in (PayloadType.TSI, PayloadType.TSR):
            raise WireError("a TSi or TSr payload must follow an SPD entry payload")
        elif payload_type in _PULLERS:
            items.append(_PULLERS[payload_type](Buffer(body, f"payload {payload_type}")))
        elif critical:
            raise WireError(
                f"critical payload type {payload_type} is not supported", Status.UNSUPPORTED
            )
    return items
