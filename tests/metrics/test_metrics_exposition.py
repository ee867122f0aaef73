"""The metrics endpoint: one thread, /metrics in the text format, clear errors."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from appliance.errors import ApplianceError
from appliance.metrics.config import parse_listen
from appliance.metrics.exposition import MetricsEndpoint, histogram_family
from appliance.metrics.latency import LatencyHistogram

pytestmark = pytest.mark.unit


class _Gauge:
    def __init__(self) -> None:
        self.value = 1.0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("test_value", "A value the test sets.", labels=["kind"])
        family.add_metric(["a"], self.value)
        yield family


class _Broken:
    def collect(self) -> Iterator[GaugeMetricFamily]:
        raise RuntimeError("collector bug")


def _get(endpoint: MetricsEndpoint, path: str = "/metrics") -> tuple[int, str, str]:
    host, port = endpoint.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def gauge() -> Iterator[tuple[_Gauge, MetricsEndpoint]]:
    collector = _Gauge()
    endpoint = MetricsEndpoint(("127.0.0.1", 0), [collector])
    endpoint.start()
    try:
        yield collector, endpoint
    finally:
        endpoint.stop()


def test_a_scrape_reads_the_collectors_at_that_moment(
    gauge: tuple[_Gauge, MetricsEndpoint],
) -> None:
    collector, endpoint = gauge
    for value in (1.0, 42.0):
        collector.value = value
        status, content_type, text = _get(endpoint)
        assert status == 200 and content_type == "text/plain; version=0.0.4; charset=utf-8"
        (family,) = text_string_to_metric_families(text)
        assert [(s.labels, s.value) for s in family.samples] == [({"kind": "a"}, value)]


def test_other_paths_are_not_found(gauge: tuple[_Gauge, MetricsEndpoint]) -> None:
    _, endpoint = gauge
    assert _get(endpoint, "/")[0] == 200
    status, _, text = _get(endpoint, "/admin")
    assert status == 404 and "/metrics" in text


def test_the_serving_thread_is_named_and_known(gauge: tuple[_Gauge, MetricsEndpoint]) -> None:
    _, endpoint = gauge
    tid = endpoint.thread_native_id
    assert tid is not None
    with open(f"/proc/self/task/{tid}/comm") as f:
        assert f.read().strip() == "ipsec-ha-metric"  # comm keeps 15 characters


def test_a_failing_collector_answers_500_and_the_endpoint_keeps_serving() -> None:
    endpoint = MetricsEndpoint(("127.0.0.1", 0), [_Broken()])
    endpoint.start()
    try:
        assert _get(endpoint)[0] == 500
        assert _get(endpoint)[0] == 500
    finally:
        endpoint.stop()


class _Closing(_Gauge):
    def __init__(self, log: list[str], fail: bool = False) -> None:
        super().__init__()
        self.log, self.fail = log, fail

    def close(self) -> None:
        self.log.append(f"closed while serving: {self.serving()}")
        if self.fail:
            raise OSError("cannot close")

    def serving(self) -> bool:
        return bool(self.endpoint and self.endpoint.thread_native_id is not None)

    endpoint: MetricsEndpoint | None = None


def test_stop_closes_the_collectors_that_close_after_serving_ends() -> None:
    log: list[str] = []
    failing, closing = _Closing(log, fail=True), _Closing(log)
    endpoint = MetricsEndpoint(("127.0.0.1", 0), [failing, _Gauge(), closing])
    failing.endpoint = closing.endpoint = endpoint
    endpoint.start()
    assert _get(endpoint)[0] == 200
    endpoint.stop()
    # a collector that fails to close does not keep the next one open
    assert log == ["closed while serving: False", "closed while serving: False"]


def test_a_port_in_use_is_an_error_naming_the_address() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(ApplianceError, match=rf"cannot listen on 127\.0\.0\.1:{port}"):
            MetricsEndpoint(("127.0.0.1", port), []).start()
    finally:
        holder.close()


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:9641", ("127.0.0.1", 9641)),
        ("[::1]:9641", ("::1", 9641)),
        ("[2001:db8::1]:1", ("2001:db8::1", 1)),
        ("::1:9641", None),  # unbracketed IPv6: the port would be ambiguous
        ("[127.0.0.1]:9641", None),
        ("localhost:9641", None),  # no name to resolve at start-up
        ("127.0.0.1", None),
        ("127.0.0.1:0", None),
        ("127.0.0.1:65536", None),
        ("127.0.0.1:+80", None),
        ("127.0.0.1: 80", None),
        (9641, None),
    ],
)
def test_parse_listen(text: object, parsed: tuple[str, int] | None) -> None:
    assert parse_listen(text) == parsed


def test_histogram_family_renders_cumulative_buckets_with_an_inf_bound() -> None:
    h = LatencyHistogram((0.01, 0.1))
    h.observe(0.005)
    h.observe(0.5)
    family = histogram_family("x_seconds", "Doc.", ["store"], {("192.0.2.1",): h.snapshot()})
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("x_seconds_bucket", "0.01")] == 1
    assert samples[("x_seconds_bucket", "0.1")] == 1
    assert samples[("x_seconds_bucket", "+Inf")] == 2
    assert samples[("x_seconds_count", None)] == 2
    assert samples[("x_seconds_sum", None)] == pytest.approx(0.505)
