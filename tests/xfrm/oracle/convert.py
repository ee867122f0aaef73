"""The oracle: declarative XFRM messages (``structs``) <-> ``appliance.model``.

* ``sad_from_msg`` / ``spd_from_msg`` read a decoded pyroute2 message
  (``structs.xfrm_usersa_info`` / ``structs.xfrm_userpolicy_info``).
* ``sad_to_msg`` / ``spd_to_msg`` build such a message; ``*_msg`` build the
  other requests the product sends (flushes, ALLOCSPI, MIGRATE, ids).

The product's codec (``appliance.xfrm.codec`` and its siblings) packs and
parses the same bytes with precompiled structs; the unit tests hold it to
this module on generated entries and recorded kernel bytes. So that the
reference does not lean on what it checks, nothing here imports the codec:
the kernel's attribute order below is written out again from
``copy_to_user_state_extra`` / ``dump_one_policy``. ``flat_struct`` derives
a struct layout from a declared class, for those tests.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from appliance.model import (
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
)
from appliance.xfrm import constants as c
from appliance.xfrm.types import AeState, KmAddress, Migration
from tests.xfrm.oracle import structs as s

# The kernel's attribute order: copy_to_user_state_extra() for SAs (then what
# NEWSA/UPDSA accept but dumps never carry), dump_one_policy() for policies.
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


def kernel_order(pairs: list[tuple[int, Any]], rank: dict[int, int]) -> list[tuple[int, Any]]:
    """Known attribute types at the kernel's position, unknown ones after, by number."""
    return sorted(pairs, key=lambda p: rank.get(p[0], 1000 + p[0]))


def signed32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def c_string(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "surrogateescape")


def name_bytes(name: str) -> bytes:
    return name.encode("ascii", "surrogateescape")


_TYPE_TO_NAME: dict[int, str] = {
    t: name for t, name, _ in s.xfrm_attrs.nla_map if not name.endswith(s.RAW_SUFFIX)
}

# Attributes decoding keeps raw in ``extra_attrs``: the model has no field for them
# (LTIME_VAL included: ``lifetime_cur`` comes from the header's curlft).
_SA_UNMODELED = frozenset(
    {
        c.XFRMA_IPTFS_DROP_TIME,
        c.XFRMA_IPTFS_REORDER_WINDOW,
        c.XFRMA_IPTFS_DONT_FRAG,
        c.XFRMA_IPTFS_INIT_DELAY,
        c.XFRMA_IPTFS_MAX_QSIZE,
        c.XFRMA_IPTFS_PKT_SIZE,
        c.XFRMA_MTIMER_THRESH,
        c.XFRMA_SA_PCPU,
        c.XFRMA_NAT_KEEPALIVE_INTERVAL,
        c.XFRMA_LTIME_VAL,
    }
)
_SA_MODELED = frozenset(SA_ATTR_ORDER) - _SA_UNMODELED
_POLICY_MODELED = frozenset(POLICY_ATTR_ORDER)


# ---------------------------------------------------------------------------
# Small helpers


def attr_payload(slot: Any) -> bytes:
    """The raw payload bytes of a decoded pyroute2 attribute slot."""
    cell = slot.cell[1]
    return bytes(cell.data[cell.offset + 4 : cell.offset + cell.length])


def attr_type(slot: Any) -> int:
    """The attribute type number (flags stripped) of a decoded attribute slot."""
    cell = slot.cell[1]
    value: int = struct.unpack_from("=H", cell.data, cell.offset + 2)[0]
    return value & 0x3FFF


def selector_from_dict(sel: dict[str, Any]) -> Selector:
    family = sel["family"]
    return Selector(
        daddr=address_from_xfrm(family, sel["daddr"]),
        saddr=address_from_xfrm(family, sel["saddr"]),
        dport=sel["dport"],
        dport_mask=sel["dport_mask"],
        sport=sel["sport"],
        sport_mask=sel["sport_mask"],
        family=family,
        prefixlen_d=sel["prefixlen_d"],
        prefixlen_s=sel["prefixlen_s"],
        proto=sel["proto"],
        ifindex=sel["ifindex"] & 0xFFFFFFFF,
        user=sel["user"],
    )


