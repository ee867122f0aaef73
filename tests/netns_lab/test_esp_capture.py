"""The lab's ESP capture: pcap parsing and which packets a replay window refuses."""

from __future__ import annotations

import struct

import pytest

from netns_lab.esp_capture import EspArrival, parse_pcap, summarise

pytestmark = pytest.mark.unit

GW1, GW2, CLIENT = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:0a"


def frame(src: str, spi: int, seq: int, proto: int = 50) -> bytes:
    eth = bytes.fromhex(CLIENT.replace(":", "")) + bytes.fromhex(src.replace(":", "")) + b"\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8, 0, 0, 64, proto, 0,
                     bytes([192, 0, 2, 1]), bytes([192, 0, 2, 10]))  # fmt: skip
    return eth + ip + struct.pack("!II", spi, seq)


def pcap(frames: list[tuple[int, bytes]], magic: int = 0xA1B2C3D4, endian: str = "<") -> bytes:
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 64, 1)
    for usec, data in frames:
        out += struct.pack(endian + "IIII", 1_700_000_000, usec, len(data), len(data)) + data
    return out


def test_esp_headers_and_senders_are_read_in_both_byte_orders() -> None:
    frames = [(10, frame(GW1, 0x1234, 7)), (20, frame(GW2, 0x1234, 8)), (30, frame(GW2, 9, 1, 17))]
    for endian in ("<", ">"):
        got = parse_pcap(pcap(frames, endian=endian))
        assert got == [
            EspArrival(1_700_000_000_000_010_000, GW1, 0x1234, 7),
            EspArrival(1_700_000_000_000_020_000, GW2, 0x1234, 8),
        ]  # the UDP packet (protocol 17) is not ESP


def test_nanosecond_pcap_keeps_nanoseconds() -> None:
    got = parse_pcap(pcap([(5, frame(GW1, 1, 1))], magic=0xA1B23C4D))
    assert got[0].wall_ns == 1_700_000_000_000_000_005


@pytest.mark.parametrize(
    ("data", "problem"),
    [(b"", "24-byte header"), (b"\x00" * 24, "not a pcap file"),
     (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 64, 113), "link type 113")],
)  # fmt: skip
def test_what_is_not_an_ethernet_pcap_is_named(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_pcap(data)


def test_a_truncated_last_record_is_left_out() -> None:
    data = pcap([(1, frame(GW1, 1, 1)), (2, frame(GW1, 1, 2))])
    assert [a.seq for a in parse_pcap(data[:-10])] == [1]


def arrivals(*packets: tuple[str, int]) -> list[EspArrival]:
    return [EspArrival(i * 1_000_000, mac, 0xAA, seq) for i, (mac, seq) in enumerate(packets)]


NAMES = {GW1: "gw1", GW2: "gw2"}


def test_an_old_counter_is_refused_and_named_by_its_sender() -> None:
    # gw2 took over 100 above gw1; gw1 (an orphan) goes on at 51, 52
    got = summarise(
        arrivals((GW1, 49), (GW1, 50), (GW2, 150), (GW1, 51), (GW2, 151), (GW1, 52)),
        0xAA, 32, NAMES, 0,
    )  # fmt: skip
    assert got["packets"] == {"gw1": 4, "gw2": 2}
    assert got["late"] == {"gw1": 2} and got["deepest"] == 99
    assert got["old"] == {"gw1": 2} and got["reused"] == {}
    assert (got["first_refused_ms"], got["last_refused_ms"]) == (3.0, 5.0)
    # a window wider than the gap takes them: late, never refused
    wide = summarise(
        arrivals((GW1, 49), (GW1, 50), (GW2, 150), (GW1, 51), (GW2, 151), (GW1, 52)),
        0xAA, 1024, NAMES, 0,
    )  # fmt: skip
    assert wide["late"] == {"gw1": 2} and wide["old"] == {} and wide["first_refused_ms"] is None


def test_reordering_within_the_window_is_not_refused_and_beyond_it_is() -> None:
    within = summarise(arrivals((GW2, 40), (GW2, 9), (GW2, 41)), 0xAA, 32, NAMES, 0)
    assert within["old"] == {} and within["first_refused_ms"] is None
    assert (within["late"], within["deepest"]) == ({"gw2": 1}, 31)
    beyond = summarise(arrivals((GW2, 40), (GW2, 8)), 0xAA, 32, NAMES, 0)
    assert beyond["old"] == {"gw2": 1} and beyond["deepest"] == 32


def test_a_number_sent_twice_is_reused_whatever_the_window() -> None:
    # a naive copy: gw2 starts again at numbers the client had from gw1, 2000 below the top
    packets = arrivals((GW1, 1), (GW1, 2), *((GW1, n) for n in range(3, 2003)), (GW2, 2))
    for window in (32, 4096):
        got = summarise(packets, 0xAA, window, NAMES, 0)
        assert got["reused"] == {"gw2": 1} and got["old"] == {}


def test_other_spis_are_left_out_and_unknown_macs_are_named_by_address() -> None:
    packets = arrivals((GW2, 5), ("02:00:00:00:00:99", 5), (GW2, 6))
    packets.append(EspArrival(9, GW1, 0xBB, 1))
    got = summarise(packets, 0xAA, 32, NAMES, 0)
    assert got["reused"] == {"02:00:00:00:00:99": 1}
    assert got["packets"] == {"gw2": 2, "02:00:00:00:00:99": 1}
