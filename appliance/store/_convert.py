"""Between wire payloads, model objects and the bytes the store keeps.

What the store keeps (``SaRecord.entry`` / ``PolicyRecord.entry``) is the
entry's **protocol encoding** with a one-byte format tag: ``0x01`` followed by
the SAD Entry payload body, or by the SPD Entry payload body and its TSi/TSr
bodies (each with a 2-byte length).  That encoding is lossless for the model
(``entries.payload_to_sad(entries.sad_to_payload(e)) == e``) and
deterministic, and keeping it lets the server store and serve entries
without converting them through the model on every request (the model
codec costs about a millisecond per entry in Python; the wire codec a few
microseconds).  Clients convert to model objects.

Policies are named by a compact ID: ``I`` + the 32-bit kernel policy index
(what a wire Delete names), or ``H`` + a digest of the entry when it has no
index.  The replay state is kept as a Replay State payload body.

Validation at the door: the server decodes every entry of an SA_Stor to the
model (:func:`admit_sad`, :func:`admit_spd`, :func:`admit_replay`) before it
stores anything, so that what it keeps always converts back; a bad entry is
refused by name (:class:`EntryRefusedError`).  Stored entries that do not
decode all the same (written by an older version, or put straight into the
backend) are skipped by the readers and described by :func:`describe_stored`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import struct
from typing import Literal

from appliance.errors import ApplianceError
from appliance.model import SadEntry, Selector, SpdEntry
from appliance.store.base import PROTO_NAMES, InvalidRequestError, SaKey, StoreError
from appliance.wire import Buffer, entries
from appliance.wire.constants import PayloadType
from appliance.wire.payloads import (
    ReplayStatePayload,
    SadEntryPayload,
    SaLookupPayload,
    SpdEntryPayload,
    UnknownPayload,
    pull_ts_body,
    push_ts_body,
)

#: Format tag of stored entries: protocol v1 payload bodies.
ENTRY_FORMAT_WIRE_V1 = b"\x01"

_LEN = struct.Struct("!H")


def policy_id_for_index(index: int) -> bytes:
    return b"I" + index.to_bytes(4, "big")


def raw_sa_key(spi: int, family: int, daddr: bytes, protocol: int) -> SaKey:
    """The SA key of a payload's fixed part, from its raw fields (no text in between).

    Equal to ``SaKey.of`` of the model SA the payload decodes to.
    """
    if protocol not in PROTO_NAMES:
        raise InvalidRequestError(f"protocol number {protocol} is not ESP (50), AH or IPComp")
    if family == 2:  # the server's backends key by text: inet_ntop gives it at once
        four = daddr[:4]
        addr = ipaddress.IPv4Address(int.from_bytes(four))  # an int is its quickest path
        return SaKey(spi, addr, protocol, text=socket.inet_ntop(socket.AF_INET, four))
    if family == 10:
        return SaKey(spi, ipaddress.IPv6Address(daddr[:16]), protocol)
    raise InvalidRequestError(f"address family {family} is not IPv4 (2) or IPv6 (10)")


def policy_id_for_digest(entry: bytes) -> bytes:
    return b"H" + hashlib.sha256(entry).digest()[:16]


def policy_id_for_identity(body: bytes, tsi: bytes, tsr: bytes) -> bytes:
    """The ID of a policy without an index: its (selector, direction, type, mark, if_id).

    protocol.md 5.2: such a policy replaces the stored one with the same identity.
    """
    fixed = SpdEntryPayload.pull_fixed(Buffer(body, "SPD entry payload"))
    attributes = fixed["attributes"]
    assert isinstance(attributes, tuple)
    identity = [
        fixed[name] for name in ("direction", "policy_type", "family", "prefixlen_s", "prefixlen_d")
    ]
    identity += [fixed[n] for n in ("sport_mask", "dport_mask", "ifindex", "user")]
    identity += [tsi.hex(), tsr.hex()]
    identity += [
        (a.type, a.value.hex())
        for a in attributes
        if a.type in (entries.AttributeType.MARK, entries.AttributeType.IF_ID)
    ]
    return policy_id_for_digest(repr(identity).encode())


def policy_id_of_stored(entry: bytes) -> bytes:
    """The ID the store gave a stored SPD entry (its index, else its identity), from its bytes.

    ``UndecodableEntryError`` if the entry does not decode that far.
    """
    try:
        body, tsi, tsr = _spd_parts(entry)
        fixed = SpdEntryPayload.pull_fixed(Buffer(body, "stored SPD entry"))
    except (ApplianceError, ValueError, struct.error) as exc:
        raise UndecodableEntryError(str(exc)) from None
    index = fixed["index"]
    assert isinstance(index, int)
    return policy_id_for_index(index) if index else policy_id_for_identity(body, tsi, tsr)


def sad_raw_payload(entry: bytes) -> UnknownPayload:
    """A stored SAD entry as a payload that encodes to exactly its stored body."""
    _check_format(entry)
    return UnknownPayload(PayloadType.SAD_ENTRY, entry[1:])


def _spd_parts(entry: bytes) -> list[bytes]:
    _check_format(entry)
    parts = []
    pos = 1
    for _ in range(3):
        (length,) = _LEN.unpack_from(entry, pos)
        parts.append(entry[pos + 2 : pos + 2 + length])
        pos += 2 + length
    return parts


def spd_raw_payloads(entry: bytes) -> list[UnknownPayload]:
    """A stored SPD entry as its three payloads (SPD Entry, TSi, TSr), bodies as stored."""
    body, tsi, tsr = _spd_parts(entry)
    return [
        UnknownPayload(PayloadType.SPD_ENTRY, body),
        UnknownPayload(PayloadType.TSI, tsi),
        UnknownPayload(PayloadType.TSR, tsr),
    ]


def sa_key_of_payload(payload: SadEntryPayload) -> SaKey:
    return raw_sa_key(payload.spi, payload.family, payload.daddr, payload.protocol)


sa_key_of = SaKey.of
"""The key of a model SA (``SaKey.of``)."""


def key_of_replay(payload: ReplayStatePayload) -> SaKey:
    return raw_sa_key(payload.spi, payload.family, payload.daddr, payload.protocol)


def key_of_lookup(payload: SaLookupPayload) -> SaKey:
    if payload.family == 0:
        raise InvalidRequestError("an SA lookup needs the destination address (family 0 given)")
    return raw_sa_key(payload.spi, payload.family, payload.daddr, payload.protocol)


def lookup_payload(key: SaKey) -> SaLookupPayload:
    family = 2 if key.daddr.version == 4 else 10
    return SaLookupPayload(key.spi, key.proto, family, key.daddr.packed.ljust(16, b"\0"))


def _body(payload: SadEntryPayload | SpdEntryPayload | ReplayStatePayload) -> bytes:
    buf = Buffer()
    try:
        payload.push_body(buf)
    except ApplianceError as exc:
        raise InvalidRequestError(f"entry cannot be encoded: {exc}") from None
    return buf.getvalue()


def sad_entry_bytes(payload: SadEntryPayload) -> bytes:
    return ENTRY_FORMAT_WIRE_V1 + _body(payload)


def sad_payload_from_entry(entry: bytes) -> SadEntryPayload:
    _check_format(entry)
    return SadEntryPayload.pull_body(Buffer(entry[1:], "stored SAD entry"))


def spd_entry_bytes(payload: SpdEntryPayload) -> bytes:
    parts = [_body(payload)]
    for selector in (payload.tsi, payload.tsr):
        buf = Buffer()
        push_ts_body(buf, (selector,))
        parts.append(buf.getvalue())
    return ENTRY_FORMAT_WIRE_V1 + b"".join(_LEN.pack(len(p)) + p for p in parts)


def spd_payload_from_entry(entry: bytes) -> SpdEntryPayload:
    parts = _spd_parts(entry)
    fixed = SpdEntryPayload.pull_fixed(Buffer(parts[0], "stored SPD entry"))
    (tsi,) = pull_ts_body(Buffer(parts[1], "stored TSi"))
    (tsr,) = pull_ts_body(Buffer(parts[2], "stored TSr"))
    return SpdEntryPayload(tsi=tsi, tsr=tsr, **fixed)


def _check_format(entry: bytes) -> None:
    if entry[:1] != ENTRY_FORMAT_WIRE_V1:
        raise InvalidRequestError(f"stored entry has unknown format tag {entry[:1].hex()}")


def replay_to_bytes(payload: ReplayStatePayload) -> bytes:
    return _body(payload)


def sad_from_payload(payload: SadEntryPayload) -> SadEntry:
    try:
        return entries.payload_to_sad(payload)
    except (ApplianceError, ValueError) as exc:
        raise InvalidRequestError(f"SAD entry payload: {exc}") from None


def spd_from_payload(payload: SpdEntryPayload) -> SpdEntry:
    try:
        return entries.payload_to_spd(payload)
    except (ApplianceError, ValueError) as exc:
        raise InvalidRequestError(f"SPD entry payload: {exc}") from None


def sad_to_payload(entry: SadEntry) -> SadEntryPayload:
    return entries.sad_to_payload(entry)


def spd_to_payload(entry: SpdEntry) -> SpdEntryPayload:
    return entries.spd_to_payload(entry)


# -- validation at the door ----------------------------------------------------------


_REFUSED = "; nothing of this message was stored"


class EntryRefusedError(InvalidRequestError):
    """An SA_Stor entry that does not decode to the model; the message names it."""

    def __init__(self, message: str, key: SaKey | None = None) -> None:
        super().__init__(message)
        self.key = key


def admit_sad(payload: SadEntryPayload, where: str, key: SaKey) -> SadEntry:
    """The model SA of an SA_Stor's SAD entry, or ``EntryRefusedError`` naming ``where``."""
    try:
        return entries.payload_to_sad(payload)
    except (ApplianceError, ValueError) as exc:
        raise EntryRefusedError(f"{where}: {exc}{_REFUSED}", key) from None


