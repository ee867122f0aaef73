"""The adapter: NFQUEUE packets into :class:`OnDemandCore`, its commands out.

One loop thread owns the queue socket and the core; retrievals run on a
small thread pool (they block on the store and the kernel) and post their
results back through a queue plus a wake-up socket, so the loop never
waits on a retrieval and the core is only touched by the loop.

Each turn of the loop takes the results, then reads the queue until it is
dry (or ``READ_BATCH`` packets), gives the core all of it, sends the
verdicts in one datagram, and when the read ended dry tells the core so
(``handle_idle``): the ``Hold`` commands that yields run ``on_retrieved``
on the pool, after the verdicts went out.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

from appliance.nfqueue.codec import MAX_QUEUE_NUM
from appliance.nfqueue.socket import DEFAULT_COPY_RANGE, DEFAULT_MAXLEN, NfQueue
from appliance.ondemand.core import (
    Command,
    Hold,
    OnDemandCore,
    OnDemandCounters,
    OnDemandLimits,
    Retrieve,
    Verdict,
)

log = logging.getLogger(__name__)

RetrieveFn = Callable[[int, str], bool]
"""``retrieve(spi, daddr)``: fetch and install the SA; True on success.  An exception
counts as failure."""

RetrievedFn = Callable[[int, str], None]
"""``on_retrieved(spi, daddr)``: hold the SPI; called once the queue holds none of its packets
(or after ``core.hold_fallback``)."""

_IDLE_WAIT = 1.0
"""Longest sleep of the loop with nothing pending (it also wakes on packets and results)."""
READ_BATCH = 256
"""Most packets read before their verdicts go out."""


class OnDemandService:
    """On-demand SA retrieval for NFQUEUE ``queue_num`` in ``netns`` (``None``: our own).

    ``start()`` binds the queue (a :class:`~appliance.errors.KernelError` if it
    cannot) and starts the loop; ``stop()`` ends it and unbinds (the kernel
    drops what is still queued).  ``counters()`` may be read from any thread.
    """

    def __init__(
        self,
        netns: str | None,
        queue_num: int,
        retrieve: RetrieveFn,
        *,
        limits: OnDemandLimits | None = None,
        workers: int = 4,
        copy_range: int = DEFAULT_COPY_RANGE,
        maxlen: int = DEFAULT_MAXLEN,
        clock: Callable[[], float] = time.monotonic,
        on_retrieved: RetrievedFn | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"ondemand.workers: {workers!r} is not at least 1")
        if not 0 <= queue_num <= MAX_QUEUE_NUM:
            raise ValueError(f"ondemand.queue: {queue_num!r} is outside 0-{MAX_QUEUE_NUM}")
        self.netns = netns
        self.queue_num = queue_num
        self._retrieve = retrieve
        # The core asks for the hold only once no packet of the SPI waits in the queue:
        # packets passing the trap would overtake those, and push the SA's replay window
        # past them.
        self._on_retrieved = on_retrieved
        self._clock = clock
        self._core = OnDemandCore(limits, clock())
        self._lock = threading.Lock()
        self._results: queue.SimpleQueue[tuple[int, bool]] = queue.SimpleQueue()
        self._workers = workers
        self._copy_range = copy_range
        self._maxlen = maxlen
        self._queue: NfQueue | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.error: BaseException | None = None
        """What ended the loop, if it was not ``stop()``."""

    def start(self) -> None:
        """Bind the queue and start the loop thread."""
        if self._thread is not None:
            raise RuntimeError("the on-demand service is already started")
        self._queue = NfQueue(
            self.netns, self.queue_num, copy_range=self._copy_range, maxlen=self._maxlen
        )
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="ondemand-retr")
        self._thread = threading.Thread(
            target=self._loop, name=f"ondemand-q{self.queue_num}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the loop, unbind the queue; retrievals under way finish unheeded."""
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._queue is not None:
            self._queue.close()
        self._wake_r.close()
        self._wake_w.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def counters(self) -> OnDemandCounters:
        """A snapshot of the counters (see :class:`OnDemandCounters`)."""
        with self._lock:
            snap = self._core.snapshot()
        if self._queue is not None:
            snap.queue_overruns = self._queue.overruns
        return snap

    def __enter__(self) -> OnDemandService:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
            self._wake_w.send(b"\0")

    def _loop(self) -> None:
        assert self._queue is not None
        nfq = self._queue
        nfq_fd, wake_fd = nfq.fileno(), self._wake_r.fileno()
        try:
            while not self._stopping.is_set():
                with self._lock:
                    timer = self._core.get_timer()
                wait = _IDLE_WAIT if timer is None else min(_IDLE_WAIT, timer - self._clock())
                ready, _, _ = select.select([nfq_fd, wake_fd], [], [], max(0.0, wait))
                if wake_fd in ready:
                    with contextlib.suppress(BlockingIOError):
                        while self._wake_r.recv(4096):
                            pass
                commands: list[Command] = []
                now = self._clock()
                with self._lock:
                    # Results first: a dry read below then comes after their verdicts.
                    while True:
                        try:
                            request_id, ok = self._results.get_nowait()
                        except queue.Empty:
                            break
                        commands += self._core.handle_result(request_id, ok, now)
                # Read even without a wake-up: only a read that finds nothing proves the
                # queue dry.
                packets = nfq.receive(timeout=0, max_packets=READ_BATCH)
                now = self._clock()
                with self._lock:
                    for packet in packets:
                        commands += self._core.handle_packet(packet.packet_id, packet.payload, now)
                    commands += self._core.handle_timer(now)
                    if nfq.drained:
                        commands += self._core.handle_idle(now)
                self._act(nfq, commands)
        except BaseException as exc:
            # The queue stays bound without verdicts: the kernel drops (no fail-open).
            if not self._stopping.is_set():
                self.error = exc
                log.error("on-demand SA retrieval stopped: %s", exc)

    def _act(self, nfq: NfQueue, commands: list[Command]) -> None:
        """Verdicts in one send, then the rest: a hold must follow the verdicts before it."""
        verdicts = [(a.packet_id, a.accept) for a in commands if isinstance(a, Verdict)]
        if verdicts:
            nfq.verdicts(verdicts)
        assert self._pool is not None
        for command in commands:
            if isinstance(command, Retrieve):
                self._pool.submit(self._run_retrieve, command)
            elif isinstance(command, Hold) and self._on_retrieved is not None:
                self._pool.submit(self._run_retrieved, command.spi, command.daddr)

    def _run_retrieve(self, request: Retrieve) -> None:
        try:
            ok = bool(self._retrieve(request.spi, request.daddr))
        except Exception as exc:
            # Name the SA and the error class only: the message may carry store details.
            log.warning(
                "retrieving SA spi 0x%08x dst %s failed: %s",
                request.spi,
                request.daddr,
                type(exc).__name__,
            )
            ok = False
        self._results.put((request.request_id, ok))
        self._wake()

    def _run_retrieved(self, spi: int, daddr: str) -> None:
        assert self._on_retrieved is not None
        try:
            self._on_retrieved(spi, daddr)
        except Exception as exc:
            log.warning("after retrieving SA spi 0x%08x dst %s: %s", spi, daddr,
                        type(exc).__name__)  # fmt: skip
