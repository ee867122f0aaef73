"""Benchmark: what scraping the daemon's metrics costs while a hot standby follows N SA pairs.

The acceptance of issue 17: one scrape per second while 10,000 SAs are
followed costs the daemon under 5% of one core. This builds the lab of
``bench/failover.py`` (its ``Run``: keepalived, a store and a daemon on each
gateway, N SA pairs installed on gw1 in one batch, gw2 a hot standby that
waits until its kernel holds all of it), with ``[metrics]`` on in gw2's
daemon (and gw2's store, when the store server has metrics), then:

1. **reference**: a window of ``--seconds`` with no scrape at all;
2. **scraped**: a window of the same length in which a scraper in the lab's
   ``server`` namespace (another namespace, over the inside segment) GETs
   gw2's ``/metrics`` once per second. The two windows alternate in
   ``--rounds`` parts each (reference, scraped, reference, ...), so that a
   drift in the follower's own load weighs on both;
3. optionally (``--takeover``, the default) it keeps scraping while gw1 is
   killed and gw2 takes over (``bench/failover.py``'s own failover and
   checks), and ``--tail`` seconds after, so that a recording shows a
   takeover.

Two figures, both as percent of one core over a window:

- **metrics thread**: the CPU time (utime + stime in
  ``/proc/PID/task/TID/stat``) summed over ALL the daemon's threads whose
  comm starts with ``ipsec-ha-metric``: the thread that serves ``/metrics``
  (``MetricsEndpoint`` names it ``ipsec-ha-metrics``; comm keeps 15
  characters) and every thread a scrape makes work (the collector's worker
  in the served namespace, ``ipsec-ha-metrics-netns``), so that work a
  scrape causes in a helper thread is counted as the scrape's. The threads
  are listed again at the end of each window: one born during it counts
  from zero; one that ended during it is lost (its times go with it). Should
  no thread have that name (a daemon that does not name them), the serving
  thread is found by a calibration burst instead: a few seconds of
  back-to-back scrapes against a window as long without, and the thread
  whose CPU grew most beyond its idle growth is it; the table says which way
  it was found.
- **daemon**: the whole process (utime + stime, plus cutime + cstime: the
  children it waited for, e.g. an ``nft`` it ran), scraped window against
  the reference window of the same run. The difference is what scraping
  costs the daemon, plus whatever else changed between the windows (the
  follower's own load varies): read it together with the thread figure.

Both windows are also split by thread group (``thread_group``: the event
loop, the metrics threads, the unnamed pool threads, any other by name, and
``rest``: threads that ended in the window and waited-for children),
and the follower's polls of each window are counted from gw2's status
file: only when none brought changes or a whole retrieval ("follower quiet
in every window") does the difference weigh the scrapes alone.
``bench/metrics_cold.py`` runs the same windows (``measure``) on the host's
own CPU, against a cold standby that follows the SAs in memory.

The scraper's side: scrape size (bytes, series: sample lines) and the p50 and
p99 of the scrape latency it saw (connect to last byte). Only ratios and
percentages; no time is asserted. ``--record PATH`` writes every scrape (both
windows' and the takeover's) as JSON lines ``{"time", "target", "status",
"latency_s", "text"}``: ``scripts/dashboard-render`` draws the Grafana
dashboard of ``docs/grafana/`` from it.

It needs root and a kernel with ESP: run it in the lab VM (setting up 10,000
pairs in hot mode takes minutes under emulation; see docs/failover.md)::

    flock /tmp/ipsec-ha-vm.lock scripts/lab-vm --timeout 2400 -- \\
        .venv/bin/python bench/metrics.py --pairs 10000 --max-datagram 65000 \\
        --hthresh4 24 24 --notify-timeout 300 --record .cache/bench-metrics/10000.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

# Run as a script, this file's folder is on the path, not the repository's: bench.failover
# (whose lab run this one extends) is imported as the tests import it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.errors import ApplianceError, LabError
from bench import failover

DAEMON_PORT = 9641
STORE_PORT = 9642
"""The contract's default ports: the daemon's and the store server's ``[metrics]``."""
REST_GROUP = "rest"
"""The daemon's CPU in a window that no live thread's own stat holds: threads that ended
in it, and children it waited for (the whole process's figure minus the groups')."""
METRICS_THREAD_COMM = "ipsec-ha-metric"
"""How the comm of every metrics thread starts (``ipsec-ha-metrics``, ``ipsec-ha-metrics-netns``:
comm holds 15 characters)."""
SCRAPE_TIMEOUT_S = 10.0
CALIBRATION_S = 5.0
BUDGET_PCT = 5.0
"""The acceptance: under 5% of one core."""
QUIET_POLLS_PER_S = 0.5
"""A quiet follower polls about once a second (``follow_interval_s``; a poll that brings
nothing is quick): a window part with fewer polls than this per second is not quiet."""
SCRAPER_HOST = "server"
"""The lab host the scraper runs in: on the inside segment, as gw2's metrics address."""


