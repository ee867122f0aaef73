"""Per-socket bypass policies, made the way an IKE daemon makes them (test support, root).

charon exempts each IKE socket from IPsec with two ``setsockopt`` calls, an
ALLOW policy out and one in (strongSwan's ``bypass_socket`` in
``kernel_netlink_ipsec.c``); this does the same to a UDP socket opened inside
a network namespace. The kernel holds the policies while the socket is open.
"""

from __future__ import annotations

import socket
import struct

from appliance.netns import run_in_netns
from appliance.xfrm import constants as c

IP_XFRM_POLICY = 17
"""``<linux/in.h>``; Python's socket module does not define it."""
IPV6_XFRM_POLICY = 35
"""``<linux/in6.h>``."""

_SELECTOR_FAMILY_OFFSET = 40
"""``struct xfrm_selector``: daddr (16), saddr (16), four u16 ports and masks, then family."""
_USERPOLICY_INFO_SIZE = 168
"""``struct xfrm_userpolicy_info``: selector 56, lft 64, curlft 32, priority, index,
dir, action, flags, share, padded to 8."""
_DIR_OFFSET = 56 + 64 + 32 + 4 + 4


def bypass_policy(family: int, direction: int) -> bytes:
    """The ``xfrm_userpolicy_info`` charon hands to setsockopt: all zero but family, dir, ALLOW."""
    info = bytearray(_USERPOLICY_INFO_SIZE)
    struct.pack_into("=H", info, _SELECTOR_FAMILY_OFFSET, family)
    info[_DIR_OFFSET] = direction
    info[_DIR_OFFSET + 1] = c.XFRM_POLICY_ALLOW
    return bytes(info)


def bypass_socket(netns: str, family: int = socket.AF_INET) -> socket.socket:
    """A UDP socket in ``netns`` holding per-socket ALLOW policies out and in."""
    sock = run_in_netns(netns, lambda: socket.socket(family, socket.SOCK_DGRAM))
    level, option = (
        (socket.SOL_IP, IP_XFRM_POLICY)
        if family == socket.AF_INET
        else (socket.IPPROTO_IPV6, IPV6_XFRM_POLICY)
    )
    try:
        for direction in (c.XFRM_POLICY_OUT, c.XFRM_POLICY_IN):
            sock.setsockopt(level, option, bypass_policy(family, direction))
    except OSError:
        sock.close()
        raise
    return sock
