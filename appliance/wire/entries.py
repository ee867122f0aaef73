"""SAD / SPD entries and replay updates <-> model objects (protocol.md 5.1.9-5.1.11).

The entry payloads carry a fixed part and a list of attributes.  Attribute
values are big-endian structures defined in protocol.md, not the kernel's
host-order structs, so any implementation can read them.  Every field of
``appliance.model.SadEntry`` / ``SpdEntry`` has a place, so
``payload_to_sad(sad_to_payload(e)) == e`` for every entry.

An attribute whose value equals the model default is left out (absence
decodes to that default); ``None`` model fields are simply absent.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import struct
from collections.abc import Callable
from typing import Any, TypeVar

from appliance import model as m
from appliance.wire._errors import LocalWireError, RemoteWireError
from appliance.wire.constants import Status
from appliance.wire.payloads import (
    Attribute,
    ReplayStatePayload,
    SadEntryPayload,
    SpdEntryPayload,
    TrafficSelector,
)


class AttributeType(enum.IntEnum):
    """Attribute types of SAD / SPD entry payloads (protocol.md 5.1.10)."""

    SELECTOR = 1
    LIFETIME_CFG = 2
    LIFETIME_CUR = 3
    STATS = 4
    EXTRA_FLAGS = 6
    ALG_CRYPT = 7
    ALG_AUTH = 8
    ALG_AUTH_TRUNC = 9
    ALG_AEAD = 10
    ALG_COMP = 11
    REPLAY = 12
    REPLAY_ESN = 13
    ENCAP = 14
    COADDR = 15
    MARK = 16
    OUTPUT_MARK = 17
    IF_ID = 18
    TFCPAD = 19
    REPLAY_THRESH = 20
    ETIMER_THRESH = 21
    SA_DIR = 22
    LASTUSED = 23
    OFFLOAD = 24
    SEC_CTX = 25
    TEMPLATE = 26
    RAW_NETLINK = 127


A = AttributeType
_T = TypeVar("_T")

_LIFETIME_CFG = struct.Struct("!8Q")
_LIFETIME_CUR = struct.Struct("!4Q")
_STATS = struct.Struct("!3I")
_U8 = struct.Struct("!B")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_MARK = struct.Struct("!2I")
_REPLAY = struct.Struct("!3I")
_REPLAY_ESN_HEAD = struct.Struct("!6I")
_ENCAP_HEAD = struct.Struct("!3H")
_OFFLOAD = struct.Struct("!IB")
_SEC_CTX_HEAD = struct.Struct("!2B")
_SELECTOR = struct.Struct("!16s16sHHHHHBBB3xII")
_TEMPLATE = struct.Struct("!16sIBBBBH2x16sIIII")
_ALG_HEAD = struct.Struct("!IIB")


# -- helpers -----------------------------------------------------------------
def _unpack(fmt: struct.Struct, value: bytes, what: str) -> tuple[Any, ...]:
    if len(value) != fmt.size:
        raise RemoteWireError(f"{what} attribute must be {fmt.size} bytes, got {len(value)}")
    return fmt.unpack(value)


def _model(build: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Build a model object; its validation errors become RemoteWireError (MALFORMED)."""
    try:
        return build(*args, **kwargs)
    except m.ModelError as error:
        raise RemoteWireError(f"entry does not make a valid model object: {error}") from None


def _pack_address(address: m.Address) -> bytes:
    """A stand-alone address: version byte (4 or 6) then 4 or 16 bytes."""
    return bytes([address.version]) + address.packed


def _unpack_address(value: bytes, what: str) -> m.Address:
    if len(value) == 5 and value[0] == 4:
        return ipaddress.IPv4Address(value[1:])
    if len(value) == 17 and value[0] == 6:
        return ipaddress.IPv6Address(value[1:])
    raise RemoteWireError(f"{what} attribute is not a version byte plus 4 or 16 address bytes")


def _xfrm_address(family: int, raw: bytes) -> m.Address:
    return m.address_from_xfrm(family, raw)


def _pack_selector(sel: m.Selector) -> bytes:
    return _SELECTOR.pack(
        m.address_to_xfrm(sel.daddr),
        m.address_to_xfrm(sel.saddr),
        sel.dport,
        sel.dport_mask,
        sel.sport,
        sel.sport_mask,
        sel.family,
        sel.prefixlen_d,
        sel.prefixlen_s,
        sel.proto,
        sel.ifindex,
        sel.user,
    )


