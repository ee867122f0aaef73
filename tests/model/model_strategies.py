"""Hypothesis strategies for every model class (shared by the model tests)."""

from __future__ import annotations

import datetime
import ipaddress

from hypothesis import strategies as st

from appliance import model as m

u8 = st.integers(0, 2**8 - 1)
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
v4 = st.builds(ipaddress.IPv4Address, u32)
v6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))
addresses = st.one_of(v4, v6)
keys = st.builds(m.KeyMaterial, st.binary(max_size=64))
names = st.text(st.characters(codec="utf-8"), max_size=63)


def optional(strategy: st.SearchStrategy) -> st.SearchStrategy:  # type: ignore[type-arg]
    return st.none() | strategy


@st.composite
def family_and_addresses(draw: st.DrawFn, count: int = 2) -> tuple:  # type: ignore[type-arg]
    family = draw(st.sampled_from([m.AF_INET, m.AF_INET6, m.AF_UNSPEC]))
    addr = v4 if family == m.AF_INET else v6
    return (family, *[draw(addr) for _ in range(count)])


@st.composite
def selectors(draw: st.DrawFn) -> m.Selector:
    family, daddr, saddr = draw(family_and_addresses())
    return m.Selector(
        daddr=daddr,
        saddr=saddr,
        dport=draw(u16),
        dport_mask=draw(u16),
        sport=draw(u16),
        sport_mask=draw(u16),
        family=family,
        prefixlen_d=draw(u8),
        prefixlen_s=draw(u8),
        proto=draw(u8),
        ifindex=draw(u32),
        user=draw(u32),
    )


lifetime_cfgs = st.builds(m.LifetimeCfg, *[u64] * 8)
lifetime_curs = st.builds(m.LifetimeCur, u64, u64, u64, u64)
marks = st.builds(m.Mark, u32, u32)
sec_ctxs = st.builds(m.SecCtx, u8, u8, st.binary(max_size=32))
offloads = st.builds(m.OffloadDev, u32, u8)
extra_attrs = st.lists(st.tuples(u16, st.binary(max_size=24)), max_size=3).map(tuple)


@st.composite
def replay_esns(draw: st.DrawFn) -> m.ReplayStateEsn:
    bmp = draw(st.lists(u32, max_size=8))
    return m.ReplayStateEsn(
        bmp_len=len(bmp),
        oseq=draw(u32),
        seq=draw(u32),
        oseq_hi=draw(u32),
        seq_hi=draw(u32),
        replay_window=draw(u32),
        bmp=tuple(bmp),
    )


@st.composite
def sad_entries(draw: st.DrawFn) -> m.SadEntry:
    family, daddr, saddr = draw(family_and_addresses())
    if family == m.AF_UNSPEC:
        family = m.AF_INET6
    return m.SadEntry(
        daddr=daddr,
        spi=draw(u32),
        proto=draw(st.sampled_from([m.IPPROTO_ESP, m.IPPROTO_AH, m.IPPROTO_COMP])),
        saddr=saddr,
        family=family,
        mode=draw(st.integers(0, 4)),
        reqid=draw(u32),
        seq=draw(u32),
        replay_window=draw(u8),
        flags=draw(u8),
        selector=draw(selectors()),
        lifetime_cfg=draw(lifetime_cfgs),
        lifetime_cur=draw(lifetime_curs),
        stats=draw(st.builds(m.Stats, u32, u32, u32)),
        extra_flags=draw(u32),
        crypt=draw(optional(st.builds(m.Algorithm, names, u32, keys))),
        auth=draw(optional(st.builds(m.Algorithm, names, u32, keys))),
        auth_trunc=draw(optional(st.builds(m.AuthTruncAlgorithm, names, u32, u32, keys))),
        aead=draw(optional(st.builds(m.AeadAlgorithm, names, u32, u32, keys))),
        comp=draw(optional(st.builds(m.Algorithm, names, u32, keys))),
        replay=draw(optional(st.builds(m.ReplayState, u32, u32, u32))),
        replay_esn=draw(optional(replay_esns())),
        encap=draw(optional(st.builds(m.Encap, u16, u16, u16, addresses))),
        coaddr=draw(optional(addresses)),
        mark=draw(optional(marks)),
        output_mark=draw(optional(marks)),
        if_id=draw(optional(u32)),
        tfcpad=draw(optional(u32)),
        replay_thresh=draw(optional(u32)),
        etimer_thresh=draw(optional(u32)),
        sa_dir=draw(optional(u8)),
        lastused=draw(optional(u64)),
        offload=draw(optional(offloads)),
        sec_ctx=draw(optional(sec_ctxs)),
        extra_attrs=draw(extra_attrs),
    )


@st.composite
def templates(draw: st.DrawFn) -> m.Template:
    family, daddr, saddr = draw(family_and_addresses())
    return m.Template(
        daddr=daddr,
        spi=draw(u32),
        proto=draw(u8),
        family=family,
        saddr=saddr,
        reqid=draw(u32),
        mode=draw(u8),
        share=draw(u8),
        optional=draw(u8),
        aalgos=draw(u32),
        ealgos=draw(u32),
        calgos=draw(u32),
    )


spd_entries = st.builds(
    m.SpdEntry,
    selector=selectors(),
    dir=u8,
    priority=u32,
    index=u32,
    action=u8,
    flags=u8,
    share=u8,
    lifetime_cfg=lifetime_cfgs,
    lifetime_cur=lifetime_curs,
    templates=st.lists(templates(), max_size=3).map(tuple),
    ptype=u8,
    mark=optional(marks),
    if_id=optional(u32),
    offload=optional(offloads),
    sec_ctx=optional(sec_ctxs),
    extra_attrs=extra_attrs,
)

snapshots = st.builds(
    m.Snapshot,
    node_id=names,
    taken_at=st.datetimes(timezones=st.just(datetime.UTC)),
    sad=st.lists(sad_entries(), max_size=3).map(tuple),
    spd=st.lists(spd_entries, max_size=3).map(tuple),
)
