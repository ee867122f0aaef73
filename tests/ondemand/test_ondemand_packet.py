"""Reading the SPI of queued packets: IPv4, IPv6, ESP-in-UDP, and what is not ours."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ondemand_packets import esp, esp4, esp6, ipv4, ipv6, natt4, udp

from appliance.ondemand import EspPacket, MalformedPacket, NotEsp, parse_outer

pytestmark = pytest.mark.unit


def test_plain_esp_ipv4() -> None:
    assert parse_outer(esp4(0xC0FFEE01)) == EspPacket(0xC0FFEE01, "192.0.2.10", udp_encap=False)


def test_plain_esp_ipv6_compressed_address() -> None:
    assert parse_outer(esp6(7, "2001:db8:0:0::10")) == EspPacket(7, "2001:db8::10", False)


def test_esp_in_udp_ipv4_and_ipv6() -> None:
    assert parse_outer(natt4(0x1234)) == EspPacket(0x1234, "192.0.2.10", udp_encap=True)
    assert parse_outer(ipv6(17, udp(4500, esp(99)))) == EspPacket(99, "2001:db8::10", True)


def test_ipv4_options_are_skipped() -> None:
    packet = bytearray(ipv4(50, b"\x01\x01\x01\x01" + esp(0x55)))
    packet[0] = 0x46  # IHL 6: the first 4 body bytes are an option (NOPs)
    assert parse_outer(bytes(packet)) == EspPacket(0x55, "192.0.2.10", False)


def test_ipv6_extension_headers_are_skipped() -> None:
    hop = bytes([60, 0]) + b"\x01\x04\0\0\0\0"  # hop-by-hop (8 bytes) -> destination options
    dst = bytes([44, 1]) + b"\x01\x0c" + bytes(12)  # destination options (16 bytes) -> fragment
    frag = bytes([50, 0]) + struct.pack("!HI", 1, 77)  # first fragment (offset 0, M set) -> ESP
    assert parse_outer(ipv6(0, hop + dst + frag + esp(0xABC))) == EspPacket(
        0xABC, "2001:db8::10", False
    )


def test_ike_and_keepalive_on_4500_are_not_ours() -> None:
    assert parse_outer(ipv4(17, udp(4500, b"\0\0\0\0" + b"ike..."))) == NotEsp(
        "IKE (non-ESP marker)"
    )
    assert parse_outer(ipv6(17, udp(4500, b"\xff"))) == NotEsp("NAT-keepalive")


def test_other_traffic_is_not_ours() -> None:
    assert parse_outer(ipv4(17, udp(500, b"ike"))) == NotEsp("UDP port 500")
    assert parse_outer(ipv4(6, b"\0" * 20)) == NotEsp("IP protocol 6")


def test_ipv6_no_next_header() -> None:
    assert parse_outer(ipv6(59, b"\0" * 8)) == NotEsp("IPv6 without payload")


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (b"", "empty packet"),
        (b"\x50" + bytes(30), "IP version 5"),
        (esp4(1)[:19], r"IPv4 header truncated \(19 bytes\)"),
        (b"\x44" + esp4(1)[1:], "IPv4 header length 16 invalid"),
        (esp4(1)[:2] + b"\0\x10" + esp4(1)[4:], "IPv4 total length 16 below header length 20"),
        (ipv4(50, esp(1), frag=0x0010), "IPv4 non-first fragment"),
        (ipv4(50, b"\0\0\1"), r"ESP header truncated \(3 bytes\)"),
        (esp4(0), r"ESP with SPI 0 \(reserved\)"),
        (ipv4(17, b"\x11\x94\x11"), r"UDP header truncated \(3 bytes\)"),
        (ipv4(17, struct.pack("!HHHH", 1, 4500, 4, 0)), "UDP length 4 below its header"),
        (ipv4(17, udp(4500, b"\x01\x02")), r"ESP-in-UDP header truncated \(2 bytes\)"),
        (esp6(1)[:39], r"IPv6 header truncated \(39 bytes\)"),
        (ipv6(50, b""), "IPv6 jumbogram or empty payload"),
        (ipv6(0, b"\x32"), "IPv6 extension header 0 truncated"),
        (ipv6(44, b"\x32\0\0\0"), "IPv6 fragment header truncated"),
        (ipv6(44, bytes([50, 0]) + struct.pack("!HI", 8, 1) + esp(1)), "IPv6 non-first fragment"),
        (ipv6(60, bytes([60, 0]) + bytes(6)), "IPv6 extension header 60 truncated"),
        (ipv6(60, (bytes([60, 0]) + bytes(6)) * 9), "more than 8 IPv6 extension headers"),
    ],
)
def test_malformed(packet: bytes, message: str) -> None:
    with pytest.raises(MalformedPacket, match=message):
        parse_outer(packet)


def test_cut_packet_still_gives_the_spi() -> None:
    """The queue copies only the first bytes; the headers' lengths say more."""
    assert parse_outer(esp4(0x77)[:24]) == EspPacket(0x77, "192.0.2.10", False)
    assert parse_outer(natt4(0x78)[:32]) == EspPacket(0x78, "192.0.2.10", True)


@given(st.binary(max_size=120))
def test_any_bytes_classify_or_raise_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedPacket):
        parse_outer(data)


@given(
    spi=st.integers(1, 0xFFFFFFFF),
    v4=st.ip_addresses(v=4),
    v6=st.ip_addresses(v=6),
    encap=st.booleans(),
)
def test_spi_and_destination_round_trip(spi: int, v4: object, v6: object, encap: bool) -> None:
    body4 = udp(4500, esp(spi)) if encap else esp(spi)
    proto = 17 if encap else 50
    assert parse_outer(ipv4(proto, body4, str(v4))) == EspPacket(spi, str(v4), encap)
    assert parse_outer(ipv6(proto, body4, str(v6))) == EspPacket(spi, str(v6), encap)
