"""Per-socket policies: held by one socket, never ipsec-ha's to serve.

An IKE daemon exempts its own sockets from IPsec with ``setsockopt``
(``IP_XFRM_POLICY``/``IPV6_XFRM_POLICY``): charon gives every IKE socket an
ALLOW policy in and out (strongSwan's ``bypass_socket``). The kernel links
such a policy into the namespace's SPD with the direction
``XFRM_POLICY_MAX + dir``, and a policy dump reports that as the policy's
direction: 3 (socket in) or 4 (socket out); setsockopt refuses fwd.
``ip xfrm policy`` prints them as ``socket in``/``socket out``.

They are not state to serve. The kernel refuses NEWPOLICY, UPDPOLICY and
DELPOLICY with such a direction (EINVAL, "Invalid policy direction"); the
policy lives and dies with its socket, a policy flush skips it, and adding or
removing it sends no netlink notification. The kernel adapter's policy dump
(``XfrmSocket.dump_spd``) leaves them out, so the daemon, the executor,
snapshots and restores never see them (docs/xfrm.md).
"""

from __future__ import annotations

from appliance.xfrm import constants as c

POLICY_DIR_OFFSET = 16 + 56 + 64 + 32 + 4 + 4
"""Offset of ``dir`` in a NEWPOLICY message: ``struct nlmsghdr`` (16), then
``struct xfrm_userpolicy_info``'s ``sel`` (56), ``lft`` (64), ``curlft`` (32),
``priority`` and ``index`` (4 each)."""


def is_per_socket_dir(direction: int) -> bool:
    """Whether a policy direction as the kernel reports it is a per-socket one.

    Anything at or past ``XFRM_POLICY_MAX`` is: the kernel takes only in, out
    and fwd from netlink, so no such policy can be installed by ipsec-ha.
    """
    return direction >= c.XFRM_POLICY_MAX


def is_per_socket_message(data: bytes) -> bool:
    """Whether a whole NEWPOLICY message (header included) is a per-socket policy.

    Read from the raw bytes, before any decoding, so that a direction the
    model does not know never reaches it. A message too short to hold a
    direction is not classified here (False): the decoder reports it.
    """
    return len(data) > POLICY_DIR_OFFSET and is_per_socket_dir(data[POLICY_DIR_OFFSET])