# -- /proc (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class TaskTimes:
    """CPU time of one task (thread) or process, in clock ticks, from its ``stat``."""

    utime: int
    stime: int
    cutime: int = 0
    """Waited-for children (a process's stat; a thread's stat has its process's)."""
    cstime: int = 0

    @property
    def own(self) -> int:
        return self.utime + self.stime

    @property
    def with_children(self) -> int:
        return self.utime + self.stime + self.cutime + self.cstime


def parse_stat(text: str) -> TaskTimes:
    """``/proc/PID/stat`` or ``/proc/PID/task/TID/stat`` -> its CPU times.

    The second field, comm, is in parentheses and may hold spaces and
    parentheses itself: the fields are counted from the last ``)``.
    """
    close = text.rfind(")")
    if close < 0:
        raise ValueError(f"not a /proc stat line: {text[:80]!r}")
    rest = text[close + 1 :].split()
    # rest[0] is field 3 (state); utime, stime, cutime, cstime are fields 14..17.
    if len(rest) < 15:
        raise ValueError(f"a /proc stat line with {len(rest) + 2} fields: {text[:80]!r}")
    utime, stime, cutime, cstime = (int(v) for v in rest[11:15])
    return TaskTimes(utime, stime, cutime, cstime)


def percent_of_core(ticks: int, seconds: float, hz: int) -> float:
    """``ticks`` of CPU time over ``seconds`` of wall time, as percent of one core."""
    if seconds <= 0 or hz <= 0:
        raise ValueError("a window needs a positive length and clock rate")
    return 100.0 * ticks / hz / seconds


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank; None without values."""
    if not values:
        return None
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a quantile is 0..1, not {q}")
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def count_series(text: str) -> int:
    """The sample lines of a Prometheus text exposition (neither comments nor blank)."""
    return sum(1 for line in text.splitlines() if line.strip() and not line.startswith("#"))


def most_grown(before: Mapping[int, int], after: Mapping[int, int]) -> int | None:
    """The task whose ticks grew most between two snapshots (tasks in both only)."""
    grown = {tid: after[tid] - before[tid] for tid in after if tid in before}
    if not grown:
        return None
    return max(grown, key=lambda tid: (grown[tid], -tid))


def grown_ticks(before: Mapping[int, int], after: Mapping[int, int]) -> int:
    """The ticks a set of threads grew by: one not in ``before`` (born since) counts from 0."""
    return sum(ticks - before.get(tid, 0) for tid, ticks in after.items())


def thread_group(tid: int, comm: str, pid: int, main_comm: str) -> str:
    """Which part of the daemon a thread is, for the per-thread table.

    ``main`` is the event loop (the thread-group leader); ``metrics`` every
    thread named ``ipsec-ha-metric*``; ``workers`` the unnamed ones (Python
    leaves a thread's comm as its process's: ``asyncio.to_thread``'s pool,
    the follower's fetches and follow runs among them); any other by its name.
    """
    if tid == pid:
        return "main"
    if comm.startswith(METRICS_THREAD_COMM):
        return "metrics"
    if comm == main_comm or comm.startswith("asyncio_"):  # Python 3.14 names its threads
        return "workers"
    return comm


def grown_by_group(
    before: Mapping[int, tuple[str, int]], after: Mapping[int, tuple[str, int]], pid: int
) -> dict[str, int]:
    """The ticks each group of threads grew by between two snapshots (tid -> (comm, ticks)).

    A thread born in between counts from zero; one that ended is lost (its
    ticks went with it: a process's stat still has them, its own does not).
    """
    main_comm = (after.get(pid) or before.get(pid) or ("", 0))[0]
    out: dict[str, int] = {}
    for tid, (comm, ticks) in after.items():
        group = thread_group(tid, comm, pid, main_comm)
        out[group] = out.get(group, 0) + ticks - before.get(tid, (comm, 0))[1]
    return out


def counter_increase(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """How much each of a set of counters grew (one new since counts from zero)."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def calibrated_thread(
    idle: tuple[Mapping[int, int], Mapping[int, int]],
    burst: tuple[Mapping[int, int], Mapping[int, int]],
) -> int | None:
    """The thread that grew most in a scrape burst beyond what it grew in an idle window."""
    idle_growth = {tid: idle[1][tid] - idle[0][tid] for tid in idle[1] if tid in idle[0]}
    burst_growth = {tid: burst[1][tid] - burst[0][tid] for tid in burst[1] if tid in burst[0]}
    extra = {tid: g - idle_growth.get(tid, 0) for tid, g in burst_growth.items()}
    if not extra or max(extra.values()) <= 0:
        return None
    return max(extra, key=lambda tid: (extra[tid], -tid))


def cpu_probe(rounds: int = 200) -> float:
    """CPU seconds of one round of a fixed scrape-like workload, to compare machines.

    One round formats 100 series in 20 families with prometheus_client, as a
    scrape does. ``--cpu-probe`` prints it alone: run there and on the host, the
    ratio says how much slower Python runs in the (emulated) VM than on the host.
    """
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    class Fixed:
        def collect(self) -> Any:
            for i in range(20):
                family = GaugeMetricFamily(f"probe_{i}", "a probe", labels=["a", "b"])
                for j in range(5):
                    family.add_metric([str(j), "x"], j)
                yield family

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    start = time.process_time()
    for _ in range(rounds):
        generate_latest(registry)
    return (time.process_time() - start) / rounds


# -- /proc (the daemon's process) -----------------------------------------------------


def read_times(pid: int, tid: int | None = None) -> TaskTimes:
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        return parse_stat(f.read())


def thread_snapshot(pid: int) -> dict[int, tuple[str, int]]:
    """Each live thread's comm and utime + stime (a thread may end while it is read: skipped)."""
    out: dict[int, tuple[str, int]] = {}
    for entry in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{entry}/comm") as f:
                comm = f.read().strip()
            out[int(entry)] = (comm, read_times(pid, int(entry)).own)
        except (OSError, ValueError):
            continue
    return out


def thread_times(pid: int) -> dict[int, int]:
    """Each live thread's utime + stime."""
    return {tid: ticks for tid, (_, ticks) in thread_snapshot(pid).items()}


def named_ticks(
    snapshot: Mapping[int, tuple[str, int]], prefix: str = METRICS_THREAD_COMM
) -> dict[int, int]:
    """The ticks of a snapshot's threads whose comm starts with ``prefix``."""
    return {tid: ticks for tid, (comm, ticks) in snapshot.items() if comm.startswith(prefix)}


def daemon_pid(launcher_pid: int) -> int:
    """The daemon's pid: the launcher's (``nsenter`` execs it), or its only child if it forked."""
    for pid in (launcher_pid, *_children(launcher_pid)):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"appliance" in argv and b"daemon" in argv:
            return pid
    raise LabError(f"no ipsec-ha daemon at pid {launcher_pid} or among its children")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


# -- the scraper ----------------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    """One GET of one target's /metrics, as the scraper saw it."""

    time: float
    """Unix time the request started."""
    target: str
    status: int | None
    latency_s: float
    """Connect to the last byte of the reply."""
    text: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


def parse_reply(raw: bytes) -> tuple[int, str]:
    """An HTTP/1.x reply read to its end -> (status, body text)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("no end of the reply's header")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP status line: {status_line!r}")
    return int(parts[1]), body.decode("utf-8", errors="replace")


def scrape_once(target: str, address: tuple[str, int], timeout: float = SCRAPE_TIMEOUT_S) -> Scrape:
    """GET http://ADDRESS/metrics over a fresh connection (in the caller's namespace)."""
    started_wall = time.time()
    started = time.perf_counter()
    host, port = address
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(f"GET /metrics HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        status, text = parse_reply(b"".join(chunks))
    except (OSError, ValueError) as exc:
        return Scrape(started_wall, target, None, time.perf_counter() - started, "", str(exc))
    return Scrape(started_wall, target, status, time.perf_counter() - started, text)


def recording_line(scrape: Scrape) -> str:
    """One line of a recording (``scripts/dashboard-render`` reads these)."""
    return json.dumps(
        {
            "time": round(scrape.time, 3),
            "target": scrape.target,
            "status": scrape.status,
            "latency_s": round(scrape.latency_s, 6),
            "error": scrape.error,
            "text": scrape.text,
        }
    )


class Scraper:
    """Scrapes each target once per ``interval`` from a thread inside ``netns``; keeps every scrape.

    Targets are scraped one after the other, each period starting on the
    period's mark (a slow scrape delays the next, it does not pile them up).
    """

    def __init__(
        self,
        netns: str,
        targets: Mapping[str, tuple[str, int]],
        interval: float = 1.0,
        recording: IO[str] | None = None,
    ) -> None:
        self.netns, self.targets, self.interval = netns, dict(targets), interval
        self.recording = recording
        self.scrapes: list[Scrape] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def _keep(self, scrape: Scrape) -> None:
        with self._lock:
            self.scrapes.append(scrape)
            if self.recording is not None:
                self.recording.write(recording_line(scrape) + "\n")
                self.recording.flush()

    def _loop(self) -> None:
        start = time.monotonic()
        k = 0
        while not self._stop.is_set():
            for target, address in self.targets.items():
                self._keep(scrape_once(target, address))
            k += 1
            self._stop.wait(max(0.0, start + k * self.interval - time.monotonic()))

    def _run(self) -> None:
        from appliance.netns import run_in_netns

        try:
            run_in_netns(self.netns, self._loop)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bench-scraper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=SCRAPE_TIMEOUT_S * (1 + len(self.targets)))
            self._thread = None
        if self.error is not None:
            raise LabError(f"the scraper failed: {self.error}")

    def burst(self, target: str, seconds: float) -> list[Scrape]:
        """Back-to-back scrapes of one target for ``seconds`` (the calibration), recorded too."""
        from appliance.netns import run_in_netns

        def loop() -> list[Scrape]:
            out = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                out.append(scrape_once(target, self.targets[target]))
                self._keep(out[-1])
            return out

        return run_in_netns(self.netns, loop)

    def since(self, index: int, target: str) -> list[Scrape]:
        with self._lock:
            return [s for s in self.scrapes[index:] if s.target == target]

    def mark(self) -> int:
        with self._lock:
            return len(self.scrapes)


# -- the result -----------------------------------------------------------------------


@dataclass
class Result:
    """One run: the figures, or why there are none."""

    pairs: int
    seconds: float
    ok: bool = False
    followed_label: str = "SA pairs followed (hot standby)"
    """What ``pairs`` counts (``bench/metrics_cold.py``: SAs, in a cold standby's memory)."""
    error: str | None = None
    hz: int = 100
    scrapes: int = 0
    failed_scrapes: int = 0
    size_bytes: int | None = None
    series: int | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    metrics_thread_pct: float | None = None
    """Every metrics thread's CPU (comm ``ipsec-ha-metric*``) summed, over the scraped windows."""
    metrics_thread_found: str | None = None
    """``named`` (their comm) or ``calibrated`` (a scrape burst); None: not found."""
    metrics_threads: int | None = None
    """How many threads the metrics thread figure sums (at the end of the scraped windows)."""
    daemon_scraped_pct: float | None = None
    daemon_reference_pct: float | None = None
    threads_pct: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per window kind: each group of the daemon's threads (``thread_group``), % of one core."""
    follow_polls: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per window kind: the hot standby's polls of the change feed, by what they brought (its
    status file's ``health.follow_polls``): a whole retrieval costs far more than a poll."""
    parts: list[dict[str, Any]] = field(default_factory=list)
    """Each window part in turn: kind, seconds, daemon % of one core, polls."""
    windows_s: dict[str, float] = field(default_factory=dict)
    """The measured windows' real lengths."""
    setup_s: dict[str, float] = field(default_factory=dict)
    takeover_ms: dict[str, float] = field(default_factory=dict)
    """gw2's takeover timeline under scraping (--takeover), ms after MASTER."""
    takeover_error: str | None = None
    recording: str | None = None
    cpu_probe_ms: float | None = None
    """``cpu_probe`` in the machine that ran the bench (compare with ``--cpu-probe`` elsewhere)."""

    @property
    def daemon_difference_pct(self) -> float | None:
        if self.daemon_scraped_pct is None or self.daemon_reference_pct is None:
            return None
        return round(self.daemon_scraped_pct - self.daemon_reference_pct, 3)

    @property
    def follower_quiet(self) -> bool | None:
        """Every window's polls brought nothing (None: not known).

        Only then does the difference weigh scraping alone: a poll that brings
        changes or a whole retrieval costs the daemon far more than a scrape,
        and in one kind of window only it would be read as the scrape's.
        """
        if not self.parts or any("follow_polls" not in part for part in self.parts):
            return None
        return all(
            set(part["follow_polls"]) <= {"unchanged"}
            # A poll is counted when it ends: a part with few polls may hold a long one
            # (a whole retrieval) that ended only after it.
            and part["follow_polls"].get("unchanged", 0) >= QUIET_POLLS_PER_S * part["seconds"]
            for part in self.parts
        )

    @property
    def metrics_thread_ms_per_scrape(self) -> float | None:
        """The metrics thread's CPU time per scrape of the scraped window."""
        if self.metrics_thread_pct is None or not self.scrapes or "scraped" not in self.windows_s:
            return None
        cpu_s = self.metrics_thread_pct / 100 * self.windows_s["scraped"]
        return round(1000 * cpu_s / self.scrapes, 3)

    @property
    def within_budget(self) -> bool | None:
        """The metrics thread under BUDGET_PCT of one core (None: not measured)."""
        if self.metrics_thread_pct is None:
            return None
        return self.metrics_thread_pct < BUDGET_PCT


def summarize_scrapes(result: Result, scrapes: Sequence[Scrape]) -> None:
    """Fill the scraper's figures from the scraped window's scrapes of the daemon."""
    good = [s for s in scrapes if s.ok]
    result.scrapes = len(scrapes)
    result.failed_scrapes = len(scrapes) - len(good)
    if good:
        last = good[-1]
        result.size_bytes = len(last.text.encode())
        result.series = count_series(last.text)
        latencies = [s.latency_s for s in good]
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        result.latency_p50_ms = None if p50 is None else round(1000 * p50, 2)
        result.latency_p99_ms = None if p99 is None else round(1000 * p99, 2)


def _fmt(value: float | None, unit: str, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def table(result: Result) -> str:
    """The report: one figure a line."""
    r = result
    if not r.ok:
        return f"N={r.pairs}: FAILED: {r.error}"
    found = {"named": "by its name", "calibrated": "by a scrape burst"}.get(
        r.metrics_thread_found or "", "not found"
    )
    verdict = {True: "yes", False: "NO", None: "-"}[r.within_budget]
    rows = [
        (r.followed_label, f"{r.pairs}"),
        ("windows: reference, scraped", f"{_fmt(r.windows_s.get('reference'), ' s', 1)}, "
                                         f"{_fmt(r.windows_s.get('scraped'), ' s', 1)}"),
        ("scrapes in the scraped window", f"{r.scrapes} ({r.failed_scrapes} failed)"),
        ("scrape size", f"{r.size_bytes or 0} bytes, {r.series or 0} series"),
        ("scrape latency p50 / p99", f"{_fmt(r.latency_p50_ms, ' ms')} / "
                                     f"{_fmt(r.latency_p99_ms, ' ms')}"),
        (f"metrics thread CPU ({found})", _fmt(r.metrics_thread_pct, " % of one core", 3)),
        (f"metrics threads summed ({METRICS_THREAD_COMM}*)",
         "-" if r.metrics_threads is None else str(r.metrics_threads)),
        ("metrics thread CPU per scrape", _fmt(r.metrics_thread_ms_per_scrape, " ms")),
        ("daemon CPU, scraped window", _fmt(r.daemon_scraped_pct, " % of one core")),
        ("daemon CPU, reference window", _fmt(r.daemon_reference_pct, " % of one core")),
        ("daemon CPU, difference", _fmt(r.daemon_difference_pct, " % of one core")),
        ("follower quiet in every window", {True: "yes", False: "NO: the difference is not "
                                            "the scrapes' alone", None: "-"}[r.follower_quiet]),
        *_thread_rows(r),
        (f"metrics thread under {BUDGET_PCT:g}% of one core", verdict),
        ("CPU probe (see --cpu-probe)", _fmt(r.cpu_probe_ms, " ms", 3)),
    ]  # fmt: skip
    if r.takeover_ms:
        done = r.takeover_ms.get("done")
        rows.append(("takeover while scraped: MASTER -> done", _fmt(done, " ms", 0)))
    if r.takeover_error:
        rows.append(("takeover while scraped", f"FAILED: {r.takeover_error}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _thread_rows(r: Result) -> list[tuple[str, str]]:
    """The daemon's CPU by thread group, and the follower's polls, reference vs scraped."""
    rows = []
    ref, scr = r.threads_pct.get("reference", {}), r.threads_pct.get("scraped", {})
    for group in sorted(set(ref) | set(scr), key=lambda g: -(scr.get(g, 0) + ref.get(g, 0))):
        rows.append(
            (
                f"  threads '{group}': reference, scraped",
                f"{_fmt(ref.get(group, 0.0), ' %')}, {_fmt(scr.get(group, 0.0), ' %')}",
            )
        )
    for kind in ("reference", "scraped"):
        polls = r.follow_polls.get(kind)
        if polls is not None:
            shown = ", ".join(f"{k} {v}" for k, v in sorted(polls.items())) or "none"
            rows.append((f"follower polls, {kind} windows", shown))
    return rows  # fmt: skip


# -- one run --------------------------------------------------------------------------


def _append_metrics(config: Path, port: int) -> None:
    """``[metrics]`` on the gateway's inside address, unless the lab already set one."""
    text = config.read_text()
    if "[metrics]" in text:
        return
    listen = _inside_address(config.name.split("-", 1)[0])
    with config.open("a") as f:
        f.write(f'[metrics]\nlisten = "{listen}:{port}"\n')


def _inside_address(gw: str) -> str:
    from netns_lab.plan import INSIDE, address_of

    return address_of(gw, INSIDE)


def store_has_metrics() -> bool:
    """Whether this tree's store server serves metrics (its collector exists)."""
    try:
        import appliance.metrics.store_collector  # noqa: F401
    except ImportError:
        return False
    return True


class MetricsRun(failover.Run):
    """bench/failover.py's hot-standby run with metrics on, measured; see the module docstring."""

    def __init__(self, args: argparse.Namespace, recording: IO[str] | None) -> None:
        super().__init__("hot", args.pairs, args)
        self.recording = recording
        self.result = Result(args.pairs, args.seconds, hz=os.sysconf("SC_CLK_TCK"))

    def __call__(self) -> failover.Row:
        """The lab as ``failover.Run`` builds it, with ``[metrics]`` in gw2's configs."""
        from netns_lab.lab import Lab
        from netns_lab.services import Services, SyncSettings

        ops = failover.operations(self.pairs)
        t0 = time.monotonic()
        with Lab.create(advert_int=self.args.advert_int, wait_notify=False) as lab:
            settings = SyncSettings(
                mode=self.mode,
                notify_timeout_s=self.args.notify_timeout,
                store_max_datagram=self.args.max_datagram,
            )
            services = Services(lab, settings)
            _append_metrics(services.files("gw2").daemon_config, DAEMON_PORT)
            with_store = store_has_metrics()
            if with_store:
                _append_metrics(services.files("gw2").store_config, STORE_PORT)
            try:
                if self.args.hthresh4 is not None:
                    for gw in ("gw1", "gw2"):
                        lab.exec(gw, ["ip", "xfrm", "policy", "set", "hthresh4",
                                      *map(str, self.args.hthresh4)])  # fmt: skip
                services.start()
                services.wait_role("gw1", ("active",))
                self.row.setup_s["lab"] = time.monotonic() - t0
                failover.say(f"N={self.pairs}: lab {lab.run_id} and daemons up")
                self._install(lab, ops)
                self._wait_standby(lab, services)
                self._measure(lab, services, with_store)
            except ApplianceError:
                self._show_logs(services)
                raise
            finally:
                services.stop()
        return self.row

    def _measure(self, lab: Any, services: Any, with_store: bool) -> None:
        pid = daemon_pid(services.procs["gw2-daemon"].pid)
        address = _inside_address("gw2")
        targets = {"daemon": (address, DAEMON_PORT)}
        if with_store:
            targets["store"] = (address, STORE_PORT)
        scraper = Scraper(lab.ns(SCRAPER_HOST), targets, self.args.interval, self.recording)

        def follow_polls() -> dict[str, int]:
            return status_follow_polls(services.status("gw2"))

        def take_over() -> None:
            failover.say(f"N={self.pairs}: takeover, still scraping")
            try:
                self._fail_over(lab, services)
                self.result.takeover_ms = dict(self.row.timeline_ms)
            except LabError as exc:  # the figures stand; the recording lacks a takeover
                self.result.takeover_error = str(exc)
                self._show_logs(services)
            time.sleep(self.args.tail)

        measure(
            self.result, pid, scraper, follow_polls, self.args.seconds, self.args.rounds,
            while_scraped=take_over if self.args.takeover else None,
            say=lambda text: failover.say(f"N={self.pairs}: {text}"),
        )  # fmt: skip
        self.result.setup_s = {k: round(v, 1) for k, v in self.row.setup_s.items()}
        self.result.ok = True


def status_follow_polls(status: Mapping[str, Any] | None) -> dict[str, int]:
    """A daemon status file's ``health.follow_polls`` ({} before the first)."""
    health = (status or {}).get("health") or {}
    return {str(k): int(v) for k, v in (health.get("follow_polls") or {}).items()}


def measure(
    r: Result,
    pid: int,
    scraper: Scraper,
    follow_polls: Callable[[], dict[str, int]],
    seconds: float,
    rounds: int,
    while_scraped: Callable[[], None] | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """The windows of the module docstring against the daemon ``pid``, into ``r``.

    ``follow_polls``: the daemon's polls so far (its status file's);
    ``while_scraped``: run after the last window, still scraping (a takeover).
    """
    probe = scraper.burst("daemon", 0.2)
    if not any(s.ok for s in probe):
        raise LabError(f"the daemon's metrics do not answer: {probe[-1].error or probe[-1].status}")

    named = bool(named_ticks(thread_snapshot(pid)))
    r.metrics_thread_found = "named" if named else None
    calibrated: int | None = None
    if not named:
        say(f"no thread named {METRICS_THREAD_COMM}*: calibrating with a burst")
        idle0 = thread_times(pid)
        time.sleep(CALIBRATION_S)
        idle1 = thread_times(pid)
        scraper.burst("daemon", CALIBRATION_S)
        burst1 = thread_times(pid)
        calibrated = calibrated_thread((idle0, idle1), (idle1, burst1))
        r.metrics_thread_found = None if calibrated is None else "calibrated"

    def metrics_ticks(snapshot: Mapping[int, tuple[str, int]]) -> dict[int, int]:
        """The metrics threads' ticks, found anew in each snapshot: a helper thread may
        start at a scrape."""
        if named:
            return named_ticks(snapshot)
        return {tid: ticks for tid, (_, ticks) in snapshot.items() if tid == calibrated}

    ticks = {"reference": 0, "scraped": 0}
    thread_ticks = 0
    r.windows_s = {"reference": 0.0, "scraped": 0.0}
    groups: dict[str, Counter[str]] = {"reference": Counter(), "scraped": Counter()}
    polls: dict[str, Counter[str]] = {"reference": Counter(), "scraped": Counter()}

    def window(
        name: str, seconds: float, begin: Callable[[], None] | None = None
    ) -> tuple[float, float]:
        """Sleep ``seconds``; add the daemon's CPU (and, when scraped, the metrics threads')
        to ``name``'s totals. ``begin`` runs once the window has started (the scraper:
        its first scrape is the window's). Returns its start and end (Unix time)."""
        nonlocal thread_ticks
        polls_before = follow_polls()
        # The process is read outside its threads' reads at both ends, so that "rest" is
        # never below zero by the ticks that fell between the reads.
        before = read_times(pid).with_children
        snapshot_before = thread_snapshot(pid)
        start, start_unix = time.monotonic(), time.time()
        if begin is not None:
            begin()
        time.sleep(max(0.0, start + seconds - time.monotonic()))
        snapshot_after = thread_snapshot(pid)
        grown = read_times(pid).with_children - before
        length, end_unix = time.monotonic() - start, time.time()
        r.windows_s[name] += length
        ticks[name] += grown
        if name == "scraped":
            metrics_after = metrics_ticks(snapshot_after)
            r.metrics_threads = len(metrics_after)
            thread_ticks += grown_ticks(metrics_ticks(snapshot_before), metrics_after)
        by_group = grown_by_group(snapshot_before, snapshot_after, pid)
        # What no live thread's stat holds: threads that ended, and waited-for children.
        by_group[REST_GROUP] = grown - sum(by_group.values())
        groups[name].update(by_group)
        polled = counter_increase(polls_before, follow_polls())
        polls[name].update(polled)
        r.parts.append({"window": name, "seconds": round(length, 3),
                        "daemon_pct": round(percent_of_core(grown, length, r.hz), 3),
                        "follow_polls": polled})  # fmt: skip
        return start_unix, end_unix

    # Alternating halves, so that a drift of the follower's own load weighs on both.
    part = seconds / rounds
    scraped: list[Scrape] = []
    try:
        for k in range(rounds):
            say(f"round {k + 1}: reference ({part:g} s, no scrapes)")
            window("reference", part)
            say(f"round {k + 1}: scraped ({part:g} s)")
            mark = scraper.mark()
            begun, ended = window("scraped", part, begin=scraper.start)
            # Only the scrapes begun in the window (the next may start as it ends).
            scraped += [s for s in scraper.since(mark, "daemon") if begun <= s.time < ended]
            if k < rounds - 1 or while_scraped is None:
                scraper.stop()
        if while_scraped is not None:
            while_scraped()
    finally:
        scraper.stop()
    summarize_scrapes(r, scraped)
    r.cpu_probe_ms = round(1000 * cpu_probe(), 3)
    r.windows_s = {k: round(v, 3) for k, v in r.windows_s.items()}
    r.daemon_reference_pct = round(
        percent_of_core(ticks["reference"], r.windows_s["reference"], r.hz), 3
    )
    r.daemon_scraped_pct = round(percent_of_core(ticks["scraped"], r.windows_s["scraped"], r.hz), 3)
    r.threads_pct = {
        kind: {g: round(percent_of_core(n, r.windows_s[kind], r.hz), 3) for g, n in gr.items()}
        for kind, gr in groups.items()
    }
    r.follow_polls = {kind: dict(counted) for kind, counted in polls.items()}
    if r.metrics_thread_found is not None:
        r.metrics_thread_pct = round(percent_of_core(thread_ticks, r.windows_s["scraped"], r.hz), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10000, help="SA pairs followed")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each window")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="split each window's --seconds into this many alternating parts",
    )
    parser.add_argument(
        "--takeover",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the windows, fail gw1 over to gw2 while still scraping (for a recording)",
    )
    parser.add_argument("--tail", type=float, default=15.0, help="seconds scraped after it")
    parser.add_argument("--record", type=Path, metavar="PATH", help="write every scrape here")
    parser.add_argument("--advert-int", type=float, default=1.0, help="VRRP advert interval, s")
    parser.add_argument("--notify-timeout", type=float, default=300.0,
                        help="the daemons' [failover] notify_timeout_s")  # fmt: skip
    parser.add_argument("--max-datagram", type=int, default=65000, metavar="BYTES",
                        help="the daemons' and stores' [store] max_datagram")  # fmt: skip
    parser.add_argument("--hthresh4", type=int, nargs=2, metavar=("LBITS", "RBITS"),
                        help="ip xfrm policy set hthresh4 on both gateways first (see "
                        "bench/failover.py)")  # fmt: skip
    parser.add_argument("--sync-timeout", type=float, default=1800.0,
                        help="how long the standby may take to catch up, s")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--cpu-probe", action="store_true",
                        help="only print the CPU probe (ms a round; no lab)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.cpu_probe:
        print(f"cpu probe: {1000 * cpu_probe():.3f} ms per round")
        return 0
    if not 1 <= args.pairs <= failover.MAX_PAIRS:
        parser.error(f"--pairs must be 1..{failover.MAX_PAIRS}")
    if args.seconds < 1 or args.interval <= 0 or args.tail < 0 or args.rounds < 1:
        parser.error("--seconds must be >= 1, --interval > 0, --tail >= 0, --rounds >= 1")
    if not 0.1 <= args.notify_timeout <= failover.MAX_NOTIFY_TIMEOUT:
        parser.error(f"--notify-timeout must be 0.1..{failover.MAX_NOTIFY_TIMEOUT:g}")
    if not 576 <= args.max_datagram <= 65507:
        parser.error("--max-datagram must be 576..65507 (the daemon's range)")
    if os.geteuid() != 0:
        print("bench/metrics.py: run as root inside the lab VM (see --help)", file=sys.stderr)
        return 2
    command = shlex.join([sys.executable, *sys.argv])
    recording: IO[str] | None = None
    if args.record is not None:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        recording = args.record.open("w")
    run = MetricsRun(args, recording)
    started = time.monotonic()
    try:
        run()
    except (ApplianceError, OSError) as exc:
        run.result.ok, run.result.error = False, str(exc)
    finally:
        if recording is not None:
            recording.close()
    result = run.result
    result.recording = None if args.record is None else str(args.record)
    report(result, command, time.monotonic() - started, as_json=args.json)
    return 0 if result.ok else 1


def report(result: Result, command: str, wall_s: float, as_json: bool) -> None:
    """Print the result: the table, or JSON with the derived figures too."""
    if not as_json:
        print(f"command: {command}\n{table(result)}\nwall time {wall_s:.0f} s")
        return
    out = asdict(result)
    out.update(
        command=command,
        wall_s=round(wall_s, 1),
        daemon_difference_pct=result.daemon_difference_pct,
        metrics_thread_ms_per_scrape=result.metrics_thread_ms_per_scrape,
        follower_quiet=result.follower_quiet,
        within_budget=result.within_budget,
    )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())
