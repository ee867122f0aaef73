"""An in-memory stand-in for a NETLINK_XFRM socket (unit tests only).

It reads the requests it is sent and answers as the kernel does with
NETLINK_CAP_ACK and NETLINK_EXT_ACK: an NLMSG_ERROR for each failed request
(and for each request asking NLM_F_ACK), with an extended-ack message.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable

from appliance.xfrm import constants as c
from appliance.xfrm.netlink import RawMessage, iter_messages


def error_message(request: RawMessage, err: int, text: str | None) -> bytes:
    flags = c.NLM_F_CAPPED
    tlv = b""
    if text is not None:
        payload = text.encode() + b"\0"
        tlv = struct.pack("=HH", 4 + len(payload), c.NLMSGERR_ATTR_MSG) + payload
        tlv += b"\0" * (-len(tlv) % 4)
        flags |= c.NLM_F_ACK_TLVS
    body = struct.pack("=i", -err) + request.data[:16] + tlv
    return struct.pack("=IHHII", 16 + len(body), c.NLMSG_ERROR, flags, request.seq, 4242) + body


class FakeXfrmKernel:
    """``verdict(msg)`` returns 0 (accept) or an errno for every request.

    ``reply(msg)``, if given, returns the answer to an accepted request that
    has one (a GETAE's NEWAE, say), or None.
    """

    def __init__(
        self,
        verdict: Callable[[RawMessage], int],
        reply: Callable[[RawMessage], bytes | None] | None = None,
    ) -> None:
        self.verdict = verdict
        self.reply = reply
        self.sent: list[bytes] = []
        self.requests: list[RawMessage] = []
        self.queue: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        replies = []
        for msg in iter_messages(data):
            self.requests.append(msg)
            err = 0 if msg.type == c.NLMSG_NOOP else self.verdict(msg)
            if msg.type == c.XFRM_MSG_NEWAE and not msg.flags & c.NLM_F_REPLACE:
                err = err or errno.EINVAL  # as xfrm_new_ae: "NLM_F_REPLACE flag is required"
            answer = self.reply(msg) if self.reply is not None and not err else None
            if answer is not None:
                replies.append(answer)
            if err or msg.flags & c.NLM_F_ACK:
                text = None if not err else f"fake refusal {errno.errorcode[err]}"
                replies.append(error_message(msg, err, text))
        # The kernel packs several answers into one datagram when it can.
        if replies:
            self.queue.append(b"".join(replies))
        return len(data)

    def recv_into(self, buf: bytearray, size: int, flags: int = 0) -> int:
        if not self.queue:
            if flags & socket.MSG_DONTWAIT:
                raise BlockingIOError
            raise AssertionError("blocking read with nothing queued: the caller would hang")
        data = self.queue.pop(0)
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        pass
