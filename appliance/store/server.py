"""``ipsec-ha store serve``: the asyncio UDP adapter around the channel, the codec and the service.

Theory of operation
-------------------
One UDP socket.  Every datagram goes to the sans-IO channel endpoint (server
role), which answers handshakes itself and hands back authenticated
plaintexts (:class:`~appliance.channel.events.DataReceived`).  Each plaintext
is decoded as a request and handed to :class:`~.service.StoreService`.
Writes (SA_Stor) run on one writer thread, in group commits, so the event
loop keeps reading (and dropping junk) while a transaction commits.  The
response is sent only after the transaction committed: an acknowledged entry
is durable.  With SQLite, reads (SA_Retr, Heartbeat) run on a small pool of
reader threads instead, each with a read-only connection of its own (WAL):
a lookup sees the last committed state and never waits for the writer's lock
or fsync.  etcd's client is one HTTP connection, so there reads stay on the
writer thread, in its queue.

Retransmissions: a client resends the same request (same message ID) when a
response is lost.  Responses are cached per peer node (``response_cache``
entries each, ``max_peers`` peers, least recently used evicted), so a
retransmitted request gets the cached response and is never applied twice;
one that arrives while the original is still being applied is ignored (the
response is on its way).  Everything invalid is dropped and counted: by the
channel (forged, replayed, malformed datagrams) or here (undecodable
requests get an error response with the request's message ID when the
header is readable).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from appliance.channel.endpoint import ChannelConfig, ChannelEndpoint, Side
from appliance.channel.events import DataReceived
from appliance.errors import ApplianceError
from appliance.metrics.latency import LatencyHistogram
from appliance.store.base import SaStore
from appliance.store.config import ServerConfig, load_psk, load_secret
from appliance.store.envelope import Sealer
from appliance.store.sealed import SealedStore
from appliance.store.service import StoreService, error_response
from appliance.wire import RemoteWireError, WireError
from appliance.wire.constants import ExchangeType, Status
from appliance.wire.messages import decode_message, encode_message, peek_header

if TYPE_CHECKING:
    from appliance.metrics.exposition import MetricsEndpoint

log = logging.getLogger("appliance.store.server")

_T = TypeVar("_T")


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def open_backend(cfg: ServerConfig) -> SealedStore:
    """The backend the configuration names, its key material sealed under the cluster key."""
    sealer = Sealer(load_psk(cfg.psk_file), tuple(load_psk(p) for p in cfg.previous_psk_files))
    if cfg.backend == "sqlite":
        from appliance.store.sqlite import SqliteStore

        assert cfg.sqlite is not None
        return SealedStore(SqliteStore(cfg.sqlite.path), sealer)
    from appliance.store.etcd import EtcdStore

    etcd = cfg.etcd
    assert etcd is not None
    password = None
    if etcd.password_file is not None:
        raw = load_secret(etcd.password_file, "etcd password file")
        try:
            password = raw.decode()
        except UnicodeDecodeError:
            raise ApplianceError(f"etcd password file {etcd.password_file} is not UTF-8") from None
    return SealedStore(
        EtcdStore(
            etcd.endpoints,
            etcd.timeout,
            etcd.retry_for,
            _text(etcd.ca_file),
            _text(etcd.cert_file),
            _text(etcd.key_file),
            etcd.user,
            password,
        ),
        sealer,
    )


@dataclass
class ServerCounters:
    """Counted on the event loop's thread; read elsewhere only through ``StoreServer.live``."""

    datagrams: int = 0
    served: int = 0
    retransmits_answered: int = 0
    undecodable: int = 0
    in_progress_answered: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def _is_busy(reply: bytes) -> bool:
    try:
        status = decode_message(reply).status
    except WireError:
        return False
    return status is not None and status.status == Status.BUSY


#: Requests applied in one group commit at most.
MAX_GROUP = 64
#: Reader threads (SQLite): lookups in parallel with each other and with the writer.
READER_THREADS = 4
#: Requests that only read: the reader threads take them (SQLite).
READ_EXCHANGES = frozenset({ExchangeType.SA_RETR, ExchangeType.HEARTBEAT})


#: A backend call this long or longer is logged (clients begin to retransmit).
SLOW_BACKEND_S = 2.0
#: Backend operations timed in ``StoreServer.backend_seconds``.
BACKEND_OPERATIONS = ("write", "read")
#: The loop thread answers a cross-thread read of its state within this long, or it fails.
LOOP_ANSWER_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LiveState:
    """The server's loop-owned figures at one moment (``StoreServer.live``), for the metrics."""

    datagrams_received: int
    retransmits_answered: int
    undecodable: int
    """Authenticated datagrams that are no request (dropped after the channel)."""
    channel_drops: dict[str, int]
    """Datagrams the channel dropped, per ``DropReason`` value."""
    associations: int
    half_open: int
    """Associations whose client has not yet proven its keys with a first datagram."""


