"""Payload dataclasses and their ``pull_*`` / ``push_*`` body codecs.

Each payload class knows its Payload Type and how to write and read its body
(everything after the 4-byte generic payload header).  The header chain
itself is handled in ``messages.py``.  Layouts are in docs/protocol.md section 4.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from appliance.wire._buffer import Buffer
from appliance.wire._errors import LocalWireError, RemoteWireError
from appliance.wire.constants import (
    MAX_CURSOR_LENGTH,
    MAX_POLICY_ID_LENGTH,
    IdType,
    PayloadType,
    ProtocolId,
    RemovedKind,
    Status,
    TsType,
)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

AF_INET = 2
AF_INET6 = 10


def _pull_xfrm_address(buf: Buffer, field_name: str) -> bytes:
    return buf.pull_bytes(16, field_name)


def _check_len(value: bytes, length: int, field_name: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise LocalWireError(f"{field_name} must be {length} bytes")
    return value


@dataclass(frozen=True, slots=True)
class Attribute:
    """One type-length-value attribute inside an SAD or SPD entry payload."""

    type: int
    """Attribute type (protocol.md 5.1.9); 0x8000 and up carry raw kernel attributes."""
    value: bytes = field(repr=False)
    """Value bytes (may hold key material, hence not in repr)."""

    def __repr__(self) -> str:
        return f"Attribute(type={self.type}, <{len(self.value)} bytes>)"


def push_attributes(buf: Buffer, attributes: tuple[Attribute, ...]) -> None:
    for attribute in attributes:
        buf.push_uint16(attribute.type, "attribute type")
        buf.push_uint16(len(attribute.value), "attribute length")
        buf.push_bytes(attribute.value)


def pull_attributes(buf: Buffer) -> tuple[Attribute, ...]:
    attributes = []
    while not buf.eof():
        attr_type = buf.pull_uint16("attribute type")
        length = buf.pull_uint16("attribute length")
        attributes.append(Attribute(attr_type, buf.pull_bytes(length, f"attribute {attr_type}")))
    return tuple(attributes)


@dataclass(frozen=True, slots=True)
class Notify:
    """Notify (RFC 7296 3.10): the status of a response, optionally naming one SPI."""

    PAYLOAD_TYPE: ClassVar[PayloadType] = PayloadType.NOTIFY

    status: int
    """Notify Message Type; our codes are ``constants.Status``."""
    protocol_id: int = ProtocolId.NONE
    spi: int | None = None
    """The SPI (or policy index) the status is about, if any."""
    data: bytes = b""
    """Notification data: for errors, a UTF-8 explanation for the operator."""

    def push_body(self, buf: Buffer) -> None:
        buf.push_uint8(self.protocol_id, "notify protocol id")
        buf.push_uint8(0 if self.spi is None else 4)
        buf.push_uint16(self.status, "notify message type")
        if self.spi is not None:
            buf.push_uint32(self.spi, "notify SPI")
        buf.push_bytes(self.data)

    @classmethod
    def pull_body(cls, buf: Buffer) -> Notify:
        protocol_id = buf.pull_uint8("notify protocol id")
        spi_size = buf.pull_uint8("notify SPI size")
        status = buf.pull_uint16("notify message type")
        if spi_size not in (0, 4):
            raise RemoteWireError(f"notify SPI size {spi_size} is not 0 or 4")
        spi = buf.pull_uint32("notify SPI") if spi_size == 4 else None
        return cls(status, protocol_id, spi, buf.pull_rest())

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


_DELETE_PROTOCOLS = (
    ProtocolId.IKE,
    ProtocolId.AH,
    ProtocolId.ESP,
    ProtocolId.IPCOMP,
    ProtocolId.SPD_INDEX,
)


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete (RFC 7296 3.11): remove SAs by SPI, SPD entries by index, IKE SAs by SPIs.

    For protocol IKE each "SPI" is 16 octets, the IKE SA's initiator's SPI and
    responder's SPI; ``spis`` then holds them as one 128-bit number each
    (``ike_spis`` splits them).  Every other protocol has 4-octet SPIs.
    """

    PAYLOAD_TYPE: ClassVar[PayloadType] = PayloadType.DELETE

    protocol_id: int
    spis: tuple[int, ...]

    @classmethod
    def for_ike_sas(cls, spis: Iterable[tuple[int, int]]) -> Delete:
        return cls(ProtocolId.IKE, tuple(i << 64 | r for i, r in spis))

    @property
    def ike_spis(self) -> tuple[tuple[int, int], ...]:
        """For protocol IKE: each IKE SA as (initiator's SPI, responder's SPI)."""
        return tuple((s >> 64, s & (1 << 64) - 1) for s in self.spis)

    @property
    def spi_size(self) -> int:
        return 16 if self.protocol_id == ProtocolId.IKE else 4

    def push_body(self, buf: Buffer) -> None:
        if self.protocol_id not in _DELETE_PROTOCOLS:
            raise LocalWireError(
                f"delete protocol id {self.protocol_id} is not IKE, AH, ESP, IPCOMP or SPD"
            )
        buf.push_uint8(self.protocol_id)
        buf.push_uint8(self.spi_size)
        buf.push_uint16(len(self.spis), "number of SPIs")
        for spi in self.spis:
            if self.spi_size == 4:
                buf.push_uint32(spi, "delete SPI")
            elif not 0 < spi < 1 << 128:
                raise LocalWireError(f"delete IKE SPIs {spi:#x} do not fit 16 octets")
            else:
                buf.push_bytes(spi.to_bytes(16, "big"))

    @classmethod
    def pull_body(cls, buf: Buffer) -> Delete:
        protocol_id = buf.pull_uint8("delete protocol id")
        spi_size = buf.pull_uint8("delete SPI size")
        count = buf.pull_uint16("number of SPIs")
        if protocol_id not in _DELETE_PROTOCOLS:
            raise RemoteWireError(
                f"delete protocol id {protocol_id} is not supported", Status.UNSUPPORTED
            )
        want = 16 if protocol_id == ProtocolId.IKE else 4
        if spi_size != want:
            raise RemoteWireError(
                f"delete SPI size is {spi_size}, must be {want} for protocol id {protocol_id}"
            )
        if want == 4:
            spis = tuple(buf.pull_uint32("delete SPI") for _ in range(count))
        else:
            spis = tuple(
                int.from_bytes(buf.pull_bytes(16, "delete IKE SPIs"), "big") for _ in range(count)
            )
            if 0 in spis:
                raise RemoteWireError("delete names an IKE SA with SPIs 0 and 0")
        buf.expect_end()
        return cls(protocol_id, spis)


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """One IKEv2 traffic selector (RFC 7296 3.13.1): a protocol, port range, address range."""

    start_address: Address
    end_address: Address
    ip_protocol: int = 0
    start_port: int = 0
    end_port: int = 0xFFFF

    def __post_init__(self) -> None:
        if self.start_address.version != self.end_address.version:
            raise LocalWireError("traffic selector start and end addresses differ in family")

    @property
    def ts_type(self) -> TsType:
        if self.start_address.version == 4:
            return TsType.IPV4_ADDR_RANGE
        return TsType.IPV6_ADDR_RANGE

    def push(self, buf: Buffer) -> None:
        size = 4 if self.ts_type == TsType.IPV4_ADDR_RANGE else 16
        buf.push_uint8(self.ts_type)
        buf.push_uint8(self.ip_protocol, "TS IP protocol")
        buf.push_uint16(8 + 2 * size)
        buf.push_uint16(self.start_port, "TS start port")
        buf.push_uint16(self.end_port, "TS end port")
        buf.push_bytes(self.start_address.packed)
        buf.push_bytes(self.end_address.packed)

    @classmethod
    def pull(cls, buf: Buffer) -> TrafficSelector:
        ts_type = buf.pull_uint8("TS type")
        ip_protocol = buf.pull_uint8("TS IP protocol")
        length = buf.pull_uint16("TS selector length")
        if ts_type == TsType.IPV4_ADDR_RANGE:
            size = 4
        elif ts_type == TsType.IPV6_ADDR_RANGE:
            size = 16
        else:
            raise RemoteWireError(
                f"traffic selector type {ts_type} is not supported", Status.UNSUPPORTED
            )
        if length != 8 + 2 * size:
            raise RemoteWireError(f"traffic selector length {length} is wrong for type {ts_type}")
        start_port = buf.pull_uint16("TS start port")
        end_port = buf.pull_uint16("TS end port")
        start = _address(buf.pull_bytes(size, "TS start address"))
        end = _address(buf.pull_bytes(size, "TS end address"))
        return cls(start, end, ip_protocol, start_port, end_port)