def _unpack_selector(value: bytes) -> m.Selector:
    daddr, saddr, dport, dmask, sport, smask, family, pd, ps, proto, ifindex, user = _unpack(
        _SELECTOR, value, "selector"
    )
    return _model(
        m.Selector,
        daddr=_xfrm_address(family, daddr),
        saddr=_xfrm_address(family, saddr),
        dport=dport,
        dport_mask=dmask,
        sport=sport,
        sport_mask=smask,
        family=family,
        prefixlen_d=pd,
        prefixlen_s=ps,
        proto=proto,
        ifindex=ifindex,
        user=user,
    )


def _pack_algorithm(name: str, key_bits: int, param: int, key: m.KeyMaterial) -> bytes:
    encoded = name.encode("utf-8")
    if len(encoded) > 255:
        raise LocalWireError(f"algorithm name {name!r} is longer than 255 bytes")
    return _ALG_HEAD.pack(key_bits, param, len(encoded)) + encoded + key.data


def _unpack_algorithm(value: bytes, what: str) -> tuple[str, int, int, m.KeyMaterial]:
    if len(value) < _ALG_HEAD.size:
        raise RemoteWireError(f"{what} attribute is truncated")
    key_bits, param, name_length = _ALG_HEAD.unpack_from(value)
    end = _ALG_HEAD.size + name_length
    if len(value) < end:
        raise RemoteWireError(f"{what} attribute: the algorithm name runs past the attribute")
    try:
        name = value[_ALG_HEAD.size : end].decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteWireError(f"{what} attribute: the algorithm name is not UTF-8") from None
    return name, key_bits, param, m.KeyMaterial(value[end:])


def _pack_lifetimes(entry: m.SadEntry | m.SpdEntry, out: list[Attribute]) -> None:
    if entry.lifetime_cfg != m.LifetimeCfg():
        out.append(
            Attribute(A.LIFETIME_CFG, _LIFETIME_CFG.pack(*dataclasses.astuple(entry.lifetime_cfg)))
        )
    if entry.lifetime_cur != m.LifetimeCur():
        out.append(
            Attribute(A.LIFETIME_CUR, _LIFETIME_CUR.pack(*dataclasses.astuple(entry.lifetime_cur)))
        )


def _pack_common(entry: m.SadEntry | m.SpdEntry, out: list[Attribute]) -> None:
    if entry.mark is not None:
        out.append(Attribute(A.MARK, _MARK.pack(entry.mark.value, entry.mark.mask)))
    if entry.if_id is not None:
        out.append(Attribute(A.IF_ID, _U32.pack(entry.if_id)))
    if entry.offload is not None:
        out.append(Attribute(A.OFFLOAD, _OFFLOAD.pack(entry.offload.ifindex, entry.offload.flags)))
    if entry.sec_ctx is not None:
        ctx = entry.sec_ctx
        out.append(Attribute(A.SEC_CTX, _SEC_CTX_HEAD.pack(ctx.ctx_doi, ctx.ctx_alg) + ctx.context))
    for nla_type, payload in entry.extra_attrs:
        out.append(Attribute(A.RAW_NETLINK, struct.pack("!H", nla_type) + payload))


def _decode_common(attr: Attribute, fields: dict[str, Any], raw: list[tuple[int, bytes]]) -> bool:
    """Fill ``fields`` from an attribute SAD and SPD share; False if it is not one of them."""
    value = attr.value
    if attr.type == A.LIFETIME_CFG:
        cfg = _unpack(_LIFETIME_CFG, value, "lifetime-cfg")
        _set_once(fields, "lifetime_cfg", _model(m.LifetimeCfg, *cfg), attr.type)
    elif attr.type == A.LIFETIME_CUR:
        cur = _unpack(_LIFETIME_CUR, value, "lifetime-cur")
        _set_once(fields, "lifetime_cur", _model(m.LifetimeCur, *cur), attr.type)
    elif attr.type == A.MARK:
        mark = _unpack(_MARK, value, "mark")
        _set_once(fields, "mark", m.Mark(*mark), attr.type)
    elif attr.type == A.IF_ID:
        _set_once(fields, "if_id", _unpack(_U32, value, "if-id")[0], attr.type)
    elif attr.type == A.OFFLOAD:
        offload = _unpack(_OFFLOAD, value, "offload")
        _set_once(fields, "offload", m.OffloadDev(*offload), attr.type)
    elif attr.type == A.SEC_CTX:
        if len(value) < _SEC_CTX_HEAD.size:
            raise RemoteWireError("sec-ctx attribute is truncated")
        doi, alg = _SEC_CTX_HEAD.unpack_from(value)
        _set_once(fields, "sec_ctx", m.SecCtx(doi, alg, value[_SEC_CTX_HEAD.size :]), attr.type)
    elif attr.type == A.RAW_NETLINK:
        if len(value) < 2:
            raise RemoteWireError("raw-netlink attribute is truncated")
        raw.append((int.from_bytes(value[:2], "big"), value[2:]))
        return True
    else:
        return False
    return True