@dataclass(frozen=True, slots=True)
class _Pending:
    data: bytes
    peer: str
    message_id: int
    association: bytes
    exchange: int


class ResponseCache:
    """Responses per peer node ID, bounded in peers and in responses per peer."""

    def __init__(self, max_peers: int, per_peer: int) -> None:
        self._peers: OrderedDict[str, OrderedDict[int, bytes | None]] = OrderedDict()
        self._max_peers = max_peers
        self._per_peer = per_peer

    def get(self, peer: str, message_id: int) -> tuple[bool, bytes | None]:
        """(seen, response): seen with None means the request is still being applied."""
        entries = self._peers.get(peer)
        if entries is None or message_id not in entries:
            return False, None
        self._peers.move_to_end(peer)
        return True, entries[message_id]

    def put(self, peer: str, message_id: int, response: bytes | None) -> None:
        entries = self._peers.get(peer)
        if entries is None:
            entries = self._peers[peer] = OrderedDict()
            while len(self._peers) > self._max_peers:
                self._peers.popitem(last=False)
        self._peers.move_to_end(peer)
        entries[message_id] = response
        entries.move_to_end(message_id)
        while len(entries) > self._per_peer:
            entries.popitem(last=False)

    def forget(self, peer: str, message_id: int) -> None:
        entries = self._peers.get(peer)
        if entries is not None:
            entries.pop(message_id, None)

    def __len__(self) -> int:
        return sum(len(e) for e in self._peers.values())


