"""XFRM SA, policy and AE messages <-> ``appliance.model`` entries with precompiled structs.

The one XFRM codec of the product: every SA, policy and replay-state (AE)
message ipsec-ha sends or receives is packed or parsed here, with
``struct.Struct`` layouts compiled once; ``codec_migrate`` does MIGRATE, and
``events`` lays out the fixed parts only notifications carry.  Restores,
snapshots and the daemon move thousands of entries through it, and it never
imports pyroute2, whose package import alone takes longer than a 1,000-SA
restore on a slow machine.  Each layout quotes the kernel struct of
``include/uapi/linux/xfrm.h`` it packs.  The unit tests hold it to an oracle:
pyroute2 declarations of the same structs under ``tests/xfrm/oracle``, on
generated entries and on recorded kernel bytes.

Attributes are written in the order the kernel writes them in a dump
(``copy_to_user_state_extra`` / ``dump_one_policy``), so a dumped entry
converted to the model and back gives the kernel's own bytes.  Attributes the
model has no field for travel in ``extra_attrs`` as raw ``(type, payload)``
and are put back at their kernel position.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from appliance.model import (
    Address,
    AeadAlgorithm,
    Algorithm,
    AuthTruncAlgorithm,
    Encap,
    KeyMaterial,
    LifetimeCfg,
    LifetimeCur,
    Mark,
    OffloadDev,
    ReplayState,
    ReplayStateEsn,
    SadEntry,
    SecCtx,
    Selector,
    SpdEntry,
    Stats,
    Template,
    address_from_xfrm,
    address_to_xfrm,
    family_of,
)
from appliance.xfrm import constants as c
from appliance.xfrm.types import AeState

# ---------------------------------------------------------------------------
# Attribute order (the kernel's, so that round trips are byte-identical)

SA_ATTR_ORDER: tuple[int, ...] = (
    c.XFRMA_SA_EXTRA_FLAGS,
    c.XFRMA_COADDR,
    c.XFRMA_LASTUSED,
    c.XFRMA_ALG_AEAD,
    c.XFRMA_ALG_AUTH,
    c.XFRMA_ALG_AUTH_TRUNC,
    c.XFRMA_ALG_CRYPT,
    c.XFRMA_ALG_COMP,
    c.XFRMA_ENCAP,
    c.XFRMA_TFCPAD,
    c.XFRMA_MARK,
    c.XFRMA_SET_MARK,
    c.XFRMA_SET_MARK_MASK,
    c.XFRMA_REPLAY_ESN_VAL,
    c.XFRMA_REPLAY_VAL,
    c.XFRMA_OFFLOAD_DEV,
    c.XFRMA_IF_ID,
    c.XFRMA_SEC_CTX,
    c.XFRMA_IPTFS_DROP_TIME,
    c.XFRMA_IPTFS_REORDER_WINDOW,
    c.XFRMA_IPTFS_DONT_FRAG,
    c.XFRMA_IPTFS_INIT_DELAY,
    c.XFRMA_IPTFS_MAX_QSIZE,
    c.XFRMA_IPTFS_PKT_SIZE,
    c.XFRMA_MTIMER_THRESH,
    c.XFRMA_SA_PCPU,
    c.XFRMA_SA_DIR,
    c.XFRMA_NAT_KEEPALIVE_INTERVAL,
    # Not in dumps; accepted by NEWSA/UPDSA and sent last.
    c.XFRMA_LTIME_VAL,
    c.XFRMA_REPLAY_THRESH,
    c.XFRMA_ETIMER_THRESH,
)
POLICY_ATTR_ORDER: tuple[int, ...] = (
    c.XFRMA_TMPL,
    c.XFRMA_SEC_CTX,
    c.XFRMA_POLICY_TYPE,
    c.XFRMA_MARK,
    c.XFRMA_IF_ID,
    c.XFRMA_OFFLOAD_DEV,
)
SA_RANK = {t: i for i, t in enumerate(SA_ATTR_ORDER)}
POLICY_RANK = {t: i for i, t in enumerate(POLICY_ATTR_ORDER)}


def signed32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def c_string(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "surrogateescape")


def name_bytes(name: str) -> bytes:
    return name.encode("ascii", "surrogateescape")


def kernel_order(pairs: Iterable[tuple[int, Any]], rank: dict[int, int]) -> list[tuple[int, Any]]:
    # Known types at the kernel's position, unknown ones after, by type number.
    return sorted(pairs, key=lambda p: rank.get(p[0], 1000 + p[0]))


# ---------------------------------------------------------------------------
# Layouts

_NLMSGHDR = struct.Struct("=IHHII")
"""``struct nlmsghdr { __u32 nlmsg_len; __u16 nlmsg_type, nlmsg_flags; __u32 nlmsg_seq,
nlmsg_pid; }``"""
_NLAHDR = struct.Struct("=HH")
"""``struct nlattr { __u16 nla_len; __u16 nla_type; }``"""

# The fixed headers, flattened: every member of the nested structs in order,
# native byte order. ``__be16``/``__be32`` members (selector ports, SPIs) are
# packed native after a byte swap. ``test_xfrm_codec`` checks each against
# ``flat_struct`` of the oracle's declared class.
_SELECTOR = "16s16sHHHHHBBB3xiI"
"""``struct xfrm_selector { xfrm_address_t daddr, saddr; __be16 dport, dport_mask, sport,
sport_mask; __u16 family; __u8 prefixlen_d, prefixlen_s, proto; int ifindex;
__kernel_uid32_t user; }``"""
_LIFETIMES = "QQQQQQQQ" + "QQQQ"
"""``struct xfrm_lifetime_cfg`` (8 x __u64) then ``struct xfrm_lifetime_cur`` (4 x __u64)."""
_USERSA_INFO = struct.Struct("=" + _SELECTOR + "16sIB3x16s" + _LIFETIMES + "IIIIIHBBB7x")
"""``struct xfrm_usersa_info { struct xfrm_selector sel; struct xfrm_id id {xfrm_address_t
daddr; __be32 spi; __u8 proto;}; xfrm_address_t saddr; struct xfrm_lifetime_cfg lft;
struct xfrm_lifetime_cur curlft; struct xfrm_stats stats {__u32 replay_window, replay,
integrity_failed;}; __u32 seq; __u32 reqid; __u16 family; __u8 mode, replay_window, flags; }``
(224 bytes)."""
_USERPOLICY_INFO = struct.Struct("=" + _SELECTOR + _LIFETIMES + "IIBBBB4x")
"""``struct xfrm_userpolicy_info { struct xfrm_selector sel; struct xfrm_lifetime_cfg lft;
struct xfrm_lifetime_cur curlft; __u32 priority; __u32 index; __u8 dir, action, flags,
share; }`` (168 bytes)."""
_TMPL = struct.Struct("=16sIB3xH2x16sIBBBxIII")
"""``struct xfrm_user_tmpl { struct xfrm_id id; __u16 family; xfrm_address_t saddr;
__u32 reqid; __u8 mode, share, optional; __u32 aalgos, ealgos, calgos; }`` (64 bytes)."""
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
_U8 = struct.Struct("=B")
_ALGO = struct.Struct("=64sI")
"""``struct xfrm_algo { char alg_name[64]; unsigned int alg_key_len; char alg_key[]; }``"""
_ALGO2 = struct.Struct("=64sII")
"""``xfrm_algo_aead`` (``alg_icv_len``) and ``xfrm_algo_auth`` (``alg_trunc_len``)."""
_ENCAP = struct.Struct("=HHH2x16s")
"""``struct xfrm_encap_tmpl { __u16 encap_type; __be16 encap_sport, encap_dport;
xfrm_address_t encap_oa; }``"""
_MARK = struct.Struct("=II")
"""``struct xfrm_mark { __u32 v; __u32 m; }``"""
_REPLAY = struct.Struct("=III")
"""``struct xfrm_replay_state { __u32 oseq, seq, bitmap; }``"""
_ESN = struct.Struct("=IIIIII")
"""``struct xfrm_replay_state_esn { unsigned int bmp_len; __u32 oseq, seq, oseq_hi, seq_hi,
replay_window; __u32 bmp[]; }``"""
_OFFLOAD = struct.Struct("=iB3x")
"""``struct xfrm_user_offload { int ifindex; __u8 flags; }``"""
_SECCTX = struct.Struct("=HHBBH")
"""``struct xfrm_user_sec_ctx { __u16 len, exttype; __u8 ctx_alg, ctx_doi; __u16 ctx_len; }``"""
_PTYPE = struct.Struct("=BxHBx")
"""``struct xfrm_userpolicy_type { __u8 type; __u16 reserved1; __u8 reserved2; }``"""
_CUR = struct.Struct("=QQQQ")
"""``struct xfrm_lifetime_cur { __u64 bytes, packets, add_time, use_time; }``"""
_USERSA_ID = struct.Struct("=16sIHBx")
"""``struct xfrm_usersa_id { xfrm_address_t daddr; __be32 spi; __u16 family; __u8 proto; }``"""
_USERPOLICY_ID = struct.Struct("=" + _SELECTOR + "IB3x")
"""``struct xfrm_userpolicy_id { struct xfrm_selector sel; __u32 index; __u8 dir; }``"""
_AEVENT_ID = struct.Struct("=16sIHBx16sII")
"""``struct xfrm_aevent_id { struct xfrm_usersa_id sa_id {xfrm_address_t daddr; __be32 spi;
__u16 family; __u8 proto;}; xfrm_address_t saddr; __u32 flags; __u32 reqid; }`` (48 bytes)."""
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


def swap16(v: int) -> int:
    """A ``__be16`` member as native order reads it, or back."""
    return ((v & 0xFF) << 8) | (v >> 8)


def swap32(v: int) -> int:
    """A ``__be32`` member (an SPI) as native order reads it, or back."""
    return int.from_bytes(v.to_bytes(4, "little"), "big")


def selector_values(sel: Selector) -> tuple[Any, ...]:
    """The members of an ``xfrm_selector``, in ``_SELECTOR`` order."""
    return (
        address_to_xfrm(sel.daddr),
        address_to_xfrm(sel.saddr),
        sel.dport and swap16(sel.dport),  # mostly 0: no call
        sel.dport_mask and swap16(sel.dport_mask),
        sel.sport and swap16(sel.sport),
        sel.sport_mask and swap16(sel.sport_mask),
        sel.family,
        sel.prefixlen_d,
        sel.prefixlen_s,
        sel.proto,
        signed32(sel.ifindex),
        sel.user,
    )


def _lft_values(lft: LifetimeCfg) -> tuple[int, ...]:
    return (
        lft.soft_byte_limit,
        lft.hard_byte_limit,
        lft.soft_packet_limit,
        lft.hard_packet_limit,
        lft.soft_add_expires_seconds,
        lft.hard_add_expires_seconds,
        lft.soft_use_expires_seconds,
        lft.hard_use_expires_seconds,
    )


def _cur_values(cur: LifetimeCur) -> tuple[int, ...]:
    return (cur.bytes, cur.packets, cur.add_time, cur.use_time)


def pack_nla(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes (``nla_len`` counts no padding)."""
    length = 4 + len(payload)
    return _NLAHDR.pack(length, kind) + payload + _PAD[length & 3]


