"""Codec for the messages of strongSwan's ``ha`` plugin, protocol version 3.

Theory of operation
-------------------
charon's ``ha`` plugin tells its peer about every IKE SA and CHILD SA change
in one UDP datagram per change (port 4510, plain unless the plugin has a
``secret``).  This module only translates those datagrams.  It opens no
socket, reads no clock and keeps no state, so it can be fed anything.

The format (strongSwan's ``src/libcharon/plugins/ha/ha_message.[ch]``):

* byte 0 is the protocol version, byte 1 the message type (``HaMessageType``);
* then attributes follow back to back until the datagram ends.  Each is one
  type byte (``HaAttributeType``) and a value whose encoding depends on the
  type alone (``HaKind``); there is no length field.  Multi-byte numbers are
  big-endian, except the two SPIs of an IKE SA ID, which are the eight bytes
  of the SPI as they appear in an IKE header.

Rules this module keeps:

* ``decode(data)`` returns an ``HaMessage``; ``encode(message)`` is its
  inverse.  ``decode(encode(m)) == m`` for every message that can be built,
  and ``encode(decode(b)) == b`` for every datagram that decodes.  Attribute
  order and repeats (several PEER_ADDR or LOCAL_TS) are kept as received.
* Version 3 is what strongSwan 5.0 to 6.0.0 speak, Debian 12's 5.9.8 among
  them.  Any other version is refused with ``HaVersionError``, which names
  the strongSwan releases that speak it: 6.0.1 and 6.0.2 renumbered the
  attributes, so guessing would misread key material.
* Bytes that are not a valid version 3 message (truncated, an unknown
  message or attribute type, an address family other than IPv4/IPv6, a flag
  that is neither 0 nor 1, ...) raise ``HaMessageError`` and nothing else.
  strongSwan itself stops at the first attribute it cannot parse and uses
  what came before; we refuse the whole datagram, because a relay that
  stores half an IKE SA is worse than one that stores none.
* Values that the format cannot carry (a 70,000-byte nonce, a port above
  65535, an attribute object of the wrong class for its type) are refused
  when the object is built, with ``HaValueError``: our own mistake, kept
  apart from what a peer sent.
* Key material never shows in ``repr``/``str``: chunk attributes listed in
  ``SECRET_ATTRIBUTES`` print as ``<N bytes hidden>``.

A quirk worth knowing: the plugin writes the ESP SPIs and IPComp CPIs of a
CHILD SA (INBOUND_SPI, OUTBOUND_SPI, INBOUND_CPI, OUTBOUND_CPI) by passing
the value charon keeps in network byte order through ``htonl``/``htons``.
On a little-endian sender (x86-64, arm64) the number decoded here is
therefore the SPI with its bytes reversed; ``spi_from_little_endian_sender`` undoes
that.  The codec keeps the number exactly as sent.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TypeAlias

from appliance.errors import ApplianceError

HA_MESSAGE_VERSION = 3
"""The only protocol version this codec speaks."""

HA_PORT = 4510
"""The UDP port the plugin binds (``local``) and sends to (``remote``)."""

# Who speaks which version (from strongSwan's tags): used to name a refused version.
_VERSION_SPEAKERS = {
    1: "strongSwan 4.4",
    2: "strongSwan 4.5 and 4.6",
    3: "strongSwan 5.x and 6.0.0",
    4: "strongSwan 6.0.1",
    5: "strongSwan 6.0.2 or later",
}

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


class HaMessageError(ApplianceError):
    """Bytes received from a ``ha`` plugin that are not a valid version 3 message."""


class HaVersionError(HaMessageError):
    """A message in a protocol version this codec does not speak; ``version`` is the byte."""

    def __init__(self, version: int) -> None:
        speaker = _VERSION_SPEAKERS.get(version, "not a version any strongSwan release used")
        super().__init__(
            f"ha message version {version} ({speaker}) is not supported; this ipsec-ha speaks "
            f"version {HA_MESSAGE_VERSION} ({_VERSION_SPEAKERS[HA_MESSAGE_VERSION]}): "
            "run a strongSwan that speaks it on this node"
        )
        self.version = version


class HaValueError(ApplianceError):
    """A value given to build a message that the version 3 format cannot carry."""


class HaMessageType(IntEnum):
    """Byte 1 of a message: what changed (``ha_message_type_t``)."""

    IKE_ADD = 1
    """A new IKE SA: algorithms, nonces and DH secret, enough to derive its keys."""
    IKE_UPDATE = 2
    """An IKE SA's identities, addresses, config name, conditions, extensions or VIPs."""
    IKE_MID_INITIATOR = 3
    """The next message ID of requests this side initiates."""
    IKE_MID_RESPONDER = 4
    """The next message ID this side expects as responder."""
    IKE_DELETE = 5
    """An IKE SA is gone."""
    CHILD_ADD = 6
    """A new CHILD SA: SPIs, mode, algorithms, nonces, traffic selectors."""
    CHILD_DELETE = 7
    """A CHILD SA is gone (named by its IKE SA and inbound SPI)."""
    SEGMENT_DROP = 8
    """The sender gives up these segments."""
    SEGMENT_TAKE = 9
    """The sender takes over these segments."""
    STATUS = 10
    """Heartbeat (every ``heartbeat_delay``), listing the segments the sender serves."""
    RESYNC = 11
    """The sender asks for every cached message of these segments again."""
    IKE_IV = 12
    """IKEv1 only: the IV for the next Main/Aggressive Mode message."""


