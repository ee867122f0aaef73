"""From arrival records to what the failover demo reports: gaps, losses, packets per 10 ms.

Pure functions over ``Arrival`` records (CLOCK_MONOTONIC ns), except
``plot_rate``, which writes a PNG with matplotlib (imported lazily, Agg
backend, so that nothing else needs it or a display).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.traffic.probe import Arrival, TrafficError

RESULT_FORMAT = "ipsec-ha/traffic-v1"


@dataclass(frozen=True)
class DirectionSummary:
    """One direction of traffic around a failover."""

    received: int
    lost: int
    """Sequence numbers never received (up to ``sent`` when known, else the highest seen)."""
    reordered: int
    max_gap_ms: float
    """Longest time between two consecutive arrivals."""
    gap_start_ms: float | None
    """Start of that gap, relative to the failover time (None without one)."""
    gap_end_ms: float | None
    lost_ranges: list[tuple[int, int]]
    """Missing sequence numbers as inclusive ranges (at most 20 listed)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def missing_ranges(seqs: Sequence[int], upto: int) -> list[tuple[int, int]]:
    """Inclusive ranges of 0..upto-1 absent from ``seqs``."""
    present = sorted({s for s in seqs if 0 <= s < upto})
    ranges = []
    expected = 0
    for seq in present:
        if seq > expected:
            ranges.append((expected, seq - 1))
        expected = seq + 1
    if expected < upto:
        ranges.append((expected, upto - 1))
    return ranges


def analyse(
    arrivals: Sequence[Arrival], failover_ns: int | None = None, sent: int | None = None
) -> DirectionSummary:
    """Summarise one direction; ``sent`` (from the sender's result) counts tail losses too."""
    seqs = [a.seq for a in arrivals]
    distinct = set(seqs)
    upto = sent if sent is not None else (max(seqs) + 1 if seqs else 0)
    ranges = missing_ranges(seqs, upto)
    lost = sum(hi - lo + 1 for lo, hi in ranges)
    reordered = 0
    highest = -1
    for seq in seqs:
        if seq < highest:
            reordered += 1
        highest = max(highest, seq)
    times = sorted(a.recv_ns for a in arrivals)
    max_gap = 0
    gap_at: tuple[int, int] | None = None
    for before, after in itertools.pairwise(times):
        if after - before > max_gap:
            max_gap, gap_at = after - before, (before, after)
    origin = failover_ns if failover_ns is not None else (times[0] if times else 0)
    return DirectionSummary(
        received=len(distinct),
        lost=lost,
        reordered=reordered,
        max_gap_ms=max_gap / 1e6,
        gap_start_ms=(gap_at[0] - origin) / 1e6 if gap_at else None,
        gap_end_ms=(gap_at[1] - origin) / 1e6 if gap_at else None,
        lost_ranges=ranges[:20],
    )


def rate_histogram(
    arrivals: Sequence[Arrival], origin_ns: int, end_ns: int, bin_ms: int = 10
) -> list[int]:
    """Packets that arrived in each ``bin_ms`` bin from ``origin_ns`` up to ``end_ns``."""
    if bin_ms <= 0:
        raise TrafficError(f"bin width must be positive, not {bin_ms} ms")
    width = bin_ms * 1_000_000
    bins = [0] * max(0, -(-(end_ns - origin_ns) // width))
    for arrival in arrivals:
        index = (arrival.recv_ns - origin_ns) // width
        if 0 <= index < len(bins):
            bins[index] += 1
    return bins


def plot_rate(
    directions: Mapping[str, Sequence[Arrival]],
    path: str | os.PathLike[str],
    failover_ns: int | None = None,
    bin_ms: int = 10,
    title: str = "packets per 10 ms",
) -> Path:
    """Write a PNG: packets per ``bin_ms`` over time, one line per direction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_times = [a.recv_ns for arrivals in directions.values() for a in arrivals]
    if not all_times:
        raise TrafficError("nothing to plot: no packet arrived in any direction")
    origin = min(all_times)
    end = max(all_times) + 1
    zero = failover_ns if failover_ns is not None else origin
    figure, axes = plt.subplots(figsize=(10, 4))
    try:
        for label, arrivals in directions.items():
            bins = rate_histogram(arrivals, origin, end, bin_ms)
            xs = [(origin - zero) / 1e9 + i * bin_ms / 1000 for i in range(len(bins))]
            axes.step(xs, bins, where="post", label=label, linewidth=0.9)
        if failover_ns is not None:
            axes.axvline(0.0, color="red", linestyle="--", linewidth=0.8, label="failover")
        axes.set_xlabel("time (s)" + (" from failover" if failover_ns is not None else ""))
        axes.set_ylabel(f"packets per {bin_ms} ms")
        axes.set_title(title)
        axes.legend(loc="lower right")
        axes.grid(True, alpha=0.3)
        figure.tight_layout()
        out = Path(path)
        figure.savefig(out, dpi=100)
    finally:
        plt.close(figure)
    return out


def load_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a result file written by ``ipsec-ha traffic``; check its format."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise TrafficError(f"cannot read traffic result {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise TrafficError(f"traffic result {path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != RESULT_FORMAT:
        raise TrafficError(f"{path} is not an {RESULT_FORMAT} result")
    return data


def flow_arrivals(result: Mapping[str, Any], flow: int | None = None) -> list[Arrival]:
    """The arrival records of one received flow of a result (the only one if ``flow`` is None)."""
    flows = result.get("received", [])
    if flow is None:
        if len(flows) > 1:
            raise TrafficError("the result holds several flows; name one")
        if not flows:
            return []
        chosen = flows[0]
    else:
        matches = [f for f in flows if f.get("flow") == flow]
        if not matches:
            return []
        chosen = matches[0]
    try:
        return [Arrival(int(s), int(t), int(r)) for s, t, r in chosen["arrivals"]]
    except (KeyError, TypeError, ValueError):
        raise TrafficError("malformed arrival records in traffic result") from None
