"""The reference for nfnetlink_queue: its messages declared the way pyroute2 declares them.

``appliance.nfqueue.codec`` is the one codec the product runs; this module
is what the unit tests hold it to, and what ``bench/ondemand_loop.py``
measures it against.  It is written from the kernel's headers
(``include/uapi/linux/netfilter/nfnetlink_queue.h``, ``linux/netlink.h``)
with pyroute2's ``nlmsg``/``nla`` classes, one class per C struct, and
imports nothing from ``appliance``: a reference that shared code or
numbers with the codec would repeat its mistakes.

PACKET, VERDICT and VERDICT_BATCH share the ``NFQA_*`` attribute space
(``nfqnl_packet_msg``), CONFIG has ``NFQA_CFG_*`` (``nfqnl_config_msg``);
:data:`MESSAGE_CLASSES` maps each message type to its class, as pyroute2's
``msg_map`` does.  The readers return plain dicts named like the codec's
event fields, so that a test compares them with ``dataclasses.asdict``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, nla, nlmsg
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_QUEUE, nfgen_msg

# enum nfqnl_msg_types
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3
# enum nfqnl_msg_config_cmds
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
# enum nfqnl_config_mode
NFQNL_COPY_PACKET = 2
# NFQA_CFG_FLAGS
NFQA_CFG_F_FAIL_OPEN = 1
# linux/netfilter.h
NF_DROP = 0
NF_ACCEPT = 1


def message_type(kind: int) -> int:
    """``nlmsg_type`` of an nfnetlink_queue message (``NFNL_SUBSYS_QUEUE << 8 | kind``)."""
    return (NFNL_SUBSYS_QUEUE << 8) | kind


class nfqnl_msg_packet_hdr(nla):  # type: ignore[misc]  # pyroute2 is untyped
    """NFQA_PACKET_HDR: the id to answer with, and where the packet was taken.

    C structure (packed, 7 bytes)::

        struct nfqnl_msg_packet_hdr {
            __be32  packet_id;    /* unique ID of packet in queue */
            __be16  hw_protocol;  /* hw protocol (network order) */
            __u8    hook;         /* netfilter hook */
        } __attribute__ ((packed));
    """

    fields = (("packet_id", ">I"), ("hw_protocol", ">H"), ("hook", "B"))


class nfqnl_msg_verdict_hdr(nla):  # type: ignore[misc]
    """NFQA_VERDICT_HDR: the verdict for one packet id.

    C structure::

        struct nfqnl_msg_verdict_hdr {
            __be32 verdict;
            __be32 id;
        };
    """

    fields = (("verdict", ">I"), ("id", ">I"))


class nfqnl_msg_packet_timestamp(nla):  # type: ignore[misc]
    """NFQA_TIMESTAMP: when the packet was received, if the skb has a stamp.

    C structure::

        struct nfqnl_msg_packet_timestamp {
            __aligned_be64  sec;
            __aligned_be64  usec;
        };
    """

    fields = (("sec", ">Q"), ("usec", ">Q"))


class nfqnl_msg_config_cmd(nla):  # type: ignore[misc]
    """NFQA_CFG_CMD: bind or unbind the queue named by ``res_id``.

    C structure::

        struct nfqnl_msg_config_cmd {
            __u8    command;  /* nfqnl_msg_config_cmds */
            __u8    _pad;
            __be16  pf;       /* AF_xxx for PF_[UN]BIND */
        };
    """

    fields = (("command", "B"), ("__pad", "x"), ("pf", ">H"))


class nfqnl_msg_config_params(nla):  # type: ignore[misc]
    """NFQA_CFG_PARAMS: how much of each packet to copy to us.

    C structure (packed, 5 bytes)::

        struct nfqnl_msg_config_params {
            __be32  copy_range;
            __u8    copy_mode;  /* enum nfqnl_config_mode */
        } __attribute__ ((packed));
    """

    fields = (("copy_range", ">I"), ("copy_mode", "B"))


class nfqnl_packet_msg(nfgen_msg):  # type: ignore[misc]
    """NFQNL_MSG_PACKET (kernel to us), NFQNL_MSG_VERDICT and _VERDICT_BATCH (us to kernel).

    The fixed part is ``struct nfgenmsg`` (``res_id``: the queue number)::

        struct nfgenmsg {
            __u8   nfgen_family;  /* AF_xxx */
            __u8   version;       /* nfnetlink version */
            __be16 res_id;        /* resource id */
        };

    Attributes: ``enum nfqnl_attr_type``.
    """

    prefix = "NFQA_"
    nla_map: ClassVar[tuple[tuple[str, str], ...]] = (
        ("NFQA_UNSPEC", "none"),
        ("NFQA_PACKET_HDR", "nfqnl_msg_packet_hdr"),
        ("NFQA_VERDICT_HDR", "nfqnl_msg_verdict_hdr"),
        ("NFQA_MARK", "be32"),
        ("NFQA_TIMESTAMP", "nfqnl_msg_packet_timestamp"),
        ("NFQA_IFINDEX_INDEV", "be32"),
        ("NFQA_IFINDEX_OUTDEV", "be32"),
        ("NFQA_IFINDEX_PHYSINDEV", "be32"),
        ("NFQA_IFINDEX_PHYSOUTDEV", "be32"),
        ("NFQA_HWADDR", "cdata"),
        ("NFQA_PAYLOAD", "cdata"),
        ("NFQA_CT", "cdata"),
        ("NFQA_CT_INFO", "be32"),
        ("NFQA_CAP_LEN", "be32"),
        ("NFQA_SKB_INFO", "be32"),
        ("NFQA_EXP", "cdata"),
        ("NFQA_UID", "be32"),
        ("NFQA_GID", "be32"),
        ("NFQA_SECCTX", "cdata"),
        ("NFQA_VLAN", "cdata"),
        ("NFQA_L2HDR", "cdata"),
        ("NFQA_PRIORITY", "be32"),
        ("NFQA_CGROUP_CLASSID", "be32"),
    )

    nfqnl_msg_packet_hdr = nfqnl_msg_packet_hdr
    nfqnl_msg_verdict_hdr = nfqnl_msg_verdict_hdr
    nfqnl_msg_packet_timestamp = nfqnl_msg_packet_timestamp


class nfqnl_config_msg(nfgen_msg):  # type: ignore[misc]
    """NFQNL_MSG_CONFIG: bind a queue, set the copy mode, length and flags.

    Fixed part ``struct nfgenmsg`` as for :class:`nfqnl_packet_msg`;
    attributes: ``enum nfqnl_attr_config``.
    """

    prefix = "NFQA_CFG_"
    nla_map: ClassVar[tuple[tuple[str, str], ...]] = (
        ("NFQA_CFG_UNSPEC", "none"),
        ("NFQA_CFG_CMD", "nfqnl_msg_config_cmd"),
        ("NFQA_CFG_PARAMS", "nfqnl_msg_config_params"),
        ("NFQA_CFG_QUEUE_MAXLEN", "be32"),
        ("NFQA_CFG_MASK", "be32"),
        ("NFQA_CFG_FLAGS", "be32"),
    )

    nfqnl_msg_config_cmd = nfqnl_msg_config_cmd
    nfqnl_msg_config_params = nfqnl_msg_config_params


class nlmsgerr_msg(nlmsg):  # type: ignore[misc]
    """NLMSG_ERROR: an ack (``error`` 0) or a refusal (``-errno``) of one request.

    C structure, the request's header copied in ``msg`` (then, without
    ``NETLINK_CAP_ACK``, the rest of the request, which is not read here)::

        struct nlmsgerr {
            int              error;
            struct nlmsghdr  msg;  /* __u32 nlmsg_len; __u16 nlmsg_type;
                                      __u16 nlmsg_flags; __u32 nlmsg_seq;
                                      __u32 nlmsg_pid; */
        };

    pyroute2's own ``nlmsgerr`` reads what follows ``error`` as attributes,
    so the request's header is declared here as fields.
    """

    fields = (
        ("error", "i"),
        ("request_length", "I"),
        ("request_type", "H"),
        ("request_flags", "H"),
        ("request_seq", "I"),
        ("request_pid", "I"),
    )


MESSAGE_CLASSES: dict[int, type[nlmsg]] = {
    message_type(NFQNL_MSG_PACKET): nfqnl_packet_msg,
    message_type(NFQNL_MSG_VERDICT): nfqnl_packet_msg,
    message_type(NFQNL_MSG_CONFIG): nfqnl_config_msg,
    message_type(NFQNL_MSG_VERDICT_BATCH): nfqnl_packet_msg,
    NLMSG_ERROR: nlmsgerr_msg,
}
"""The class of each nfnetlink_queue message type, like pyroute2's ``msg_map``."""


