"""Lossless conversion between XFRM netlink messages and ``appliance.model``.

Two directions, two speeds:

* ``sad_from_msg`` / ``spd_from_msg`` read a decoded pyroute2 message
  (``structs.xfrm_usersa_info`` / ``structs.xfrm_userpolicy_info``).
* ``sad_to_msg`` / ``spd_to_msg`` build such a message: the declarative,
  reference path.
* ``encode_sa`` / ``encode_policy`` pack the same bytes directly with
  ``struct``; batches of thousands of entries use them.  The unit tests check
  that both paths give identical bytes, so the declarative classes stay the
  source of truth.

Attributes are written in the order the kernel writes them in a dump
(``copy_to_user_state_extra`` / ``dump_one_policy``), so a dumped entry
converted to the model and back gives the kernel's own bytes.  Attributes the
model has no field for travel in ``extra_attrs`` as raw ``(type, payload)``
and are put back at their kernel position.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from appliance.model import (
    AeadAlgorithm,
    Algorithm,
    AuthTruncAlgorithm,
    Encap,
    Key,
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
from appliance.xfrm import structs as s

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
_SA_RANK = {t: i for i, t in enumerate(SA_ATTR_ORDER)}
_POLICY_RANK = {t: i for i, t in enumerate(POLICY_ATTR_ORDER)}

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


def _signed32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "surrogateescape")


def _name_bytes(name: str) -> bytes:
    return name.encode("ascii", "surrogateescape")


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
        "ifindex": _signed32(sel.ifindex),
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


def _order(pairs: Iterable[tuple[int, Any]], rank: dict[int, int]) -> list[tuple[int, Any]]:
    # Known types at the kernel's position, unknown ones after, by type number.
    return sorted(pairs, key=lambda p: rank.get(p[0], 1000 + p[0]))


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
                _name(v["alg_name"]), v["alg_key_len"], v["alg_icv_len"], Key(v["alg_key"])
            )
        elif kind == c.XFRMA_ALG_AUTH_TRUNC:
            values["auth_trunc"] = AuthTruncAlgorithm(
                _name(v["alg_name"]), v["alg_key_len"], v["alg_trunc_len"], Key(v["alg_key"])
            )
        elif kind in (c.XFRMA_ALG_AUTH, c.XFRMA_ALG_CRYPT, c.XFRMA_ALG_COMP):
            field = {c.XFRMA_ALG_AUTH: "auth", c.XFRMA_ALG_CRYPT: "crypt"}.get(kind, "comp")
            values[field] = Algorithm(_name(v["alg_name"]), v["alg_key_len"], Key(v["alg_key"]))
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
                    "alg_name": _name_bytes(a.name),
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
                        "alg_name": _name_bytes(alg.name),
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
                    "alg_name": _name_bytes(t.name),
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
                {"ifindex": _signed32(entry.offload.ifindex), "flags": entry.offload.flags},
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
    return _order(out, _SA_RANK)


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
    ptype = getattr(entry, "ptype", None)
    if ptype is not None and not any(k == c.XFRMA_POLICY_TYPE for k, _ in entry.extra_attrs):
        # Kernels built with CONFIG_XFRM_SUB_POLICY (Debian's) always report it.
        out.append((c.XFRMA_POLICY_TYPE, {"type": ptype, "reserved1": 0, "reserved2": 0}))
    if entry.mark is not None:
        out.append((c.XFRMA_MARK, {"v": entry.mark.value, "m": entry.mark.mask}))
    if entry.if_id is not None:
        out.append((c.XFRMA_IF_ID, entry.if_id))
    if entry.offload is not None:
        out.append(
            (
                c.XFRMA_OFFLOAD_DEV,
                {"ifindex": _signed32(entry.offload.ifindex), "flags": entry.offload.flags},
            )
        )
    out.extend(entry.extra_attrs)
    return _order(out, _POLICY_RANK)


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


# ---------------------------------------------------------------------------
# Fast path: the same bytes, packed with struct


def flat_struct(cls: type[s.CStruct]) -> tuple[struct.Struct, list[tuple[str, ...]], list[bool]]:
    """A native-order ``struct.Struct`` for a CStruct, its member paths and big-endian marks.

    Derived from the declarative ``fields`` so the fast encoder cannot drift
    from them.  Big-endian members are packed native after a byte swap.
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