def _set_once(fields: dict[str, Any], name: str, value: Any, attr_type: int) -> None:
    if name in fields:
        raise RemoteWireError(f"attribute {AttributeType(attr_type).name} appears twice")
    fields[name] = value


# -- SAD -----------------------------------------------------------------------
def sad_to_payload(entry: m.SadEntry) -> SadEntryPayload:
    """The SAD Entry payload for one XFRM state (lossless)."""
    out: list[Attribute] = [Attribute(A.SELECTOR, _pack_selector(entry.selector))]
    _pack_lifetimes(entry, out)
    if entry.stats != m.Stats():
        out.append(Attribute(A.STATS, _STATS.pack(*dataclasses.astuple(entry.stats))))
    if entry.extra_flags:
        out.append(Attribute(A.EXTRA_FLAGS, _U32.pack(entry.extra_flags)))
    for attr_type, algo in (
        (A.ALG_CRYPT, entry.crypt),
        (A.ALG_AUTH, entry.auth),
        (A.ALG_COMP, entry.comp),
    ):
        if algo is not None:
            out.append(Attribute(attr_type, _pack_algorithm(algo.name, algo.key_bits, 0, algo.key)))
    if entry.auth_trunc is not None:
        a = entry.auth_trunc
        out.append(
            Attribute(A.ALG_AUTH_TRUNC, _pack_algorithm(a.name, a.key_bits, a.trunc_bits, a.key))
        )
    if entry.aead is not None:
        e = entry.aead
        out.append(Attribute(A.ALG_AEAD, _pack_algorithm(e.name, e.key_bits, e.icv_bits, e.key)))
    if entry.replay is not None:
        r = entry.replay
        out.append(Attribute(A.REPLAY, _REPLAY.pack(r.oseq, r.seq, r.bitmap)))
    if entry.replay_esn is not None:
        out.append(Attribute(A.REPLAY_ESN, _pack_replay_esn(entry.replay_esn)))
    if entry.encap is not None:
        enc = entry.encap
        out.append(
            Attribute(
                A.ENCAP, _ENCAP_HEAD.pack(enc.type, enc.sport, enc.dport) + _pack_address(enc.oa)
            )
        )
    if entry.coaddr is not None:
        out.append(Attribute(A.COADDR, _pack_address(entry.coaddr)))
    if entry.output_mark is not None:
        om = entry.output_mark
        out.append(Attribute(A.OUTPUT_MARK, _MARK.pack(om.value, om.mask)))
    for attr_type, number in (
        (A.TFCPAD, entry.tfcpad),
        (A.REPLAY_THRESH, entry.replay_thresh),
        (A.ETIMER_THRESH, entry.etimer_thresh),
    ):
        if number is not None:
            out.append(Attribute(attr_type, _U32.pack(number)))
    if entry.sa_dir is not None:
        out.append(Attribute(A.SA_DIR, _U8.pack(entry.sa_dir)))
    if entry.lastused is not None:
        out.append(Attribute(A.LASTUSED, _U64.pack(entry.lastused)))
    _pack_common(entry, out)
    return SadEntryPayload(
        spi=entry.spi,
        protocol=entry.proto,
        family=entry.family,
        mode=entry.mode,
        flags=entry.flags,
        replay_window=entry.replay_window,
        reqid=entry.reqid,
        seq=entry.seq,
        daddr=m.address_to_xfrm(entry.daddr),
        saddr=m.address_to_xfrm(entry.saddr),
        attributes=tuple(out),
    )


def _pack_replay_esn(esn: m.ReplayStateEsn) -> bytes:
    head = _REPLAY_ESN_HEAD.pack(
        esn.bmp_len, esn.oseq, esn.seq, esn.oseq_hi, esn.seq_hi, esn.replay_window
    )
    return head + b"".join(_U32.pack(word) for word in esn.bmp)


