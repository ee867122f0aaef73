"""nfnetlink_queue messages, declared like pyroute2 declares its nfnetlink families.

One message class for the three message types this module uses (PACKET,
VERDICT, CONFIG), since they share the ``nfgenmsg`` fixed part; the
attribute maps differ, so there are two classes (``nfqnl_packet_msg`` for
PACKET and VERDICT, whose attributes are the ``NFQA_*`` space, and
``nfqnl_config_msg`` for CONFIG, ``NFQA_CFG_*``).  Each struct-valued
attribute is an ``nla`` with ``fields``, its C struct quoted.
"""

from __future__ import annotations

from typing import ClassVar

from pyroute2.netlink import nla
from pyroute2.netlink.nfnetlink import nfgen_msg


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
    """NFQNL_MSG_PACKET (kernel to us) and NFQNL_MSG_VERDICT (us to kernel).

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
