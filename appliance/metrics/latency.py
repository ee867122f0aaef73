"""A latency histogram with fixed buckets, filled by the product and read by a collector.

Prometheus histograms are cumulative; this keeps per-bucket counts and
turns them cumulative when read, so ``observe`` is one bisect and one add
under a lock (it runs on the store client's and the store server's hot
paths).
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Seconds: from a loopback round trip (under a millisecond) to a retried exchange."""


@dataclass(frozen=True)
class HistogramSnapshot:
    """What a histogram held at one moment."""

    buckets: tuple[tuple[float, int], ...]
    """(upper bound, cumulative count), the last bound being +Inf."""
    count: int
    sum: float


class LatencyHistogram:
    """Observations in seconds, counted per bucket; safe to fill from several threads."""

    def __init__(self, bounds: Sequence[float] = DEFAULT_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("histogram bounds must be distinct and increasing")
        self._bounds = tuple(float(b) for b in bounds)
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        slot = bisect.bisect_left(self._bounds, seconds)
        with self._lock:
            self._counts[slot] += 1
            self._sum += seconds

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self._bounds, math.inf), counts, strict=True):
            running += n
            cumulative.append((bound, running))
        return HistogramSnapshot(tuple(cumulative), running, total)


__all__ = ["DEFAULT_BUCKETS", "HistogramSnapshot", "LatencyHistogram"]
