"""Hypothesis strategies for every wire payload and message."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from appliance.wire import (
    Attribute,
    Delete,
    EpochPayload,
    ExchangeType,
    IdType,
    IkeSaPayload,
    Message,
    Notify,
    PagePayload,
    PayloadType,
    ProtocolId,
    RemovedPayload,
    ReplayStatePayload,
    RevisionPayload,
    SadEntryPayload,
    SaLookupPayload,
    ServerIdPayload,
    SpdEntryPayload,
    Status,
    TrafficSelector,
    UnknownPayload,
)
from appliance.wire.constants import MAX_CURSOR_LENGTH, MAX_POLICY_ID_LENGTH

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)
addr16 = st.binary(min_size=16, max_size=16)

attributes = st.lists(st.builds(Attribute, u16, st.binary(max_size=80)), max_size=6).map(tuple)

notify = st.builds(
    Notify,
    st.one_of(st.sampled_from(list(Status)), u16),
    u8,
    st.none() | u32,
    st.binary(max_size=60),
)
ike_spis = st.tuples(st.integers(1, 2**64 - 1), st.integers(0, 2**64 - 1))
delete = st.one_of(
    st.builds(
        Delete,
        st.sampled_from([ProtocolId.AH, ProtocolId.ESP, ProtocolId.IPCOMP, ProtocolId.SPD_INDEX]),
        st.lists(u32, max_size=20).map(tuple),
    ),
    st.builds(Delete.for_ike_sas, st.lists(ike_spis, max_size=5)),
)


@st.composite
def traffic_selectors(draw: st.DrawFn) -> TrafficSelector:
    if draw(st.booleans()):
        start = ipaddress.IPv4Address(draw(u32))
        end = ipaddress.IPv4Address(draw(u32))
    else:
        start = ipaddress.IPv6Address(draw(st.integers(0, (1 << 128) - 1)))
        end = ipaddress.IPv6Address(draw(st.integers(0, (1 << 128) - 1)))
    return TrafficSelector(start, end, draw(u8), draw(u16), draw(u16))


sad_entry = st.builds(
    SadEntryPayload,
    spi=u32,
    protocol=st.sampled_from([50, 51, 108]),
    family=u16,
    mode=u8,
    flags=u8,
    replay_window=u8,
    reqid=u32,
    seq=u32,
    daddr=addr16,
    saddr=addr16,
    attributes=attributes,
)
spd_entry = st.builds(
    SpdEntryPayload,
    index=u32,
    priority=u32,
    direction=st.integers(0, 2),
    action=st.integers(0, 1),
    flags=u8,
    share=u8,
    policy_type=st.integers(0, 1),
    family=u16,
    prefixlen_s=u8,
    prefixlen_d=u8,
    sport_mask=u16,
    dport_mask=u16,
    ifindex=u32,
    user=u32,
    tsi=traffic_selectors(),
    tsr=traffic_selectors(),
    attributes=attributes,
)
ike_sa = st.builds(
    IkeSaPayload,
    spi_i=st.integers(1, 2**64 - 1),
    spi_r=st.integers(0, 2**64 - 1),
    child_spis=st.lists(st.integers(1, 2**32 - 1), max_size=8, unique=True).map(tuple),
    record=st.binary(min_size=1, max_size=100),
)
replay_state = st.builds(
    ReplayStatePayload,
    spi=u32,
    protocol=st.sampled_from([50, 51]),
    family=u16,
    daddr=addr16,
    oseq=u32,
    seq=u32,
    oseq_hi=u32,
    seq_hi=u32,
    replay_window=u32,
    bitmap=st.lists(u32, max_size=40).map(tuple),
    esn=st.booleans(),
    lifetime_bytes=u64,
    lifetime_packets=u64,
)
fqdn = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60
).map(lambda s: s.encode("ascii"))
server_id = st.one_of(
    st.builds(ServerIdPayload, st.just(IdType.IPV4_ADDR), st.binary(min_size=4, max_size=4)),
    st.builds(ServerIdPayload, st.just(IdType.IPV6_ADDR), addr16),
    st.builds(ServerIdPayload, st.just(IdType.FQDN), fqdn),
    st.builds(ServerIdPayload, st.just(IdType.KEY_ID), st.binary(min_size=1, max_size=40)),
)
epoch = st.builds(EpochPayload, u64)
page = st.builds(PagePayload, u16, st.binary(max_size=MAX_CURSOR_LENGTH))
sa_lookup = st.builds(SaLookupPayload, u32, u8, u16, addr16)
revision = st.builds(RevisionPayload, u64)
# An IPv4 destination is 4 octets then 12 zeros (protocol.md 4.13): drawn that way, not filtered.
removed_sa_destination = st.one_of(
    st.tuples(st.just(2), st.binary(min_size=4, max_size=4).map(lambda a: a + bytes(12))),
    st.tuples(st.just(10), addr16),
)
removed = st.one_of(
    st.builds(
        lambda spi, protocol, destination: RemovedPayload.for_sa(spi, protocol, *destination),
        u32,
        st.sampled_from([50, 51, 108]),
        removed_sa_destination,
    ),
    st.builds(RemovedPayload.for_policy, st.binary(min_size=1, max_size=MAX_POLICY_ID_LENGTH)),
    st.builds(RemovedPayload.for_ike_sa, ike_spis),
)
unknown = st.builds(
    UnknownPayload,
    st.sampled_from(sorted(set(range(1, 256)) - {int(t) for t in PayloadType})),
    st.binary(max_size=40),
)

ALL_PAYLOADS = {
    "notify": notify,
    "delete": delete,
    "sad_entry": sad_entry,
    "spd_entry": spd_entry,
    "ike_sa": ike_sa,
    "replay_state": replay_state,
    "server_id": server_id,
    "epoch": epoch,
    "page": page,
    "sa_lookup": sa_lookup,
    "revision": revision,
    "removed": removed,
    "unknown": unknown,
}

any_payload = st.one_of(*ALL_PAYLOADS.values())


@st.composite
def messages(draw: st.DrawFn, payload_strategy: st.SearchStrategy = any_payload) -> Message:
    response = draw(st.booleans())
    return Message(
        exchange=draw(st.sampled_from(list(ExchangeType))),
        message_id=draw(u32),
        payloads=tuple(draw(st.lists(payload_strategy, max_size=6))),
        response=response,
        more=response and draw(st.booleans()),
    )