@functools.lru_cache(maxsize=1 << 16)
def _address(packed: bytes) -> Address:
    """4 or 16 bytes as an address object; cached, since entries repeat few addresses."""
    return ipaddress.ip_address(packed)


def push_ts_body(buf: Buffer, selectors: tuple[TrafficSelector, ...]) -> None:
    buf.push_uint8(len(selectors), "number of TSs")
    buf.push_bytes(b"\0\0\0")
    for selector in selectors:
        selector.push(buf)


def pull_ts_body(buf: Buffer) -> tuple[TrafficSelector, ...]:
    count = buf.pull_uint8("number of TSs")
    buf.pull_bytes(3, "TS reserved")
    selectors = tuple(TrafficSelector.pull(buf) for _ in range(count))
    buf.expect_end()
    return selectors


@dataclass(frozen=True, slots=True)
class SadEntryPayload:
    """SAD Entry (128): one XFRM state; fixed part + attributes (protocol.md 5.1.9)."""

    PAYLOAD_TYPE: ClassVar[PayloadType] = PayloadType.SAD_ENTRY

    spi: int
    protocol: int
    """IP protocol number of the SA: 50 ESP, 51 AH, 108 IPComp."""
    family: int
    mode: int
    flags: int
    replay_window: int
    """``xfrm_usersa_info.replay_window`` (the legacy 8-bit window size)."""
    reqid: int
    seq: int
    """``xfrm_usersa_info.seq``: the acquire sequence number the SA answered."""
    daddr: bytes
    """16 bytes, as the kernel's ``xfrm_address_t`` (IPv4 in the first 4)."""
    saddr: bytes
    attributes: tuple[Attribute, ...] = ()

    def push_body(self, buf: Buffer) -> None:
        buf.push_uint32(self.spi, "SAD SPI")
        buf.push_uint16(self.family, "SAD family")
        buf.push_uint8(self.protocol, "SAD protocol")
        buf.push_uint8(self.mode, "SAD mode")
        buf.push_uint8(self.flags, "SAD flags")
        buf.push_uint8(self.replay_window, "SAD replay window")
        buf.push_uint16(0)
        buf.push_uint32(self.reqid, "SAD reqid")
        buf.push_uint32(self.seq, "SAD seq")
        buf.push_bytes(_check_len(self.daddr, 16, "SAD destination address"))
        buf.push_bytes(_check_len(self.saddr, 16, "SAD source address"))
        push_attributes(buf, self.attributes)

    @classmethod
    def pull_body(cls, buf: Buffer) -> SadEntryPayload:
        spi = buf.pull_uint32("SAD SPI")
        family = buf.pull_uint16("SAD family")
        protocol = buf.pull_uint8("SAD protocol")
        mode = buf.pull_uint8("SAD mode")
        flags = buf.pull_uint8("SAD flags")
        replay_window = buf.pull_uint8("SAD replay window")
        buf.pull_uint16("SAD reserved")
        return cls(
            spi=spi,
            protocol=protocol,
            family=family,
            mode=mode,
            flags=flags,
            replay_window=replay_window,
            reqid=buf.pull_uint32("SAD reqid"),
            seq=buf.pull_uint32("SAD seq"),
            daddr=_pull_xfrm_address(buf, "SAD destination address"),
            saddr=_pull_xfrm_address(buf, "SAD source address"),
            attributes=pull_attributes(buf),
        )


