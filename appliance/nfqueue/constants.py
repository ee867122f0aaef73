"""Numbers from ``include/uapi/linux/netfilter/nfnetlink_queue.h`` and friends (Linux 6.18).

Names and values follow the headers one for one, so that each line can be
checked against them.
"""

from __future__ import annotations

NETLINK_NETFILTER = 12
NFNETLINK_V0 = 0
NFNL_SUBSYS_QUEUE = 3

# enum nfqnl_msg_types
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3

# enum nfqnl_attr_type (the ones the codec reads or writes)
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NFQA_IFINDEX_INDEV = 5
NFQA_PAYLOAD = 10
NFQA_CAP_LEN = 13

# enum nfqnl_attr_config
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5

# enum nfqnl_msg_config_cmds
NFQNL_CFG_CMD_NONE = 0
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_CFG_CMD_PF_BIND = 3
NFQNL_CFG_CMD_PF_UNBIND = 4

# enum nfqnl_config_mode
NFQNL_COPY_NONE = 0
NFQNL_COPY_META = 1
NFQNL_COPY_PACKET = 2

# NFQA_CFG_FLAGS bits
NFQA_CFG_F_FAIL_OPEN = 1 << 0
NFQA_CFG_F_CONNTRACK = 1 << 1
NFQA_CFG_F_GSO = 1 << 2
NFQA_CFG_F_UID_GID = 1 << 3
NFQA_CFG_F_SECCTX = 1 << 4

# Verdicts (linux/netfilter.h)
NF_DROP = 0
NF_ACCEPT = 1

# Netlink (linux/netlink.h)
NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NETLINK_NO_ENOBUFS = 5
NLA_F_NESTED = 1 << 15
NLA_F_NET_BYTEORDER = 1 << 14
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF
SOL_NETLINK = 270


def msg_type(kind: int) -> int:
    """``nlmsg_type`` of an nfnetlink_queue message: subsystem in the high byte."""
    return (NFNL_SUBSYS_QUEUE << 8) | kind
