"""Model <-> netlink conversion: lossless, and the codec equals the oracle."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
)
from appliance.xfrm import codec
from appliance.xfrm import constants as c
from tests.xfrm.oracle import convert as cv
from tests.xfrm.oracle import structs as s

pytestmark = pytest.mark.unit

A = ipaddress.ip_address


def rich_sa() -> SadEntry:
    return SadEntry(
        daddr=A("192.0.2.2"),
        spi=0xC0FFEE01,
        saddr=A("192.0.2.1"),
        mode=1,
        reqid=7,
        seq=3,
        replay_window=32,
        flags=0x81,
        selector=Selector(
            daddr=A("198.51.100.0"),
            saddr=A("203.0.113.0"),
            prefixlen_d=24,
            prefixlen_s=24,
            dport=443,
            dport_mask=0xFFFF,
            proto=6,
            ifindex=0xFFFFFFFF,
            user=1000,
        ),
        lifetime_cfg=LifetimeCfg(soft_add_expires_seconds=3600, hard_add_expires_seconds=7200),
        lifetime_cur=LifetimeCur(bytes=10, packets=2, add_time=1700000000, use_time=1700000001),
        stats=Stats(replay_window=32, replay=1, integrity_failed=2),
        extra_flags=1,
        auth=Algorithm("hmac(sha256)", 256, KeyMaterial(b"a" * 32)),
        auth_trunc=AuthTruncAlgorithm("hmac(sha256)", 256, 128, KeyMaterial(b"a" * 32)),
        crypt=Algorithm("cbc(aes)", 128, KeyMaterial(b"b" * 16)),
        comp=Algorithm("deflate", 0, KeyMaterial(b"")),
        encap=Encap(2, 4500, 4501, A("192.0.2.9")),
        coaddr=A("192.0.2.10"),
        mark=Mark(1, 0xFF),
        output_mark=Mark(3, 4),
        replay_esn=ReplayStateEsn(2, 5, 6, 7, 8, 64, (1, 0xFFFFFFFF)),
        if_id=9,
        tfcpad=256,
        replay_thresh=10,
        etimer_thresh=20,
        sa_dir=2,
        lastused=12345,
        offload=OffloadDev(0xFFFFFFFE, 2),
        sec_ctx=SecCtx(1, 1, b"system_u:object_r:ipsec_spd_t:s0"),
        # In kernel order (see convert.SA_ATTR_ORDER), as a decoded dump gives them.
        extra_attrs=(
            (c.XFRMA_IPTFS_DONT_FRAG, b""),
            (c.XFRMA_MTIMER_THRESH, b"\x05\0\0\0"),
            (99, b"xyz"),
        ),
    )


def ipv6_aead_sa() -> SadEntry:
    return SadEntry(
        daddr=A("2001:db8::2"),
        saddr=A("2001:db8::1"),
        family=c.AF_INET6,
        spi=0x101,
        selector=Selector(daddr=A("::"), saddr=A("::"), family=c.AF_INET6),
        aead=AeadAlgorithm("rfc4106(gcm(aes))", 160, 128, KeyMaterial(b"k" * 20)),
        replay=ReplayState(100, 50, 0xF),
    )


def rich_policy() -> SpdEntry:
    return SpdEntry(
        selector=Selector(
            daddr=A("198.51.100.0"), saddr=A("203.0.113.0"), prefixlen_d=24, prefixlen_s=24
        ),
        dir=1,
        priority=100,
        index=0x1231,
        action=0,
        flags=1,
        share=0,
        templates=(
            Template(daddr=A("192.0.2.2"), saddr=A("192.0.2.1"), mode=1, reqid=7),
            Template(
                daddr=A("2001:db8::2"),
                saddr=A("2001:db8::1"),
                family=c.AF_INET6,
                proto=51,
                optional=1,
            ),
        ),
        mark=Mark(1, 2),
        if_id=3,
        offload=OffloadDev(4, 1),
        sec_ctx=SecCtx(1, 1, b"ctx"),
        extra_attrs=((77, b"\x01"),),
    )


@pytest.mark.parametrize("entry", [rich_sa(), ipv6_aead_sa()], ids=["rich", "ipv6-aead"])
def test_fast_sa_encoder_equals_declarative_classes(entry: SadEntry) -> None:
    for with_cur in (False, True):
        fast = codec.encode_sa(entry, c.XFRM_MSG_UPDSA, 5, 42, 7, with_lifetime_cur=with_cur)
        slow = cv.encode_msg(
            cv.sad_to_msg(entry, c.XFRM_MSG_UPDSA, 5, 42, 7, with_lifetime_cur=with_cur)
        )
        assert fast == slow


@pytest.mark.parametrize("entry", [rich_sa(), ipv6_aead_sa()], ids=["rich", "ipv6-aead"])
def test_sa_survives_encode_decode(entry: SadEntry) -> None:
    msg = s.xfrm_usersa_info(codec.encode_sa(entry))
    msg.decode()
    assert cv.sad_from_msg(msg) == entry


def test_fast_policy_encoder_equals_declarative_classes() -> None:
    entry = rich_policy()
    assert codec.encode_policy(entry, seq=9) == cv.encode_msg(cv.spd_to_msg(entry, seq=9))


def test_policy_survives_encode_decode() -> None:
    entry = rich_policy()
    msg = s.xfrm_userpolicy_info(codec.encode_policy(entry))
    msg.decode()
    assert cv.spd_from_msg(msg) == entry


def test_attributes_follow_kernel_order_with_extras_at_their_place() -> None:
    kinds = [k for k, _ in cv.sad_attr_values(rich_sa())]
    assert kinds.index(c.XFRMA_SA_EXTRA_FLAGS) == 0
    assert (
        kinds.index(c.XFRMA_ALG_AUTH)
        < kinds.index(c.XFRMA_ALG_AUTH_TRUNC)
        < kinds.index(c.XFRMA_ALG_CRYPT)
    )
    assert (
        kinds.index(c.XFRMA_IF_ID)
        < kinds.index(c.XFRMA_MTIMER_THRESH)
        < kinds.index(c.XFRMA_SA_DIR)
    )
    assert kinds[-1] == 99


def test_big_endian_members_are_swapped() -> None:
    data = codec.encode_sa(rich_sa())
    assert data[16 + 72 : 16 + 76] == bytes.fromhex("c0ffee01")  # spi, network order
    assert data[16 + 32 : 16 + 34] == (443).to_bytes(2, "big")  # selector dport


u32 = st.integers(0, 0xFFFFFFFF)


@settings(max_examples=60, deadline=None)
@given(
    spi=u32,
    reqid=u32,
    oseq=u32,
    seq=u32,
    mark=st.none() | st.tuples(u32, u32),
    if_id=st.none() | u32,
    key=st.binary(min_size=0, max_size=40),
    v6=st.booleans(),
    port=st.integers(0, 0xFFFF),
    extra=st.lists(st.tuples(st.integers(42, 300), st.binary(max_size=9)), max_size=3),
)
def test_generated_sas_encode_identically_and_round_trip(
    spi: int,
    reqid: int,
    oseq: int,
    seq: int,
    mark: tuple[int, int] | None,
    if_id: int | None,
    key: bytes,
    v6: bool,
    port: int,
    extra: list[tuple[int, bytes]],
) -> None:
    daddr, saddr = (A("2001:db8::2"), A("2001:db8::1")) if v6 else (A("192.0.2.2"), A("192.0.2.1"))
    entry = SadEntry(
        daddr=daddr,
        saddr=saddr,
        family=c.AF_INET6 if v6 else c.AF_INET,
        spi=spi,
        reqid=reqid,
        selector=Selector(
            daddr=daddr, saddr=saddr, family=c.AF_INET6 if v6 else c.AF_INET, sport=port
        ),
        crypt=Algorithm("cbc(aes)", len(key) * 8, KeyMaterial(key)),
        replay=ReplayState(oseq, seq, 0),
        mark=None if mark is None else Mark(*mark),
        if_id=if_id,
        extra_attrs=tuple(extra),
    )
    fast = codec.encode_sa(entry)
    if all(t < s.UNKNOWN_ATTR_LIMIT for t, _ in extra):
        assert fast == cv.encode_msg(cv.sad_to_msg(entry))
    msg = s.xfrm_usersa_info(fast)
    msg.decode()
    back = cv.sad_from_msg(msg)
    assert codec.sad_from_bytes(fast) == back
    assert codec.encode_sa(back) == fast


@pytest.mark.parametrize("entry", [rich_sa(), ipv6_aead_sa()], ids=["rich", "ipv6-aead"])
def test_fast_sa_decoder_equals_declarative_decoding(entry: SadEntry) -> None:
    data = codec.encode_sa(entry)
    msg = s.xfrm_usersa_info(data)
    msg.decode()
    assert codec.sad_from_bytes(data) == cv.sad_from_msg(msg) == entry


def test_fast_policy_decoder_equals_declarative_decoding() -> None:
    data = codec.encode_policy(rich_policy())
    msg = s.xfrm_userpolicy_info(data)
    msg.decode()
    assert codec.spd_from_bytes(data) == cv.spd_from_msg(msg) == rich_policy()


def test_fast_decoder_keeps_short_known_attribute_raw() -> None:
    data = bytearray(codec.encode_sa(ipv6_aead_sa()))
    # Append an XFRMA_IF_ID with a 2-byte payload: not a valid __u32, must survive raw.
    data += bytes([6, 0, c.XFRMA_IF_ID, 0, 0xAB, 0xCD, 0, 0])
    data[0:4] = len(data).to_bytes(4, "little")
    entry = codec.sad_from_bytes(bytes(data))
    assert entry.if_id is None and entry.extra_attrs == ((c.XFRMA_IF_ID, b"\xab\xcd"),)