@dataclass(frozen=True, slots=True)
class SpdEntryPayload:
    """SPD Entry (129): one XFRM policy; always followed on the wire by its TSi and TSr.

    The selector's addresses, ports and protocol travel in ``tsi`` (source side)
    and ``tsr`` (destination side); what a range cannot say (prefix lengths,
    port masks, interface, user) is in the fixed part, so nothing is lost.
    """

    PAYLOAD_TYPE: ClassVar[PayloadType] = PayloadType.SPD_ENTRY

    index: int
    priority: int
    direction: int
    action: int
    flags: int
    share: int
    policy_type: int
    family: int
    prefixlen_s: int
    prefixlen_d: int
    sport_mask: int
    dport_mask: int
    ifindex: int
    user: int
    tsi: TrafficSelector
    tsr: TrafficSelector
    attributes: tuple[Attribute, ...] = ()

    def push_body(self, buf: Buffer) -> None:
        buf.push_uint32(self.index, "SPD index")
        buf.push_uint32(self.priority, "SPD priority")
        buf.push_uint8(self.direction, "SPD direction")
        buf.push_uint8(self.action, "SPD action")
        buf.push_uint8(self.flags, "SPD flags")
        buf.push_uint8(self.share, "SPD share")
        buf.push_uint8(self.policy_type, "SPD type")
        buf.push_uint8(self.prefixlen_s, "SPD source prefix length")
        buf.push_uint8(self.prefixlen_d, "SPD destination prefix length")
        buf.push_uint8(0)
        buf.push_uint16(self.family, "SPD family")
        buf.push_uint16(self.sport_mask, "SPD source port mask")
        buf.push_uint16(self.dport_mask, "SPD destination port mask")
        buf.push_uint16(0)
        buf.push_uint32(self.ifindex, "SPD ifindex")
        buf.push_uint32(self.user, "SPD user")
        push_attributes(buf, self.attributes)

    @classmethod
    def pull_fixed(cls, buf: Buffer) -> dict[str, Any]:
        """The fields of the SPD payload itself (TSi/TSr follow as separate payloads)."""
        fixed: dict[str, Any] = {
            "index": buf.pull_uint32("SPD index"),
            "priority": buf.pull_uint32("SPD priority"),
            "direction": buf.pull_uint8("SPD direction"),
            "action": buf.pull_uint8("SPD action"),
            "flags": buf.pull_uint8("SPD flags"),
            "share": buf.pull_uint8("SPD share"),
            "policy_type": buf.pull_uint8("SPD type"),
            "prefixlen_s": buf.pull_uint8("SPD source prefix length"),
            "prefixlen_d": buf.pull_uint8("SPD destination prefix length"),
        }
        buf.pull_uint8("SPD reserved")
        fixed["family"] = buf.pull_uint16("SPD family")
        fixed["sport_mask"] = buf.pull_uint16("SPD source port mask")
        fixed["dport_mask"] = buf.pull_uint16("SPD destination port mask")
        buf.pull_uint16("SPD reserved")
        fixed["ifindex"] = buf.pull_uint32("SPD ifindex")
        fixed["user"] = buf.pull_uint32("SPD user")
        fixed["attributes"] = pull_attributes(buf)
        return fixed


