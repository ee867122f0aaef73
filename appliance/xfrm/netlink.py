"""Sans-IO netlink framing: split buffers into messages, read errors, name errnos.

Nothing here touches a socket; ``appliance.xfrm.socket`` is the adapter.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from appliance.netlink import NLMSGHDR, frames
from appliance.xfrm import constants as c

NLMSGERR = struct.Struct("=i")


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One netlink message as received: header fields and the whole message bytes."""

    type: int
    """``nlmsg_type``."""
    flags: int
    """``nlmsg_flags``."""
    seq: int
    """``nlmsg_seq``."""
    pid: int
    """``nlmsg_pid``."""
    data: bytes
    """The whole message, header included (``nlmsg_len`` bytes)."""


def iter_messages(buf: bytes | bytearray | memoryview) -> Iterator[RawMessage]:
    """Split a datagram into its netlink messages (4-byte aligned, as the kernel packs them)."""
    for kind, flags, start, end in frames(buf):
        _length, _kind, _flags, seq, pid = NLMSGHDR.unpack_from(buf, start)
        yield RawMessage(kind, flags, seq, pid, bytes(buf[start:end]))


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An NLMSG_ERROR: ``error`` 0 is an ack; else a negative errno."""

    error: int
    """0 (ack) or ``-errno``."""
    request_type: int
    """Type of the request it answers."""
    request_seq: int
    """Sequence number of the request it answers."""
    extack: str | None
    """The kernel's NLMSGERR_ATTR_MSG text, when it gave one."""


def parse_error(msg: RawMessage) -> ErrorReply:
    """Decode an NLMSG_ERROR message, including the extended-ack message text."""
    data = msg.data
    (error,) = NLMSGERR.unpack_from(data, 16)
    req_len, req_type, _req_flags, req_seq, _req_pid = NLMSGHDR.unpack_from(data, 20)
    extack = None
    if msg.flags & c.NLM_F_ACK_TLVS:
        # With NLM_F_CAPPED only the request header was echoed.
        offset = 20 + (16 if msg.flags & c.NLM_F_CAPPED else ((req_len + 3) & ~3))
        while offset + 4 <= len(data):
            nla_len, nla_type = struct.unpack_from("=HH", data, offset)
            if nla_len < 4:
                break
            if nla_type & 0x3FFF == c.NLMSGERR_ATTR_MSG:
                extack = (
                    data[offset + 4 : offset + nla_len]
                    .split(b"\0", 1)[0]
                    .decode("utf-8", "replace")
                )
            offset += (nla_len + 3) & ~3
    return ErrorReply(error, req_type, req_seq, extack)


_PROTO_SUPPORT = {
    c.IPPROTO_ESP: "ESP support (CONFIG_INET_ESP / CONFIG_INET6_ESP, modules esp4/esp6)",
    c.IPPROTO_AH: "AH support (CONFIG_INET_AH / CONFIG_INET6_AH, modules ah4/ah6)",
    c.IPPROTO_COMP: "IPComp support (CONFIG_INET_IPCOMP / CONFIG_INET6_IPCOMP)",
}


def describe_errno(
    err: int,
    what: str,
    *,
    proto: int | None = None,
    extack: str | None = None,
    algorithms: tuple[str, ...] = (),
) -> str:
    """One sentence for a kernel errno, naming the entry ``what`` refers to."""
    detail = f" (kernel: {extack})" if extack else ""
    if err == errno.EEXIST:
        return f"{what} already exists{detail}"
    if err in (errno.ENOENT, errno.ESRCH):
        return f"{what} does not exist{detail}"
    if err in (errno.EPROTONOSUPPORT, errno.ENOPROTOOPT) and proto in _PROTO_SUPPORT:
        return f"kernel lacks {_PROTO_SUPPORT[proto]}: cannot install {what}{detail}"
    if err == errno.ENOSYS:
        names = f" ({', '.join(algorithms)})" if algorithms else ""
        return f"algorithm not supported by the kernel{names} for {what}{detail}"
    if err == errno.EINVAL:
        return f"kernel rejected {what} as invalid (EINVAL){detail}"
    if err == errno.EPERM:
        return f"not permitted to change {what}: needs CAP_NET_ADMIN in its namespace{detail}"
    if err == errno.EAFNOSUPPORT:
        return f"address family of {what} not supported by the kernel (IPv6 off?){detail}"
    if err == errno.ENOBUFS:
        return f"kernel ran out of buffer space for {what} (ENOBUFS){detail}"
    if err == errno.ENOMEM:
        return f"kernel out of memory for {what}{detail}"
    if err == errno.EOPNOTSUPP:
        return f"operation on {what} not supported by this kernel{detail}"
    name = errno.errorcode.get(err, str(err))
    return f"kernel refused {what}: {name} ({errno_text(err)}){detail}"


def errno_text(err: int) -> str:
    import os

    return os.strerror(err)
