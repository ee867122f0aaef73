"""The store server's metrics (``ipsec-ha store serve``, ``[metrics] listen``).

Read at scrape time, on the metrics endpoint's thread:

- the server's loop-owned figures (datagrams, drops, associations) through
  ``StoreServer.live``, which copies them on the event loop's thread: the
  loop runs one short copy, the scrape waits for it;
- request counts and backend latencies, which the backend threads fill
  under locks of their own;
- the per-server-ID counts from the backend, read where the server itself
  reads (``StoreServer.backend_read``: a reader thread with SQLite, the
  writer thread with etcd) and kept for ``max_age_s``, so that a scrape
  flood costs the backend at most one read per ``max_age_s``.

The names are the contract of docs/store.md, "Metrics".
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from appliance.channel.events import DropReason
from appliance.metrics.exposition import histogram_family
from appliance.store.base import SaStore, ServerStats

if TYPE_CHECKING:
    from appliance.store.server import StoreServer

log = logging.getLogger("ipsec_ha.metrics")

STATS_MAX_AGE_S = 1.0
"""Per-server-ID counts are read from the backend at most once per this many seconds."""
STATS_WAIT_S = 5.0
"""A scrape waits this long for the backend's answer, then shows the last one it had."""
MAX_SERVER_IDS = 100_000
"""Server IDs listed at most (one backend call; the store holds far fewer in practice)."""
UNDECODABLE_REQUEST = "undecodable-request"
"""The drop reason of an authenticated datagram that is no request (counted by the server)."""


def _all_server_stats(store: SaStore) -> tuple[ServerStats, ...]:
    return store.server_stats(0, MAX_SERVER_IDS)


class StoreServerCollector:
    """``ipsec_ha_store_server_*`` from a live ``StoreServer``."""

    def __init__(
        self,
        server: StoreServer,
        max_age_s: float = STATS_MAX_AGE_S,
        wait_s: float = STATS_WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self.max_age_s = max_age_s
        self.wait_s = wait_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stats: tuple[ServerStats, ...] | None = None
        self._stats_read_at = 0.0
        self._pending: concurrent.futures.Future[tuple[ServerStats, ...]] | None = None
        self._failing = False

    def collect(self) -> Iterator[Metric]:
        server = self.server
        live = server.live()

        info = GaugeMetricFamily(
            "ipsec_ha_store_server_info",
            "This store server: its backend and its node ID in the channel handshake.",
            labels=["backend", "node"],
        )
        info.add_metric([server.cfg.backend, server.cfg.node_id], 1)
        yield info

        requests = CounterMetricFamily(
            "ipsec_ha_store_server_requests",
            "Requests answered, by exchange and by the status of the answer "
            "(ok or the error status); retransmissions answered from the cache are not counted.",
            labels=["exchange", "status"],
        )
        for (exchange, status), n in sorted(server.service.response_counts().items()):
            requests.add_metric([exchange, status], n)
        yield requests

        yield GaugeMetricFamily(
            "ipsec_ha_store_server_associations",
            "Live channel associations (half-open ones included).",
            value=live.associations,
        )
        yield GaugeMetricFamily(
            "ipsec_ha_store_server_half_open",
            "Associations whose client has not yet sent its first datagram "
            "(limited by max_half_open_per_address).",
            value=live.half_open,
        )
        yield histogram_family(
            "ipsec_ha_store_server_backend_seconds",
            "Seconds per backend call: write = one group commit holding an SA_Stor, "
            "read = one read-only request (a group of them with etcd).",
            ["operation"],
            {(op,): h.snapshot() for op, h in server.backend_seconds.items()},
        )
        yield from self._per_server()

        drops = CounterMetricFamily(
            "ipsec_ha_store_server_channel_drops",
            "Datagrams dropped, by reason: the channel's (malformed, auth-failed, replayed, ...) "
            "and undecodable-request (authenticated, but no request).",
            labels=["reason"],
        )
        counted = {reason.value: 0 for reason in DropReason}
        counted.update(live.channel_drops)
        counted[UNDECODABLE_REQUEST] = live.undecodable
        for reason, n in sorted(counted.items()):
            drops.add_metric([reason], n)
        yield drops

        yield CounterMetricFamily(
            "ipsec_ha_store_server_datagrams_received",
            "UDP datagrams received (valid or not).",
            value=live.datagrams_received,
        )
        yield CounterMetricFamily(
            "ipsec_ha_store_server_retransmits_answered",
            "Retransmitted requests answered from the response cache (not applied again).",
            value=live.retransmits_answered,
        )

    def _per_server(self) -> Iterator[Metric]:
        sas = GaugeMetricFamily(
            "ipsec_ha_store_server_sas", "SAs stored per server ID.", labels=["server_id"]
        )
        policies = GaugeMetricFamily(
            "ipsec_ha_store_server_policies",
            "Policies stored per server ID.",
            labels=["server_id"],
        )
        ike_sas = GaugeMetricFamily(
            "ipsec_ha_store_server_ike_sas",
            "IKE SAs stored per server ID (a node relaying charon's IKE state).",
            labels=["server_id"],
        )
        epoch = GaugeMetricFamily(
            "ipsec_ha_store_server_epoch",
            "The owner epoch of each server ID.",
            labels=["server_id"],
        )
        for s in self.server_stats() or ():
            sas.add_metric([s.server_id], s.sas)
            policies.add_metric([s.server_id], s.policies)
            ike_sas.add_metric([s.server_id], s.ike_sas)
            epoch.add_metric([s.server_id], s.epoch)
        yield from (sas, policies, ike_sas, epoch)

    def server_stats(self) -> tuple[ServerStats, ...] | None:
        """Every server ID's counts, at most ``max_age_s`` old when the backend answers.

        A backend slower than ``wait_s`` leaves the read running for the next
        scrape and shows the last counts; a backend that fails shows none
        (the error is logged once, until it answers again).
        """
        with self._lock:
            if self._stats is not None and self._clock() - self._stats_read_at < self.max_age_s:
                return self._stats
            if self._pending is None:
                try:
                    self._pending = self.server.backend_read(_all_server_stats)
                except RuntimeError as exc:  # the server is shutting down
                    log.info("metrics: no per-server counts: %s", exc)
                    return self._stats
            try:
                stats = self._pending.result(timeout=self.wait_s)
            except concurrent.futures.TimeoutError:
                log.warning(
                    "metrics: the backend took over %.1f s for the server counts", self.wait_s
                )
                return self._stats
            except Exception as exc:
                self._pending = None
                if not self._failing:
                    log.warning("metrics: cannot read the server counts: %s", exc)
                self._failing = True
                self._stats = None
                return None
            self._pending = None
            self._failing = False
            self._stats, self._stats_read_at = stats, self._clock()
            return stats


__all__ = ["StoreServerCollector"]