MAX_CHILD_SPIS = 1024
"""Most CHILD SA SPIs an IKE SA payload may name."""


@dataclass(frozen=True, slots=True)
class IkeSaPayload:
    """IKE SA (130): one IKE SA record with the SPIs of its CHILD SAs (protocol.md 4.6).

    The record is opaque to the store (``appliance.strongswan.ike_record``
    writes it) and holds key material: it never shows in ``repr``.
    """

    PAYLOAD_TYPE: ClassVar[PayloadType] = PayloadType.IKE_SA

    spi_i: int
    spi_r: int
    child_spis: tuple[int, ...]
    record: bytes = field(repr=False)

    @property
    def spis(self) -> tuple[int, int]:
        return (self.spi_i, self.spi_r)

    def push_body(self, buf: Buffer) -> None:
        problem = _ike_sa_problem(self)
        if problem is not None:
            raise LocalWireError(problem)
        buf.push_bytes(self.spi_i.to_bytes(8, "big") + self.spi_r.to_bytes(8, "big"))
        buf.push_uint16(len(self.child_spis), "number of CHILD SA SPIs")
        buf.push_uint16(0, "reserved")
        for spi in self.child_spis:
            buf.push_uint32(spi, "CHILD SA SPI")
        buf.push_bytes(self.record)

    @classmethod
    def pull_body(cls, buf: Buffer) -> IkeSaPayload:
        spi_i = int.from_bytes(buf.pull_bytes(8, "IKE SA initiator's SPI"), "big")
        spi_r = int.from_bytes(buf.pull_bytes(8, "IKE SA responder's SPI"), "big")
        count = buf.pull_uint16("number of CHILD SA SPIs")
        buf.pull_uint16("IKE SA reserved")
        if count > MAX_CHILD_SPIS:
            raise RemoteWireError(f"IKE SA names {count} CHILD SA SPIs, more than {MAX_CHILD_SPIS}")
        children = tuple(buf.pull_uint32("CHILD SA SPI") for _ in range(count))
        payload = cls(spi_i, spi_r, children, buf.pull_rest())
        problem = _ike_sa_problem(payload)
        if problem is not None:
            raise RemoteWireError(problem)
        return payload


def _ike_sa_problem(p: IkeSaPayload) -> str | None:
    """What breaks 4.6's rules for an IKE SA payload, if anything (all MALFORMED)."""
    if not (0 <= p.spi_i < 1 << 64 and 0 <= p.spi_r < 1 << 64) or p.spis == (0, 0):
        return "IKE SA SPIs must be 64-bit and not both 0"
    if len(p.child_spis) > MAX_CHILD_SPIS:
        return f"IKE SA names more than {MAX_CHILD_SPIS} CHILD SA SPIs"
    if 0 in p.child_spis or len(set(p.child_spis)) != len(p.child_spis):
        return "IKE SA CHILD SA SPIs must be non-zero and distinct"
    if not p.record:
        return "IKE SA record is empty"
    return None