class HaKind(IntEnum):
    """How an attribute's value is encoded; the attribute type alone decides it."""

    IKE_SA_ID = 1
    """IKE version (1 byte), initiator SPI, responder SPI (8 bytes each), initiator flag."""
    IDENTITY = 2
    """Identity type (1 byte), length (1 byte), that many bytes of encoding."""
    HOST = 3
    """Port (2 bytes), address family (1 byte), 4 or 16 address bytes."""
    TEXT = 4
    """Bytes up to and including a NUL."""
    U8 = 5
    U16 = 6
    U32 = 7
    CHUNK = 8
    """Length (2 bytes), that many bytes."""
    TRAFFIC_SELECTOR = 9
    """TS type, protocol (1 byte each), from/to port (2 each), dynamic flag, two addresses."""


class HaAttributeType(IntEnum):
    """The type byte of an attribute (``ha_message_attribute_t``, version 3 numbering).

    Each member's docstring says what it carries and which part of charon puts it there;
    ``KIND_OF`` gives its encoding.
    """

    IKE_ID = 1
    """IKE_SA_ID: the IKE SA the message is about (every IKE_* and CHILD_* message)."""
    IKE_REKEY_ID = 2
    """IKE_SA_ID: in IKE_ADD after an IKE rekey, the old IKE SA this one replaces."""
    LOCAL_ID = 3
    """IDENTITY: this gateway's IKE identity (IKE_UPDATE)."""
    REMOTE_ID = 4
    """IDENTITY: the peer's IKE identity (IKE_UPDATE)."""
    REMOTE_EAP_ID = 5
    """IDENTITY: the peer's EAP identity, when it differs from REMOTE_ID (IKE_UPDATE)."""
    LOCAL_ADDR = 6
    """HOST: this gateway's IKE address and port (IKE_UPDATE)."""
    REMOTE_ADDR = 7
    """HOST: the peer's IKE address and port (IKE_ADD, IKE_UPDATE)."""
    CONFIG_NAME = 8
    """TEXT: the connection (IKE_UPDATE) or CHILD SA config (CHILD_ADD) name."""
    CONDITIONS = 9
    """U32: bit set of charon's ``ike_condition_t`` (NAT, authenticated, ...) (IKE_UPDATE)."""
    EXTENSIONS = 10
    """U32: bit set of charon's ``ike_extension_t`` (MOBIKE, ...) the peer supports."""
    LOCAL_VIP = 11
    """HOST: a virtual IP this gateway got from the peer (IKE_UPDATE)."""
    REMOTE_VIP = 12
    """HOST: a virtual IP this gateway handed to the peer (IKE_UPDATE)."""
    PEER_ADDR = 13
    """HOST: one of the peer's additional addresses, for MOBIKE (IKE_UPDATE; repeated)."""
    INITIATOR = 14
    """U8: 1 when this gateway initiated the exchange that made the CHILD SA (CHILD_ADD)."""
    NONCE_I = 15
    """CHUNK, secret: the initiator's nonce of the exchange (IKE_ADD, CHILD_ADD)."""
    NONCE_R = 16
    """CHUNK, secret: the responder's nonce of the exchange (IKE_ADD, CHILD_ADD)."""
    SECRET = 17
    """CHUNK, secret: the Diffie-Hellman shared secret (IKE_ADD; CHILD_ADD with PFS)."""
    OLD_SKD = 18
    """CHUNK, secret: SK_d of the IKE SA being rekeyed (IKE_ADD after an IKE rekey)."""
    ALG_PRF = 19
    """U16: IKEv2 transform ID of the PRF (IKE_ADD)."""
    ALG_OLD_PRF = 20
    """U16: PRF of the IKE SA being rekeyed (IKE_ADD after an IKE rekey)."""
    ALG_ENCR = 21
    """U16: IKEv2 transform ID of the encryption algorithm (IKE_ADD, CHILD_ADD)."""
    ALG_ENCR_LEN = 22
    """U16: its key length in bits, for algorithms with variable key size."""
    ALG_INTEG = 23
    """U16: IKEv2 transform ID of the integrity algorithm (absent with AEAD)."""
    ALG_DH = 24
    """U16: Diffie-Hellman group (IKE_ADD; CHILD_ADD with PFS)."""
    IPSEC_MODE = 25
    """U8: charon's ``ipsec_mode_t`` of the CHILD SA (tunnel, transport, ...)."""
    IPCOMP = 26
    """U8: charon's ``ipcomp_transform_t``; 0 without IPComp (CHILD_ADD)."""
    INBOUND_SPI = 27
    """U32: inbound ESP/AH SPI of the CHILD SA, byte-swapped on little-endian senders."""
    OUTBOUND_SPI = 28
    """U32: outbound ESP/AH SPI of the CHILD SA, byte-swapped on little-endian senders."""
    INBOUND_CPI = 29
    """U16: inbound IPComp CPI, 0 without IPComp, byte-swapped as the SPIs."""
    OUTBOUND_CPI = 30
    """U16: outbound IPComp CPI, 0 without IPComp, byte-swapped as the SPIs."""
    LOCAL_TS = 31
    """TRAFFIC_SELECTOR: one of the CHILD SA's local selectors (CHILD_ADD; repeated)."""
    REMOTE_TS = 32
    """TRAFFIC_SELECTOR: one of the CHILD SA's remote selectors (CHILD_ADD; repeated)."""
    MID = 33
    """U32: the message ID that comes next (IKE_MID_INITIATOR, IKE_MID_RESPONDER)."""
    SEGMENT = 34
    """U16: a segment number, from 1 (SEGMENT_*, STATUS, RESYNC; repeated)."""
    ESN = 35
    """U16: 1 when the CHILD SA uses extended sequence numbers (CHILD_ADD)."""
    IKE_VERSION = 36
    """U8: IKE major version, 1 or 2 (IKE_ADD)."""
    LOCAL_DH = 37
    """CHUNK: IKEv1 only: this gateway's DH public value (IKE_ADD)."""
    REMOTE_DH = 38
    """CHUNK: IKEv1 only: the peer's DH public value (IKE_ADD)."""
    PSK = 39
    """CHUNK, secret: IKEv1 only: the pre-shared key, for key derivation (IKE_ADD)."""
    IV = 40
    """CHUNK, secret: IKEv1 only: the IV for the next message (IKE_IV)."""
    AUTH_METHOD = 41
    """U16: IKEv1 only: charon's ``auth_method_t``, for key derivation (IKE_ADD)."""


