"""On-demand SA retrieval (draft section 4.4), sans-IO.

Inbound ESP whose SPI this node does not hold is queued to us by the
guard's trap.  For each packet the core decides: start one retrieval
(SA_Retr by SPI) for its (destination, SPI), hold it behind a retrieval
already under way, or give a verdict at once.  When the retrieval ends the
held packets all get the same verdict: accept (the caller has installed
the SA, the kernel now decrypts them) or drop.

After a successful retrieval the SPI must go into the guard's held set so
that its packets stop trapping; but packets that bypass the queue overtake
those still in it, and more than the SA's replay window of them makes the
kernel refuse the older ones as replays.  So the core asks for that
(:class:`Hold`) only once the queue is drained: the adapter calls
:meth:`OnDemandCore.handle_idle` when it has read the queue dry after
giving the core everything it read, by when every packet of the SPI has
had its verdict (the positive cache accepts them at once).  A queue that
never runs dry still gets the SPI held after :func:`hold_fallback`.

Inputs are packets, retrieval results, "the queue is drained" and the time;
outputs are :class:`Retrieve`, :class:`Verdict` and :class:`Hold` commands
and :class:`OnDemandCounters`.  The time must not go backwards (a monotonic
clock): timers are kept in start order.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field

from appliance.ondemand.packet import EspPacket, MalformedPacket, parse_outer

RetrievalKey = tuple[str, int]
"""(destination address, SPI): what one retrieval fetches."""

HOLD_FALLBACK = 5.0
"""Seconds after a successful retrieval when its SPI is held even if the queue never ran
dry (at most half of ``positive_ttl``: the other half covers the time the hold takes)."""


@dataclass(frozen=True, slots=True)
class OnDemandLimits:
    """The bounds that keep a flood of made-up SPIs from overloading the store or us."""

    rate: float = 20.0
    """Retrievals started per second, on average (token bucket)."""
    burst: int = 40
    """Retrievals that may start at once above the rate (the bucket's size)."""
    timeout: float = 2.0
    """Seconds a retrieval may take; then its packets are dropped."""
    max_held_per_spi: int = 64
    """Packets held behind one retrieval; more are dropped."""
    max_in_flight: int = 256
    """Retrievals under way at once; more packets for new SPIs are dropped."""
    negative_ttl: float = 5.0
    """Seconds a failed (or timed-out) retrieval is remembered: its packets are dropped unasked."""
    positive_ttl: float = 30.0
    """Seconds packets of a just-retrieved SA are accepted unasked (those queued before the
    SPI reached the held set).  It must cover the time until the SPI is held: up to
    :func:`hold_fallback`, plus the hold itself (libnftables is slow on a slow machine:
    seconds, in the lab VM); a shorter one starts another retrieval, whose held packets
    then lose against newer ones in the SA's replay window."""

    def __post_init__(self) -> None:
        for name in ("rate", "timeout", "negative_ttl", "positive_ttl"):
            value = getattr(self, name)
            if not value > 0 or value == float("inf"):
                raise ValueError(f"ondemand.{name}: {value!r} is not a positive finite number")
        for name in ("burst", "max_held_per_spi", "max_in_flight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ondemand.{name}: {value!r} is not an integer of at least 1")


@dataclass(frozen=True, slots=True)
class Retrieve:
    """Fetch the SA (``daddr``, ``spi``, ESP) with its SPD entries and install it; then
    report with ``handle_result(request_id, ok, now)`` (a :class:`Hold` follows later)."""

    request_id: int
    spi: int
    daddr: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """Give the kernel the verdict for one queued packet."""

    packet_id: int
    accept: bool


@dataclass(frozen=True, slots=True)
class Hold:
    """Add ``spi`` to the held set (after giving the verdicts that came before this command):
    none of its packets waits in the queue any more."""

    spi: int
    daddr: str


Command = Retrieve | Verdict | Hold


def hold_fallback(limits: OnDemandLimits) -> float:
    """Seconds after a successful retrieval by when its SPI is held whatever the queue."""
    return min(HOLD_FALLBACK, limits.positive_ttl / 2)


@dataclass(slots=True)
class OnDemandCounters:
    """What happened to the queued packets and the retrievals.

    Every queued packet ends in exactly one of ``accepted``, ``malformed``
    and the ``dropped_*`` counters, or is still held.
    """

    queued: int = 0
    """Packets received from the queue."""
    accepted: int = 0
    """Accept verdicts (after a successful retrieval, in the positive cache, or not ESP)."""
    not_esp: int = 0
    """Of ``accepted``: IKE, NAT-keepalives and other packets that need no SA."""
    dropped_unknown: int = 0
    """Dropped: the store does not have the SA (or failed), now or within ``negative_ttl``."""
    dropped_rate_limited: int = 0
    """Dropped: a new retrieval was needed above the rate or ``max_in_flight``."""
    dropped_timeout: int = 0
    """Dropped: their retrieval took longer than ``timeout``."""
    dropped_overflow: int = 0
    """Dropped: more than ``max_held_per_spi`` were waiting for one retrieval."""
    malformed: int = 0
    """Dropped: no SPI could be read."""
    retrievals: int = 0
    """Retrievals started."""
    retrieval_failures: int = 0
    """Retrievals that ended with failure (not counting timeouts)."""
    retrieval_timeouts: int = 0
    """Retrievals that did not end within ``timeout``."""
    late_results: int = 0
    """Results that came after their retrieval had timed out (its packets were dropped).
    A late success is remembered like a timely one and its SPI held."""
    holds: int = 0
    """SPIs handed over to be held (:class:`Hold`)."""
    holds_forced: int = 0
    """Of ``holds``: held after :func:`hold_fallback` without the queue running dry."""
    queue_overruns: int = 0
    """Times the kernel could not hand us packets (socket buffer full); set by the adapter."""

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class _Flight:
    key: RetrievalKey
    deadline: float
    packets: list[int] = field(default_factory=list)


class OnDemandCore:
    """The decisions; see the module docstring.  Not thread-safe."""

    def __init__(self, limits: OnDemandLimits | None = None, now: float = 0.0) -> None:
        self.limits = limits or OnDemandLimits()
        self.counters = OnDemandCounters()
        self._tokens = float(self.limits.burst)
        self._stamp = now
        self._next_id = 1
        self._flights: dict[int, _Flight] = {}  # by request id, in start order
        self._by_key: dict[RetrievalKey, int] = {}
        # Expiry times; constant TTLs keep insertion order = expiry order.
        self._negative: OrderedDict[RetrievalKey, float] = OrderedDict()
        self._positive: OrderedDict[RetrievalKey, float] = OrderedDict()
        self._hold_after = hold_fallback(self.limits)
        # Retrieved, not held yet: key -> when to hold it anyway.  The positive cache, which
        # outlives the entry, answers the key's packets meanwhile.
        self._to_hold: OrderedDict[RetrievalKey, float] = OrderedDict()
        # Timed-out retrievals, to know the key of a late success; bounded, oldest out.
        self._timed_out: OrderedDict[int, RetrievalKey] = OrderedDict()

    @property
    def held(self) -> int:
        """Packets waiting for a retrieval to end."""
        return sum(len(f.packets) for f in self._flights.values())

    @property
    def in_flight(self) -> int:
        """Retrievals under way."""
        return len(self._flights)

    @property
    def awaiting_hold(self) -> int:
        """Retrieved SAs whose SPI is waiting for the queue to run dry."""
        return len(self._to_hold)

    def snapshot(self) -> OnDemandCounters:
        """A copy of the counters."""
        return dataclasses.replace(self.counters)

    def handle_packet(self, packet_id: int, data: bytes, now: float) -> list[Command]:
        """A packet from the queue: what to do now."""
        c = self.counters
        c.queued += 1
        self._expire(now)
        try:
            parsed = parse_outer(data)
        except MalformedPacket:
            c.malformed += 1
            return [Verdict(packet_id, False)]
        if not isinstance(parsed, EspPacket):
            c.not_esp += 1
            c.accepted += 1
            return [Verdict(packet_id, True)]
        key = (parsed.daddr, parsed.spi)
        if key in self._positive:
            c.accepted += 1
            return [Verdict(packet_id, True)]
        if key in self._negative:
            c.dropped_unknown += 1
            return [Verdict(packet_id, False)]
        request_id = self._by_key.get(key)
        if request_id is not None:
            flight = self._flights[request_id]
            if len(flight.packets) >= self.limits.max_held_per_spi:
                c.dropped_overflow += 1
                return [Verdict(packet_id, False)]
            flight.packets.append(packet_id)
            return []
        if len(self._flights) >= self.limits.max_in_flight or not self._take_token(now):
            c.dropped_rate_limited += 1
            return [Verdict(packet_id, False)]
        request_id = self._next_id
        self._next_id += 1
        self._flights[request_id] = _Flight(key, now + self.limits.timeout, [packet_id])
        self._by_key[key] = request_id
        c.retrievals += 1
        return [Retrieve(request_id, parsed.spi, parsed.daddr)]

    def handle_result(self, request_id: int, ok: bool, now: float) -> list[Command]:
        """A retrieval ended: ``ok`` means the SA is installed (its SPI not held yet)."""
        c = self.counters
        self._expire(now)
        flight = self._flights.pop(request_id, None)
        if flight is None:
            c.late_results += 1
            key = self._timed_out.pop(request_id, None)
            if ok and key is not None and key not in self._by_key:
                # Installed after all: accept its packets and hold it like a timely one
                # (a retrieval under way for the key will report for itself).
                self._negative.pop(key, None)
                self._retrieved(key, now)
            return []  # the timeout gave the verdicts
        del self._by_key[flight.key]
        if ok:
            self._retrieved(flight.key, now)
            c.accepted += len(flight.packets)
        else:
            self._remember_failure(flight.key, now)
            c.retrieval_failures += 1
            c.dropped_unknown += len(flight.packets)
        return [Verdict(p, ok) for p in flight.packets]

    def handle_idle(self, now: float) -> list[Command]:
        """The adapter read the queue dry after handing over everything it had read, and
        gives the verdicts returned so far before acting on these: hold the SPIs of the
        SAs retrieved since (their packets have all had their verdicts)."""
        # A key with a retrieval under way again (the loop stalled past the positive cache)
        # waits for that one's result.
        commands: list[Command] = [
            Hold(spi, daddr) for daddr, spi in self._to_hold if (daddr, spi) not in self._by_key
        ]
        self.counters.holds += len(commands)
        self._to_hold.clear()
        return commands

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must run next (``None``: nothing pending)."""
        timers = [flight.deadline for flight in self._flights.values()][:1]  # first ends first
        timers += [deadline for deadline in self._to_hold.values()][:1]
        return min(timers, default=None)

    def handle_timer(self, now: float) -> list[Command]:
        """Drop the packets of retrievals that have run out of time; hold the SPIs that
        waited :func:`hold_fallback` for the queue to run dry."""
        commands: list[Command] = []
        while self._flights:
            request_id, flight = next(iter(self._flights.items()))
            if flight.deadline > now:
                break
            del self._flights[request_id]
            del self._by_key[flight.key]
            self._remember_failure(flight.key, now)
            self._timed_out[request_id] = flight.key
            if len(self._timed_out) > self.limits.max_in_flight:
                self._timed_out.popitem(last=False)
            self.counters.retrieval_timeouts += 1
            self.counters.dropped_timeout += len(flight.packets)
            commands.extend(Verdict(p, False) for p in flight.packets)
        while self._to_hold:
            (daddr, spi), deadline = next(iter(self._to_hold.items()))
            if deadline > now:
                break
            del self._to_hold[(daddr, spi)]
            if (daddr, spi) in self._by_key:
                continue  # as in handle_idle
            self.counters.holds += 1
            self.counters.holds_forced += 1
            commands.append(Hold(spi, daddr))
        return commands

    def _retrieved(self, key: RetrievalKey, now: float) -> None:
        self._positive.pop(key, None)
        self._positive[key] = now + self.limits.positive_ttl
        if key not in self._to_hold:
            self._to_hold[key] = now + self._hold_after

    def _remember_failure(self, key: RetrievalKey, now: float) -> None:
        self._negative.pop(key, None)
        self._negative[key] = now + self.limits.negative_ttl

    def _take_token(self, now: float) -> bool:
        elapsed = max(0.0, now - self._stamp)
        self._stamp = max(self._stamp, now)
        self._tokens = min(float(self.limits.burst), self._tokens + elapsed * self.limits.rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _expire(self, now: float) -> None:
        for cache in (self._negative, self._positive):
            while cache:
                key, expiry = next(iter(cache.items()))
                if expiry > now:
                    break
                del cache[key]