def pack_nlmsg(msg_type: int, flags: int, seq: int, pid: int, payload: bytes) -> bytes:
    """A whole netlink message: header, then ``payload`` padded to 4 bytes.

    ``nlmsg_len`` counts that padding, as the kernel's ``nlmsg_end()`` does
    (``xfrm_usersa_flush`` is one byte).
    """
    payload += _PAD[len(payload) & 3]
    return _NLMSGHDR.pack(16 + len(payload), msg_type, flags, seq, pid) + payload


def pack_policy_type(ptype: int) -> bytes:
    """An ``XFRMA_POLICY_TYPE`` attribute."""
    return pack_nla(c.XFRMA_POLICY_TYPE, _PTYPE.pack(ptype, 0, 0))


def _mark_nla(mark: Mark) -> bytes:
    return pack_nla(c.XFRMA_MARK, _MARK.pack(mark.value, mark.mask))


def _esn_nla(r: ReplayStateEsn) -> bytes:
    head = _ESN.pack(r.bmp_len, r.oseq, r.seq, r.oseq_hi, r.seq_hi, r.replay_window)
    return pack_nla(c.XFRMA_REPLAY_ESN_VAL, head + struct.pack(f"={len(r.bmp)}I", *r.bmp))


def _replay_nla(r: ReplayState) -> bytes:
    return pack_nla(c.XFRMA_REPLAY_VAL, _REPLAY.pack(r.oseq, r.seq, r.bitmap))


