"""The failover daemon's Prometheus metrics, read from its live objects at scrape time.

A scrape costs no store request and no kernel dump: the role, epochs and
counters are read from the daemon and its ``DaemonHealth`` (which the
health probe, the follower and the publisher fill between scrapes), the
store clients' own counters are summed per store. Only two things are read
live, both small: the kernel's ``xfrm_stat`` of the served namespace and the
nftables guard's named counters (and, with on-demand retrieval, its held
SPI set), by a ``LiveReader`` that keeps its thread in that namespace
between scrapes (``close`` stops it). A live read that fails gives no
samples and one log line, not an error per scrape.

The metric names are the contract with docs/operations.md ("Monitoring and
readiness") and the dashboards; see there for each one's meaning.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from appliance.metrics.exposition import histogram_family
from appliance.metrics.latency import HistogramSnapshot
from appliance.metrics.live_reads import GuardCounters, LiveReader

log = logging.getLogger("ipsec_ha.metrics")

ROLES = ("init", "active", "standby")


def merge_histograms(snaps: Iterable[HistogramSnapshot]) -> HistogramSnapshot | None:
    """The sum of histograms with the same buckets (None when there are none)."""
    merged: HistogramSnapshot | None = None
    for snap in snaps:
        if merged is None:
            merged = snap
            continue
        buckets = tuple(
            (bound, a + b) for (bound, a), (_, b) in zip(merged.buckets, snap.buckets, strict=True)
        )
        merged = HistogramSnapshot(buckets, merged.count + snap.count, merged.sum + snap.sum)
    return merged


class DaemonCollector:
    """Yields the daemon's metrics (``ipsec_ha_*``) for a ``MetricsEndpoint``.

    ``daemon`` is a ``FailoverDaemon`` (or anything with its attributes);
    the live reads (by default a ``LiveReader`` of ``daemon.config.netns``)
    are injectable for tests.
    """

    def __init__(
        self,
        daemon: Any,
        *,
        xfrm_stat: Callable[[], dict[str, int]] | None = None,
        guard: Callable[[bool], GuardCounters] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.daemon = daemon
        self._reader = LiveReader(daemon.config.netns)
        self._read_xfrm_stat = xfrm_stat or self._reader.xfrm_stat
        self._read_guard = guard or self._reader.guard_counters
        self._clock = clock
        self._failed: set[str] = set()
        self._failed_lock = threading.Lock()

    def close(self) -> None:
        """Stop the live reader's thread (the endpoint's ``stop`` calls this)."""
        self._reader.close()

    def describe(self) -> list[Metric]:
        return []  # the families depend on the state: nothing to describe up front

    def collect(self) -> Iterator[Metric]:
        d = self.daemon
        sid = d.config.node.server_id
        health = d.health.snapshot()
        role = str(getattr(d.role, "value", d.role))

        info = GaugeMetricFamily(
            "ipsec_ha_info", "This daemon: node, served server ID, standby mode.",
            labels=["node", "server_id", "mode"],
        )  # fmt: skip
        info.add_metric([d.config.node.id, sid, d.config.failover.mode.value], 1)
        yield info

        role_family = GaugeMetricFamily(
            "ipsec_ha_role", "1 for the node's current role, 0 for the others.",
            labels=["server_id", "role"],
        )  # fmt: skip
        for name in ROLES:
            role_family.add_metric([sid, name], 1 if name == role else 0)
        yield role_family

        yield _gauge("ipsec_ha_fenced", "1 while active but refused by every store (split brain).",
                     ["server_id"], {(sid,): 1 if d.fenced else 0})  # fmt: skip

        epochs = dict(d.epochs) if role == "active" else {}
        yield _gauge(
            "ipsec_ha_epoch", "The epoch this node holds at each store while active.",
            ["server_id", "store"], {(sid, store): ep for store, ep in epochs.items()},
        )  # fmt: skip

        yield from self._store_probes(sid, health)

        yield _gauge("ipsec_ha_held_sas", "SAs of the served state this node's kernel holds "
                     "(as last known).", ["server_id"], {(sid,): health.held_sas})  # fmt: skip
        yield _gauge("ipsec_ha_held_policies", "Policies of the served state this node's kernel "
                     "holds (as last known).", ["server_id"],
                     {(sid,): health.held_policies})  # fmt: skip

        lag: dict[tuple[str, ...], float] = {}
        synced: dict[tuple[str, ...], float] = {}
        if health.last_sync_monotonic is not None:
            if role != "active":
                lag[(sid,)] = max(0.0, self._clock() - health.last_sync_monotonic)
            if health.last_sync_unix is not None:
                synced[(sid,)] = health.last_sync_unix
        yield _gauge("ipsec_ha_standby_lag_seconds", "Seconds since the standby was last in step "
                     "with the store (hot: the last follow's fetch; cold: the last store probe).",
                     ["server_id"], lag)  # fmt: skip
        yield _gauge("ipsec_ha_last_sync_timestamp_seconds", "Unix time of that last sync.",
                     ["server_id"], synced)  # fmt: skip
        yield _counter(
            "ipsec_ha_follower_polls", "Hot standby polls of the store's change feed, by what "
            "they brought (unchanged, changes, whole: a whole retrieval).",
            ["server_id", "result"],
            {(sid, result): n for result, n in health.follow_polls.items()},
        )  # fmt: skip
        revision = {} if health.follow_revision is None else {(sid,): health.follow_revision}
        yield _gauge("ipsec_ha_follower_revision", "The store revision the hot standby's copy "
                     "is current to (its last poll).", ["server_id"], revision)  # fmt: skip

        yield _counter(
            "ipsec_ha_transitions", "Transitions run, by VRRP state (FENCED, RECLAIM: the "
            "split-brain plans) and result.", ["server_id", "state", "result"],
            {(sid, state, result): n for (state, result), n in health.transitions.items()},
        )  # fmt: skip
        yield _counter(
            "ipsec_ha_takeovers", "MASTER transitions that were to make this node active.",
            ["server_id", "result"], {(sid, r): n for r, n in health.takeovers.items()},
        )  # fmt: skip
        yield histogram_family(
            "ipsec_ha_takeover_duration_seconds", "Takeovers: MASTER received to plan done.",
            ["server_id"], {(sid,): health.takeover_duration},
        )  # fmt: skip
        yield _gauge(
            "ipsec_ha_last_takeover_step_seconds", "Seconds each step of the last takeover took.",
            ["server_id", "step"],
            {(sid, step): s for step, s in health.last_takeover_steps.items()},
        )  # fmt: skip
        last = {} if health.last_takeover_unix is None else {(sid,): health.last_takeover_unix}
        yield _gauge("ipsec_ha_last_takeover_timestamp_seconds",
                     "Unix time the last takeover's MASTER was received.", ["server_id"],
                     last)  # fmt: skip
        yield _counter(
            "ipsec_ha_sync_messages", "Store operations of the publisher, by store, op, result.",
            ["store", "op", "result"], dict(health.sync_messages),
        )  # fmt: skip

        yield from self._store_clients()
        yield from self._kernel(d)
        yield from self._ike(d, sid)
        yield from self._gate_lease(d, sid)

    # -- parts ---------------------------------------------------------------------

    @staticmethod
    def _store_probes(sid: str, health: Any) -> Iterator[Metric]:
        up: dict[tuple[str, ...], float] = {}
        epoch: dict[tuple[str, ...], float] = {}
        sas: dict[tuple[str, ...], float] = {}
        pols: dict[tuple[str, ...], float] = {}
        for store, probe in health.stores.items():
            up[(store,)] = 1 if probe.up else 0
            if probe.up:
                epoch[(sid, store)] = probe.epoch or 0
                sas[(sid, store)] = probe.sas or 0
                pols[(sid, store)] = probe.policies or 0
        yield _gauge("ipsec_ha_store_up", "1 if the store answered the last health probe.",
                     ["store"], up)  # fmt: skip
        labels = ["server_id", "store"]
        yield _gauge("ipsec_ha_store_epoch", "The store's epoch for the server ID (last probe).",
                     labels, epoch)  # fmt: skip
        yield _gauge("ipsec_ha_store_sas", "SAs the store holds for the server ID (last probe).",
                     labels, sas)  # fmt: skip
        yield _gauge("ipsec_ha_store_policies",
                     "Policies the store holds for the server ID (last probe).",
                     labels, pols)  # fmt: skip

    def _clients(self) -> list[Any]:
        """Every store client of the daemon: its own, the follower's, the probe's, on-demand's."""
        d = self.daemon
        clients = list(d.stores)
        follower = getattr(d, "follower", None)
        if follower is not None:
            clients += follower.clients
        clients += getattr(d, "probe_clients", [])
        ondemand = getattr(d, "ondemand", None)
        if ondemand is not None:
            clients += ondemand.installer.stores
        return clients

    def _store_clients(self) -> Iterator[Metric]:
        retransmissions: Counter[tuple[str, ...]] = Counter()
        drops: Counter[tuple[str, ...]] = Counter()
        rtts: dict[str, list[HistogramSnapshot]] = {}
        for client in self._clients():
            store = str(client.server)
            retransmissions[(store,)] += int(getattr(client, "retransmissions", 0))
            for reason, n in getattr(client, "channel_drops", {}).items():
                drops[(store, reason)] += n
            rtt = getattr(client, "rtt", None)
            if rtt is not None:
                rtts.setdefault(store, []).append(rtt.snapshot())
        yield _counter("ipsec_ha_store_retransmissions", "Requests sent again (all of this "
                       "node's clients of the store).", ["store"], retransmissions)  # fmt: skip
        merged = {(store,): merge_histograms(snaps) for store, snaps in rtts.items()}
        yield histogram_family(
            "ipsec_ha_store_rtt_seconds", "Store round trips (answered first transmissions only).",
            ["store"], {k: v for k, v in merged.items() if v is not None},
        )  # fmt: skip
        yield _counter("ipsec_ha_channel_drops", "Datagrams from the store the channel dropped, "
                       "by reason.", ["store", "reason"], drops)  # fmt: skip

    def _kernel(self, d: Any) -> Iterator[Metric]:
        xfrm: dict[tuple[str, ...], float] = {}
        stats = self._live("xfrm_stat", self._read_xfrm_stat)
        for name, value in (stats or {}).items():
            xfrm[(name,)] = value
        yield _counter("ipsec_ha_kernel_xfrm_stat", "The kernel's xfrm_stat counters of the "
                       "served namespace.", ["counter"], xfrm)  # fmt: skip

        ondemand = getattr(d, "ondemand", None)
        guard = self._live("nft guard", lambda: self._read_guard(ondemand is not None))
        packets: dict[tuple[str, ...], float] = {}
        octets: dict[tuple[str, ...], float] = {}
        for name, (p, b) in (guard.counters if guard else {}).items():
            packets[(name,)] = p
            octets[(name,)] = b
        yield _counter("ipsec_ha_guard_packets", "Packets the nftables guard's named counters "
                       "counted.", ["counter"], packets)  # fmt: skip
        yield _counter("ipsec_ha_guard_bytes", "Bytes the nftables guard's named counters "
                       "counted.", ["counter"], octets)  # fmt: skip

        if ondemand is None:
            return
        events: dict[tuple[str, ...], float] = {}
        status = ondemand.status()
        for name, value in status.items():
            if name == "queue_num":
                continue
            if isinstance(value, int) and not isinstance(value, bool):
                events[(name,)] = value
        for name, value in (status.get("sas") or {}).items():
            events[(f"sa_{name}",)] = value
        yield _counter("ipsec_ha_ondemand_events", "On-demand retrieval: packets and retrievals "
                       "(sa_*: what the retrieved SAs came to).", ["event"], events)  # fmt: skip
        held = {} if guard is None or guard.held_spis is None else {(): guard.held_spis}
        yield _gauge("ipsec_ha_ondemand_held_spis", "SPIs in the guard's held set.", [],
                     held)  # fmt: skip

    @staticmethod
    def _ike(d: Any, sid: str) -> Iterator[Metric]:
        """With ``[ike]``: what the relay of charon's ha plugin holds and did."""
        ike = getattr(d, "ike", None)
        if ike is None:
            return
        st = ike.status()
        key = (sid,)
        yield _gauge("ipsec_ha_ike_sas", "IKE SAs charon reported through its ha plugin (the "
                     "relay's book).", ["server_id"], {key: st["ike_sas"]})  # fmt: skip
        yield _gauge("ipsec_ha_ike_child_sas", "CHILD SAs of those IKE SAs.", ["server_id"],
                     {key: st["child_sas"]})  # fmt: skip
        yield _gauge("ipsec_ha_ike_book_complete", "1 once the relay saw charon start: it "
                     "knows every IKE SA charon holds.", ["server_id"],
                     {key: 1 if st["complete"] else 0})  # fmt: skip
        datagrams = {(sid, "received"): st["received"]}
        datagrams.update({(sid, f"dropped: {why}"): n for why, n in st["dropped"].items()})
        yield _counter("ipsec_ha_ike_datagrams", "Datagrams from charon's ha plugin: received, "
                       "and dropped by reason.", ["server_id", "result"],
                       datagrams)  # fmt: skip
        yield _counter("ipsec_ha_ike_records_published", "IKE SA records and deletions sent to "
                       "the stores while active.", ["server_id"],
                       {key: st["published"]})  # fmt: skip
        silent = {} if st["silent_s"] is None else {key: st["silent_s"]}
        yield _gauge("ipsec_ha_ike_charon_silent_seconds", "Seconds since charon's ha plugin "
                     "last sent anything (it sends a heartbeat every second).", ["server_id"],
                     silent)  # fmt: skip
        net = st["safety_net"]
        outcomes = {(sid, k): net[k] for k in ("checks", "errors", "initiated",
                                               "initiate_failed", "lost")}  # fmt: skip
        yield _counter("ipsec_ha_ike_safety_net", "The check of charon's IKE SAs after each "
                       "takeover: checks, errors (charon not asked), IKE and CHILD SAs "
                       "initiated again or failed, IKE SAs lost.", ["server_id", "outcome"],
                       outcomes)  # fmt: skip
        yield _counter("ipsec_ha_ike_charon_restarts", "charon restarts that lost IKE SAs while "
                       "the node was active (given back from the store).", ["server_id"],
                       {key: st["charon_restarts"]})  # fmt: skip

    @staticmethod
    def _gate_lease(d: Any, sid: str) -> Iterator[Metric]:
        """With the nftables gate's lease: whether the daemon keeps it, and its renewals."""
        gate: Any = getattr(getattr(d, "executor", None), "gate", None)
        # Duck-typed (``failover.gate_lease.LeasedGate``): metrics sit below failover.
        counters = getattr(gate, "counters", None)
        if counters is None or not hasattr(gate, "is_open"):
            return
        key = (sid,)
        yield _gauge("ipsec_ha_gate_lease_open", "1 while the outbound gate is open and the "
                     "daemon renews its lease.", ["server_id"],
                     {key: 1 if gate.is_open else 0})  # fmt: skip
        yield _counter("ipsec_ha_gate_lease_renewals", "Renewals of the open gate's lease, by "
                       "result (a failed one lets the gate close at the lease's end).",
                       ["server_id", "result"],
                       {(sid, "ok"): counters.renewals,
                        (sid, "failed"): counters.failures})  # fmt: skip

    def _live(self, what: str, read: Callable[[], Any]) -> Any:
        """``read()``, or None with one warning per kind of failure (a scrape goes on)."""
        try:
            result = read()
        except Exception as exc:
            key = f"{what}: {type(exc).__name__}"
            with self._failed_lock:
                first = key not in self._failed
                self._failed.add(key)
            (log.warning if first else log.debug)("metrics: %s not read: %s", what, exc)
            return None
        return result


def _gauge(
    name: str, doc: str, labels: list[str], samples: Mapping[Any, float]
) -> GaugeMetricFamily:
    """One gauge family; ``samples`` maps label values (a tuple) to the value."""
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples.items():
        family.add_metric(list(values), value)
    return family


def _counter(
    name: str, doc: str, labels: list[str], samples: Mapping[Any, float]
) -> CounterMetricFamily:
    """``name`` without ``_total``: prometheus_client appends it."""
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, value in samples.items():
        family.add_metric(list(values), value)
    return family


__all__ = ["DaemonCollector", "GuardCounters", "merge_histograms"]