_K = HaKind
_A = HaAttributeType
KIND_OF: dict[HaAttributeType, HaKind] = {
    _A.IKE_ID: _K.IKE_SA_ID, _A.IKE_REKEY_ID: _K.IKE_SA_ID,
    _A.LOCAL_ID: _K.IDENTITY, _A.REMOTE_ID: _K.IDENTITY, _A.REMOTE_EAP_ID: _K.IDENTITY,
    _A.LOCAL_ADDR: _K.HOST, _A.REMOTE_ADDR: _K.HOST, _A.LOCAL_VIP: _K.HOST,
    _A.REMOTE_VIP: _K.HOST, _A.PEER_ADDR: _K.HOST,
    _A.CONFIG_NAME: _K.TEXT,
    _A.IKE_VERSION: _K.U8, _A.INITIATOR: _K.U8, _A.IPSEC_MODE: _K.U8, _A.IPCOMP: _K.U8,
    _A.ALG_DH: _K.U16, _A.ALG_PRF: _K.U16, _A.ALG_OLD_PRF: _K.U16, _A.ALG_ENCR: _K.U16,
    _A.ALG_ENCR_LEN: _K.U16, _A.ALG_INTEG: _K.U16, _A.INBOUND_CPI: _K.U16,
    _A.OUTBOUND_CPI: _K.U16, _A.SEGMENT: _K.U16, _A.ESN: _K.U16, _A.AUTH_METHOD: _K.U16,
    _A.CONDITIONS: _K.U32, _A.EXTENSIONS: _K.U32, _A.INBOUND_SPI: _K.U32,
    _A.OUTBOUND_SPI: _K.U32, _A.MID: _K.U32,
    _A.NONCE_I: _K.CHUNK, _A.NONCE_R: _K.CHUNK, _A.SECRET: _K.CHUNK, _A.LOCAL_DH: _K.CHUNK,
    _A.REMOTE_DH: _K.CHUNK, _A.PSK: _K.CHUNK, _A.IV: _K.CHUNK, _A.OLD_SKD: _K.CHUNK,
    _A.LOCAL_TS: _K.TRAFFIC_SELECTOR, _A.REMOTE_TS: _K.TRAFFIC_SELECTOR,
}  # fmt: skip
"""The encoding of each attribute type, as ``ha_message.c`` switches on it."""

