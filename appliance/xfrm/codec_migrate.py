"""MIGRATE messages <-> ``Migration`` and ``KmAddress``, with precompiled structs.

XFRM_MSG_MIGRATE is both a request (``XfrmSocket.migrate``) and a
notification (``events.Migrated``): an ``xfrm_userpolicy_id`` naming the
policy, then XFRMA_POLICY_TYPE, XFRMA_MIGRATE (back-to-back
``xfrm_user_migrate`` structs, no attribute header between them) and
optionally XFRMA_KMADDRESS.  Part of the one codec (see ``codec``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from appliance.model import Selector, address_from_xfrm, address_to_xfrm, family_of
from appliance.xfrm import codec
from appliance.xfrm import constants as c
from appliance.xfrm.types import KmAddress, Migration

_MIGRATE = struct.Struct("=16s16s16s16sBBHIHH")
"""``struct xfrm_user_migrate { xfrm_address_t old_daddr, old_saddr, new_daddr, new_saddr;
__u8 proto; __u8 mode; __u16 reserved; __u32 reqid; __u16 old_family; __u16 new_family; }``
(76 bytes)."""
_KMADDRESS = struct.Struct("=16s16sIH2x")
"""``struct xfrm_user_kmaddress { xfrm_address_t local; xfrm_address_t remote; __u32 reserved;
__u16 family; }`` (40 bytes)."""


def _pack_migration(m: Migration) -> bytes:
    return _MIGRATE.pack(
        address_to_xfrm(m.old_daddr),
        address_to_xfrm(m.old_saddr),
        address_to_xfrm(m.new_daddr),
        address_to_xfrm(m.new_saddr),
        m.proto,
        m.mode,
        m.reserved,
        m.reqid,
        family_of(m.old_daddr),
        family_of(m.new_daddr),
    )


def encode_migrate(
    seq: int,
    selector: Selector,
    dir: int,
    migrations: Sequence[Migration],
    *,
    kmaddress: KmAddress | None = None,
    ptype: int = c.XFRM_POLICY_TYPE_MAIN,
) -> bytes:
    """A MIGRATE request for the policy of ``selector`` and ``dir`` (index 0: by selector)."""
    attrs = codec.pack_policy_type(ptype) + codec.pack_nla(
        c.XFRMA_MIGRATE, b"".join(_pack_migration(m) for m in migrations)
    )
    if kmaddress is not None:
        km = _KMADDRESS.pack(
            address_to_xfrm(kmaddress.local),
            address_to_xfrm(kmaddress.remote),
            kmaddress.reserved,
            family_of(kmaddress.local),
        )
        attrs += codec.pack_nla(c.XFRMA_KMADDRESS, km)
    payload = codec.pack_userpolicy_id(selector, dir) + attrs
    return codec.pack_nlmsg(c.XFRM_MSG_MIGRATE, c.NLM_F_REQUEST | c.NLM_F_ACK, seq, 0, payload)


def migrations_from(payload: bytes) -> tuple[Migration, ...]:
    """The ``xfrm_user_migrate`` structs of an XFRMA_MIGRATE payload (a partial tail is ignored)."""
    size = _MIGRATE.size
    out = []
    for at in range(0, len(payload) - size + 1, size):
        od, os_, nd, ns, proto, mode, reserved, reqid, old_family, new_family = (
            _MIGRATE.unpack_from(payload, at)
        )
        out.append(
            Migration(
                old_daddr=address_from_xfrm(old_family, od),
                old_saddr=address_from_xfrm(old_family, os_),
                new_daddr=address_from_xfrm(new_family, nd),
                new_saddr=address_from_xfrm(new_family, ns),
                proto=proto,
                mode=mode,
                reqid=reqid,
                reserved=reserved,
            )
        )
    return tuple(out)


def kmaddress_from(payload: bytes) -> KmAddress:
    """The ``xfrm_user_kmaddress`` of an XFRMA_KMADDRESS payload."""
    local, remote, reserved, family = _KMADDRESS.unpack_from(payload)
    return KmAddress(address_from_xfrm(family, local), address_from_xfrm(family, remote), reserved)