class StoreServer(asyncio.DatagramProtocol):
    """The UDP adapter: socket <-> channel <-> codec <-> service (on a worker thread)."""

    def __init__(self, cfg: ServerConfig, store: SaStore, psk: bytes) -> None:
        self.cfg = cfg
        self.store = store
        self.channel = ChannelEndpoint(
            psk,
            cfg.node_id,
            Side.SERVER,
            ChannelConfig(
                max_associations=cfg.max_peers,
                max_associations_per_source=cfg.max_peers_per_address,
                max_half_open_per_source=cfg.max_half_open_per_address,
            ),
        )
        self.service = StoreService(store, self._server_stats, cfg.max_datagram)
        self.cache = ResponseCache(cfg.max_peers, cfg.response_cache)
        self.counters = ServerCounters()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-backend")
        # SQLite reads concurrently (a connection per reader thread); etcd's client cannot.
        self._readers = (
            concurrent.futures.ThreadPoolExecutor(READER_THREADS, thread_name_prefix="store-reader")
            if cfg.backend == "sqlite"
            else None
        )
        self._writing = 0
        self._reading = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = time.monotonic()
        self._queue: list[_Pending] = []
        self._busy = False
        self.backend_seconds = {op: LatencyHistogram() for op in BACKEND_OPERATIONS}
        """Seconds per backend call: ``write`` is one group on the writer thread that holds
        an SA_Stor, ``read`` one read on a reader thread (SQLite) or a group of reads only
        on the writer thread (etcd). Filled on those threads; the metrics read them."""

    # -- asyncio protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._loop = asyncio.get_running_loop()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.counters.datagrams += 1
        now = time.monotonic()
        try:
            events = self.channel.receive_datagram(data, addr, now)
        except Exception:  # the channel never raises for bad input; keep serving if it does
            log.exception("channel failed on a datagram from %s", addr)
            self.counters.extra["channel_errors"] = self.counters.extra.get("channel_errors", 0) + 1
            events = []
        for event in events:
            if isinstance(event, DataReceived):
                self._request(event, now)
        self._flush()

    def error_received(self, exc: Exception) -> None:
        log.warning("UDP error: %s", exc)

    # -- requests -------------------------------------------------------------------

    def _request(self, event: DataReceived, now: float) -> None:
        try:
            exchange, message_id, is_response = peek_header(event.data)
        except RemoteWireError:
            self.counters.undecodable += 1
            return
        if is_response:
            self.counters.undecodable += 1
            return
        seen, cached = self.cache.get(event.peer_node_id, message_id)
        if seen:
            if cached is None:
                # Still being carried out: say so, so that the client keeps waiting for a
                # store that is slow rather than giving it up as silent (protocol.md 5.5).
                self.counters.in_progress_answered += 1
                notice = error_response(exchange, message_id, Status.IN_PROGRESS, "")
                self._send(encode_message(notice), event.association, now)
            else:
                self.counters.retransmits_answered += 1
                self._send(cached, event.association, now)
            return
        self.cache.put(event.peer_node_id, message_id, None)
        pending = _Pending(event.data, event.peer_node_id, message_id, event.association, exchange)
        if self._readers is not None and exchange in READ_EXCHANGES:
            self._run_read(pending)
            return
        self._queue.append(pending)
        if not self._busy:
            self._run_queue()

    def _run_read(self, pending: _Pending) -> None:
        """A read goes to a reader thread at once: it waits for no write."""
        assert self._loop is not None and self._readers is not None
        self._reading += 1
        future = self._loop.run_in_executor(
            self._readers, self._timed, "read", self.service.handle_read, pending.data
        )
        future.add_done_callback(lambda f: self._respond_read(f, pending))

    def _respond_read(self, future: asyncio.Future[bytes], pending: _Pending) -> None:
        self._reading -= 1
        if future.cancelled() or future.exception() is not None:
            log.error("read failed: %s", None if future.cancelled() else future.exception())
            self.cache.forget(pending.peer, pending.message_id)  # the client retransmits
        else:
            self._answer(pending, future.result(), time.monotonic())
        self._flush()

    def _run_queue(self) -> None:
        """Hand every queued request to the worker at once: one group commit for them all."""
        assert self._loop is not None
        batch = self._queue[:MAX_GROUP]
        del self._queue[:MAX_GROUP]
        self._busy = True
        self._writing = len(batch)
        writes = any(p.exchange == ExchangeType.SA_STOR for p in batch)
        future = self._loop.run_in_executor(
            self._worker,
            self._timed,
            "write" if writes else "read",
            self.service.handle_many,
            [p.data for p in batch],
        )
        future.add_done_callback(lambda f: self._respond(f, batch))

    def _respond(self, future: asyncio.Future[list[bytes]], batch: list[_Pending]) -> None:
        self._busy = False
        self._writing = 0
        now = time.monotonic()
        if not future.cancelled():
            exc = future.exception()
            if exc is not None:
                log.error("request group failed: %s", exc)
                for p in batch:  # not acknowledged: forget them, the clients retransmit
                    self.cache.forget(p.peer, p.message_id)
            else:
                for p, reply in zip(batch, future.result(), strict=True):
                    self._answer(p, reply, now)
        if self._queue:
            self._run_queue()
        self._flush()

    def _answer(self, p: _Pending, reply: bytes, now: float) -> None:
        if _is_busy(reply):
            self.cache.forget(p.peer, p.message_id)  # protocol.md 5.5: not cached
        else:
            self.cache.put(p.peer, p.message_id, reply)
        self.counters.served += 1
        self._send(reply, p.association, now)

    def _send(self, plaintext: bytes, association: bytes, now: float) -> None:
        try:
            self.channel.send(plaintext, now, association)
        except ApplianceError as exc:  # the association expired meanwhile: the client retries
            log.info("cannot answer on association %s: %s", association.hex(), exc)

    def _flush(self) -> None:
        now = time.monotonic()
        # Closing (the server stops): a request finished meanwhile is not answered.
        if self._transport is not None and not self._transport.is_closing():
            for datagram, addr in self.channel.datagrams_to_send(now):
                self._transport.sendto(datagram, addr)
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._loop is None:
            return
        when = self.channel.get_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if when is not None:
            delay = max(0.0, when - time.monotonic())
            self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.channel.handle_timer(time.monotonic())
        while self.channel.next_event() is not None:
            pass
        self._flush()

    def _timed(self, operation: str, call: Callable[[Any], _T], argument: Any) -> _T:
        """``call(argument)`` on a backend thread, its duration observed under ``operation``."""
        start = time.monotonic()
        try:
            return call(argument)
        finally:
            took = time.monotonic() - start
            self.backend_seconds[operation].observe(took)
            if took >= SLOW_BACKEND_S:
                # Clients retransmit after a few seconds and give up after ~20: say why.
                requests = len(argument) if isinstance(argument, list) else 1
                log.warning("slow backend: a %s of %d request(s) took %.1f s (%d reading)",
                            operation, requests, took, self._reading)  # fmt: skip

    # -- stats ------------------------------------------------------------------

    def backend_read(self, read: Callable[[SaStore], _T]) -> concurrent.futures.Future[_T]:
        """Run ``read(store)`` where the server's own reads run; callable from any thread.

        With SQLite, on a reader thread (its read-only connection, next to the
        writer); with etcd, on the writer thread, queued behind the groups
        already handed to it (the etcd client is not safe for several threads).
        Never on the caller's thread, and never on the event loop.
        """
        executor = self._readers if self._readers is not None else self._worker
        return executor.submit(read, self.store)

    def live(self) -> LiveState:
        """The loop-owned counters and tables, read on the loop's thread (from any thread).

        The channel's tables change only on the loop; copying them elsewhere
        could see them change mid-copy. The calling thread waits; the loop
        runs one short copy between datagrams.
        """
        return self._on_loop(self._live_now)

    def _live_now(self) -> LiveState:
        return LiveState(
            datagrams_received=self.counters.datagrams,
            retransmits_answered=self.counters.retransmits_answered,
            undecodable=self.counters.undecodable,
            channel_drops={r.value: n for r, n in self.channel.drops.items()},
            associations=len(self.channel.associations()),
            half_open=self.channel.half_open(),
        )

    def _server_stats(self) -> dict[str, Any]:
        """The server's counters, read on the event loop's thread, where they change.

        The service asks from a backend thread (a reader, or the writer).
        """
        return self._on_loop(self._server_stats_now)

    def _on_loop(self, read: Callable[[], _T]) -> _T:
        """``read()`` on the event loop's thread, waited for from any other thread."""
        loop = self._loop
        if loop is None or not loop.is_running() or self._on_loop_thread(loop):
            return read()
        result: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def fill() -> None:
            try:
                result.set_result(read())
            except Exception as exc:
                result.set_exception(exc)

        loop.call_soon_threadsafe(fill)
        return result.result(timeout=LOOP_ANSWER_TIMEOUT_S)

    @staticmethod
    def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
        try:
            return asyncio.get_running_loop() is loop
        except RuntimeError:
            return False

    def _server_stats_now(self) -> dict[str, Any]:
        drops = {r.value: n for r, n in self.channel.drops.items()}
        return {
            "uptime_seconds": round(time.monotonic() - self._started, 1),
            "datagrams_received": self.counters.datagrams,
            "requests_served": self.counters.served,
            "retransmits_answered": self.counters.retransmits_answered,
            "requests_undecodable": self.counters.undecodable,
            "drops": drops,
            "drops_total": sum(drops.values()) + self.counters.undecodable,
            "associations": len(self.channel.associations()),
            "cached_responses": len(self.cache),
            "writes_pending": len(self._queue) + self._writing,
            "reads_in_progress": self._reading,
        }

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._worker.shutdown(wait=True)
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        self.store.close()