def selector_to_dict(sel: Selector) -> dict[str, Any]:
    return {
        "daddr": address_to_xfrm(sel.daddr),
        "saddr": address_to_xfrm(sel.saddr),
        "dport": sel.dport,
        "dport_mask": sel.dport_mask,
        "sport": sel.sport,
        "sport_mask": sel.sport_mask,
        "family": sel.family,
        "prefixlen_d": sel.prefixlen_d,
        "prefixlen_s": sel.prefixlen_s,
        "proto": sel.proto,
        "ifindex": signed32(sel.ifindex),
        "user": sel.user,
    }


def _lft_from(d: dict[str, Any]) -> LifetimeCfg:
    return LifetimeCfg(**d)


def _lft_to(lft: LifetimeCfg) -> dict[str, Any]:
    return {f: getattr(lft, f) for f in _LFT_FIELDS}


def _cur_from(d: dict[str, Any]) -> LifetimeCur:
    return LifetimeCur(**d)


def _cur_to(cur: LifetimeCur) -> dict[str, Any]:
    return {f: getattr(cur, f) for f in _CUR_FIELDS}


_LFT_FIELDS = tuple(name for name, _ in s.xfrm_lifetime_cfg.fields)
_CUR_FIELDS = tuple(name for name, _ in s.xfrm_lifetime_cur.fields)


# ---------------------------------------------------------------------------
# SAD entries


