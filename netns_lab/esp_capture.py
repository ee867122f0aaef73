"""Which ESP packets reached the client, from which gateway, in which order.

A replay error at the client says that a packet was refused, not who sent it or why:
a gateway that encrypted with an old counter, a duplicate, or packets the lab itself
reordered by more than the replay window (two vCPUs, one stalled). ``tcpdump`` in the
client's namespace records the Ethernet source and the ESP header of every inbound
packet; ``summarise`` (no I/O) counts, by sender, the late packets, the numbers that
arrived twice and the packets below the window.

The capture is a diagnostic: without ``tcpdump`` the scenario runs without it.
"""

from __future__ import annotations

import shutil
import signal
import struct
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netns_lab.lab import Lab

_PCAP_MAGIC_US = 0xA1B2C3D4
_PCAP_MAGIC_NS = 0xA1B23C4D
_LINKTYPE_ETHERNET = 1
_ETH_P_IP = 0x0800
_IPPROTO_ESP = 50
SNAPLEN = 64
"""Ethernet, IPv4 and the ESP header fit (14 + 20 + 8)."""


@dataclass(frozen=True)
class EspArrival:
    """One ESP packet as the client's interface saw it."""

    wall_ns: int
    src_mac: str
    spi: int
    seq: int


def parse_pcap(data: bytes) -> list[EspArrival]:
    """The IPv4 ESP packets of a classic pcap file (Ethernet link type)."""
    if len(data) < 24:
        raise ValueError(f"a pcap file has a 24-byte header; this one has {len(data)} bytes")
    for endian in ("<", ">"):
        (magic,) = struct.unpack(endian + "I", data[:4])
        if magic in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS):
            break
    else:
        raise ValueError(f"not a pcap file (magic {data[:4].hex()})")
    scale = 1000 if magic == _PCAP_MAGIC_US else 1
    linktype = struct.unpack(endian + "I", data[20:24])[0] & 0x0FFFFFFF
    if linktype != _LINKTYPE_ETHERNET:
        raise ValueError(f"pcap link type {linktype}, not Ethernet (1)")
    out = []
    offset = 24
    record = struct.Struct(endian + "IIII")
    while offset + record.size <= len(data):
        sec, frac, caplen, _ = record.unpack_from(data, offset)
        offset += record.size
        frame = data[offset : offset + caplen]
        offset += caplen
        if len(frame) < 14 + 20 or struct.unpack("!H", frame[12:14])[0] != _ETH_P_IP:
            continue
        ihl = (frame[14] & 0x0F) * 4
        if frame[14 + 9] != _IPPROTO_ESP or len(frame) < 14 + ihl + 8:
            continue
        spi, seq = struct.unpack_from("!II", frame, 14 + ihl)
        out.append(EspArrival(sec * 10**9 + frac * scale, frame[6:12].hex(":"), spi, seq))
    return out


def summarise(
    arrivals: list[EspArrival], spi: int, window: int, names: dict[str, str], origin_wall_ns: int
) -> dict[str, Any]:
    """The packets of ``spi`` by sender: late ones, reused numbers, what a window refuses.

    ``names`` maps MAC addresses to hosts; ``origin_wall_ns`` is the timeline's zero.
    A packet is *late* when a higher number came before it (``deepest``: the most
    numbers it came behind), *reused* when its number came before (whatever the window:
    a number sent twice, a nonce used twice under AES-GCM), *old* when it is not reused
    and at or below the highest number seen minus ``window``. A window of ``window``
    refuses the reused and the old ones.
    """
    top = 0
    seen: set[int] = set()
    senders: Counter[str] = Counter()
    late: Counter[str] = Counter()
    reused: Counter[str] = Counter()
    old: Counter[str] = Counter()
    deepest = 0
    first_ms: float | None = None
    last_ms: float | None = None
    for a in arrivals:
        if a.spi != spi:
            continue
        who = names.get(a.src_mac, a.src_mac)
        senders[who] += 1
        if a.seq < top:
            late[who] += 1
            deepest = max(deepest, top - a.seq)
        refused = True
        if a.seq in seen:
            reused[who] += 1
        elif a.seq + window <= top:
            old[who] += 1
        else:
            refused = False
        if refused:
            at = (a.wall_ns - origin_wall_ns) / 1e6
            first_ms = at if first_ms is None else first_ms
            last_ms = at
        seen.add(a.seq)
        top = max(top, a.seq)
    return {
        "spi": spi,
        "window": window,
        "packets": dict(senders),
        "late": dict(late),
        "deepest": deepest,
        "reused": dict(reused),
        "old": dict(old),
        "first_refused_ms": None if first_ms is None else round(first_ms, 1),
        "last_refused_ms": None if last_ms is None else round(last_ms, 1),
    }


class EspCapture:
    """``tcpdump`` of inbound ESP on one host's interface, from ``start`` to ``stop``."""

    def __init__(self, lab: Lab, host: str, ifname: str, path: Path) -> None:
        self.lab, self.host, self.ifname, self.path = lab, host, ifname, path
        self.proc: subprocess.Popen[bytes] | None = None
        self.error: str | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("tcpdump") is not None

    def start(self) -> None:
        # buffered writes (tcpdump flushes at SIGTERM): one write per packet costs a VM CPU
        argv = ["tcpdump", "-i", self.ifname, "-n", "-B", "4096", "-s", str(SNAPLEN),
                "-Q", "in", "-w", str(self.path), "esp"]  # fmt: skip
        self.proc = subprocess.Popen(
            self.lab.command(self.host, argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 30.0  # until tcpdump has opened its file, or gave up
        while not self.path.exists() and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> list[EspArrival]:
        """Stop tcpdump and read what it wrote (empty, with ``error`` set, if it failed)."""
        proc, self.proc = self.proc, None
        if proc is None:  # never started, or stopped already
            return []
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        try:
            return parse_pcap(self.path.read_bytes())
        except (OSError, ValueError) as exc:
            self.error = f"{exc}; tcpdump said: {err.decode(errors='replace').strip()[-200:]}"
            return []