def _unpack_replay_esn(value: bytes) -> m.ReplayStateEsn:
    if len(value) < _REPLAY_ESN_HEAD.size or (len(value) - _REPLAY_ESN_HEAD.size) % 4:
        raise RemoteWireError("replay-esn attribute must be 24 bytes plus whole 32-bit words")
    bmp_len, oseq, seq, oseq_hi, seq_hi, window = _REPLAY_ESN_HEAD.unpack_from(value)
    words = tuple(
        _U32.unpack_from(value, offset)[0] for offset in range(_REPLAY_ESN_HEAD.size, len(value), 4)
    )
    return _model(m.ReplayStateEsn, bmp_len, oseq, seq, oseq_hi, seq_hi, window, words)


def payload_to_sad(payload: SadEntryPayload) -> m.SadEntry:
    """The model SadEntry of a SAD Entry payload; RemoteWireError if it is not a valid one."""
    fields: dict[str, Any] = {}
    raw: list[tuple[int, bytes]] = []
    for attr in payload.attributes:
        value = attr.value
        if _decode_common(attr, fields, raw):
            continue
        if attr.type == A.SELECTOR:
            _set_once(fields, "selector", _unpack_selector(value), attr.type)
        elif attr.type == A.STATS:
            stats = _unpack(_STATS, value, "stats")
            _set_once(fields, "stats", m.Stats(*stats), attr.type)
        elif attr.type == A.EXTRA_FLAGS:
            _set_once(fields, "extra_flags", _unpack(_U32, value, "extra-flags")[0], attr.type)
        elif attr.type in (A.ALG_CRYPT, A.ALG_AUTH, A.ALG_COMP):
            name, bits, _, key = _unpack_algorithm(value, AttributeType(attr.type).name)
            field = {A.ALG_CRYPT: "crypt", A.ALG_AUTH: "auth", A.ALG_COMP: "comp"}[A(attr.type)]
            _set_once(fields, field, _model(m.Algorithm, name, bits, key), attr.type)
        elif attr.type == A.ALG_AUTH_TRUNC:
            name, bits, trunc, key = _unpack_algorithm(value, "auth-trunc")
            algo = _model(m.AuthTruncAlgorithm, name, bits, trunc, key)
            _set_once(fields, "auth_trunc", algo, attr.type)
        elif attr.type == A.ALG_AEAD:
            name, bits, icv, key = _unpack_algorithm(value, "aead")
            _set_once(fields, "aead", _model(m.AeadAlgorithm, name, bits, icv, key), attr.type)
        elif attr.type == A.REPLAY:
            replay = _unpack(_REPLAY, value, "replay")
            _set_once(fields, "replay", m.ReplayState(*replay), attr.type)
        elif attr.type == A.REPLAY_ESN:
            _set_once(fields, "replay_esn", _unpack_replay_esn(value), attr.type)
        elif attr.type == A.ENCAP:
            if len(value) < _ENCAP_HEAD.size:
                raise RemoteWireError("encap attribute is truncated")
            etype, sport, dport = _ENCAP_HEAD.unpack_from(value)
            oa = _unpack_address(value[_ENCAP_HEAD.size :], "encap")
            _set_once(fields, "encap", _model(m.Encap, etype, sport, dport, oa), attr.type)
        elif attr.type == A.COADDR:
            _set_once(fields, "coaddr", _unpack_address(value, "coaddr"), attr.type)
        elif attr.type == A.OUTPUT_MARK:
            _set_once(
                fields, "output_mark", m.Mark(*_unpack(_MARK, value, "output-mark")), attr.type
            )
        elif attr.type in (A.TFCPAD, A.REPLAY_THRESH, A.ETIMER_THRESH):
            field = {A.TFCPAD: "tfcpad", A.REPLAY_THRESH: "replay_thresh"}.get(
                A(attr.type), "etimer_thresh"
            )
            _set_once(fields, field, _unpack(_U32, value, field)[0], attr.type)
        elif attr.type == A.SA_DIR:
            _set_once(fields, "sa_dir", _unpack(_U8, value, "sa-dir")[0], attr.type)
        elif attr.type == A.LASTUSED:
            _set_once(fields, "lastused", _unpack(_U64, value, "lastused")[0], attr.type)
        else:
            raise _unknown_attribute(attr.type, "SAD")
    if "selector" not in fields:
        raise RemoteWireError("SAD entry has no SELECTOR attribute")
    family = payload.family
    return _model(
        m.SadEntry,
        daddr=_xfrm_address(family, payload.daddr),
        spi=payload.spi,
        proto=payload.protocol,
        saddr=_xfrm_address(family, payload.saddr),
        family=family,
        mode=payload.mode,
        reqid=payload.reqid,
        seq=payload.seq,
        replay_window=payload.replay_window,
        flags=payload.flags,
        extra_attrs=tuple(raw),
        **fields,
    )