def sad_from_info(info: dict[str, Any], attrs: Sequence[Any]) -> SadEntry:
    """Build a ``SadEntry`` from a decoded ``xfrm_usersa_info`` dict and its attribute slots."""
    family = info["family"]
    values: dict[str, Any] = {}
    extra: list[tuple[int, bytes]] = []
    set_mark: int | None = None
    set_mark_mask: int | None = None
    for slot in attrs:
        kind = attr_type(slot)
        if kind not in _SA_MODELED:
            extra.append((kind, attr_payload(slot)))
            continue
        v = slot.value
        if kind == c.XFRMA_SA_EXTRA_FLAGS:
            values["extra_flags"] = v
        elif kind == c.XFRMA_COADDR:
            values["coaddr"] = address_from_xfrm(family, v["addr"])
        elif kind == c.XFRMA_LASTUSED:
            values["lastused"] = v
        elif kind == c.XFRMA_ALG_AEAD:
            values["aead"] = AeadAlgorithm(
                c_string(v["alg_name"]),
                v["alg_key_len"],
                v["alg_icv_len"],
                KeyMaterial(v["alg_key"]),
            )
        elif kind == c.XFRMA_ALG_AUTH_TRUNC:
            values["auth_trunc"] = AuthTruncAlgorithm(
                c_string(v["alg_name"]),
                v["alg_key_len"],
                v["alg_trunc_len"],
                KeyMaterial(v["alg_key"]),
            )
        elif kind in (c.XFRMA_ALG_AUTH, c.XFRMA_ALG_CRYPT, c.XFRMA_ALG_COMP):
            field = {c.XFRMA_ALG_AUTH: "auth", c.XFRMA_ALG_CRYPT: "crypt"}.get(kind, "comp")
            values[field] = Algorithm(
                c_string(v["alg_name"]), v["alg_key_len"], KeyMaterial(v["alg_key"])
            )
        elif kind == c.XFRMA_ENCAP:
            values["encap"] = Encap(
                type=v["encap_type"],
                sport=v["encap_sport"],
                dport=v["encap_dport"],
                oa=address_from_xfrm(family, v["encap_oa"]),
            )
        elif kind == c.XFRMA_TFCPAD:
            values["tfcpad"] = v
        elif kind == c.XFRMA_MARK:
            values["mark"] = Mark(v["v"], v["m"])
        elif kind == c.XFRMA_SET_MARK:
            set_mark = v
        elif kind == c.XFRMA_SET_MARK_MASK:
            set_mark_mask = v
        elif kind == c.XFRMA_REPLAY_ESN_VAL:
            bmp = v["bmp"]
            values["replay_esn"] = ReplayStateEsn(
                bmp_len=v["bmp_len"],
                oseq=v["oseq"],
                seq=v["seq"],
                oseq_hi=v["oseq_hi"],
                seq_hi=v["seq_hi"],
                replay_window=v["replay_window"],
                bmp=struct.unpack(f"={len(bmp) // 4}I", bmp[: len(bmp) // 4 * 4]),
            )
        elif kind == c.XFRMA_REPLAY_VAL:
            values["replay"] = ReplayState(v["oseq"], v["seq"], v["bitmap"])
        elif kind == c.XFRMA_OFFLOAD_DEV:
            values["offload"] = OffloadDev(v["ifindex"] & 0xFFFFFFFF, v["flags"])
        elif kind == c.XFRMA_IF_ID:
            values["if_id"] = v
        elif kind == c.XFRMA_SEC_CTX:
            values["sec_ctx"] = SecCtx(v["ctx_doi"], v["ctx_alg"], v["ctx_str"])
        elif kind == c.XFRMA_SA_DIR:
            values["sa_dir"] = v
        elif kind == c.XFRMA_REPLAY_THRESH:
            values["replay_thresh"] = v
        elif kind == c.XFRMA_ETIMER_THRESH:
            values["etimer_thresh"] = v
    if set_mark is not None or set_mark_mask is not None:
        if set_mark is None or set_mark_mask is None:
            # Only one half present: model cannot say which, keep the raw attribute.
            for kind, value in (
                (c.XFRMA_SET_MARK, set_mark),
                (c.XFRMA_SET_MARK_MASK, set_mark_mask),
            ):
                if value is not None:
                    extra.append((kind, struct.pack("=I", value)))
        else:
            values["output_mark"] = Mark(set_mark, set_mark_mask)
    ident = info["id"]
    return SadEntry(
        daddr=address_from_xfrm(family, ident["daddr"]),
        spi=ident["spi"],
        proto=ident["proto"],
        saddr=address_from_xfrm(family, info["saddr"]),
        family=family,
        mode=info["mode"],
        reqid=info["reqid"],
        seq=info["seq"],
        replay_window=info["replay_window"],
        flags=info["flags"],
        selector=selector_from_dict(info["sel"]),
        lifetime_cfg=_lft_from(info["lft"]),
        lifetime_cur=_cur_from(info["curlft"]),
        stats=Stats(**info["stats"]),
        extra_attrs=tuple(extra),
        **values,
    )


def sad_from_msg(msg: Any) -> SadEntry:
    """``SadEntry`` from a decoded NEWSA/UPDSA message (dump entry, GETSA reply or event)."""
    return sad_from_info(msg, msg["attrs"])


def sad_info_dict(entry: SadEntry) -> dict[str, Any]:
    """The ``xfrm_usersa_info`` member values of an entry, as the structs classes take them."""
    return {
        "sel": selector_to_dict(entry.selector),
        "id": {"daddr": address_to_xfrm(entry.daddr), "spi": entry.spi, "proto": entry.proto},
        "saddr": address_to_xfrm(entry.saddr),
        "lft": _lft_to(entry.lifetime_cfg),
        "curlft": _cur_to(entry.lifetime_cur),
        "stats": {
            "replay_window": entry.stats.replay_window,
            "replay": entry.stats.replay,
            "integrity_failed": entry.stats.integrity_failed,
        },
        "seq": entry.seq,
        "reqid": entry.reqid,
        "family": entry.family,
        "mode": entry.mode,
        "replay_window": entry.replay_window,
        "flags": entry.flags,
    }


def sad_attr_values(entry: SadEntry, *, with_lifetime_cur: bool = False) -> list[tuple[int, Any]]:
    """``(type, value)`` for every attribute of an entry, in kernel order.

    Values are what the ``structs`` attribute classes take; extra attributes
    appear as raw ``bytes``.
    """
    out: list[tuple[int, Any]] = []
    if entry.extra_flags:
        out.append((c.XFRMA_SA_EXTRA_FLAGS, entry.extra_flags))
    if entry.coaddr is not None:
        out.append((c.XFRMA_COADDR, {"addr": address_to_xfrm(entry.coaddr)}))
    if entry.lastused is not None:
        out.append((c.XFRMA_LASTUSED, entry.lastused))
    if entry.aead is not None:
        a = entry.aead
        out.append(
            (
                c.XFRMA_ALG_AEAD,
                {
                    "alg_name": name_bytes(a.name),
                    "alg_key_len": a.key_bits,
                    "alg_icv_len": a.icv_bits,
                    "alg_key": a.key.data,
                },
            )
        )
    for kind, alg in (
        (c.XFRMA_ALG_AUTH, entry.auth),
        (c.XFRMA_ALG_CRYPT, entry.crypt),
        (c.XFRMA_ALG_COMP, entry.comp),
    ):
        if alg is not None:
            out.append(
                (
                    kind,
                    {
                        "alg_name": name_bytes(alg.name),
                        "alg_key_len": alg.key_bits,
                        "alg_key": alg.key.data,
                    },
                )
            )
    if entry.auth_trunc is not None:
        t = entry.auth_trunc
        out.append(
            (
                c.XFRMA_ALG_AUTH_TRUNC,
                {
                    "alg_name": name_bytes(t.name),
                    "alg_key_len": t.key_bits,
                    "alg_trunc_len": t.trunc_bits,
                    "alg_key": t.key.data,
                },
            )
        )
    if entry.encap is not None:
        e = entry.encap
        out.append(
            (
                c.XFRMA_ENCAP,
                {
                    "encap_type": e.type,
                    "encap_sport": e.sport,
                    "encap_dport": e.dport,
                    "encap_oa": address_to_xfrm(e.oa),
                },
            )
        )
    if entry.tfcpad is not None:
        out.append((c.XFRMA_TFCPAD, entry.tfcpad))
    if entry.mark is not None:
        out.append((c.XFRMA_MARK, {"v": entry.mark.value, "m": entry.mark.mask}))
    if entry.output_mark is not None:
        out.append((c.XFRMA_SET_MARK, entry.output_mark.value))
        out.append((c.XFRMA_SET_MARK_MASK, entry.output_mark.mask))
    if entry.replay_esn is not None:
        r = entry.replay_esn
        out.append(
            (
                c.XFRMA_REPLAY_ESN_VAL,
                {
                    "bmp_len": r.bmp_len,
                    "oseq": r.oseq,
                    "seq": r.seq,
                    "oseq_hi": r.oseq_hi,
                    "seq_hi": r.seq_hi,
                    "replay_window": r.replay_window,
                    "bmp": struct.pack(f"={len(r.bmp)}I", *r.bmp),
                },
            )
        )
    if entry.replay is not None:
        p = entry.replay
        out.append((c.XFRMA_REPLAY_VAL, {"oseq": p.oseq, "seq": p.seq, "bitmap": p.bitmap}))
    if entry.offload is not None:
        out.append(
            (
                c.XFRMA_OFFLOAD_DEV,
                {"ifindex": signed32(entry.offload.ifindex), "flags": entry.offload.flags},
            )
        )
    if entry.if_id is not None:
        out.append((c.XFRMA_IF_ID, entry.if_id))
    if entry.sec_ctx is not None:
        out.append((c.XFRMA_SEC_CTX, _sec_ctx_value(entry.sec_ctx)))
    if entry.sa_dir is not None:
        out.append((c.XFRMA_SA_DIR, entry.sa_dir))
    if with_lifetime_cur:
        out.append((c.XFRMA_LTIME_VAL, _cur_to(entry.lifetime_cur)))
    if entry.replay_thresh is not None:
        out.append((c.XFRMA_REPLAY_THRESH, entry.replay_thresh))
    if entry.etimer_thresh is not None:
        out.append((c.XFRMA_ETIMER_THRESH, entry.etimer_thresh))
    out.extend(entry.extra_attrs)
    return kernel_order(out, SA_RANK)


def _sec_ctx_value(ctx: SecCtx) -> dict[str, Any]:
    return {
        "len": 8 + len(ctx.context),
        "exttype": c.XFRMA_SEC_CTX,
        "ctx_alg": ctx.ctx_alg,
        "ctx_doi": ctx.ctx_doi,
        "ctx_len": len(ctx.context),
        "ctx_str": ctx.context,
    }


def _named(pairs: list[tuple[int, Any]]) -> list[tuple[str, Any]]:
    named = []
    for kind, value in pairs:
        name = _TYPE_TO_NAME.get(kind, f"XFRMA_{kind}")
        if isinstance(value, bytes) and not name.endswith(f"_{kind}"):
            name += s.RAW_SUFFIX  # an unmodelled attribute: its payload as it came
        named.append((name, value))
    return named


def _header(msg: Any, msg_type: int, flags: int, seq: int, pid: int) -> None:
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = pid


def sad_to_msg(
    entry: SadEntry,
    msg_type: int = c.XFRM_MSG_NEWSA,
    flags: int = c.NLM_F_REQUEST | c.NLM_F_ACK,
    seq: int = 0,
    pid: int = 0,
    *,
    with_lifetime_cur: bool = False,
) -> s.xfrm_usersa_info:
    """The declarative message for an entry (not yet encoded)."""
    msg = s.xfrm_usersa_info()
    _header(msg, msg_type, flags, seq, pid)
    msg.update(sad_info_dict(entry))
    msg["attrs"] = _named(sad_attr_values(entry, with_lifetime_cur=with_lifetime_cur))
    return msg


# ---------------------------------------------------------------------------
# SPD entries


def template_from_dict(t: dict[str, Any]) -> Template:
    family = t["family"]
    return Template(
        daddr=address_from_xfrm(family, t["id"]["daddr"]),
        spi=t["id"]["spi"],
        proto=t["id"]["proto"],
        family=family,
        saddr=address_from_xfrm(family, t["saddr"]),
        reqid=t["reqid"],
        mode=t["mode"],
        share=t["share"],
        optional=t["optional"],
        aalgos=t["aalgos"],
        ealgos=t["ealgos"],
        calgos=t["calgos"],
    )


def template_to_dict(t: Template) -> dict[str, Any]:
    return {
        "id": {"daddr": address_to_xfrm(t.daddr), "spi": t.spi, "proto": t.proto},
        "family": t.family,
        "saddr": address_to_xfrm(t.saddr),
        "reqid": t.reqid,
        "mode": t.mode,
        "share": t.share,
        "optional": t.optional,
        "aalgos": t.aalgos,
        "ealgos": t.ealgos,
        "calgos": t.calgos,
    }


def spd_from_info(info: dict[str, Any], attrs: Sequence[Any]) -> SpdEntry:
    """Build an ``SpdEntry`` from a decoded ``xfrm_userpolicy_info`` dict and attribute slots."""
    values: dict[str, Any] = {}
    extra: list[tuple[int, bytes]] = []
    for slot in attrs:
        kind = attr_type(slot)
        if kind not in _POLICY_MODELED:
            extra.append((kind, attr_payload(slot)))
            continue
        v = slot.value
        if kind == c.XFRMA_TMPL:
            values["templates"] = tuple(template_from_dict(t) for t in v)
        elif kind == c.XFRMA_SEC_CTX:
            values["sec_ctx"] = SecCtx(v["ctx_doi"], v["ctx_alg"], v["ctx_str"])
        elif kind == c.XFRMA_POLICY_TYPE:
            if v["reserved1"] or v["reserved2"]:
                extra.append((kind, attr_payload(slot)))
            else:
                values["ptype"] = v["type"]
        elif kind == c.XFRMA_MARK:
            values["mark"] = Mark(v["v"], v["m"])
        elif kind == c.XFRMA_IF_ID:
            values["if_id"] = v
        elif kind == c.XFRMA_OFFLOAD_DEV:
            values["offload"] = OffloadDev(v["ifindex"] & 0xFFFFFFFF, v["flags"])
    return SpdEntry(
        selector=selector_from_dict(info["sel"]),
        dir=info["dir"],
        priority=info["priority"],
        index=info["index"],
        action=info["action"],
        flags=info["flags"],
        share=info["share"],
        lifetime_cfg=_lft_from(info["lft"]),
        lifetime_cur=_cur_from(info["curlft"]),
        extra_attrs=tuple(extra),
        **values,
    )


def spd_from_msg(msg: Any) -> SpdEntry:
    """``SpdEntry`` from a decoded NEWPOLICY/UPDPOLICY message (dump entry or event)."""
    return spd_from_info(msg, msg["attrs"])


def spd_info_dict(entry: SpdEntry) -> dict[str, Any]:
    """The ``xfrm_userpolicy_info`` member values of an entry."""
    return {
        "sel": selector_to_dict(entry.selector),
        "lft": _lft_to(entry.lifetime_cfg),
        "curlft": _cur_to(entry.lifetime_cur),
        "priority": entry.priority,
        "index": entry.index,
        "dir": entry.dir,
        "action": entry.action,
        "flags": entry.flags,
        "share": entry.share,
    }


def spd_attr_values(entry: SpdEntry) -> list[tuple[int, Any]]:
    """``(type, value)`` for every attribute of a policy, in kernel order."""
    out: list[tuple[int, Any]] = []
    if entry.templates:
        out.append((c.XFRMA_TMPL, [template_to_dict(t) for t in entry.templates]))
    if entry.sec_ctx is not None:
        out.append((c.XFRMA_SEC_CTX, _sec_ctx_value(entry.sec_ctx)))
    if not any(k == c.XFRMA_POLICY_TYPE for k, _ in entry.extra_attrs):
        # Kernels built with CONFIG_XFRM_SUB_POLICY (Debian's) always report it.
        out.append((c.XFRMA_POLICY_TYPE, {"type": entry.ptype, "reserved1": 0, "reserved2": 0}))
    if entry.mark is not None:
        out.append((c.XFRMA_MARK, {"v": entry.mark.value, "m": entry.mark.mask}))
    if entry.if_id is not None:
        out.append((c.XFRMA_IF_ID, entry.if_id))
    if entry.offload is not None:
        out.append(
            (
                c.XFRMA_OFFLOAD_DEV,
                {"ifindex": signed32(entry.offload.ifindex), "flags": entry.offload.flags},
            )
        )
    out.extend(entry.extra_attrs)
    return kernel_order(out, POLICY_RANK)


def spd_to_msg(
    entry: SpdEntry,
    msg_type: int = c.XFRM_MSG_NEWPOLICY,
    flags: int = c.NLM_F_REQUEST | c.NLM_F_ACK,
    seq: int = 0,
    pid: int = 0,
) -> s.xfrm_userpolicy_info:
    """The declarative message for a policy (not yet encoded)."""
    msg = s.xfrm_userpolicy_info()
    _header(msg, msg_type, flags, seq, pid)
    msg.update(spd_info_dict(entry))
    msg["attrs"] = _named(spd_attr_values(entry))
    return msg


def ae_state_from_msg(msg: Any) -> AeState:
    """AeState from a decoded NEWAE message (GETAE reply or AE event): ``codec``'s reference."""
    replay = replay_esn = lifetime = None
    rthr = ethr = None
    mark = None
    for slot in msg["attrs"]:
        kind = attr_type(slot)
        v = slot.value
        if kind == c.XFRMA_REPLAY_VAL:
            replay = ReplayState(v["oseq"], v["seq"], v["bitmap"])
        elif kind == c.XFRMA_REPLAY_ESN_VAL:
            bmp = v["bmp"]
            replay_esn = ReplayStateEsn(
                v["bmp_len"],
                v["oseq"],
                v["seq"],
                v["oseq_hi"],
                v["seq_hi"],
                v["replay_window"],
                struct.unpack(f"={len(bmp) // 4}I", bmp[: len(bmp) // 4 * 4]),
            )
        elif kind == c.XFRMA_LTIME_VAL:
            lifetime = LifetimeCur(**v)
        elif kind == c.XFRMA_REPLAY_THRESH:
            rthr = v
        elif kind == c.XFRMA_ETIMER_THRESH:
            ethr = v
        elif kind == c.XFRMA_MARK:
            mark = Mark(v["v"], v["m"])
    return AeState(replay, replay_esn, lifetime, rthr, ethr, mark)


def policy_id_msg(
    selector: Selector,
    dir: int,
    *,
    index: int = 0,
    mark: Mark | None = None,
    if_id: int | None = None,
    ptype: int = c.XFRM_POLICY_TYPE_MAIN,
) -> s.xfrm_userpolicy_id:
    """An ``xfrm_userpolicy_id`` naming one policy (``codec.encode_policy_id``'s reference)."""
    msg = s.xfrm_userpolicy_id()
    msg["sel"] = selector_to_dict(selector)
    msg["index"] = index
    msg["dir"] = dir
    attrs: list[tuple[str, Any]] = [
        ("XFRMA_POLICY_TYPE", {"type": ptype, "reserved1": 0, "reserved2": 0})
    ]
    if mark is not None:
        attrs.append(("XFRMA_MARK", {"v": mark.value, "m": mark.mask}))
    if if_id is not None:
        attrs.append(("XFRMA_IF_ID", if_id))
    msg["attrs"] = attrs
    return msg


def encode_msg(msg: Any) -> bytes:
    """Encode a declarative message and return its bytes."""
    msg.encode()
    return bytes(msg.data)


def flush_sa_msg(proto: int) -> s.xfrm_usersa_flush:
    """A FLUSHSA request (``codec.encode_flush_sa``'s reference)."""
    msg = s.xfrm_usersa_flush()
    msg["proto"] = proto
    msg["attrs"] = []
    return msg


def flush_policy_msg(ptype: int | None) -> s.xfrm_flushpolicy:
    """A FLUSHPOLICY request (``codec.encode_flush_policy``'s reference)."""
    msg = s.xfrm_flushpolicy()
    msg["attrs"] = (
        []
        if ptype is None
        else [("XFRMA_POLICY_TYPE", {"type": ptype, "reserved1": 0, "reserved2": 0})]
    )
    return msg


def alloc_spi_msg(
    daddr: Any,
    proto: int,
    spi_min: int,
    spi_max: int,
    *,
    saddr: Any = None,
    mode: int = c.XFRM_MODE_TUNNEL,
    reqid: int = 0,
    sa_seq: int = 0,
    mark: Mark | None = None,
    if_id: int | None = None,
) -> s.xfrm_userspi_info:
    """An ALLOCSPI request (``codec.encode_alloc_spi``'s reference)."""
    family = c.AF_INET6 if daddr.version == 6 else c.AF_INET
    info = s.xfrm_usersa_info_struct.zero()
    info["id"] = {"daddr": address_to_xfrm(daddr), "spi": 0, "proto": proto}
    info["saddr"] = address_to_xfrm(saddr) if saddr is not None else bytes(16)
    info["family"] = family
    info["mode"] = mode
    info["reqid"] = reqid
    info["seq"] = sa_seq
    info["sel"]["family"] = family
    msg = s.xfrm_userspi_info()
    msg["info"] = info
    msg["min"] = spi_min
    msg["max"] = spi_max
    attrs: list[tuple[str, Any]] = []
    if mark is not None:
        attrs.append(("XFRMA_MARK", {"v": mark.value, "m": mark.mask}))
    if if_id is not None:
        attrs.append(("XFRMA_IF_ID", if_id))
    msg["attrs"] = attrs
    return msg


def migration_to_dict(m: Migration) -> dict[str, Any]:
    """``xfrm_user_migrate`` member values of a migration."""
    return {
        "old_daddr": address_to_xfrm(m.old_daddr),
        "old_saddr": address_to_xfrm(m.old_saddr),
        "new_daddr": address_to_xfrm(m.new_daddr),
        "new_saddr": address_to_xfrm(m.new_saddr),
        "proto": m.proto,
        "mode": m.mode,
        "reserved": m.reserved,
        "reqid": m.reqid,
        "old_family": c.AF_INET6 if m.old_daddr.version == 6 else c.AF_INET,
        "new_family": c.AF_INET6 if m.new_daddr.version == 6 else c.AF_INET,
    }


def migration_from_dict(d: dict[str, Any]) -> Migration:
    """Inverse of :func:`migration_to_dict`."""
    return Migration(
        old_daddr=address_from_xfrm(d["old_family"], d["old_daddr"]),
        old_saddr=address_from_xfrm(d["old_family"], d["old_saddr"]),
        new_daddr=address_from_xfrm(d["new_family"], d["new_daddr"]),
        new_saddr=address_from_xfrm(d["new_family"], d["new_saddr"]),
        proto=d["proto"],
        mode=d["mode"],
        reqid=d["reqid"],
        reserved=d["reserved"],
    )


def migrate_msg(
    selector: Selector,
    dir: int,
    migrations: Sequence[Migration],
    *,
    kmaddress: KmAddress | None = None,
    ptype: int = c.XFRM_POLICY_TYPE_MAIN,
) -> s.xfrm_migrate_msg:
    """A MIGRATE request (``codec_migrate.encode_migrate``'s reference)."""
    msg = s.xfrm_migrate_msg()
    msg["sel"] = selector_to_dict(selector)
    msg["index"] = 0
    msg["dir"] = dir
    attrs: list[tuple[str, Any]] = [
        ("XFRMA_POLICY_TYPE", {"type": ptype, "reserved1": 0, "reserved2": 0}),
        ("XFRMA_MIGRATE", [migration_to_dict(m) for m in migrations]),
    ]
    if kmaddress is not None:
        local = kmaddress.local
        attrs.append(
            (
                "XFRMA_KMADDRESS",
                {
                    "local": address_to_xfrm(local),
                    "remote": address_to_xfrm(kmaddress.remote),
                    "reserved": kmaddress.reserved,
                    "family": c.AF_INET6 if local.version == 6 else c.AF_INET,
                },
            )
        )
    msg["attrs"] = attrs
    return msg


def encode_request(msg: Any, msg_type: int, seq: int) -> bytes:
    """A declarative request's bytes, with the header ``XfrmSocket`` sends (REQUEST|ACK)."""
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = c.NLM_F_REQUEST | c.NLM_F_ACK
    msg["header"]["sequence_number"] = seq
    return encode_msg(msg)


# ---------------------------------------------------------------------------
# For the tests of appliance.xfrm.codec


def flat_struct(cls: type[s.CStruct]) -> tuple[struct.Struct, list[tuple[str, ...]], list[bool]]:
    """A native-order ``struct.Struct`` for a CStruct, its member paths and big-endian marks.

    The tests compare ``appliance.xfrm.codec``'s layouts with it, so the codec
    cannot drift from the declared ``fields``.  Big-endian members are packed
    native after a byte swap.
    """
    fmt = ["="]
    paths: list[tuple[str, ...]] = []
    swapped: list[bool] = []

    def walk(kind: type[s.CStruct], prefix: tuple[str, ...]) -> None:
        for name, f in kind.fields:
            if isinstance(f, type):
                walk(f, (*prefix, name))
            elif name.startswith("_"):
                fmt.append(f)
            else:
                fmt.append(f.lstrip("<>!="))
                paths.append((*prefix, name))
                swapped.append(f.startswith(">"))

    walk(cls, ())
    return struct.Struct("".join(fmt)), paths, swapped