REPLAY_FLAG_ESN = 0x01


@dataclass(frozen=True, slots=True)
class ReplayStatePayload:
    """Replay State (131): the small, frequent update of one SA's counters."""

    PAYLOAD_TYPE: ClassVar[PayloadType] = PayloadType.REPLAY_STATE

    spi: int
    protocol: int
    family: int
    daddr: bytes
    """16 bytes, ``xfrm_address_t`` form."""
    oseq: int
    seq: int
    oseq_hi: int = 0
    seq_hi: int = 0
    replay_window: int = 0
    bitmap: tuple[int, ...] = ()
    """The receive window bitmap as 32-bit words (one word for a legacy SA)."""
    esn: bool = False
    """True if the SA keeps ESN replay state (``xfrm_replay_state_esn``)."""
    lifetime_bytes: int = 0
    lifetime_packets: int = 0

    def push_body(self, buf: Buffer) -> None:
        buf.push_uint32(self.spi, "replay SPI")
        buf.push_uint8(self.protocol, "replay protocol")
        buf.push_uint8(REPLAY_FLAG_ESN if self.esn else 0)
        buf.push_uint16(self.family, "replay family")
        buf.push_bytes(_check_len(self.daddr, 16, "replay destination address"))
        buf.push_uint32(self.oseq, "oseq")
        buf.push_uint32(self.seq, "seq")
        buf.push_uint32(self.oseq_hi, "oseq_hi")
        buf.push_uint32(self.seq_hi, "seq_hi")
        buf.push_uint32(self.replay_window, "replay window")
        buf.push_uint64(self.lifetime_bytes, "lifetime bytes")
        buf.push_uint64(self.lifetime_packets, "lifetime packets")
        buf.push_uint16(len(self.bitmap), "bitmap length")
        buf.push_uint16(0)
        for word in self.bitmap:
            buf.push_uint32(word, "bitmap word")

    @classmethod
    def pull_body(cls, buf: Buffer) -> ReplayStatePayload:
        spi = buf.pull_uint32("replay SPI")
        protocol = buf.pull_uint8("replay protocol")
        flags = buf.pull_uint8("replay flags")
        family = buf.pull_uint16("replay family")
        daddr = _pull_xfrm_address(buf, "replay destination address")
        oseq = buf.pull_uint32("oseq")
        seq = buf.pull_uint32("seq")
        oseq_hi = buf.pull_uint32("oseq_hi")
        seq_hi = buf.pull_uint32("seq_hi")
        window = buf.pull_uint32("replay window")
        lifetime_bytes = buf.pull_uint64("lifetime bytes")
        lifetime_packets = buf.pull_uint64("lifetime packets")
        words = buf.pull_uint16("bitmap length")
        buf.pull_uint16("replay reserved")
        bitmap = tuple(buf.pull_uint32("bitmap word") for _ in range(words))
        buf.expect_end()
        return cls(
            spi,
            protocol,
            family,
            daddr,
            oseq,
            seq,
            oseq_hi,
            seq_hi,
            window,
            bitmap,
            bool(flags & REPLAY_FLAG_ESN),
            lifetime_bytes,
            lifetime_packets,
        )


@dataclass(frozen=True, slots=True)
class ServerIdPayload:
    """Server ID (132): whose state this is; an IP address or an FQDN (draft 4.1)."""

    PAYLOAD_TYPE: ClassVar[PayloadType] = PayloadType.SERVER_ID

    id_type: int
    data: bytes

    def __post_init__(self) -> None:
        problem = _server_id_problem(self.id_type, self.data)
        if problem is not None:
            raise LocalWireError(problem[0])

    @classmethod
    def parse(cls, text: str) -> ServerIdPayload:
        """An IP address literal becomes an address ID; anything else an FQDN."""
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return cls(IdType.FQDN, text.encode("ascii", "replace"))
        if address.version == 4:
            return cls(IdType.IPV4_ADDR, address.packed)
        return cls(IdType.IPV6_ADDR, address.packed)

    def __str__(self) -> str:
        if self.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            return str(ipaddress.ip_address(self.data))
        if self.id_type == IdType.FQDN:
            return self.data.decode("ascii")
        return "keyid:" + self.data.hex()

    def push_body(self, buf: Buffer) -> None:
        buf.push_uint8(self.id_type, "server ID type")
        buf.push_bytes(b"\0\0\0")
        buf.push_bytes(self.data)

    @classmethod
    def pull_body(cls, buf: Buffer) -> ServerIdPayload:
        id_type = buf.pull_uint8("server ID type")
        buf.pull_bytes(3, "server ID reserved")
        data = buf.pull_rest()
        problem = _server_id_problem(id_type, data)
        if problem is not None:
            raise RemoteWireError(*problem)
        return cls(id_type, data)


