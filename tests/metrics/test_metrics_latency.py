"""LatencyHistogram: per-bucket counts read back cumulative, as Prometheus wants them."""

from __future__ import annotations

import math
import threading

import pytest

from appliance.metrics.latency import LatencyHistogram

pytestmark = pytest.mark.unit


def test_observations_land_in_the_first_bucket_whose_bound_is_not_below_them() -> None:
    h = LatencyHistogram((0.001, 0.01, 0.1))
    for seconds in (0.0005, 0.001, 0.002, 0.05, 3.0):
        h.observe(seconds)
    snap = h.snapshot()
    # a value equal to a bound counts in that bucket (le = "less or equal")
    assert snap.buckets == ((0.001, 2), (0.01, 3), (0.1, 4), (math.inf, 5))
    assert snap.count == 5
    assert snap.sum == pytest.approx(3.0535)


def test_an_empty_histogram_reads_as_zeros() -> None:
    snap = LatencyHistogram((1.0,)).snapshot()
    assert snap.buckets == ((1.0, 0), (math.inf, 0))
    assert (snap.count, snap.sum) == (0, 0.0)


@pytest.mark.parametrize("bounds", [(), (0.1, 0.01), (0.1, 0.1)])
def test_bounds_must_be_distinct_and_increasing(bounds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="distinct and increasing"):
        LatencyHistogram(bounds)


def test_observations_from_several_threads_are_all_counted() -> None:
    h = LatencyHistogram()

    def fill() -> None:
        for _ in range(5000):
            h.observe(0.002)

    threads = [threading.Thread(target=fill) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert h.snapshot().count == 20_000