_NLMSGHDR = struct.Struct("=IHHII")
_NLAHDR = struct.Struct("=HH")
_USERSA_INFO = flat_struct(s.xfrm_usersa_info_struct)[0]
_USERPOLICY_INFO = flat_struct(s.xfrm_userpolicy_info_struct)[0]
_TMPL = flat_struct(s.xfrm_user_tmpl)[0]
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
_U8 = struct.Struct("=B")
_ALGO = struct.Struct("=64sI")
_ALGO2 = struct.Struct("=64sII")
_ENCAP = struct.Struct("=HHH2x16s")
_MARK = struct.Struct("=II")
_REPLAY = struct.Struct("=III")
_ESN = struct.Struct("=IIIIII")
_OFFLOAD = struct.Struct("=iB3x")
_SECCTX = struct.Struct("=HHBBH")
_PTYPE = struct.Struct("=Bx H B x".replace(" ", ""))
_CUR = struct.Struct("=QQQQ")
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


def _swap16(v: int) -> int:
    return ((v & 0xFF) << 8) | (v >> 8)


def _swap32(v: int) -> int:
    return int.from_bytes(v.to_bytes(4, "little"), "big")


def _sel_values(sel: Selector) -> tuple[Any, ...]:
    return (
        address_to_xfrm(sel.daddr),
        address_to_xfrm(sel.saddr),
        sel.dport and _swap16(sel.dport),  # mostly 0: no call
        sel.dport_mask and _swap16(sel.dport_mask),
        sel.sport and _swap16(sel.sport),
        sel.sport_mask and _swap16(sel.sport_mask),
        sel.family,
        sel.prefixlen_d,
        sel.prefixlen_s,
        sel.proto,
        _signed32(sel.ifindex),
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


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _NLAHDR.pack(length, kind) + payload + _PAD[length & 3]


def _pack_attr(kind: int, value: Any) -> bytes:
    return _nla(kind, _ATTR_PACKERS[kind](value) if not isinstance(value, bytes) else value)


def _pack_algo(v: dict[str, Any]) -> bytes:
    key: bytes = v["alg_key"]
    return _ALGO.pack(v["alg_name"], v["alg_key_len"]) + key


def _pack_algo2(second: str) -> Callable[[dict[str, Any]], bytes]:
    def pack(v: dict[str, Any]) -> bytes:
        key: bytes = v["alg_key"]
        return _ALGO2.pack(v["alg_name"], v["alg_key_len"], v[second]) + key

    return pack


def _pack_tmpls(v: list[dict[str, Any]]) -> bytes:
    out = []
    for t in v:
        out.append(
            _TMPL.pack(
                t["id"]["daddr"],
                _swap32(t["id"]["spi"]),
                t["id"]["proto"],
                t["family"],
                t["saddr"],
                t["reqid"],
                t["mode"],
                t["share"],
                t["optional"],
                t["aalgos"],
                t["ealgos"],
                t["calgos"],
            )
        )
    return b"".join(out)


_ATTR_PACKERS: dict[int, Callable[[Any], bytes]] = {
    c.XFRMA_SA_EXTRA_FLAGS: _U32.pack,
    c.XFRMA_COADDR: lambda v: v["addr"],
    c.XFRMA_LASTUSED: _U64.pack,
    c.XFRMA_ALG_AEAD: _pack_algo2("alg_icv_len"),
    c.XFRMA_ALG_AUTH: _pack_algo,
    c.XFRMA_ALG_CRYPT: _pack_algo,
    c.XFRMA_ALG_COMP: _pack_algo,
    c.XFRMA_ALG_AUTH_TRUNC: _pack_algo2("alg_trunc_len"),
    c.XFRMA_ENCAP: lambda v: _ENCAP.pack(
        v["encap_type"], _swap16(v["encap_sport"]), _swap16(v["encap_dport"]), v["encap_oa"]
    ),
    c.XFRMA_TFCPAD: _U32.pack,
    c.XFRMA_MARK: lambda v: _MARK.pack(v["v"], v["m"]),
    c.XFRMA_SET_MARK: _U32.pack,
    c.XFRMA_SET_MARK_MASK: _U32.pack,
    c.XFRMA_REPLAY_ESN_VAL: lambda v: (
        _ESN.pack(v["bmp_len"], v["oseq"], v["seq"], v["oseq_hi"], v["seq_hi"], v["replay_window"])
        + v["bmp"]
    ),
    c.XFRMA_REPLAY_VAL: lambda v: _REPLAY.pack(v["oseq"], v["seq"], v["bitmap"]),
    c.XFRMA_OFFLOAD_DEV: lambda v: _OFFLOAD.pack(v["ifindex"], v["flags"]),
    c.XFRMA_IF_ID: _U32.pack,
    c.XFRMA_SEC_CTX: lambda v: (
        _SECCTX.pack(v["len"], v["exttype"], v["ctx_alg"], v["ctx_doi"], v["ctx_len"])
        + v["ctx_str"]
    ),
    c.XFRMA_SA_DIR: _U8.pack,
    c.XFRMA_LTIME_VAL: lambda v: _CUR.pack(v["bytes"], v["packets"], v["add_time"], v["use_time"]),
    c.XFRMA_REPLAY_THRESH: _U32.pack,
    c.XFRMA_ETIMER_THRESH: _U32.pack,
    c.XFRMA_TMPL: _pack_tmpls,
    c.XFRMA_POLICY_TYPE: lambda v: _PTYPE.pack(v["type"], v["reserved1"], v["reserved2"]),
}


def pack_usersa_info(entry: SadEntry) -> bytes:
    """The 224-byte ``xfrm_usersa_info`` of an entry."""
    st = entry.stats
    return _USERSA_INFO.pack(
        *_sel_values(entry.selector),
        address_to_xfrm(entry.daddr),
        _swap32(entry.spi),
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

    The same bytes as ``sad_attr_values`` through ``_pack_attr``, without the
    intermediate dicts: this runs once per SA of a restore.
    """
    out: list[bytes] = []
    add = out.append
    if entry.extra_flags:
        add(_nla(c.XFRMA_SA_EXTRA_FLAGS, _U32.pack(entry.extra_flags)))
    if entry.coaddr is not None:
        add(_nla(c.XFRMA_COADDR, address_to_xfrm(entry.coaddr)))
    if entry.lastused is not None:
        add(_nla(c.XFRMA_LASTUSED, _U64.pack(entry.lastused)))
    a = entry.aead
    if a is not None:
        add(
            _nla(
                c.XFRMA_ALG_AEAD,
                _ALGO2.pack(_name_bytes(a.name), a.key_bits, a.icv_bits) + a.key.data,
            )
        )
    if entry.auth is not None:
        u = entry.auth
        add(_nla(c.XFRMA_ALG_AUTH, _ALGO.pack(_name_bytes(u.name), u.key_bits) + u.key.data))
    if entry.auth_trunc is not None:
        t = entry.auth_trunc
        head = _ALGO2.pack(_name_bytes(t.name), t.key_bits, t.trunc_bits)
        add(_nla(c.XFRMA_ALG_AUTH_TRUNC, head + t.key.data))
    for kind, alg in ((c.XFRMA_ALG_CRYPT, entry.crypt), (c.XFRMA_ALG_COMP, entry.comp)):
        if alg is not None:
            add(_nla(kind, _ALGO.pack(_name_bytes(alg.name), alg.key_bits) + alg.key.data))
    e = entry.encap
    if e is not None:
        add(
            _nla(
                c.XFRMA_ENCAP,
                _ENCAP.pack(e.type, _swap16(e.sport), _swap16(e.dport), address_to_xfrm(e.oa)),
            )
        )
    if entry.tfcpad is not None:
        add(_nla(c.XFRMA_TFCPAD, _U32.pack(entry.tfcpad)))
    if entry.mark is not None:
        add(_nla(c.XFRMA_MARK, _MARK.pack(entry.mark.value, entry.mark.mask)))
    if entry.output_mark is not None:
        add(_nla(c.XFRMA_SET_MARK, _U32.pack(entry.output_mark.value)))
        add(_nla(c.XFRMA_SET_MARK_MASK, _U32.pack(entry.output_mark.mask)))
    r = entry.replay_esn
    if r is not None:
        esn = _ESN.pack(r.bmp_len, r.oseq, r.seq, r.oseq_hi, r.seq_hi, r.replay_window)
        add(_nla(c.XFRMA_REPLAY_ESN_VAL, esn + struct.pack(f"={len(r.bmp)}I", *r.bmp)))
    p = entry.replay
    if p is not None:
        add(_nla(c.XFRMA_REPLAY_VAL, _REPLAY.pack(p.oseq, p.seq, p.bitmap)))
    if entry.offload is not None:
        off = entry.offload
        add(_nla(c.XFRMA_OFFLOAD_DEV, _OFFLOAD.pack(_signed32(off.ifindex), off.flags)))
    if entry.if_id is not None:
        add(_nla(c.XFRMA_IF_ID, _U32.pack(entry.if_id)))
    if entry.sec_ctx is not None:
        add(_pack_attr(c.XFRMA_SEC_CTX, _sec_ctx_value(entry.sec_ctx)))
    if entry.sa_dir is not None:
        add(_nla(c.XFRMA_SA_DIR, _U8.pack(entry.sa_dir)))
    if with_lifetime_cur:
        add(_nla(c.XFRMA_LTIME_VAL, _CUR.pack(*_cur_values(entry.lifetime_cur))))
    if entry.replay_thresh is not None:
        add(_nla(c.XFRMA_REPLAY_THRESH, _U32.pack(entry.replay_thresh)))
    if entry.etimer_thresh is not None:
        add(_nla(c.XFRMA_ETIMER_THRESH, _U32.pack(entry.etimer_thresh)))
    if entry.extra_attrs:
        return _with_extras(out, entry.extra_attrs, _SA_RANK)
    return out


def _with_extras(
    attrs: list[bytes], extras: Iterable[tuple[int, bytes]], rank: dict[int, int]
) -> list[bytes]:
    """``attrs`` (encoded, in kernel order) with raw extras put at their kernel position."""
    pairs = [(_NLAHDR.unpack_from(a)[1], a) for a in attrs]
    pairs += [(kind, _nla(kind, payload)) for kind, payload in extras]
    return [a for _, a in _order(pairs, rank)]


def encode_sa(
    entry: SadEntry,
    msg_type: int = c.XFRM_MSG_NEWSA,
    flags: int = c.NLM_F_REQUEST | c.NLM_F_ACK,
    seq: int = 0,
    pid: int = 0,
    *,
    with_lifetime_cur: bool = False,
) -> bytes:
    """Bytes of a NEWSA/UPDSA message, identical to ``sad_to_msg(...).encode()``."""
    payload = pack_usersa_info(entry) + b"".join(_sa_attrs(entry, with_lifetime_cur))
    return _NLMSGHDR.pack(16 + len(payload), msg_type, flags, seq, pid) + payload


def pack_userpolicy_info(entry: SpdEntry) -> bytes:
    """The 168-byte ``xfrm_userpolicy_info`` of a policy."""
    return _USERPOLICY_INFO.pack(
        *_sel_values(entry.selector),
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
            _nla(
                c.XFRMA_TMPL,
                b"".join(
                    _TMPL.pack(
                        address_to_xfrm(t.daddr),
                        _swap32(t.spi),
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
        out.append(_pack_attr(c.XFRMA_SEC_CTX, _sec_ctx_value(entry.sec_ctx)))
    ptype = getattr(entry, "ptype", None)
    if ptype is not None and not any(k == c.XFRMA_POLICY_TYPE for k, _ in entry.extra_attrs):
        out.append(_nla(c.XFRMA_POLICY_TYPE, _PTYPE.pack(ptype, 0, 0)))
    if entry.mark is not None:
        out.append(_nla(c.XFRMA_MARK, _MARK.pack(entry.mark.value, entry.mark.mask)))
    if entry.if_id is not None:
        out.append(_nla(c.XFRMA_IF_ID, _U32.pack(entry.if_id)))
    if entry.offload is not None:
        off = entry.offload
        out.append(_nla(c.XFRMA_OFFLOAD_DEV, _OFFLOAD.pack(_signed32(off.ifindex), off.flags)))
    if entry.extra_attrs:
        return _with_extras(out, entry.extra_attrs, _POLICY_RANK)
    return out


def encode_policy(
    entry: SpdEntry,
    msg_type: int = c.XFRM_MSG_NEWPOLICY,
    flags: int = c.NLM_F_REQUEST | c.NLM_F_ACK,
    seq: int = 0,
    pid: int = 0,
) -> bytes:
    """Bytes of a NEWPOLICY/UPDPOLICY message, identical to ``spd_to_msg(...).encode()``."""
    payload = pack_userpolicy_info(entry) + b"".join(_policy_attrs(entry))
    return _NLMSGHDR.pack(16 + len(payload), msg_type, flags, seq, pid) + payload


def encode_msg(msg: Any) -> bytes:
    """Encode a declarative message and return its bytes."""
    msg.encode()
    return bytes(msg.data)


# ---------------------------------------------------------------------------
# Fast path for decoding: dumps of tens of thousands of SAs


def _sel_from_values(v: tuple[Any, ...]) -> Selector:
    family = v[6]
    return Selector(
        daddr=address_from_xfrm(family, v[0]),
        saddr=address_from_xfrm(family, v[1]),
        dport=_swap16(v[2]),
        dport_mask=_swap16(v[3]),
        sport=_swap16(v[4]),
        sport_mask=_swap16(v[5]),
        family=family,
        prefixlen_d=v[7],
        prefixlen_s=v[8],
        proto=v[9],
        ifindex=v[10] & 0xFFFFFFFF,
        user=v[11],
    )


def _iter_attrs(data: bytes, offset: int, end: int) -> list[tuple[int, bytes]]:
    out = []
    while offset + 4 <= end:
        length, kind = _NLAHDR.unpack_from(data, offset)
        if length < 4 or offset + length > end:
            raise ValueError(f"malformed attribute at offset {offset} (length {length})")
        out.append((kind & 0x3FFF, data[offset + 4 : offset + length]))
        offset += (length + 3) & ~3
    return out


def _algo_name(raw: bytes) -> str:
    return _name(raw[:64])


def sad_from_bytes(data: bytes) -> SadEntry:
    """``SadEntry`` from one whole NEWSA/UPDSA message; equals ``sad_from_msg`` of its decoding."""
    length = _NLMSGHDR.unpack_from(data, 0)[0]
    v = _USERSA_INFO.unpack_from(data, 16)
    family = v[33]
    values: dict[str, Any] = {}
    extra: list[tuple[int, bytes]] = []
    set_mark: int | None = None
    set_mark_mask: int | None = None
    for kind, p in _iter_attrs(data, 16 + _USERSA_INFO.size, length):
        try:
            if kind == c.XFRMA_ALG_AEAD:
                name, bits, icv = _ALGO2.unpack_from(p)
                values["aead"] = AeadAlgorithm(_name(name), bits, icv, Key(p[72:]))
            elif kind == c.XFRMA_ALG_AUTH_TRUNC:
                name, bits, trunc = _ALGO2.unpack_from(p)
                values["auth_trunc"] = AuthTruncAlgorithm(_name(name), bits, trunc, Key(p[72:]))
            elif kind in (c.XFRMA_ALG_AUTH, c.XFRMA_ALG_CRYPT, c.XFRMA_ALG_COMP):
                name, bits = _ALGO.unpack_from(p)
                field = {c.XFRMA_ALG_AUTH: "auth", c.XFRMA_ALG_CRYPT: "crypt"}.get(kind, "comp")
                values[field] = Algorithm(_name(name), bits, Key(p[68:]))
            elif kind == c.XFRMA_REPLAY_VAL and len(p) == 12:
                values["replay"] = ReplayState(*_REPLAY.unpack(p))
            elif kind == c.XFRMA_REPLAY_ESN_VAL:
                bmp_len, oseq, seq, oseq_hi, seq_hi, window = _ESN.unpack_from(p)
                bmp = p[24:]
                values["replay_esn"] = ReplayStateEsn(
                    bmp_len,
                    oseq,
                    seq,
                    oseq_hi,
                    seq_hi,
                    window,
                    struct.unpack(f"={len(bmp) // 4}I", bmp[: len(bmp) // 4 * 4]),
                )
            elif kind == c.XFRMA_SA_EXTRA_FLAGS and len(p) == 4:
                values["extra_flags"] = _U32.unpack(p)[0]
            elif kind == c.XFRMA_COADDR and len(p) == 16:
                values["coaddr"] = address_from_xfrm(family, p)
            elif kind == c.XFRMA_LASTUSED and len(p) == 8:
                values["lastused"] = _U64.unpack(p)[0]
            elif kind == c.XFRMA_ENCAP and len(p) == 24:
                etype, sport, dport, oa = _ENCAP.unpack(p)
                values["encap"] = Encap(
                    etype, _swap16(sport), _swap16(dport), address_from_xfrm(family, oa)
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
        spi=_swap32(v[13]),
        proto=v[14],
        saddr=address_from_xfrm(family, v[15]),
        family=family,
        mode=v[34],
        reqid=v[32],
        seq=v[31],
        replay_window=v[35],
        flags=v[36],
        selector=_sel_from_values(v[0:12]),
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
        spi=_swap32(v[1]),
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
    """``SpdEntry`` from one whole NEWPOLICY/UPDPOLICY message; equals ``spd_from_msg``."""
    length = _NLMSGHDR.unpack_from(data, 0)[0]
    v = _USERPOLICY_INFO.unpack_from(data, 16)
    values: dict[str, Any] = {}
    extra: list[tuple[int, bytes]] = []
    for kind, p in _iter_attrs(data, 16 + _USERPOLICY_INFO.size, length):
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
        selector=_sel_from_values(v[0:12]),
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