def messages(data: bytes) -> list[nlmsg]:
    """The messages of one datagram, each decoded by its class (others as bare ``nlmsg``)."""
    found = []
    offset = 0
    while offset + 16 <= len(data):
        header = nlmsg(data[offset : offset + 16])
        header.decode()
        length, kind = header["header"]["length"], header["header"]["type"]
        msg = MESSAGE_CLASSES.get(kind, nlmsg)(data[offset : offset + length])
        msg.decode()
        found.append(msg)
        offset += (length + 3) & ~3
    return found


def read_packet(msg: nlmsg) -> dict[str, Any]:
    """What a queued packet tells us, named like ``QueuedPacket``'s fields."""
    hdr = msg.get_attr("NFQA_PACKET_HDR")
    payload = bytes(msg.get_attr("NFQA_PAYLOAD") or b"")
    cap_len = msg.get_attr("NFQA_CAP_LEN")
    return {
        "queue_num": msg["res_id"],
        "packet_id": hdr["packet_id"],
        "hw_protocol": hdr["hw_protocol"],
        "hook": hdr["hook"],
        "payload": payload,
        "length": len(payload) if cap_len is None else cap_len,
        "indev": msg.get_attr("NFQA_IFINDEX_INDEV"),
        "mark": msg.get_attr("NFQA_MARK") or 0,
    }