def _grow_receive_buffer(transport: asyncio.BaseTransport) -> None:
    """Room for bursts of large requests (several clients, each with a window in flight)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, 8 * 1024 * 1024)
            return
        except OSError:
            continue  # SO_RCVBUFFORCE needs CAP_NET_ADMIN; SO_RCVBUF is capped by rmem_max


async def serve(cfg: ServerConfig, ready: asyncio.Event | None = None) -> None:
    """Run the store server until SIGTERM/SIGINT."""
    psk = load_psk(cfg.psk_file)
    store = open_backend(cfg)
    loop = asyncio.get_running_loop()
    try:
        transport, server = await loop.create_datagram_endpoint(
            lambda: StoreServer(cfg, store, psk), local_addr=(cfg.listen, cfg.port)
        )
    except OSError as exc:
        store.close()
        raise ApplianceError(
            f"cannot listen on {cfg.listen} port {cfg.port}: {exc.strerror}"
        ) from None
    _grow_receive_buffer(transport)
    try:
        metrics = _start_metrics(cfg, server)
    except ApplianceError:
        transport.close()
        server.close()
        raise
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    log.info("store listening on %s port %d (%s backend)", cfg.listen, cfg.port, cfg.backend)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        try:
            if metrics is not None:
                # Off the loop: a scrape in progress may be waiting for the loop to answer.
                await asyncio.to_thread(metrics.stop)
        finally:
            transport.close()
            server.close()


def _start_metrics(cfg: ServerConfig, server: StoreServer) -> MetricsEndpoint | None:
    """Serve ``/metrics`` when ``[metrics]`` is configured; a bind failure is an error here,
    before the store announces itself ready."""
    if cfg.metrics_listen is None:
        return None
    from appliance.metrics.exposition import MetricsEndpoint
    from appliance.metrics.store_collector import StoreServerCollector

    endpoint = MetricsEndpoint(cfg.metrics_listen, [StoreServerCollector(server)])
    endpoint.start()
    return endpoint