def admit_spd(payload: SpdEntryPayload, where: str) -> SpdEntry:
    """The model policy of an SA_Stor's SPD entry, or ``EntryRefusedError`` naming ``where``."""
    try:
        return entries.payload_to_spd(payload)
    except (ApplianceError, ValueError) as exc:
        raise EntryRefusedError(f"{where}: {exc}{_REFUSED}") from None


def admit_replay(payload: ReplayStatePayload, sa: SadEntry | None, where: str, key: SaKey) -> None:
    """Refuse a Replay State that would not apply to its SA at retrieval (``merge_replay``).

    With the SA in the same message it is applied to that SA; on its own it is
    applied to a stand-in SA with the same SPI, protocol and destination, which
    checks everything the update carries itself.
    """
    try:
        if sa is None:
            daddr = key.daddr
            family = 2 if daddr.version == 4 else 10
            sa = SadEntry(
                daddr=daddr,
                spi=key.spi,
                proto=key.proto,
                saddr=daddr,
                family=family,
                selector=Selector(family=family),
            )
        entries.apply_replay_update(sa, payload)
    except (ApplianceError, ValueError) as exc:
        raise EntryRefusedError(f"{where}: {exc}{_REFUSED}", key) from None


# -- retrieval of entries that do not decode ------------------------------------------