def _server_id_problem(id_type: int, data: bytes) -> tuple[str, Status] | None:
    """What breaks the draft's rules for a server ID (and the status to answer), if anything."""
    if id_type == IdType.IPV4_ADDR and len(data) != 4:
        return f"IPv4 server ID must be 4 bytes, got {len(data)}", Status.MALFORMED
    if id_type == IdType.IPV6_ADDR and len(data) != 16:
        return f"IPv6 server ID must be 16 bytes, got {len(data)}", Status.MALFORMED
    if id_type == IdType.FQDN:
        if not 1 <= len(data) <= 255:
            return f"FQDN server ID must be 1-255 bytes, got {len(data)}", Status.MALFORMED
        if not all(0x21 <= b <= 0x7E for b in data):
            return "FQDN server ID must be printable ASCII without spaces", Status.MALFORMED
    if id_type == IdType.KEY_ID and not 1 <= len(data) <= 255:
        return f"key-ID server ID must be 1-255 bytes, got {len(data)}", Status.MALFORMED
    if id_type not in tuple(IdType):
        return f"server ID type {id_type} is not supported", Status.UNSUPPORTED
    return None


@dataclass(frozen=True, slots=True)
class EpochPayload:
    """Epoch (133): the owner epoch of a server ID's state (protocol.md 5.3.3)."""

    PAYLOAD_TYPE: ClassVar[PayloadType] = PayloadType.EPOCH

    epoch: int

    def push_body(self, buf: Buffer) -> None:
        buf.push_uint64(self.epoch, "epoch")

    @classmethod
    def pull_body(cls, buf: Buffer) -> EpochPayload:
        epoch = buf.pull_uint64("epoch")
        buf.expect_end()
        return cls(epoch)


@dataclass(frozen=True, slots=True)
class PagePayload:
    """Page (134): in a request, the largest reply wanted and where to resume;
    in a response with the M flag, the cursor for the next page."""

    PAYLOAD_TYPE: ClassVar[PayloadType] = PayloadType.PAGE

    max_length: int = 0
    """Largest UDP payload (after channel protection) the requester accepts; 0 = default."""
    cursor: bytes = b""
    """Opaque to the requester; empty = from the start."""

    def push_body(self, buf: Buffer) -> None:
        if len(self.cursor) > MAX_CURSOR_LENGTH:
            raise LocalWireError(
                f"page cursor is {len(self.cursor)} bytes, max {MAX_CURSOR_LENGTH}"
            )
        buf.push_uint16(self.max_length, "page max length")
        buf.push_uint16(0)
        buf.push_bytes(self.cursor)

    @classmethod
    def pull_body(cls, buf: Buffer) -> PagePayload:
        max_length = buf.pull_uint16("page max length")
        buf.pull_uint16("page reserved")
        cursor = buf.pull_rest()
        if len(cursor) > MAX_CURSOR_LENGTH:
            raise RemoteWireError(f"page cursor is {len(cursor)} bytes, max {MAX_CURSOR_LENGTH}")
        return cls(max_length, cursor)


def _push_sa_key(
    buf: Buffer, spi: int, protocol: int, family: int, daddr: bytes, what: str
) -> None:
    """The 24-octet SA key of SA Lookup (4.11), which a removed SA (4.13) reuses."""
    buf.push_uint32(spi, f"{what} SPI")
    buf.push_uint8(protocol, f"{what} protocol")
    buf.push_uint8(0)
    buf.push_uint16(family, f"{what} family")
    buf.push_bytes(_check_len(daddr, 16, f"{what} destination address"))


def _pull_sa_key(buf: Buffer, what: str) -> tuple[int, int, int, bytes]:
    """(SPI, protocol, family, destination) of a 24-octet SA key; see ``_push_sa_key``."""
    spi = buf.pull_uint32(f"{what} SPI")
    protocol = buf.pull_uint8(f"{what} protocol")
    buf.pull_uint8(f"{what} reserved")
    family = buf.pull_uint16(f"{what} family")
    daddr = _pull_xfrm_address(buf, f"{what} destination address")
    return spi, protocol, family, daddr


