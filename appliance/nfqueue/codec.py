"""Sans-IO nfnetlink_queue codec: requests to bytes, received bytes to events.

Nothing here touches a socket; :mod:`appliance.nfqueue.socket` is the
adapter.  Requests are built from the pyroute2-style declarations in
:mod:`appliance.nfqueue.messages`; received datagrams are split into
netlink messages and turned into :class:`QueuedPacket` (a packet waiting
for our verdict) or :class:`NetlinkError` (an ack or a refusal).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from appliance.nfqueue import constants as c
from appliance.nfqueue.messages import nfqnl_config_msg, nfqnl_packet_msg

_NLMSGHDR = struct.Struct("=IHHII")
_NLMSGERR = struct.Struct("=i")

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


def _finish(msg: Any, kind: int, flags: int, seq: int) -> bytes:
    msg["header"].update(
        {"type": c.msg_type(kind), "flags": flags, "sequence_number": seq, "pid": 0}
    )
    msg.encode()
    return bytes(msg.data)


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
    msg = nfqnl_config_msg()
    msg.update({"nfgen_family": 0, "version": c.NFNETLINK_V0, "res_id": queue_num})
    attrs: list[tuple[str, Any]] = [
        ("NFQA_CFG_CMD", {"command": c.NFQNL_CFG_CMD_BIND, "pf": 0}),
        ("NFQA_CFG_PARAMS", {"copy_range": copy_range, "copy_mode": c.NFQNL_COPY_PACKET}),
    ]
    if maxlen is not None:
        attrs.append(("NFQA_CFG_QUEUE_MAXLEN", maxlen))
    attrs.append(("NFQA_CFG_FLAGS", c.NFQA_CFG_F_FAIL_OPEN if fail_open else 0))
    attrs.append(("NFQA_CFG_MASK", c.NFQA_CFG_F_FAIL_OPEN))
    msg["attrs"] = attrs
    return _finish(msg, c.NFQNL_MSG_CONFIG, c.NLM_F_REQUEST | c.NLM_F_ACK, seq)


def encode_unbind(queue_num: int, seq: int) -> bytes:
    """CONFIG: release ``queue_num`` (packets still held are dropped by the kernel)."""
    _check_queue(queue_num)
    msg = nfqnl_config_msg()
    msg.update({"nfgen_family": 0, "version": c.NFNETLINK_V0, "res_id": queue_num})
    msg["attrs"] = [("NFQA_CFG_CMD", {"command": c.NFQNL_CFG_CMD_UNBIND, "pf": 0})]
    return _finish(msg, c.NFQNL_MSG_CONFIG, c.NLM_F_REQUEST | c.NLM_F_ACK, seq)


def encode_verdict(queue_num: int, packet_id: int, accept: bool, seq: int) -> bytes:
    """VERDICT for one packet, without an ack (the kernel answers only on failure)."""
    _check_queue(queue_num)
    if not 0 <= packet_id <= 0xFFFFFFFF:
        raise ValueError(f"packet id {packet_id} is not a 32-bit number")
    msg = nfqnl_packet_msg()
    msg.update({"nfgen_family": 0, "version": c.NFNETLINK_V0, "res_id": queue_num})
    verdict = c.NF_ACCEPT if accept else c.NF_DROP
    msg["attrs"] = [("NFQA_VERDICT_HDR", {"verdict": verdict, "id": packet_id})]
    return _finish(msg, c.NFQNL_MSG_VERDICT, c.NLM_F_REQUEST, seq)


def _split(buf: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, bytes]]:
    offset = 0
    end = len(buf)
    while offset + _NLMSGHDR.size <= end:
        length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(buf, offset)
        if length < _NLMSGHDR.size or offset + length > end:
            raise ValueError(f"truncated netlink message at offset {offset} (length {length})")
        yield kind, seq, bytes(buf[offset : offset + length])
        offset += (length + 3) & ~3


def _packet(data: bytes) -> QueuedPacket:
    msg = nfqnl_packet_msg(data)
    msg.decode()
    hdr = msg.get_attr("NFQA_PACKET_HDR")
    if hdr is None:
        raise ValueError("queued packet message without NFQA_PACKET_HDR")
    payload = msg.get_attr("NFQA_PAYLOAD") or b""
    cap_len = msg.get_attr("NFQA_CAP_LEN")
    return QueuedPacket(
        queue_num=msg["res_id"],
        packet_id=hdr["packet_id"],
        hw_protocol=hdr["hw_protocol"],
        hook=hdr["hook"],
        payload=bytes(payload),
        length=len(payload) if cap_len is None else cap_len,
        indev=msg.get_attr("NFQA_IFINDEX_INDEV"),
        mark=msg.get_attr("NFQA_MARK") or 0,
    )


def decode(buf: bytes | bytearray | memoryview) -> list[Event]:
    """The events in one received datagram; other message types are skipped.

    Raises ``ValueError`` on a datagram that is not well-formed netlink.
    """
    events: list[Event] = []
    for kind, _seq, data in _split(buf):
        if kind == c.NLMSG_ERROR:
            if len(data) < _NLMSGHDR.size + _NLMSGERR.size + _NLMSGHDR.size:
                raise ValueError("truncated NLMSG_ERROR")
            (error,) = _NLMSGERR.unpack_from(data, _NLMSGHDR.size)
            req = _NLMSGHDR.unpack_from(data, _NLMSGHDR.size + _NLMSGERR.size)
            events.append(NetlinkError(error, req[3], req[1]))
        elif kind == c.msg_type(c.NFQNL_MSG_PACKET):
            events.append(_packet(data))
    return events