def _esn_from(p: bytes) -> ReplayStateEsn:
    """An ``XFRMA_REPLAY_ESN_VAL`` payload (``struct.error`` when shorter than its head)."""
    bmp_len, oseq, seq, oseq_hi, seq_hi, window = _ESN.unpack_from(p)
    bmp = p[_ESN.size :]
    words = struct.unpack(f"={len(bmp) // 4}I", bmp[: len(bmp) // 4 * 4])
    return ReplayStateEsn(bmp_len, oseq, seq, oseq_hi, seq_hi, window, words)


def _sec_ctx(ctx: SecCtx) -> bytes:
    size = len(ctx.context)
    head = _SECCTX.pack(8 + size, c.XFRMA_SEC_CTX, ctx.ctx_alg, ctx.ctx_doi, size)
    return pack_nla(c.XFRMA_SEC_CTX, head + ctx.context)


# ---------------------------------------------------------------------------
# Encoding


def pack_usersa_info(entry: SadEntry) -> bytes:
    """The 224-byte ``xfrm_usersa_info`` of an entry."""
    st = entry.stats
    return _USERSA_INFO.pack(
        *selector_values(entry.selector),
        address_to_xfrm(entry.daddr),
        swap32(entry.spi),
        entry.proto,
        address_to_xfrm(entry.saddr),
        *_lft_values(entry.lifetime_cfg),
        *_cur_values(entry.lifetime_cur),
        st.replay_window,
        st.replay,
        st.integrity_failed,
        entry.seq,
        entry.reqid,
        entry.family,
        entry.mode,
        entry.replay_window,
        entry.flags,
    )


def _sa_attrs(entry: SadEntry, with_lifetime_cur: bool) -> list[bytes]:
    """The attributes of an entry as netlink attributes, in kernel order.

    Written straight to bytes, without intermediate values: this runs once
    per SA of a restore.
    """
    out: list[bytes] = []
    add = out.append
    if entry.extra_flags:
        add(pack_nla(c.XFRMA_SA_EXTRA_FLAGS, _U32.pack(entry.extra_flags)))
    if entry.coaddr is not None:
        add(pack_nla(c.XFRMA_COADDR, address_to_xfrm(entry.coaddr)))
    if entry.lastused is not None:
        add(pack_nla(c.XFRMA_LASTUSED, _U64.pack(entry.lastused)))
    a = entry.aead
    if a is not None:
        add(
            pack_nla(
                c.XFRMA_ALG_AEAD,
                _ALGO2.pack(name_bytes(a.name), a.key_bits, a.icv_bits) + a.key.data,
            )
        )
    if entry.auth is not None:
        u = entry.auth
        add(pack_nla(c.XFRMA_ALG_AUTH, _ALGO.pack(name_bytes(u.name), u.key_bits) + u.key.data))
    if entry.auth_trunc is not None:
        t = entry.auth_trunc
        head = _ALGO2.pack(name_bytes(t.name), t.key_bits, t.trunc_bits)
        add(pack_nla(c.XFRMA_ALG_AUTH_TRUNC, head + t.key.data))
    for kind, alg in ((c.XFRMA_ALG_CRYPT, entry.crypt), (c.XFRMA_ALG_COMP, entry.comp)):
        if alg is not None:
            add(pack_nla(kind, _ALGO.pack(name_bytes(alg.name), alg.key_bits) + alg.key.data))
    e = entry.encap
    if e is not None:
        add(
            pack_nla(
                c.XFRMA_ENCAP,
                _ENCAP.pack(e.type, swap16(e.sport), swap16(e.dport), address_to_xfrm(e.oa)),
            )
        )
    if entry.tfcpad is not None:
        add(pack_nla(c.XFRMA_TFCPAD, _U32.pack(entry.tfcpad)))
    if entry.mark is not None:
        add(_mark_nla(entry.mark))
    if entry.output_mark is not None:
        add(pack_nla(c.XFRMA_SET_MARK, _U32.pack(entry.output_mark.value)))
        add(pack_nla(c.XFRMA_SET_MARK_MASK, _U32.pack(entry.output_mark.mask)))
    if entry.replay_esn is not None:
        add(_esn_nla(entry.replay_esn))
    if entry.replay is not None:
        add(_replay_nla(entry.replay))
    if entry.offload is not None:
        off = entry.offload
        add(pack_nla(c.XFRMA_OFFLOAD_DEV, _OFFLOAD.pack(signed32(off.ifindex), off.flags)))
    if entry.if_id is not None:
        add(pack_nla(c.XFRMA_IF_ID, _U32.pack(entry.if_id)))
    if entry.sec_ctx is not None:
        add(_sec_ctx(entry.sec_ctx))
    if entry.sa_dir is not None:
        add(pack_nla(c.XFRMA_SA_DIR, _U8.pack(entry.sa_dir)))
    if with_lifetime_cur:
        add(pack_nla(c.XFRMA_LTIME_VAL, _CUR.pack(*_cur_values(entry.lifetime_cur))))
    if entry.replay_thresh is not None:
        add(pack_nla(c.XFRMA_REPLAY_THRESH, _U32.pack(entry.replay_thresh)))
    if entry.etimer_thresh is not None:
        add(pack_nla(c.XFRMA_ETIMER_THRESH, _U32.pack(entry.etimer_thresh)))
    if entry.extra_attrs:
        return _with_extras(out, entry.extra_attrs, SA_RANK)
    return out


def _with_extras(
    attrs: list[bytes], extras: Iterable[tuple[int, bytes]], rank: dict[int, int]
) -> list[bytes]:
    """``attrs`` (encoded, in kernel order) with raw extras put at their kernel position."""
    pairs = [(_NLAHDR.unpack_from(a)[1], a) for a in attrs]
    pairs += [(kind, pack_nla(kind, payload)) for kind, payload in extras]
    return [a for _, a in kernel_order(pairs, rank)]


def encode_sa(
    entry: SadEntry,
    msg_type: int = c.XFRM_MSG_NEWSA,
    flags: int = c.NLM_F_REQUEST | c.NLM_F_ACK,
    seq: int = 0,
    pid: int = 0,
    *,
    with_lifetime_cur: bool = False,
) -> bytes:
    """Bytes of a NEWSA/UPDSA message (``with_lifetime_cur``: with XFRMA_LTIME_VAL)."""
    payload = pack_usersa_info(entry) + b"".join(_sa_attrs(entry, with_lifetime_cur))
    # Aligned already (224 bytes, then padded attributes): no pack_nlmsg, once per SA.
    return _NLMSGHDR.pack(16 + len(payload), msg_type, flags, seq, pid) + payload


def pack_userpolicy_info(entry: SpdEntry) -> bytes:
    """The 168-byte ``xfrm_userpolicy_info`` of a policy."""
    return _USERPOLICY_INFO.pack(
        *selector_values(entry.selector),
        *_lft_values(entry.lifetime_cfg),
        *_cur_values(entry.lifetime_cur),
        entry.priority,
        entry.index,
        entry.dir,
        entry.action,
        entry.flags,
        entry.share,
    )


def _policy_attrs(entry: SpdEntry) -> list[bytes]:
    """The attributes of a policy as netlink attributes, in kernel order (see ``_sa_attrs``)."""
    out: list[bytes] = []
    if entry.templates:
        out.append(
            pack_nla(
                c.XFRMA_TMPL,
                b"".join(
                    _TMPL.pack(
                        address_to_xfrm(t.daddr),
                        swap32(t.spi),
                        t.proto,
                        t.family,
                        address_to_xfrm(t.saddr),
                        t.reqid,
                        t.mode,
                        t.share,
                        t.optional,
                        t.aalgos,
                        t.ealgos,
                        t.calgos,
                    )
                    for t in entry.templates
                ),
            )
        )
    if entry.sec_ctx is not None:
        out.append(_sec_ctx(entry.sec_ctx))
    if not any(k == c.XFRMA_POLICY_TYPE for k, _ in entry.extra_attrs):
        # Always sent: kernels built with CONFIG_XFRM_SUB_POLICY (Debian's) always report
        # it. One the decoder kept verbatim in extra_attrs is sent in its place.
        out.append(pack_policy_type(entry.ptype))
    if entry.mark is not None:
        out.append(_mark_nla(entry.mark))
    if entry.if_id is not None:
        out.append(pack_nla(c.XFRMA_IF_ID, _U32.pack(entry.if_id)))
    if entry.offload is not None:
        off = entry.offload
        out.append(pack_nla(c.XFRMA_OFFLOAD_DEV, _OFFLOAD.pack(signed32(off.ifindex), off.flags)))
    if entry.extra_attrs:
        return _with_extras(out, entry.extra_attrs, POLICY_RANK)
    return out


def encode_policy(
    entry: SpdEntry,
    msg_type: int = c.XFRM_MSG_NEWPOLICY,
    flags: int = c.NLM_F_REQUEST | c.NLM_F_ACK,
    seq: int = 0,
    pid: int = 0,
) -> bytes:
    """Bytes of a NEWPOLICY/UPDPOLICY message."""
    payload = pack_userpolicy_info(entry) + b"".join(_policy_attrs(entry))
    return _NLMSGHDR.pack(16 + len(payload), msg_type, flags, seq, pid) + payload


def encode_sa_id(
    msg_type: int,
    flags: int,
    seq: int,
    daddr: Address,
    spi: int,
    proto: int,
    *,
    family: int | None = None,
    mark: Mark | None = None,
) -> bytes:
    """An ``xfrm_usersa_id`` request (DELSA, GETSA) naming one SA, with its mark if any."""
    payload = _USERSA_ID.pack(
        address_to_xfrm(daddr),
        swap32(spi),
        family if family is not None else family_of(daddr),
        proto,
    )
    if mark is not None:
        payload += _mark_nla(mark)
    return pack_nlmsg(msg_type, flags, seq, 0, payload)


def encode_policy_id(
    msg_type: int,
    flags: int,
    seq: int,
    selector: Selector,
    dir: int,
    *,
    index: int = 0,
    mark: Mark | None = None,
    if_id: int | None = None,
    ptype: int = c.XFRM_POLICY_TYPE_MAIN,
) -> bytes:
    """An ``xfrm_userpolicy_id`` request (DELPOLICY, GETPOLICY) naming one policy.

    With ``index`` 0 the kernel looks the policy up by type, direction,
    selector, mark, if_id and security context.
    """
    attrs = [pack_policy_type(ptype)]
    if mark is not None:
        attrs.append(_mark_nla(mark))
    if if_id is not None:
        attrs.append(pack_nla(c.XFRMA_IF_ID, _U32.pack(if_id)))
    payload = pack_userpolicy_id(selector, dir, index) + b"".join(attrs)
    return pack_nlmsg(msg_type, flags, seq, 0, payload)


def pack_userpolicy_id(selector: Selector, dir: int, index: int = 0) -> bytes:
    """The 64-byte ``xfrm_userpolicy_id`` (index 0: the kernel looks the policy up)."""
    return _USERPOLICY_ID.pack(*selector_values(selector), index, dir)


def encode_flush_sa(seq: int, proto: int) -> bytes:
    """FLUSHSA: ``struct xfrm_usersa_flush { __u8 proto; }`` (IPSEC_PROTO_ANY: every SA)."""
    return pack_nlmsg(c.XFRM_MSG_FLUSHSA, c.NLM_F_REQUEST | c.NLM_F_ACK, seq, 0, _U8.pack(proto))


def encode_flush_policy(seq: int, ptype: int | None) -> bytes:
    """FLUSHPOLICY: no fixed part; XFRMA_POLICY_TYPE names the type (the kernel: main)."""
    payload = b"" if ptype is None else pack_policy_type(ptype)
    return pack_nlmsg(c.XFRM_MSG_FLUSHPOLICY, c.NLM_F_REQUEST | c.NLM_F_ACK, seq, 0, payload)


_SPI_RANGE = struct.Struct("=II")
"""The tail of ``struct xfrm_userspi_info { struct xfrm_usersa_info info; __u32 min; __u32 max;
}`` (232 bytes)."""


def encode_alloc_spi(
    seq: int,
    daddr: Address,
    proto: int,
    spi_min: int,
    spi_max: int,
    *,
    saddr: Address | None,
    mode: int,
    reqid: int,
    sa_seq: int,
    mark: Mark | None,
    if_id: int | None,
) -> bytes:
    """ALLOCSPI: an ``xfrm_userspi_info`` for a larval SA, with its mark and if_id if any.

    Of the ``xfrm_usersa_info`` the kernel reads the SA's addresses, proto,
    family, mode, reqid and ``seq`` (an ACQUIRE's, to tie the SA to it).
    """
    family = family_of(daddr)
    info = _USERSA_INFO.pack(
        *(bytes(16), bytes(16), 0, 0, 0, 0, family, 0, 0, 0, 0, 0),  # selector: its family
        address_to_xfrm(daddr),
        0,
        proto,
        address_to_xfrm(saddr) if saddr is not None else bytes(16),
        *(0,) * 15,  # lifetimes, current lifetime, stats
        sa_seq,
        reqid,
        family,
        mode,
        0,
        0,
    )
    attrs = b"" if mark is None else _mark_nla(mark)
    if if_id is not None:
        attrs += pack_nla(c.XFRMA_IF_ID, _U32.pack(if_id))
    payload = info + _SPI_RANGE.pack(spi_min, spi_max) + attrs
    return pack_nlmsg(c.XFRM_MSG_ALLOCSPI, c.NLM_F_REQUEST | c.NLM_F_ACK, seq, 0, payload)


# ---------------------------------------------------------------------------
# Decoding: dumps of tens of thousands of SAs

USERSA_INFO_SIZE = _USERSA_INFO.size
USERPOLICY_INFO_SIZE = _USERPOLICY_INFO.size
USERSA_ID_SIZE = _USERSA_ID.size
USERPOLICY_ID_SIZE = _USERPOLICY_ID.size
_SELECTOR_ONLY = struct.Struct("=" + _SELECTOR)
SELECTOR_SIZE = _SELECTOR_ONLY.size


def selector_from_bytes(data: bytes, offset: int) -> Selector:
    """The ``xfrm_selector`` at ``offset``."""
    return selector_from_values(_SELECTOR_ONLY.unpack_from(data, offset))


def sa_id_from_bytes(data: bytes, offset: int) -> tuple[Address, int, int, int]:
    """(daddr, SPI, family, proto) of the ``xfrm_usersa_id`` at ``offset``."""
    daddr, spi, family, proto = _USERSA_ID.unpack_from(data, offset)
    return address_from_xfrm(family, daddr), swap32(spi), family, proto


def policy_id_from_bytes(data: bytes, offset: int) -> tuple[Selector, int, int]:
    """(selector, index, dir) of the ``xfrm_userpolicy_id`` at ``offset``."""
    v = _USERPOLICY_ID.unpack_from(data, offset)
    return selector_from_values(v[0:12]), v[12], v[13]


def selector_from_values(v: tuple[Any, ...]) -> Selector:
    """A ``Selector`` from the members of an ``xfrm_selector`` (``selector_values``' inverse)."""
    family = v[6]
    return Selector(
        daddr=address_from_xfrm(family, v[0]),
        saddr=address_from_xfrm(family, v[1]),
        dport=swap16(v[2]),
        dport_mask=swap16(v[3]),
        sport=swap16(v[4]),
        sport_mask=swap16(v[5]),
        family=family,
        prefixlen_d=v[7],
        prefixlen_s=v[8],
        proto=v[9],
        ifindex=v[10] & 0xFFFFFFFF,
        user=v[11],
    )


def unpack_attrs(data: bytes, offset: int, end: int) -> list[tuple[int, bytes]]:
    """``(type, payload)`` of the attributes from ``offset`` to ``end`` (type flags cleared)."""
    out = []
    while offset + 4 <= end:
        length, kind = _NLAHDR.unpack_from(data, offset)
        if length < 4 or offset + length > end:
            raise ValueError(f"malformed attribute at offset {offset} (length {length})")
        out.append((kind & 0x3FFF, data[offset + 4 : offset + length]))
        offset += (length + 3) & ~3
    return out


def sad_from_bytes(data: bytes) -> SadEntry:
    """``SadEntry`` from one whole NEWSA/UPDSA message (dump entry, GETSA reply or event)."""
    length = _NLMSGHDR.unpack_from(data, 0)[0]
    return sad_from_parts(data, 16, unpack_attrs(data, 16 + USERSA_INFO_SIZE, length))


def sad_from_parts(data: bytes, offset: int, attrs: Iterable[tuple[int, bytes]]) -> SadEntry:
    """``SadEntry`` from the ``xfrm_usersa_info`` at ``offset`` and the SA's attributes.

    A NEWSA message has both back to back; a DELSA notification carries the
    struct in XFRMA_SA, an EXPIRE one inside ``xfrm_user_expire``.
    """
    v = _USERSA_INFO.unpack_from(data, offset)
    family = v[33]
    values: dict[str, Any] = {}
    extra: list[tuple[int, bytes]] = []
    set_mark: int | None = None
    set_mark_mask: int | None = None
    for kind, p in attrs:
        try:
            if kind == c.XFRMA_ALG_AEAD:
                name, bits, icv = _ALGO2.unpack_from(p)
                values["aead"] = AeadAlgorithm(c_string(name), bits, icv, KeyMaterial(p[72:]))
            elif kind == c.XFRMA_ALG_AUTH_TRUNC:
                name, bits, trunc = _ALGO2.unpack_from(p)
                values["auth_trunc"] = AuthTruncAlgorithm(
                    c_string(name), bits, trunc, KeyMaterial(p[72:])
                )
            elif kind in (c.XFRMA_ALG_AUTH, c.XFRMA_ALG_CRYPT, c.XFRMA_ALG_COMP):
                name, bits = _ALGO.unpack_from(p)
                field = {c.XFRMA_ALG_AUTH: "auth", c.XFRMA_ALG_CRYPT: "crypt"}.get(kind, "comp")
                values[field] = Algorithm(c_string(name), bits, KeyMaterial(p[68:]))
            elif kind == c.XFRMA_REPLAY_VAL and len(p) == 12:
                values["replay"] = ReplayState(*_REPLAY.unpack(p))
            elif kind == c.XFRMA_REPLAY_ESN_VAL:
                values["replay_esn"] = _esn_from(p)
            elif kind == c.XFRMA_SA_EXTRA_FLAGS and len(p) == 4:
                values["extra_flags"] = _U32.unpack(p)[0]
            elif kind == c.XFRMA_COADDR and len(p) == 16:
                values["coaddr"] = address_from_xfrm(family, p)
            elif kind == c.XFRMA_LASTUSED and len(p) == 8:
                values["lastused"] = _U64.unpack(p)[0]
            elif kind == c.XFRMA_ENCAP and len(p) == 24:
                etype, sport, dport, oa = _ENCAP.unpack(p)
                values["encap"] = Encap(
                    etype, swap16(sport), swap16(dport), address_from_xfrm(family, oa)
                )
            elif kind == c.XFRMA_MARK and len(p) == 8:
                values["mark"] = Mark(*_MARK.unpack(p))
            elif kind == c.XFRMA_SET_MARK and len(p) == 4:
                set_mark = _U32.unpack(p)[0]
            elif kind == c.XFRMA_SET_MARK_MASK and len(p) == 4:
                set_mark_mask = _U32.unpack(p)[0]
            elif kind in _U32_FIELDS and len(p) == 4:
                values[_U32_FIELDS[kind]] = _U32.unpack(p)[0]
            elif kind == c.XFRMA_SA_DIR and len(p) == 1:
                values["sa_dir"] = p[0]
            elif kind == c.XFRMA_OFFLOAD_DEV and len(p) == 8:
                ifindex, flags = _OFFLOAD.unpack(p)
                values["offload"] = OffloadDev(ifindex & 0xFFFFFFFF, flags)
            elif kind == c.XFRMA_SEC_CTX and len(p) >= 8:
                _, _, alg, doi, _ = _SECCTX.unpack_from(p)
                values["sec_ctx"] = SecCtx(doi, alg, p[8:])
            else:
                extra.append((kind, p))
        except struct.error:
            extra.append((kind, p))  # shorter than its struct: keep it as it came
    if set_mark is not None and set_mark_mask is not None:
        values["output_mark"] = Mark(set_mark, set_mark_mask)
    else:
        for kind, value in ((c.XFRMA_SET_MARK, set_mark), (c.XFRMA_SET_MARK_MASK, set_mark_mask)):
            if value is not None:
                extra.append((kind, _U32.pack(value)))
    return SadEntry(
        daddr=address_from_xfrm(family, v[12]),
        spi=swap32(v[13]),
        proto=v[14],
        saddr=address_from_xfrm(family, v[15]),
        family=family,
        mode=v[34],
        reqid=v[32],
        seq=v[31],
        replay_window=v[35],
        flags=v[36],
        selector=selector_from_values(v[0:12]),
        lifetime_cfg=LifetimeCfg(*v[16:24]),
        lifetime_cur=LifetimeCur(*v[24:28]),
        stats=Stats(*v[28:31]),
        extra_attrs=tuple(extra),
        **values,
    )


_U32_FIELDS = {
    c.XFRMA_TFCPAD: "tfcpad",
    c.XFRMA_IF_ID: "if_id",
    c.XFRMA_REPLAY_THRESH: "replay_thresh",
    c.XFRMA_ETIMER_THRESH: "etimer_thresh",
}


def _template_from_values(v: tuple[Any, ...]) -> Template:
    family = v[3]
    return Template(
        daddr=address_from_xfrm(family, v[0]),
        spi=swap32(v[1]),
        proto=v[2],
        family=family,
        saddr=address_from_xfrm(family, v[4]),
        reqid=v[5],
        mode=v[6],
        share=v[7],
        optional=v[8],
        aalgos=v[9],
        ealgos=v[10],
        calgos=v[11],
    )


def spd_from_bytes(data: bytes) -> SpdEntry:
    """``SpdEntry`` from one whole NEWPOLICY/UPDPOLICY message (dump entry or event)."""
    length = _NLMSGHDR.unpack_from(data, 0)[0]
    return spd_from_parts(data, 16, unpack_attrs(data, 16 + USERPOLICY_INFO_SIZE, length))


def spd_from_parts(data: bytes, offset: int, attrs: Iterable[tuple[int, bytes]]) -> SpdEntry:
    """``SpdEntry`` from the ``xfrm_userpolicy_info`` at ``offset`` and the policy's attributes.

    DELPOLICY notifications carry the struct in XFRMA_POLICY; ACQUIRE and
    POLEXPIRE inside their own.
    """
    v = _USERPOLICY_INFO.unpack_from(data, offset)
    values: dict[str, Any] = {}
    extra: list[tuple[int, bytes]] = []
    for kind, p in attrs:
        if kind == c.XFRMA_TMPL:
            size = _TMPL.size
            values["templates"] = tuple(
                _template_from_values(_TMPL.unpack_from(p, at))
                for at in range(0, len(p) - size + 1, size)
            )
        elif kind == c.XFRMA_POLICY_TYPE and len(p) == 6:
            ptype, reserved1, reserved2 = _PTYPE.unpack(p)
            if reserved1 or reserved2:
                extra.append((kind, p))
            else:
                values["ptype"] = ptype
        elif kind == c.XFRMA_MARK and len(p) == 8:
            values["mark"] = Mark(*_MARK.unpack(p))
        elif kind == c.XFRMA_IF_ID and len(p) == 4:
            values["if_id"] = _U32.unpack(p)[0]
        elif kind == c.XFRMA_OFFLOAD_DEV and len(p) == 8:
            ifindex, flags = _OFFLOAD.unpack(p)
            values["offload"] = OffloadDev(ifindex & 0xFFFFFFFF, flags)
        elif kind == c.XFRMA_SEC_CTX and len(p) >= 8:
            _, _, alg, doi, _ = _SECCTX.unpack_from(p)
            values["sec_ctx"] = SecCtx(doi, alg, p[8:])
        else:
            extra.append((kind, p))
    return SpdEntry(
        selector=selector_from_values(v[0:12]),
        lifetime_cfg=LifetimeCfg(*v[12:20]),
        lifetime_cur=LifetimeCur(*v[20:24]),
        priority=v[24],
        index=v[25],
        dir=v[26],
        action=v[27],
        flags=v[28],
        share=v[29],
        extra_attrs=tuple(extra),
        **values,
    )


# ---------------------------------------------------------------------------
# Replay and lifetime state (GETAE / NEWAE)


def encode_ae(
    msg_type: int,
    flags: int,
    seq: int,
    daddr: Address,
    spi: int,
    proto: int,
    *,
    replay: ReplayState | ReplayStateEsn | None = None,
    lifetime_cur: LifetimeCur | None = None,
    mark: Mark | None = None,
    saddr: Address | None = None,
    reqid: int = 0,
    replay_thresh: int | None = None,
    etimer_thresh: int | None = None,
    ae_flags: int = 0,
) -> bytes:
    """A GETAE or NEWAE message; ``xfrm_aevent_id.flags`` says what the attributes set.

    Each value given adds its attribute and its ``XFRM_AE_*`` flag (NEWAE);
    ``ae_flags`` adds flags of its own (GETAE asks with RVAL|LVAL).
    """
    attrs: list[bytes] = []
    if replay is not None:
        ae_flags |= c.XFRM_AE_RVAL
        if isinstance(replay, ReplayStateEsn):
            attrs.append(_esn_nla(replay))
        else:
            attrs.append(_replay_nla(replay))
    if lifetime_cur is not None:
        ae_flags |= c.XFRM_AE_LVAL
        attrs.append(pack_nla(c.XFRMA_LTIME_VAL, _CUR.pack(*_cur_values(lifetime_cur))))
    if replay_thresh is not None:
        ae_flags |= c.XFRM_AE_RTHR
        attrs.append(pack_nla(c.XFRMA_REPLAY_THRESH, _U32.pack(replay_thresh)))
    if etimer_thresh is not None:
        ae_flags |= c.XFRM_AE_ETHR
        attrs.append(pack_nla(c.XFRMA_ETIMER_THRESH, _U32.pack(etimer_thresh)))
    if mark is not None:
        attrs.append(_mark_nla(mark))
    payload = _AEVENT_ID.pack(
        address_to_xfrm(daddr),
        swap32(spi),
        family_of(daddr),
        proto,
        address_to_xfrm(saddr) if saddr is not None else bytes(16),
        ae_flags,
        reqid,
    ) + b"".join(attrs)
    return pack_nlmsg(msg_type, flags, seq, 0, payload)


def aevent_id_from_bytes(data: bytes) -> tuple[Address, int, int, Address, int, int]:
    """(daddr, SPI, proto, saddr, reqid, flags) of one whole NEWAE message."""
    daddr, spi, family, proto, saddr, flags, reqid = _AEVENT_ID.unpack_from(data, 16)
    return (
        address_from_xfrm(family, daddr),
        swap32(spi),
        proto,
        address_from_xfrm(family, saddr),
        reqid,
        flags,
    )


def ae_state_from_bytes(data: bytes) -> AeState:
    """``AeState`` from one whole NEWAE message (a GETAE reply or an AE event)."""
    length = _NLMSGHDR.unpack_from(data, 0)[0]
    replay = replay_esn = lifetime = None
    rthr = ethr = None
    mark = None
    for kind, p in unpack_attrs(data, 16 + _AEVENT_ID.size, length):
        if kind == c.XFRMA_REPLAY_VAL and len(p) >= _REPLAY.size:
            replay = ReplayState(*_REPLAY.unpack_from(p))
        elif kind == c.XFRMA_REPLAY_ESN_VAL and len(p) >= _ESN.size:
            replay_esn = _esn_from(p)
        elif kind == c.XFRMA_LTIME_VAL and len(p) >= _CUR.size:
            lifetime = LifetimeCur(*_CUR.unpack_from(p))
        elif kind == c.XFRMA_REPLAY_THRESH and len(p) >= 4:
            rthr = _U32.unpack_from(p)[0]
        elif kind == c.XFRMA_ETIMER_THRESH and len(p) >= 4:
            ethr = _U32.unpack_from(p)[0]
        elif kind == c.XFRMA_MARK and len(p) >= _MARK.size:
            mark = Mark(*_MARK.unpack_from(p))
    return AeState(replay, replay_esn, lifetime, rthr, ethr, mark)
