"""What a daemon scrape reads live from the served namespace: xfrm_stat and the guard's counters.

A scrape a second must cost the daemon little, so these reads keep what
can be kept between scrapes:

- one worker thread inside the namespace (``appliance.netns.NetnsWorker``),
  started at the first read, instead of a fresh thread per read;
- one libnftables context, made in that thread and only used there (its
  netlink socket belongs to the namespace), instead of a fresh one per read
  (each loads the library's symbols anew);
- one listing of the guard's named counters, whose absence is the absent
  table (no ``list tables`` first), and the held SPI set only when
  on-demand retrieval keeps it.

Its thread's name begins with ``ipsec-ha-metric`` in /proc, as the
endpoint's does, so that the bench counts its CPU time as the scrape's.
``close`` stops it (``MetricsEndpoint.stop`` closes the collector).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from appliance.metrics.xfrm_stat import read_xfrm_stat
from appliance.netns import NetnsWorker
from appliance.nft import libnft
from appliance.nft.render import SPI_SET, TABLE
from appliance.nft.status import parse_listing

WORKER_THREAD_NAME = "ipsec-ha-metrics-netns"
"""In /proc: ``ipsec-ha-metric`` (comm keeps 15 bytes), like the endpoint's thread."""


@dataclass(frozen=True)
class GuardCounters:
    """What the scrape reads of the guard's table: its named counters and held SPIs."""

    counters: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Counter name -> (packets, bytes); empty when the table is absent."""
    held_spis: int | None = None
    """SPIs in the held set (None: not read, the on-demand retrieval is off, or no table)."""


class LiveReader:
    """The live reads of one namespace (``None``: the daemon's own), from one worker thread.

    Thread-safe: the reads of concurrent callers run one after the other in
    the worker. A read that fails raises; the next read tries again (a
    namespace that could not be entered is entered anew). Each read is of
    the namespace the name stands for at that moment: once it is removed
    the reads fail, as entering it would, and once it is made anew a new
    worker enters the new one.
    """

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._lock = threading.Lock()
        self._worker: NetnsWorker | None = None
        self._in_worker = threading.local()
        """``nft``: the libnftables context of the worker's thread, made there, used only there
        and freed when it ends."""
        self._closed = False

    def xfrm_stat(self) -> dict[str, int]:
        """The namespace's ``xfrm_stat`` counters ({} on a kernel that keeps none)."""
        return read_xfrm_stat(self._started())

    def guard_counters(self, with_held: bool) -> GuardCounters:
        """The guard's named counters; ``with_held``: also count its held SPI set."""
        return self._started().run(lambda: self._read_guard(with_held))

    def close(self) -> None:
        """Stop the worker, and with it its libnftables context (idempotent)."""
        with self._lock:
            self._closed = True
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()

    def _started(self) -> NetnsWorker:
        with self._lock:
            if self._closed:
                raise ValueError("the metrics' live reader is closed")
            if self._worker is not None and not self._worker.is_current():
                self._worker.close()
                self._worker = None
            if self._worker is None:
                self._worker = NetnsWorker(self.netns, WORKER_THREAD_NAME)
            return self._worker

    def _read_guard(self, with_held: bool) -> GuardCounters:
        """In the worker: one listing of the counters, and of the held set if asked."""
        nft = getattr(self._in_worker, "nft", None)
        if nft is None:
            nft = self._in_worker.nft = libnft.new_context()
        netns = self.netns
        items = libnft.list_json_if_present(nft, f"list counters table {TABLE}", netns)
        if items is None:
            return GuardCounters()
        counters = {
            n: (v.packets, v.bytes) for n, v in parse_listing(netns, items).counters.items()
        }
        if not with_held:
            return GuardCounters(counters)
        items = libnft.list_json_if_present(nft, f"list set {TABLE} {SPI_SET}", netns)
        if items is None:  # the table went between the two listings
            return GuardCounters()
        return GuardCounters(counters, len(parse_listing(netns, items).held_spis))


__all__ = ["WORKER_THREAD_NAME", "GuardCounters", "LiveReader"]
