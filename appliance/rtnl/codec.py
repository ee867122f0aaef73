"""Sans-IO rtnetlink codec for the address dump: RTM_GETADDR out, RTM_NEWADDR in.

Nothing here touches a socket; :mod:`appliance.rtnl.socket` is the adapter.
Each message type we read has its decoder in :data:`DECODERS`, as pyroute2's
``msg_map`` has; the unit tests hold this codec to pyroute2's own
``ifaddrmsg`` declaration on recorded kernel bytes.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from appliance.netlink import NLMSGHDR, frames

Buffer = bytes | bytearray | memoryview

# linux/netlink.h
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLA_TYPE_MASK = 0x3FFF
# linux/rtnetlink.h
RTM_NEWADDR = 20
RTM_GETADDR = 22
# linux/if_addr.h, enum { IFA_UNSPEC, IFA_ADDRESS, IFA_LOCAL, ... }
IFA_ADDRESS = 1
IFA_LOCAL = 2

_NLMSGHDR = NLMSGHDR  # struct nlmsghdr (appliance.netlink)
# struct nlmsgerr { int error; struct nlmsghdr msg; ... };
_NLMSGERR = struct.Struct("=i")
# struct ifaddrmsg { __u8 ifa_family; __u8 ifa_prefixlen; __u8 ifa_flags;
#                    __u8 ifa_scope; __u32 ifa_index; };
_IFADDRMSG = struct.Struct("=BBBBI")
# struct nlattr { __u16 nla_len; __u16 nla_type; };                  (host order)
_NLATTR = struct.Struct("=HH")
_HEADERS = _NLMSGHDR.size + _IFADDRMSG.size
_ADDRESS_SIZES = {socket.AF_INET: 4, socket.AF_INET6: 16}


@dataclass(frozen=True, slots=True)
class InterfaceAddress:
    """One RTM_NEWADDR: an address configured on an interface."""

    index: int
    """``ifa_index``: the interface."""
    prefixlen: int
    """``ifa_prefixlen``."""
    scope: int
    """``ifa_scope`` (0 global, 253 link, 254 host)."""
    local: ipaddress.IPv4Address | ipaddress.IPv6Address
    """This end's address: ``IFA_LOCAL`` when the kernel sends it (on a point-to-point
    link ``IFA_ADDRESS`` is the peer's), else ``IFA_ADDRESS`` (IPv6 sends only that)."""
    interrupted: bool
    """``NLM_F_DUMP_INTR``: the address list changed while the dump ran."""


@dataclass(frozen=True, slots=True)
class DumpDone:
    """NLMSG_DONE (the end of a dump) or NLMSG_ERROR (``error`` is ``-errno``; 0 is an ack)."""

    seq: int
    error: int
    interrupted: bool


Event = InterfaceAddress | DumpDone


def encode_getaddr_dump(seq: int, family: int = socket.AF_UNSPEC) -> bytes:
    """RTM_GETADDR with NLM_F_DUMP: every address of ``family`` (AF_UNSPEC: all)."""
    if family not in (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"address family {family} is not AF_UNSPEC, AF_INET or AF_INET6")
    return _NLMSGHDR.pack(
        _HEADERS, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq & 0xFFFFFFFF, 0
    ) + _IFADDRMSG.pack(family, 0, 0, 0, 0)


def _newaddr(buf: Buffer, start: int, end: int, flags: int) -> InterfaceAddress | None:
    """The RTM_NEWADDR in ``buf[start:end]``; ``None`` for a family other than IPv4/IPv6."""
    if end - start < _HEADERS:
        raise ValueError(f"truncated RTM_NEWADDR at offset {start}")
    family, prefixlen, _flags, scope, index = _IFADDRMSG.unpack_from(buf, start + _NLMSGHDR.size)
    size = _ADDRESS_SIZES.get(family)
    if size is None:
        return None
    found: dict[int, bytes] = {}
    pos = start + _HEADERS
    while pos + _NLATTR.size <= end:
        length, kind = _NLATTR.unpack_from(buf, pos)
        if length < _NLATTR.size or pos + length > end:
            raise ValueError(f"truncated attribute at offset {pos - start} (length {length})")
        kind &= NLA_TYPE_MASK
        if kind in (IFA_ADDRESS, IFA_LOCAL) and kind not in found:
            if length - _NLATTR.size != size:
                raise ValueError(
                    f"address attribute {kind} of {length - _NLATTR.size} bytes "
                    f"for family {family} (expected {size})"
                )
            found[kind] = bytes(buf[pos + _NLATTR.size : pos + length])
        pos += (length + 3) & ~3
    raw = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
    if raw is None:
        raise ValueError(f"RTM_NEWADDR for interface {index} carries no address")
    return InterfaceAddress(
        index=index,
        prefixlen=prefixlen,
        scope=scope,
        local=ipaddress.ip_address(raw),
        interrupted=bool(flags & NLM_F_DUMP_INTR),
    )


def _done(buf: Buffer, start: int, end: int, flags: int) -> DumpDone:
    """NLMSG_DONE carries an int (0, or ``-errno`` if the dump failed part-way)."""
    error = 0
    if end - start >= _NLMSGHDR.size + _NLMSGERR.size:
        (error,) = _NLMSGERR.unpack_from(buf, start + _NLMSGHDR.size)
    _len, _type, _flags, seq, _pid = _NLMSGHDR.unpack_from(buf, start)
    return DumpDone(seq=seq, error=error, interrupted=bool(flags & NLM_F_DUMP_INTR))


def _error(buf: Buffer, start: int, end: int, flags: int) -> DumpDone:
    """NLMSG_ERROR: the request was refused (or acked, with error 0)."""
    if end - start < _NLMSGHDR.size + _NLMSGERR.size + _NLMSGHDR.size:
        raise ValueError("truncated NLMSG_ERROR")
    (error,) = _NLMSGERR.unpack_from(buf, start + _NLMSGHDR.size)
    _len, _type, _flags, seq, _pid = _NLMSGHDR.unpack_from(
        buf, start + _NLMSGHDR.size + _NLMSGERR.size
    )
    return DumpDone(seq=seq, error=error, interrupted=False)


DECODERS: dict[int, Callable[[Buffer, int, int, int], Event | None]] = {
    RTM_NEWADDR: _newaddr,
    NLMSG_DONE: _done,
    NLMSG_ERROR: _error,
}
"""The decoder of each message type we read; ``decode`` skips the others."""


def decode(buf: Buffer) -> list[Event]:
    """The events in one received datagram; other message types are skipped.

    Raises ``ValueError`` on a datagram that is not well-formed netlink.
    """
    events: list[Event] = []
    for kind, flags, start, end in frames(buf):
        decoder = DECODERS.get(kind)
        if decoder is not None:
            event = decoder(buf, start, end, flags)
            if event is not None:
                events.append(event)
    return events
