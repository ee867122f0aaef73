"""Every message that can be built survives encode -> decode, and the bytes are as
ha_message.c lays them out."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.strongswan import (
    KIND_OF,
    HaAttribute,
    HaAttributeType,
    HaChunk,
    HaHost,
    HaIdentity,
    HaIkeSaId,
    HaKind,
    HaMessage,
    HaMessageType,
    HaNumber,
    HaText,
    HaTrafficSelector,
    decode,
    encode,
    spi_from_little_endian_sender,
)

pytestmark = pytest.mark.unit

A = HaAttributeType

addresses_v4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
addresses_v6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))
u8, u16 = st.integers(0, 0xFF), st.integers(0, 0xFFFF)


def _of_kind(kind: HaKind) -> st.SearchStrategy[HaAttributeType]:
    return st.sampled_from([t for t, k in KIND_OF.items() if k is kind])


def _ts(t: HaAttributeType) -> st.SearchStrategy[HaAttribute]:
    pair = st.one_of(st.tuples(addresses_v4, addresses_v4), st.tuples(addresses_v6, addresses_v6))
    return pair.flatmap(
        lambda p: st.builds(HaTrafficSelector, st.just(t), u8, u16, u16, st.booleans(),
                            st.just(p[0]), st.just(p[1]))
    )  # fmt: skip


attributes: st.SearchStrategy[HaAttribute] = st.one_of(
    st.builds(HaIkeSaId, _of_kind(HaKind.IKE_SA_ID), u8, st.integers(0, 2**64 - 1),
              st.integers(0, 2**64 - 1), st.booleans()),
    st.builds(HaIdentity, _of_kind(HaKind.IDENTITY), u8, st.binary(max_size=255)),
    st.builds(HaHost, _of_kind(HaKind.HOST), st.one_of(addresses_v4, addresses_v6), u16),
    st.builds(HaText, _of_kind(HaKind.TEXT),
              st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"))),
    st.builds(HaNumber, _of_kind(HaKind.U8), u8),
    st.builds(HaNumber, _of_kind(HaKind.U16), u16),
    st.builds(HaNumber, _of_kind(HaKind.U32), st.integers(0, 2**32 - 1)),
    st.builds(HaChunk, _of_kind(HaKind.CHUNK), st.binary(max_size=600)),
    _of_kind(HaKind.TRAFFIC_SELECTOR).flatmap(_ts),
)  # fmt: skip

messages = st.builds(
    HaMessage, st.sampled_from(HaMessageType), st.lists(attributes, max_size=12).map(tuple)
)


@settings(max_examples=400, deadline=None)
@given(messages)
def test_every_buildable_message_round_trips(message: HaMessage) -> None:
    data = encode(message)
    assert decode(data) == message
    assert encode(decode(data)) == data


def test_every_attribute_type_has_an_encoding() -> None:
    assert set(KIND_OF) == set(HaAttributeType)
    assert [t.value for t in HaAttributeType] == list(range(1, 42))
    assert [t.value for t in HaMessageType] == list(range(1, 13))


def test_layout_matches_ha_message_c() -> None:
    """Hand-built bytes, laid out field by field as the plugin's encoder writes them."""
    v6 = ipaddress.IPv6Address("2001:db8::1")
    message = HaMessage(
        HaMessageType.CHILD_ADD,
        (
            HaIkeSaId(A.IKE_ID, 2, 0x0102030405060708, 0x1112131415161718, True),
            HaIdentity(A.REMOTE_EAP_ID, 3, b"a@b"),
            HaHost(A.REMOTE_VIP, v6, 4500),
            HaText(A.CONFIG_NAME, "net"),
            HaNumber(A.IPSEC_MODE, 1),
            HaNumber(A.ESN, 1),
            HaNumber(A.INBOUND_SPI, 0xC1C2C3C4),
            HaChunk(A.PSK, b"\xaa\xbb"),
            HaTrafficSelector(A.LOCAL_TS, 6, 443, 443, True, v6, v6),
        ),
    )
    expected = (
        "0306"
        "01" "02" "0102030405060708" "1112131415161718" "01"
        "05" "03" "03" "614062"
        "0c" "1194" "0a" "20010db8000000000000000000000001"
        "08" "6e657400"
        "19" "01"
        "23" "0001"
        "1b" "c1c2c3c4"
        "27" "0002" "aabb"
        "1f" "08" "06" "01bb" "01bb" "01" + "20010db8000000000000000000000001" * 2
    )  # fmt: skip
    assert encode(message).hex() == expected
    assert decode(bytes.fromhex(expected)) == message


def test_ikev1_and_segment_messages_round_trip() -> None:
    for message in (
        HaMessage(HaMessageType.IKE_IV, (HaIkeSaId(A.IKE_ID, 1, 1, 2, False),
                                         HaChunk(A.IV, bytes(16)))),
        HaMessage(HaMessageType.IKE_ADD, (HaNumber(A.IKE_VERSION, 1),
                                          HaChunk(A.LOCAL_DH, b"\x01" * 256),
                                          HaChunk(A.REMOTE_DH, b"\x02" * 256),
                                          HaChunk(A.PSK, b"psk"), HaNumber(A.AUTH_METHOD, 1))),
        HaMessage(HaMessageType.STATUS, tuple(HaNumber(A.SEGMENT, i) for i in range(1, 5))),
        HaMessage(HaMessageType.SEGMENT_DROP),
    ):  # fmt: skip
        assert decode(encode(message)) == message


def test_config_name_bytes_that_are_not_utf8_round_trip() -> None:
    data = bytes([3, HaMessageType.IKE_UPDATE, A.CONFIG_NAME]) + b"caf\xe9\0"
    assert encode(decode(data)) == data


def test_spi_from_little_endian_sender_reverses_the_bytes() -> None:
    assert spi_from_little_endian_sender(HaNumber(A.INBOUND_SPI, 0xE6CA64C4)) == 0xC464CAE6
    assert spi_from_little_endian_sender(HaNumber(A.OUTBOUND_CPI, 0x0012)) == 0x1200