def _unknown_attribute(attr_type: int, where: str) -> RemoteWireError:
    # Dropping an attribute would install a different SA than the one stored; refuse instead.
    return RemoteWireError(
        f"{where} entry attribute type {attr_type} is not supported", Status.UNSUPPORTED
    )


# -- SPD -----------------------------------------------------------------------
def _host_mask(prefixlen: int, bits: int) -> int:
    return (1 << (bits - min(prefixlen, bits))) - 1


def _to_ts(
    address: m.Address, prefixlen: int, port: int, port_mask: int, proto: int
) -> TrafficSelector:
    host = _host_mask(prefixlen, address.max_prefixlen)
    end = type(address)(int(address) | host)
    return TrafficSelector(address, end, proto, port, port | (~port_mask & 0xFFFF))


def _from_ts(
    ts: TrafficSelector, prefixlen: int, port_mask: int, family: int, what: str
) -> tuple[m.Address, int]:
    wanted = 4 if family == m.AF_INET else 6
    if ts.start_address.version != wanted:
        raise RemoteWireError(
            f"{what} is IPv{ts.start_address.version} but the SPD family is {family}"
        )
    host = _host_mask(prefixlen, ts.start_address.max_prefixlen)
    if int(ts.end_address) != int(ts.start_address) | host:
        raise RemoteWireError(
            f"{what} address range is not the prefix /{prefixlen} of its start address",
            Status.UNSUPPORTED,
        )
    if ts.end_port != ts.start_port | (~port_mask & 0xFFFF):
        raise RemoteWireError(f"{what} port range does not match the port mask", Status.UNSUPPORTED)
    return ts.start_address, ts.start_port


def spd_to_payload(entry: m.SpdEntry) -> SpdEntryPayload:
    """The SPD Entry payload (with its TSi/TSr) for one XFRM policy (lossless)."""
    sel = entry.selector
    out: list[Attribute] = []
    _pack_lifetimes(entry, out)
    for tmpl in entry.templates:
        out.append(
            Attribute(
                A.TEMPLATE,
                _TEMPLATE.pack(
                    m.address_to_xfrm(tmpl.daddr),
                    tmpl.spi,
                    tmpl.proto,
                    tmpl.mode,
                    tmpl.share,
                    tmpl.optional,
                    tmpl.family,
                    m.address_to_xfrm(tmpl.saddr),
                    tmpl.reqid,
                    tmpl.aalgos,
                    tmpl.ealgos,
                    tmpl.calgos,
                ),
            )
        )
    _pack_common(entry, out)
    return SpdEntryPayload(
        index=entry.index,
        priority=entry.priority,
        direction=entry.dir,
        action=entry.action,
        flags=entry.flags,
        share=entry.share,
        policy_type=entry.ptype,
        family=sel.family,
        prefixlen_s=sel.prefixlen_s,
        prefixlen_d=sel.prefixlen_d,
        sport_mask=sel.sport_mask,
        dport_mask=sel.dport_mask,
        ifindex=sel.ifindex,
        user=sel.user,
        tsi=_to_ts(sel.saddr, sel.prefixlen_s, sel.sport, sel.sport_mask, sel.proto),
        tsr=_to_ts(sel.daddr, sel.prefixlen_d, sel.dport, sel.dport_mask, sel.proto),
        attributes=tuple(out),
    )