@dataclass(frozen=True, slots=True)
class SaLookupPayload:
    """SA Lookup (135): SA_Retr by SPI; destination optional (family 0 = any)."""

    PAYLOAD_TYPE: ClassVar[PayloadType] = PayloadType.SA_LOOKUP

    spi: int
    protocol: int = 50
    family: int = 0
    daddr: bytes = bytes(16)

    def push_body(self, buf: Buffer) -> None:
        _push_sa_key(buf, self.spi, self.protocol, self.family, self.daddr, "lookup")

    @classmethod
    def pull_body(cls, buf: Buffer) -> SaLookupPayload:
        key = _pull_sa_key(buf, "lookup")
        buf.expect_end()
        return cls(*key)


@dataclass(frozen=True, slots=True)
class RevisionPayload:
    """Revision (136): a Server ID's revision (protocol.md 4.12)."""

    PAYLOAD_TYPE: ClassVar[PayloadType] = PayloadType.REVISION

    revision: int

    def push_body(self, buf: Buffer) -> None:
        buf.push_uint64(self.revision, "revision")

    @classmethod
    def pull_body(cls, buf: Buffer) -> RevisionPayload:
        revision = buf.pull_uint64("revision")
        buf.expect_end()
        return cls(revision)


@dataclass(frozen=True, slots=True)
class RemovedPayload:
    """Removed (137): one entry removed from a Server ID's state (protocol.md 4.13).

    An SA is named by its SA key (the fields of SA Lookup), an SPD entry by
    the store's opaque policy ID; the fields of the other kind keep their
    defaults.  Build one with ``for_sa`` or ``for_policy``.
    """

    PAYLOAD_TYPE: ClassVar[PayloadType] = PayloadType.REMOVED

    kind: RemovedKind
    spi: int = 0
    protocol: int = 0
    """IP protocol of a removed SA: 50 ESP, 51 AH, 108 IPComp."""
    family: int = 0
    """Address family of a removed SA: 2 or 10."""
    daddr: bytes = bytes(16)
    """Destination of a removed SA, 16 bytes in ``xfrm_address_t`` form."""
    policy_id: bytes = b""
    """The store's identity of a removed SPD entry: 1-32 opaque bytes."""
    ike_spis: tuple[int, int] = (0, 0)
    """A removed IKE SA's initiator's and responder's SPIs."""

    @classmethod
    def for_sa(cls, spi: int, protocol: int, family: int, daddr: bytes) -> RemovedPayload:
        return cls(RemovedKind.SA, spi, protocol, family, daddr)

    @classmethod
    def for_policy(cls, policy_id: bytes) -> RemovedPayload:
        return cls(RemovedKind.SPD_ENTRY, policy_id=policy_id)

    @classmethod
    def for_ike_sa(cls, spis: tuple[int, int]) -> RemovedPayload:
        return cls(RemovedKind.IKE_SA, ike_spis=spis)

    def push_body(self, buf: Buffer) -> None:
        problem = _removed_problem(self)
        if problem is not None:
            raise LocalWireError(problem[0])
        buf.push_uint8(self.kind, "removed kind")
        buf.push_bytes(b"\0\0\0")
        if self.kind == RemovedKind.SA:
            _push_sa_key(buf, self.spi, self.protocol, self.family, self.daddr, "removed SA")
        elif self.kind == RemovedKind.IKE_SA:
            spi_i, spi_r = self.ike_spis
            buf.push_bytes(spi_i.to_bytes(8, "big") + spi_r.to_bytes(8, "big"))
        else:
            buf.push_bytes(self.policy_id)

    @classmethod
    def pull_body(cls, buf: Buffer) -> RemovedPayload:
        kind = buf.pull_uint8("removed kind")
        buf.pull_bytes(3, "removed reserved")
        if kind == RemovedKind.SA:
            key = _pull_sa_key(buf, "removed SA")
            buf.expect_end()
            payload = cls(RemovedKind.SA, *key)
        elif kind == RemovedKind.SPD_ENTRY:
            payload = cls(RemovedKind.SPD_ENTRY, policy_id=buf.pull_rest())
        elif kind == RemovedKind.IKE_SA:
            spi_i = int.from_bytes(buf.pull_bytes(8, "removed IKE SA initiator's SPI"), "big")
            spi_r = int.from_bytes(buf.pull_bytes(8, "removed IKE SA responder's SPI"), "big")
            buf.expect_end()
            payload = cls(RemovedKind.IKE_SA, ike_spis=(spi_i, spi_r))
        else:
            raise RemoteWireError(f"removed kind {kind} is not supported", Status.UNSUPPORTED)
        problem = _removed_problem(payload)
        if problem is not None:
            raise RemoteWireError(*problem)
        return payload