class UndecodableEntryError(StoreError):
    """A stored entry that does not decode to the model (a reader skips it)."""


def describe_stored(kind: Literal["SAD", "SPD"], index: int, entry: bytes) -> str:
    """Which stored entry this is, for a log line: its place (1-based) and SPI or policy index.

    Never its bytes (they may hold keys); read from the fixed offsets, so it
    works for an entry that does not decode.
    """
    if kind == "SAD":
        spi = entry[1:5]
        name = f"SPI 0x{spi.hex()}" if len(spi) == 4 else "no SPI"
    else:
        policy = entry[3:7]
        name = f"policy index {int.from_bytes(policy, 'big')}" if len(policy) == 4 else "no index"
    return f"{kind} entry {index} ({name})"


def sad_from_stored(entry: bytes) -> SadEntry:
    """A stored SAD entry as a model object; ``UndecodableEntryError`` if it does not decode."""
    try:
        return sad_from_payload(sad_payload_from_entry(entry))
    except (ApplianceError, ValueError, struct.error) as exc:
        raise UndecodableEntryError(str(exc)) from None


def spd_from_stored(entry: bytes) -> SpdEntry:
    """A stored SPD entry as a model object; ``UndecodableEntryError`` if it does not decode."""
    try:
        return spd_from_payload(spd_payload_from_entry(entry))
    except (ApplianceError, ValueError, struct.error) as exc:
        raise UndecodableEntryError(str(exc)) from None
