"""Netlink framing shared by every family the appliance speaks (XFRM, rtnetlink, nfqueue).

Sans-IO: it splits a received datagram into its messages and touches no
socket.  Each family's codec decodes the bodies; only the header and its
alignment rule are common, and they are written once here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

Buffer = bytes | bytearray | memoryview

# struct nlmsghdr { __u32 nlmsg_len; __u16 nlmsg_type; __u16 nlmsg_flags;
#                   __u32 nlmsg_seq; __u32 nlmsg_pid; };            (host order)
NLMSGHDR = struct.Struct("=IHHII")


def frames(buf: Buffer) -> Iterator[tuple[int, int, int, int]]:
    """``(type, flags, start, end)`` of each message in a datagram, in order.

    Messages are 4-byte aligned, as the kernel packs them (``NLMSG_ALIGN``).
    Raises ``ValueError`` on a length that is too short or runs past the
    datagram; trailing bytes shorter than a header are padding.
    """
    offset = 0
    end = len(buf)
    while offset + NLMSGHDR.size <= end:
        length, kind, flags, _seq, _pid = NLMSGHDR.unpack_from(buf, offset)
        if length < NLMSGHDR.size or offset + length > end:
            raise ValueError(f"truncated netlink message at offset {offset} (length {length})")
        yield kind, flags, offset, offset + length
        offset += (length + 3) & ~3