def read_error(msg: nlmsg) -> dict[str, Any]:
    """An ack or refusal, named like ``NetlinkError``'s fields."""
    return {"error": msg["error"], "seq": msg["request_seq"], "request_type": msg["request_type"]}


READERS = {
    message_type(NFQNL_MSG_PACKET): ("packet", read_packet),
    NLMSG_ERROR: ("error", read_error),
}
"""What :func:`read_events` reads from each message type (a receiver sees only these)."""


def read_events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """``("packet", fields)`` and ``("error", fields)`` of one received datagram, in order."""
    events = []
    for msg in messages(data):
        reader = READERS.get(msg["header"]["type"])
        if reader is not None:
            name, read = reader
            events.append((name, read(msg)))
    return events


def _encode(msg: nlmsg, kind: int, flags: int, seq: int) -> bytes:
    msg["header"].update(
        {"type": message_type(kind), "flags": flags, "sequence_number": seq, "pid": 0}
    )
    msg.encode()
    return bytes(msg.data)


def write_verdict(kind: int, queue_num: int, packet_id: int, accept: bool, seq: int) -> bytes:
    """A VERDICT or VERDICT_BATCH (``kind``) naming ``packet_id``, no ack asked."""
    msg = nfqnl_packet_msg()
    msg.update({"nfgen_family": 0, "version": 0, "res_id": queue_num})
    verdict = NF_ACCEPT if accept else NF_DROP
    msg["attrs"] = [("NFQA_VERDICT_HDR", {"verdict": verdict, "id": packet_id})]
    return _encode(msg, kind, NLM_F_REQUEST, seq)


def write_bind(
    queue_num: int, seq: int, copy_range: int, maxlen: int | None, fail_open: bool
) -> bytes:
    """CONFIG: bind, copy whole packets up to ``copy_range``, queue length, fail-open flag."""
    msg = nfqnl_config_msg()
    msg.update({"nfgen_family": 0, "version": 0, "res_id": queue_num})
    attrs: list[tuple[str, Any]] = [
        ("NFQA_CFG_CMD", {"command": NFQNL_CFG_CMD_BIND, "pf": 0}),
        ("NFQA_CFG_PARAMS", {"copy_range": copy_range, "copy_mode": NFQNL_COPY_PACKET}),
    ]
    if maxlen is not None:
        attrs.append(("NFQA_CFG_QUEUE_MAXLEN", maxlen))
    attrs.append(("NFQA_CFG_FLAGS", NFQA_CFG_F_FAIL_OPEN if fail_open else 0))
    attrs.append(("NFQA_CFG_MASK", NFQA_CFG_F_FAIL_OPEN))
    msg["attrs"] = attrs
    return _encode(msg, NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq)


def write_unbind(queue_num: int, seq: int) -> bytes:
    """CONFIG: unbind ``queue_num``."""
    msg = nfqnl_config_msg()
    msg.update({"nfgen_family": 0, "version": 0, "res_id": queue_num})
    msg["attrs"] = [("NFQA_CFG_CMD", {"command": NFQNL_CFG_CMD_UNBIND, "pf": 0})]
    return _encode(msg, NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq)
