"""Sans-IO nfnetlink_queue codec: requests to bytes, received bytes to events.

The one codec of nfnetlink_queue at run time.  Nothing here touches a
socket; :mod:`appliance.nfqueue.socket` is the adapter.  Every message is
read and written with precompiled ``struct``s, each quoting its kernel C
struct (pyroute2 costs tens of microseconds per message, which a slow
machine multiplies into a loop that cannot keep up).  The unit tests hold
this codec to pyroute2-style declarations of the same structs
(``tests/nfqueue/nfqueue_oracle.py``) on recorded kernel bytes.  Received
datagrams become :class:`QueuedPacket` (a packet waiting for our verdict) or
:class:`NetlinkError` (an ack or a refusal), each message through the
decoder its type maps to in :data:`DECODERS`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from appliance.netlink import NLMSGHDR, frames
from appliance.nfqueue import constants as c

Buffer = bytes | bytearray | memoryview

_NLMSGHDR = NLMSGHDR  # struct nlmsghdr (appliance.netlink)
# struct nlmsgerr { int error; struct nlmsghdr msg; ... };
_NLMSGERR = struct.Struct("=i")
# struct nfgenmsg { __u8 nfgen_family; __u8 version; __be16 res_id; };
_NFGENMSG = struct.Struct("!BBH")
# struct nlattr { __u16 nla_len; __u16 nla_type; };                  (host order)
_NLATTR = struct.Struct("=HH")
# struct nfqnl_msg_packet_hdr { __be32 packet_id; __be16 hw_protocol; __u8 hook; } packed
_PACKET_HDR = struct.Struct("!IHB")
# struct nfqnl_msg_verdict_hdr { __be32 verdict; __be32 id; };
_VERDICT_HDR = struct.Struct("!II")
# struct nfqnl_msg_config_cmd { __u8 command; __u8 _pad; __be16 pf; };
_CONFIG_CMD = struct.Struct("!BxH")
# struct nfqnl_msg_config_params { __be32 copy_range; __u8 copy_mode; } packed (5 bytes)
_CONFIG_PARAMS = struct.Struct("!IB")
_BE32 = struct.Struct("!I")
_HEADERS = _NLMSGHDR.size + _NFGENMSG.size
_VERDICT_NLA_LEN = _NLATTR.size + _VERDICT_HDR.size
_VERDICT_LEN = _HEADERS + _VERDICT_NLA_LEN
_PACKET_TYPE = c.msg_type(c.NFQNL_MSG_PACKET)

MAX_QUEUE_NUM = 0xFFFF
"""Queue numbers are 16 bits (``res_id``)."""


@dataclass(frozen=True, slots=True)
class QueuedPacket:
    """One packet held by the kernel until we give its verdict."""

    queue_num: int
    """The queue it came from."""
    packet_id: int
    """What the verdict must name."""
    hw_protocol: int
    """Ethertype (0x0800 IPv4, 0x86dd IPv6), 0 if unknown."""
    hook: int
    """The netfilter hook that queued it (1: NF_INET_LOCAL_IN)."""
    payload: bytes
    """The packet from its network header on, at most the copy range."""
    length: int
    """The packet's full length (``NFQA_CAP_LEN`` when it was cut, else the payload's)."""
    indev: int | None
    """Input interface index, if any."""
    mark: int
    """The skb mark."""


@dataclass(frozen=True, slots=True)
class NetlinkError:
    """An NLMSG_ERROR: ``error`` 0 acks request ``seq``, else it is ``-errno``."""

    error: int
    seq: int
    request_type: int


Event = QueuedPacket | NetlinkError


def _check_queue(queue_num: int) -> None:
    if not 0 <= queue_num <= MAX_QUEUE_NUM:
        raise ValueError(f"queue number {queue_num} is outside 0-{MAX_QUEUE_NUM}")


def _attr(kind: int, value: bytes) -> bytes:
    """One attribute, padded to 4 bytes (``nla_len`` counts the value, not the padding)."""
    length = _NLATTR.size + len(value)
    return _NLATTR.pack(length, kind) + value + bytes(-length % 4)


def _config(queue_num: int, seq: int, attrs: bytes) -> bytes:
    """A CONFIG request for ``queue_num``, acked by the kernel."""
    return b"".join(
        (
            _NLMSGHDR.pack(
                _HEADERS + len(attrs),
                c.msg_type(c.NFQNL_MSG_CONFIG),
                c.NLM_F_REQUEST | c.NLM_F_ACK,
                seq & 0xFFFFFFFF,
                0,
            ),
            _NFGENMSG.pack(0, c.NFNETLINK_V0, queue_num),
            attrs,
        )
    )


def encode_bind(
    queue_num: int,
    seq: int,
    *,
    copy_range: int = 0xFFFF,
    maxlen: int | None = None,
    fail_open: bool = False,
) -> bytes:
    """CONFIG: bind ``queue_num`` to the sender, copy packets up to ``copy_range`` bytes.

    One message with an ack: the kernel applies the command, then the
    parameters, the queue length and the flags, in that order.  The flags
    are always sent (with their mask) so that ``fail_open`` off really is
    off, whatever a previous owner of the queue set.
    """
    _check_queue(queue_num)
    if not 0 < copy_range <= 0xFFFF:
        raise ValueError(f"copy range {copy_range} is outside 1-65535")
    if maxlen is not None and not 0 < maxlen <= 0xFFFFFFFF:
        raise ValueError(f"queue length {maxlen} is outside 1-4294967295")
    attrs = [
        _attr(c.NFQA_CFG_CMD, _CONFIG_CMD.pack(c.NFQNL_CFG_CMD_BIND, 0)),
        _attr(c.NFQA_CFG_PARAMS, _CONFIG_PARAMS.pack(copy_range, c.NFQNL_COPY_PACKET)),
    ]
    if maxlen is not None:
        attrs.append(_attr(c.NFQA_CFG_QUEUE_MAXLEN, _BE32.pack(maxlen)))
    flags = c.NFQA_CFG_F_FAIL_OPEN if fail_open else 0
    attrs.append(_attr(c.NFQA_CFG_FLAGS, _BE32.pack(flags)))
    attrs.append(_attr(c.NFQA_CFG_MASK, _BE32.pack(c.NFQA_CFG_F_FAIL_OPEN)))
    return _config(queue_num, seq, b"".join(attrs))


def encode_unbind(queue_num: int, seq: int) -> bytes:
    """CONFIG: release ``queue_num`` (packets still held are dropped by the kernel)."""
    _check_queue(queue_num)
    return _config(
        queue_num, seq, _attr(c.NFQA_CFG_CMD, _CONFIG_CMD.pack(c.NFQNL_CFG_CMD_UNBIND, 0))
    )


def encode_verdict(queue_num: int, packet_id: int, accept: bool, seq: int) -> bytes:
    """VERDICT for one packet, without an ack (the kernel answers only on failure)."""
    return _verdict(c.NFQNL_MSG_VERDICT, queue_num, packet_id, accept, seq)


def encode_verdict_batch(queue_num: int, last_packet_id: int, accept: bool, seq: int) -> bytes:
    """VERDICT_BATCH: the same verdict for every packet still queued with an id up to
    ``last_packet_id`` (the kernel's ids grow in queue order; it compares them
    modulo 2**32).  The caller must know it holds no other packet in that range."""
    return _verdict(c.NFQNL_MSG_VERDICT_BATCH, queue_num, last_packet_id, accept, seq)


def _verdict(kind: int, queue_num: int, packet_id: int, accept: bool, seq: int) -> bytes:
    _check_queue(queue_num)
    if not 0 <= packet_id <= 0xFFFFFFFF:
        raise ValueError(f"packet id {packet_id} is not a 32-bit number")
    return b"".join(
        (
            _NLMSGHDR.pack(_VERDICT_LEN, c.msg_type(kind), c.NLM_F_REQUEST, seq & 0xFFFFFFFF, 0),
            _NFGENMSG.pack(0, c.NFNETLINK_V0, queue_num),
            _NLATTR.pack(_VERDICT_NLA_LEN, c.NFQA_VERDICT_HDR),
            _VERDICT_HDR.pack(c.NF_ACCEPT if accept else c.NF_DROP, packet_id),
        )
    )


def _packet(buf: Buffer, start: int, end: int) -> QueuedPacket:
    """The NFQNL_MSG_PACKET in ``buf[start:end]`` (its netlink header included)."""
    if end - start < _HEADERS:
        raise ValueError(f"truncated queued packet message at offset {start}")
    _family, _version, res_id = _NFGENMSG.unpack_from(buf, start + _NLMSGHDR.size)
    hdr: tuple[int, int, int] | None = None
    payload: bytes | None = None
    cap_len: int | None = None
    indev: int | None = None
    mark: int | None = None
    pos = start + _HEADERS
    # The first attribute of each type counts (pyroute2's get_attr does the same).
    while pos + _NLATTR.size <= end:
        length, kind = _NLATTR.unpack_from(buf, pos)
        if length < _NLATTR.size or pos + length > end:
            raise ValueError(f"truncated attribute at offset {pos - start} (length {length})")
        kind &= c.NLA_TYPE_MASK
        value = pos + _NLATTR.size
        size = length - _NLATTR.size
        if kind == c.NFQA_PACKET_HDR:
            if hdr is None:
                if size < _PACKET_HDR.size:
                    raise ValueError(f"NFQA_PACKET_HDR of {size} bytes")
                hdr = _PACKET_HDR.unpack_from(buf, value)
        elif kind == c.NFQA_PAYLOAD:
            if payload is None:
                payload = bytes(buf[value : pos + length])
        elif kind in (c.NFQA_CAP_LEN, c.NFQA_IFINDEX_INDEV, c.NFQA_MARK):
            if size < _BE32.size:
                raise ValueError(f"attribute {kind} of {size} bytes")
            (number,) = _BE32.unpack_from(buf, value)
            if kind == c.NFQA_CAP_LEN:
                cap_len = number if cap_len is None else cap_len
            elif kind == c.NFQA_IFINDEX_INDEV:
                indev = number if indev is None else indev
            elif mark is None:
                mark = number
        pos += (length + 3) & ~3
    if hdr is None:
        raise ValueError("queued packet message without NFQA_PACKET_HDR")
    payload = payload or b""
    return QueuedPacket(
        queue_num=res_id,
        packet_id=hdr[0],
        hw_protocol=hdr[1],
        hook=hdr[2],
        payload=payload,
        length=len(payload) if cap_len is None else cap_len,
        indev=indev,
        mark=mark or 0,
    )


def _error(buf: Buffer, start: int, end: int) -> NetlinkError:
    """The NLMSG_ERROR in ``buf[start:end]``: the error and the request's header it answers."""
    if end - start < _NLMSGHDR.size + _NLMSGERR.size + _NLMSGHDR.size:
        raise ValueError("truncated NLMSG_ERROR")
    (error,) = _NLMSGERR.unpack_from(buf, start + _NLMSGHDR.size)
    _length, request_type, _flags, seq, _pid = _NLMSGHDR.unpack_from(
        buf, start + _NLMSGHDR.size + _NLMSGERR.size
    )
    return NetlinkError(error, seq, request_type)


DECODERS: dict[int, Callable[[Buffer, int, int], Event]] = {
    _PACKET_TYPE: _packet,
    c.NLMSG_ERROR: _error,
}
"""The decoder of each message type we read; ``decode`` skips the others."""


def decode(buf: Buffer) -> list[Event]:
    """The events in one received datagram; other message types are skipped.

    Raises ``ValueError`` on a datagram that is not well-formed netlink.
    """
    events: list[Event] = []
    for kind, _flags, start, end in frames(buf):
        decoder = DECODERS.get(kind)
        if decoder is not None:
            events.append(decoder(buf, start, end))
    return events
