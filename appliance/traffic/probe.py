"""Sequence-numbered UDP probes for the lab: the packet format and the receiver's books.

Sans-IO: bytes and timestamps in, counts and arrival records out; the
sockets and the clock live in ``appliance.traffic.udp``.

A probe is a fixed 24-byte header, big-endian, padded to the requested size::

    magic "IHAT" (4) | flow id (u32) | sequence number (u64) | send time, ns (u64)

The send time is CLOCK_MONOTONIC, which is system wide, so that arrival
times from processes in different network namespaces (and the notify log's
``monotonic``) share one time line.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from appliance.errors import ApplianceError

MAGIC = b"IHAT"
_HEADER = struct.Struct(">4sIQQ")
HEADER_SIZE = _HEADER.size
MAX_PROBE_SIZE = 65507


class TrafficError(ApplianceError):
    """Bad traffic input: a malformed probe, a bad rate or a bad result file."""


class Probe(NamedTuple):
    """One decoded probe."""

    flow: int
    seq: int
    send_ns: int


def encode_probe(flow: int, seq: int, send_ns: int, size: int = HEADER_SIZE) -> bytes:
    """The probe's bytes, zero-padded to ``size``."""
    if not HEADER_SIZE <= size <= MAX_PROBE_SIZE:
        raise TrafficError(f"probe size must be {HEADER_SIZE}..{MAX_PROBE_SIZE} bytes, not {size}")
    try:
        header = _HEADER.pack(MAGIC, flow, seq, send_ns)
    except struct.error:
        raise TrafficError(
            f"probe field out of range (flow {flow}, seq {seq}, send_ns {send_ns})"
        ) from None
    return header.ljust(size, b"\0")


def decode_probe(data: bytes) -> Probe:
    """Parse a probe; anything else raises ``TrafficError``."""
    if len(data) < HEADER_SIZE:
        raise TrafficError(f"probe too short: {len(data)} bytes, need {HEADER_SIZE}")
    magic, flow, seq, send_ns = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise TrafficError(f"not a probe (magic {magic!r})")
    return Probe(flow, seq, send_ns)


class Arrival(NamedTuple):
    """One received probe: its sequence number, when it was sent and when it arrived."""

    seq: int
    send_ns: int
    recv_ns: int


@dataclass
class FlowReceiver:
    """The receiving side of one flow: counts and per-packet arrival records.

    Sequence numbers start at 0. ``lost`` counts the numbers below the
    highest seen that never arrived; packets lost after the last one that
    arrived are only known to the sender (``lost_with_sent``).
    """

    flow: int
    received: int = 0
    """Distinct sequence numbers received."""
    duplicates: int = 0
    reordered: int = 0
    """Arrived after a higher sequence number (and not duplicates)."""
    highest: int = -1
    arrivals: list[Arrival] = field(default_factory=list)
    """Every non-duplicate arrival, in arrival order."""
    _seen: set[int] = field(default_factory=set, repr=False)

    def receive(self, probe: Probe, recv_ns: int) -> bool:
        """Book ``probe``; return False if it was a duplicate."""
        if probe.seq in self._seen:
            self.duplicates += 1
            return False
        self._seen.add(probe.seq)
        self.received += 1
        if probe.seq < self.highest:
            self.reordered += 1
        else:
            self.highest = probe.seq
        self.arrivals.append(Arrival(probe.seq, probe.send_ns, recv_ns))
        return True

    @property
    def lost(self) -> int:
        """Sequence numbers below the highest one seen that never arrived."""
        return self.highest + 1 - self.received

    def lost_with_sent(self, sent: int) -> int:
        """Lost packets when the sender says it sent ``sent`` (0..sent-1)."""
        in_range = sum(1 for seq in self._seen if seq < sent)
        return sent - in_range

    def stats(self) -> dict[str, int]:
        """The counters, JSON-ready."""
        return {
            "received": self.received,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "highest_seq": self.highest,
        }


@dataclass
class Receiver:
    """Probes from any number of flows; anything that is not a probe is counted, not booked."""

    flows: dict[int, FlowReceiver] = field(default_factory=dict)
    malformed: int = 0

    def receive(self, data: bytes, recv_ns: int) -> Probe | None:
        """Book one datagram; return its probe, or None if it was not one."""
        try:
            probe = decode_probe(data)
        except TrafficError:
            self.malformed += 1
            return None
        flow = self.flows.get(probe.flow)
        if flow is None:
            flow = self.flows[probe.flow] = FlowReceiver(probe.flow)
        flow.receive(probe, recv_ns)
        return probe


@dataclass
class RateSchedule:
    """When to send: ``rate`` probes per second from ``start_ns`` for ``duration_ns``.

    Probe ``n`` is due at ``start_ns + n / rate``. A sender that fell behind
    (a stall) sends what is due at once rather than stretching the run.
    """

    rate: float
    start_ns: int
    duration_ns: int
    sent: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.rate <= 1_000_000:
            raise TrafficError(f"rate must be 0 < PPS <= 1000000, not {self.rate}")
        if self.duration_ns <= 0:
            raise TrafficError("duration must be positive")

    @property
    def total(self) -> int:
        """Probes in the whole run."""
        return max(1, int(self.duration_ns * self.rate // 1_000_000_000))

    def due(self, now_ns: int) -> int:
        """How many probes to send now (the caller sends them and calls ``mark_sent``)."""
        if now_ns < self.start_ns:
            return 0
        target = int((now_ns - self.start_ns) * self.rate // 1_000_000_000) + 1
        return max(0, min(target, self.total) - self.sent)

    def mark_sent(self, count: int) -> None:
        self.sent += count

    def next_due_ns(self) -> int | None:
        """When the next probe is due, or None when all are."""
        if self.sent >= self.total:
            return None
        return self.start_ns + math.ceil(self.sent * 1_000_000_000 / self.rate)

    @property
    def done(self) -> bool:
        return self.sent >= self.total