_ADDRESS_LENGTHS = {AF_INET: 4, AF_INET6: 16}
_SA_PROTOCOLS = (50, 51, 108)


def _removed_problem(payload: RemovedPayload) -> tuple[str, Status] | None:
    """What breaks 4.13's rules for a Removed payload (and the status to answer), if anything."""
    if payload.kind == RemovedKind.IKE_SA:
        if (payload.spi, payload.protocol, payload.family, payload.daddr, payload.policy_id) != (
            0,
            0,
            0,
            bytes(16),
            b"",
        ):
            return "a removed IKE SA carries only its SPIs", Status.MALFORMED
        spi_i, spi_r = payload.ike_spis
        if not (0 <= spi_i < 1 << 64 and 0 <= spi_r < 1 << 64) or payload.ike_spis == (0, 0):
            return "removed IKE SA SPIs must be 64-bit and not both 0", Status.MALFORMED
        return None
    if payload.ike_spis != (0, 0):
        return "only a removed IKE SA carries IKE SPIs", Status.MALFORMED
    if payload.kind == RemovedKind.SA:
        if payload.policy_id:
            return "a removed SA carries no policy ID", Status.MALFORMED
        if payload.protocol not in _SA_PROTOCOLS:
            return f"removed SA protocol {payload.protocol} is not 50, 51 or 108", Status.MALFORMED
        length = _ADDRESS_LENGTHS.get(payload.family)
        if length is None:
            return f"removed SA family {payload.family} is not 2 or 10", Status.MALFORMED
        if not isinstance(payload.daddr, bytes) or len(payload.daddr) != 16:
            return "removed SA destination address must be 16 bytes", Status.MALFORMED
        # One form per address, so that a follower can compare keys as bytes.
        if any(payload.daddr[length:]):
            return "removed SA IPv4 destination is not followed by 12 zero octets", Status.MALFORMED
        return None
    if payload.kind == RemovedKind.SPD_ENTRY:
        if (payload.spi, payload.protocol, payload.family, payload.daddr) != (0, 0, 0, bytes(16)):
            return "a removed SPD entry carries no SA key", Status.MALFORMED
        if not isinstance(payload.policy_id, bytes):
            return "removed policy ID must be bytes", Status.MALFORMED
        if not 1 <= len(payload.policy_id) <= MAX_POLICY_ID_LENGTH:
            return (
                f"removed policy ID is {len(payload.policy_id)} bytes, "
                f"must be 1-{MAX_POLICY_ID_LENGTH}",
                Status.MALFORMED,
            )
        return None
    return f"removed kind {payload.kind} is not supported", Status.UNSUPPORTED


@dataclass(frozen=True, slots=True)
class UnknownPayload:
    """A payload type this code does not know, without the critical bit: kept, not used."""

    payload_type: int
    body: bytes

    def push_body(self, buf: Buffer) -> None:
        buf.push_bytes(self.body)


Payload = (
    Notify
    | Delete
    | SadEntryPayload
    | SpdEntryPayload
    | IkeSaPayload
    | ReplayStatePayload
    | ServerIdPayload
    | EpochPayload
    | PagePayload
    | SaLookupPayload
    | RevisionPayload
    | RemovedPayload
    | UnknownPayload
)

BODY_PULLERS: dict[int, Callable[[Buffer], Payload]] = {
    PayloadType.NOTIFY: Notify.pull_body,
    PayloadType.DELETE: Delete.pull_body,
    PayloadType.SAD_ENTRY: SadEntryPayload.pull_body,
    PayloadType.IKE_SA: IkeSaPayload.pull_body,
    PayloadType.REPLAY_STATE: ReplayStatePayload.pull_body,
    PayloadType.SERVER_ID: ServerIdPayload.pull_body,
    PayloadType.EPOCH: EpochPayload.pull_body,
    PayloadType.PAGE: PagePayload.pull_body,
    PayloadType.SA_LOOKUP: SaLookupPayload.pull_body,
    PayloadType.REVISION: RevisionPayload.pull_body,
    PayloadType.REMOVED: RemovedPayload.pull_body,
}
"""The body decoder of each payload type that stands alone (not SPD Entry, TSi, TSr)."""