SECRET_ATTRIBUTES: frozenset[HaAttributeType] = frozenset(
    {_A.NONCE_I, _A.NONCE_R, _A.SECRET, _A.OLD_SKD, _A.PSK, _A.IV}
)
"""Chunk attributes that are key material or feed key derivation: never printed."""

_NUMBER_WIDTH = {HaKind.U8: 1, HaKind.U16: 2, HaKind.U32: 4}
_TS_IPV4_ADDR_RANGE, _TS_IPV6_ADDR_RANGE = 7, 8  # IKEv2 TS types (RFC 7296)
_AF_INET, _AF_INET6 = 2, 10  # Linux address families, as the plugin writes them


def _check_kind(attr_type: HaAttributeType, kind: HaKind, cls: str) -> None:
    if not isinstance(attr_type, HaAttributeType):
        raise HaValueError(f"{cls}: type must be an HaAttributeType, not {attr_type!r}")
    if KIND_OF[attr_type] is not kind:
        raise HaValueError(
            f"{cls} cannot carry {attr_type.name}: its encoding is {KIND_OF[attr_type].name}"
        )


def _check_range(what: str, value: int, bits: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise HaValueError(f"{what} must be an integer from 0 to {(1 << bits) - 1}, not {value!r}")


@dataclass(frozen=True)
class HaIkeSaId:
    """An IKE SA ID: which IKE SA a message is about (IKE_ID, IKE_REKEY_ID)."""

    type: HaAttributeType
    ike_version: int
    """IKE major version, 1 or 2, as charon's ``ike_sa_id_t`` holds it."""
    initiator_spi: int
    """The IKE initiator's SPI: the 8 bytes of the IKE header, read big-endian."""
    responder_spi: int
    """The IKE responder's SPI, the same way; 0 before the responder chose one."""
    initiator: bool
    """True when the sending charon is the IKE SA's original initiator."""

    def __post_init__(self) -> None:
        _check_kind(self.type, HaKind.IKE_SA_ID, "HaIkeSaId")
        _check_range("IKE version", self.ike_version, 8)
        _check_range("initiator SPI", self.initiator_spi, 64)
        _check_range("responder SPI", self.responder_spi, 64)
        if not isinstance(self.initiator, bool):
            raise HaValueError(f"initiator must be a bool, not {self.initiator!r}")


@dataclass(frozen=True)
class HaIdentity:
    """An IKE identity (LOCAL_ID, REMOTE_ID, REMOTE_EAP_ID) as charon encodes it."""

    type: HaAttributeType
    id_type: int
    """charon's ``id_type_t``: the IKEv2 ID types (1 IPv4, 2 FQDN, 3 RFC 822, 5 IPv6,
    9 DER DN, 11 key ID, ...) plus charon's own (0 any, 4/6 subnets, 7/8 ranges, ...)."""
    data: bytes
    """The identity's encoding: the name's bytes, the address, the DER DN, ... (<= 255)."""

    def __post_init__(self) -> None:
        _check_kind(self.type, HaKind.IDENTITY, "HaIdentity")
        _check_range("identity type", self.id_type, 8)
        if not isinstance(self.data, bytes) or len(self.data) > 0xFF:
            raise HaValueError(f"an identity holds bytes, at most 255 of them, not {self.data!r}")


@dataclass(frozen=True)
class HaHost:
    """An address and port (LOCAL_ADDR, REMOTE_ADDR, LOCAL_VIP, REMOTE_VIP, PEER_ADDR)."""

    type: HaAttributeType
    address: IPAddress
    """The address; its version gives the family on the wire (AF_INET or AF_INET6)."""
    port: int
    """The UDP port (500, 4500, ...); 0 for virtual IPs."""

    def __post_init__(self) -> None:
        _check_kind(self.type, HaKind.HOST, "HaHost")
        if not isinstance(self.address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise HaValueError(f"a host address must be an IPv4Address or IPv6Address, not "
                               f"{self.address!r}")  # fmt: skip
        _check_range("port", self.port, 16)


@dataclass(frozen=True)
class HaText:
    """A NUL-terminated name (CONFIG_NAME)."""

    type: HaAttributeType
    text: str
    """The name without its NUL; bytes that are not UTF-8 are kept as surrogate escapes."""

    def __post_init__(self) -> None:
        _check_kind(self.type, HaKind.TEXT, "HaText")
        if not isinstance(self.text, str) or "\0" in self.text:
            raise HaValueError(f"a name is a str without NUL, not {self.text!r}")
        try:
            self.text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as exc:
            raise HaValueError(f"name {self.text!r} cannot be encoded: {exc}") from None


@dataclass(frozen=True)
class HaNumber:
    """An unsigned number of 1, 2 or 4 bytes, as ``KIND_OF`` says for its type."""

    type: HaAttributeType
    value: int

    def __post_init__(self) -> None:
        if not isinstance(self.type, HaAttributeType) or KIND_OF[self.type] not in _NUMBER_WIDTH:
            raise HaValueError(f"HaNumber cannot carry {self.type!r}: not a number attribute")
        _check_range(self.type.name, self.value, 8 * _NUMBER_WIDTH[KIND_OF[self.type]])


@dataclass(frozen=True)
class HaChunk:
    """Opaque bytes with a 2-byte length: nonces, secrets, DH values, IVs.

    Its ``repr`` shows the bytes only for the public DH values (LOCAL_DH,
    REMOTE_DH); every type in ``SECRET_ATTRIBUTES`` shows as ``<N bytes hidden>``.
    """

    type: HaAttributeType
    data: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_kind(self.type, HaKind.CHUNK, "HaChunk")
        if not isinstance(self.data, bytes) or len(self.data) > 0xFFFF:
            size = len(self.data) if isinstance(self.data, bytes) else None
            raise HaValueError(
                f"{self.type.name} holds bytes, at most 65535 of them, not "
                f"{type(self.data).__name__} ({size} bytes)"
            )

    def __repr__(self) -> str:
        shown = (
            f"<{len(self.data)} bytes hidden>"
            if self.type in SECRET_ATTRIBUTES
            else f"bytes.fromhex({self.data.hex()!r})"
        )
        return f"HaChunk(type={self.type!r}, data={shown})"

    __str__ = __repr__


@dataclass(frozen=True)
class HaTrafficSelector:
    """One traffic selector of a CHILD SA (LOCAL_TS, REMOTE_TS): an address range
    with a protocol and a port range."""

    type: HaAttributeType
    protocol: int
    """IP protocol number; 0 for any."""
    from_port: int
    """First port of the range (0 with ``to_port`` 65535 for any)."""
    to_port: int
    """Last port of the range."""
    dynamic: bool
    """True for a selector still bound to the IKE address ("dynamic" in the config)."""
    from_address: IPAddress
    """First address of the range; its version gives the TS type (7 IPv4, 8 IPv6)."""
    to_address: IPAddress
    """Last address of the range, same version as ``from_address``."""

    def __post_init__(self) -> None:
        _check_kind(self.type, HaKind.TRAFFIC_SELECTOR, "HaTrafficSelector")
        _check_range("protocol", self.protocol, 8)
        _check_range("from port", self.from_port, 16)
        _check_range("to port", self.to_port, 16)
        if not isinstance(self.dynamic, bool):
            raise HaValueError(f"dynamic must be a bool, not {self.dynamic!r}")
        ok = (ipaddress.IPv4Address, ipaddress.IPv6Address)
        if not (
            isinstance(self.from_address, ok)
            and isinstance(self.to_address, ok)
            and self.from_address.version == self.to_address.version
        ):
            raise HaValueError(
                "a traffic selector's addresses must be two IPv4Address or two IPv6Address, "
                f"not {self.from_address!r} and {self.to_address!r}"
            )


HaAttribute: TypeAlias = (
    HaIkeSaId | HaIdentity | HaHost | HaText | HaNumber | HaChunk | HaTrafficSelector
)
"""One attribute; which class depends on its type's ``KIND_OF``."""


@dataclass(frozen=True)
class HaMessage:
    """One ``ha`` plugin datagram: its type and its attributes, in order."""

    type: HaMessageType
    attributes: tuple[HaAttribute, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.type, HaMessageType):
            raise HaValueError(f"message type must be an HaMessageType, not {self.type!r}")
        if not isinstance(self.attributes, tuple) or not all(
            isinstance(a, HaAttribute) for a in self.attributes
        ):
            raise HaValueError("attributes must be a tuple of Ha* attribute objects")

    def get_all(self, attr_type: HaAttributeType) -> tuple[HaAttribute, ...]:
        """Every attribute of this type, in message order."""
        return tuple(a for a in self.attributes if a.type is attr_type)

    def get(self, attr_type: HaAttributeType) -> HaAttribute | None:
        """The first attribute of this type, or None."""
        return next((a for a in self.attributes if a.type is attr_type), None)

    @property
    def ike_sa_id(self) -> HaIkeSaId | None:
        """The IKE SA this message is about (its first IKE_ID), if it names one."""
        found = self.get(HaAttributeType.IKE_ID)
        return found if isinstance(found, HaIkeSaId) else None

    def number(self, attr_type: HaAttributeType) -> int | None:
        """The value of the first number attribute of this type, or None."""
        found = self.get(attr_type)
        return found.value if isinstance(found, HaNumber) else None


def spi_from_little_endian_sender(attr: HaNumber) -> int:
    """The SPI or CPI a little-endian charon (x86-64, arm64) meant by an INBOUND_SPI,
    OUTBOUND_SPI, INBOUND_CPI or OUTBOUND_CPI attribute: its bytes in reverse order."""
    if attr.type not in _SPI_ATTRIBUTES:
        raise HaValueError(f"{attr.type.name} is not an SPI or CPI attribute")
    width = _NUMBER_WIDTH[KIND_OF[attr.type]]
    return int.from_bytes(attr.value.to_bytes(width, "big"), "little")


_SPI_ATTRIBUTES = frozenset({_A.INBOUND_SPI, _A.OUTBOUND_SPI, _A.INBOUND_CPI, _A.OUTBOUND_CPI})


# -- decoding ---------------------------------------------------------------


class _Reader:
    """Bounds-checked cursor: every read that runs past the end raises HaMessageError."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self._data = data
        self._pos = pos

    @property
    def done(self) -> bool:
        return self._pos >= len(self._data)

    @property
    def position(self) -> int:
        return self._pos

    def take(self, length: int, what: str) -> bytes:
        end = self._pos + length
        if end > len(self._data):
            raise HaMessageError(
                f"ha message truncated: {what} needs {length} bytes at offset {self._pos}, "
                f"{len(self._data) - self._pos} left"
            )
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "big")

    def until_nul(self, what: str) -> bytes:
        end = self._data.find(b"\0", self._pos)
        if end < 0:
            raise HaMessageError(f"ha message truncated: {what} at offset {self._pos} has no NUL")
        text = self._data[self._pos : end]
        self._pos = end + 1
        return text


def _flag(value: int, what: str) -> bool:
    if value > 1:
        raise HaMessageError(f"ha message: {what} flag is {value}, neither 0 nor 1")
    return value == 1


def _pull_ike_sa_id(r: _Reader, t: HaAttributeType) -> HaAttribute:
    version = r.u8(f"{t.name} IKE version")
    spi_i = int.from_bytes(r.take(8, f"{t.name} initiator SPI"), "big")
    spi_r = int.from_bytes(r.take(8, f"{t.name} responder SPI"), "big")
    return HaIkeSaId(t, version, spi_i, spi_r, _flag(r.u8(f"{t.name} initiator"), "initiator"))


def _pull_identity(r: _Reader, t: HaAttributeType) -> HaAttribute:
    id_type = r.u8(f"{t.name} identity type")
    return HaIdentity(t, id_type, r.take(r.u8(f"{t.name} length"), f"{t.name} identity"))


def _pull_address(r: _Reader, family: int, what: str) -> IPAddress:
    if family == _AF_INET:
        return ipaddress.IPv4Address(r.take(4, what))
    if family == _AF_INET6:
        return ipaddress.IPv6Address(r.take(16, what))
    raise HaMessageError(
        f"ha message: {what} has address family {family}, "
        f"neither AF_INET ({_AF_INET}) nor AF_INET6 ({_AF_INET6})"
    )


def _pull_host(r: _Reader, t: HaAttributeType) -> HaAttribute:
    port = r.u16(f"{t.name} port")
    family = r.u8(f"{t.name} address family")
    return HaHost(t, _pull_address(r, family, f"{t.name} address"), port)


def _pull_text(r: _Reader, t: HaAttributeType) -> HaAttribute:
    return HaText(t, r.until_nul(t.name).decode("utf-8", "surrogateescape"))


def _pull_number(r: _Reader, t: HaAttributeType) -> HaAttribute:
    width = _NUMBER_WIDTH[KIND_OF[t]]
    return HaNumber(t, int.from_bytes(r.take(width, t.name), "big"))


def _pull_chunk(r: _Reader, t: HaAttributeType) -> HaAttribute:
    return HaChunk(t, r.take(r.u16(f"{t.name} length"), t.name))


_TS_FAMILY = {_TS_IPV4_ADDR_RANGE: _AF_INET, _TS_IPV6_ADDR_RANGE: _AF_INET6}


def _pull_ts(r: _Reader, t: HaAttributeType) -> HaAttribute:
    ts_type = r.u8(f"{t.name} type")
    protocol = r.u8(f"{t.name} protocol")
    from_port, to_port = r.u16(f"{t.name} from port"), r.u16(f"{t.name} to port")
    dynamic = _flag(r.u8(f"{t.name} dynamic"), "traffic selector dynamic")
    if ts_type not in _TS_FAMILY:
        raise HaMessageError(
            f"ha message: {t.name} has type {ts_type}, neither TS_IPV4_ADDR_RANGE "
            f"({_TS_IPV4_ADDR_RANGE}) nor TS_IPV6_ADDR_RANGE ({_TS_IPV6_ADDR_RANGE})"
        )
    family = _TS_FAMILY[ts_type]
    start = _pull_address(r, family, f"{t.name} from address")
    end = _pull_address(r, family, f"{t.name} to address")
    return HaTrafficSelector(t, protocol, from_port, to_port, dynamic, start, end)


_PULL: dict[HaKind, Callable[[_Reader, HaAttributeType], HaAttribute]] = {
    HaKind.IKE_SA_ID: _pull_ike_sa_id,
    HaKind.IDENTITY: _pull_identity,
    HaKind.HOST: _pull_host,
    HaKind.TEXT: _pull_text,
    HaKind.U8: _pull_number,
    HaKind.U16: _pull_number,
    HaKind.U32: _pull_number,
    HaKind.CHUNK: _pull_chunk,
    HaKind.TRAFFIC_SELECTOR: _pull_ts,
}


def decode(data: bytes) -> HaMessage:
    """Decode one datagram; raise ``HaMessageError`` (``HaVersionError`` for another
    version) for anything that is not a valid version 3 message."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise HaMessageError(f"ha message must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) < 2:
        raise HaMessageError(f"ha message of {len(data)} bytes is too short: 2 bytes of header")
    if data[0] != HA_MESSAGE_VERSION:
        raise HaVersionError(data[0])
    try:
        message_type = HaMessageType(data[1])
    except ValueError:
        raise HaMessageError(f"ha message type {data[1]} is unknown to version 3") from None
    reader = _Reader(data, 2)
    attributes: list[HaAttribute] = []
    while not reader.done:
        at = reader.position
        code = reader.u8("attribute type")
        try:
            attr_type = HaAttributeType(code)
        except ValueError:
            raise HaMessageError(
                f"ha {message_type.name} message: attribute type {code} at offset {at} "
                "is unknown to version 3"
            ) from None
        attributes.append(_PULL[KIND_OF[attr_type]](reader, attr_type))
    return HaMessage(message_type, tuple(attributes))


# -- encoding ---------------------------------------------------------------


def _push_ike_sa_id(a: HaIkeSaId) -> bytes:
    return struct.pack("!BQQB", a.ike_version, a.initiator_spi, a.responder_spi, a.initiator)


def _push_identity(a: HaIdentity) -> bytes:
    return bytes([a.id_type, len(a.data)]) + a.data


def _family(address: IPAddress) -> int:
    return _AF_INET if address.version == 4 else _AF_INET6


def _push_host(a: HaHost) -> bytes:
    return struct.pack("!HB", a.port, _family(a.address)) + a.address.packed


def _push_text(a: HaText) -> bytes:
    return a.text.encode("utf-8", "surrogateescape") + b"\0"


def _push_number(a: HaNumber) -> bytes:
    return a.value.to_bytes(_NUMBER_WIDTH[KIND_OF[a.type]], "big")


def _push_chunk(a: HaChunk) -> bytes:
    return len(a.data).to_bytes(2, "big") + a.data


def _push_ts(a: HaTrafficSelector) -> bytes:
    ts_type = _TS_IPV4_ADDR_RANGE if a.from_address.version == 4 else _TS_IPV6_ADDR_RANGE
    fixed = struct.pack("!BBHHB", ts_type, a.protocol, a.from_port, a.to_port, a.dynamic)
    return fixed + a.from_address.packed + a.to_address.packed


# Keyed by class; each class checked at construction that its type has the matching kind.
_PUSH: dict[type, Callable[[Any], bytes]] = {
    HaIkeSaId: _push_ike_sa_id,
    HaIdentity: _push_identity,
    HaHost: _push_host,
    HaText: _push_text,
    HaNumber: _push_number,
    HaChunk: _push_chunk,
    HaTrafficSelector: _push_ts,
}


def encode(message: HaMessage) -> bytes:
    """The datagram a version 3 plugin would send for ``message``."""
    header = bytes([HA_MESSAGE_VERSION, message.type])
    return header + b"".join(bytes([a.type]) + _PUSH[type(a)](a) for a in message.attributes)