def payload_to_spd(payload: SpdEntryPayload) -> m.SpdEntry:
    """The model SpdEntry of an SPD Entry payload; RemoteWireError if it is not a valid one."""
    if payload.tsi.ip_protocol != payload.tsr.ip_protocol:
        raise RemoteWireError(
            "TSi and TSr of an SPD entry name different IP protocols", Status.UNSUPPORTED
        )
    saddr, sport = _from_ts(
        payload.tsi, payload.prefixlen_s, payload.sport_mask, payload.family, "TSi"
    )
    daddr, dport = _from_ts(
        payload.tsr, payload.prefixlen_d, payload.dport_mask, payload.family, "TSr"
    )
    selector = _model(
        m.Selector,
        daddr=daddr,
        saddr=saddr,
        dport=dport,
        dport_mask=payload.dport_mask,
        sport=sport,
        sport_mask=payload.sport_mask,
        family=payload.family,
        prefixlen_d=payload.prefixlen_d,
        prefixlen_s=payload.prefixlen_s,
        proto=payload.tsi.ip_protocol,
        ifindex=payload.ifindex,
        user=payload.user,
    )
    fields: dict[str, Any] = {}
    raw: list[tuple[int, bytes]] = []
    templates: list[m.Template] = []
    for attr in payload.attributes:
        if _decode_common(attr, fields, raw):
            continue
        if attr.type == A.TEMPLATE:
            templates.append(_unpack_template(attr.value))
        else:
            raise _unknown_attribute(attr.type, "SPD")
    return _model(
        m.SpdEntry,
        selector=selector,
        dir=payload.direction,
        priority=payload.priority,
        index=payload.index,
        action=payload.action,
        flags=payload.flags,
        share=payload.share,
        templates=tuple(templates),
        ptype=payload.policy_type,
        extra_attrs=tuple(raw),
        **fields,
    )


def _unpack_template(value: bytes) -> m.Template:
    daddr, spi, proto, mode, share, optional, family, saddr, reqid, aalgos, ealgos, calgos = (
        _unpack(_TEMPLATE, value, "template")
    )
    return _model(
        m.Template,
        daddr=_xfrm_address(family, daddr),
        spi=spi,
        proto=proto,
        family=family,
        saddr=_xfrm_address(family, saddr),
        reqid=reqid,
        mode=mode,
        share=share,
        optional=optional,
        aalgos=aalgos,
        ealgos=ealgos,
        calgos=calgos,
    )


# -- replay-state updates --------------------------------------------------------
def replay_update_for(entry: m.SadEntry) -> ReplayStatePayload:
    """The small Replay State payload carrying an SA's current counters."""
    common: dict[str, Any] = {
        "spi": entry.spi,
        "protocol": entry.proto,
        "family": entry.family,
        "daddr": m.address_to_xfrm(entry.daddr),
        "lifetime_bytes": entry.lifetime_cur.bytes,
        "lifetime_packets": entry.lifetime_cur.packets,
    }
    if entry.replay_esn is not None:
        esn = entry.replay_esn
        return ReplayStatePayload(
            oseq=esn.oseq,
            seq=esn.seq,
            oseq_hi=esn.oseq_hi,
            seq_hi=esn.seq_hi,
            replay_window=esn.replay_window,
            bitmap=esn.bmp,
            esn=True,
            **common,
        )
    replay = entry.replay or m.ReplayState()
    return ReplayStatePayload(
        oseq=replay.oseq,
        seq=replay.seq,
        replay_window=entry.replay_window,
        bitmap=(replay.bitmap,),
        **common,
    )


def apply_replay_update(entry: m.SadEntry, update: ReplayStatePayload) -> m.SadEntry:
    """``entry`` with the counters of ``update`` (which must name the same SA)."""
    same_sa = (
        update.spi == entry.spi
        and update.protocol == entry.proto
        and update.daddr == m.address_to_xfrm(entry.daddr)
    )
    if not same_sa:
        raise RemoteWireError(
            f"replay update for SPI 0x{update.spi:08x} does not match {entry.label()}"
        )
    cur = dataclasses.replace(
        entry.lifetime_cur, bytes=update.lifetime_bytes, packets=update.lifetime_packets
    )
    if update.esn:
        esn = _model(
            m.ReplayStateEsn,
            len(update.bitmap),
            update.oseq,
            update.seq,
            update.oseq_hi,
            update.seq_hi,
            update.replay_window,
            update.bitmap,
        )
        return dataclasses.replace(entry, replay_esn=esn, lifetime_cur=cur)
    if len(update.bitmap) != 1:
        raise RemoteWireError("a non-ESN replay update must carry exactly one bitmap word")
    if update.replay_window > 0xFF:
        raise RemoteWireError("a non-ESN replay window must fit 8 bits")
    replay = m.ReplayState(update.oseq, update.seq, update.bitmap[0])
    return dataclasses.replace(
        entry, replay=replay, replay_window=update.replay_window, lifetime_cur=cur
    )
