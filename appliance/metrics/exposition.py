"""The metrics endpoint: ``GET /metrics`` in Prometheus' text format, from one thread.

One thread serves every scrape in turn (prometheus_client's own server
starts a thread per request): a scraper that floods or stalls the port
costs the daemon one thread, never many. Its name in /proc begins with
``ipsec-ha-metric``, as does every thread a collector works in (see
``live_reads``), so the bench measures what scraping costs by the CPU time
of the threads so named. A connection that sends nothing is dropped after
``REQUEST_TIMEOUT_S``.

The collectors read live objects at scrape time. A collector that fails
answers the scrape with 500 and a log line; the daemon carries on.
``stop`` closes the collectors that have a ``close`` (their threads).
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from appliance.errors import ApplianceError
from appliance.metrics.latency import HistogramSnapshot
from appliance.netns import name_this_thread

log = logging.getLogger("ipsec_ha.metrics")

REQUEST_TIMEOUT_S = 5.0
"""A scraper must send its request within this long."""
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text format, which every Prometheus 2.x parses (``generate_latest`` writes it)."""
THREAD_NAME = "ipsec-ha-metrics"
"""The serving thread's name; /proc keeps its first 15 bytes, ``ipsec-ha-metric``."""


def histogram_family(
    name: str,
    documentation: str,
    labels: Sequence[str],
    series: Mapping[tuple[str, ...], HistogramSnapshot],
) -> HistogramMetricFamily:
    """One Prometheus histogram family from ``LatencyHistogram`` snapshots keyed by label values."""
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    for values, snap in series.items():
        buckets = [("+Inf" if b == float("inf") else repr(b), n) for b, n in snap.buckets]
        family.add_metric(list(values), buckets, snap.sum)
    return family


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _MetricsHTTPServer
    timeout = REQUEST_TIMEOUT_S
    server_version = "ipsec-ha-metrics"
    sys_version = ""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._reply(200, b"ipsec-ha metrics: GET /metrics\n", "text/plain; charset=utf-8")
            return
        if path != "/metrics":
            self._reply(404, b"not found: the metrics are at /metrics\n", "text/plain")
            return
        try:
            body = generate_latest(self.server.registry)
        except Exception as exc:  # a collector bug must not take the daemon down
            log.warning("metrics: a collector failed: %s: %s", type(exc).__name__, exc)
            self._reply(500, b"a collector failed; see the daemon's log\n", "text/plain")
            return
        self._reply(200, body, CONTENT_TYPE)

    def _reply(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would drown the daemon's log


class _MetricsHTTPServer(http.server.HTTPServer):
    def __init__(self, address: tuple[str, int], registry: CollectorRegistry) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.registry = registry
        super().__init__(address, _Handler)


class MetricsEndpoint:
    """Serves the given collectors at ``http://ADDRESS:PORT/metrics`` until ``stop``."""

    def __init__(self, listen: tuple[str, int], collectors: Iterable[Collector]) -> None:
        self.listen = listen
        self.registry = CollectorRegistry(auto_describe=False)
        self._collectors = list(collectors)
        for collector in self._collectors:
            self.registry.register(collector)
        self._server: _MetricsHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve from a daemon thread; ``ApplianceError`` naming the address if not."""
        host, port = self.listen
        try:
            self._server = _MetricsHTTPServer((host, port), self.registry)
        except OSError as exc:
            shown = f"[{host}]" if ":" in host else host
            raise ApplianceError(
                f"metrics: cannot listen on {shown}:{port}: {exc.strerror or exc}"
            ) from None
        server = self._server
        named = threading.Event()

        def serve() -> None:
            name_this_thread(THREAD_NAME)
            named.set()
            server.serve_forever()

        self._thread = threading.Thread(target=serve, name=THREAD_NAME, daemon=True)
        self._thread.start()
        named.wait(timeout=5)
        host, port = self.address
        log.info("metrics at http://%s:%d/metrics", f"[{host}]" if ":" in host else host, port)

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the real port when ``listen`` asked for port 0)."""
        if self._server is None:
            return self.listen
        sockname = self._server.socket.getsockname()
        return str(sockname[0]), int(sockname[1])

    @property
    def thread_native_id(self) -> int | None:
        """The serving thread's kernel TID (its CPU time is in /proc/self/task/TID/stat)."""
        return None if self._thread is None else self._thread.native_id

    def stop(self) -> None:
        """Stop serving, then close the collectors (no scrape runs by then)."""
        if self._server is not None:
            self._server.shutdown()
            with contextlib.suppress(OSError):
                self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for collector in self._collectors:
            close = getattr(collector, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception as exc:  # the daemon is stopping: say so, stop the rest
                log.warning("metrics: closing a collector failed: %s: %s", type(exc).__name__, exc)


__all__ = [
    "REQUEST_TIMEOUT_S",
    "THREAD_NAME",
    "MetricsEndpoint",
    "histogram_family",
]
