"""The store client the daemon and the CLI use: blocking calls over the protected channel.

Each call encodes requests (:mod:`appliance.wire`), protects them with the
sans-IO channel endpoint (client role) and drives both over one connected UDP
socket.  Requests are retransmitted with exponential backoff (first after
the timeout learnt from round trips, never under ``timeout``: see
:mod:`~appliance.store.rto`; then doubling, ``retries`` times) under the
same message ID, which the server recognises and answers from its cache,
so a retransmission is never applied twice.  Up to ``window`` requests are
in flight at once for bulk stores.

Errors are :class:`~appliance.store.base.StoreError` subclasses:
:class:`StoreTimeoutError` (no answer), :class:`SpiCollisionError`,
:class:`StaleEpochError`, :class:`EpochLimitError` (the epoch would jump too
far or overflow), :class:`NotFoundError`, :class:`InvalidRequestError` (the
store refused the request as malformed), :class:`ResponseTooLargeError` (the
answer does not fit the store's ``max_datagram``) and
:class:`StoreRefusedError` (any other refusal).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import select
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.channel.endpoint import ChannelConfig, ChannelEndpoint, Side
from appliance.channel.events import DataReceived, HandshakeFailed
from appliance.errors import ApplianceError
from appliance.metrics.latency import LatencyHistogram
from appliance.model import SadEntry, Snapshot, SpdEntry
from appliance.store import _convert as conv
from appliance.store import _rawwire
from appliance.store._convert import UndecodableEntryError as UndecodableEntryError
from appliance.store.base import (
    EpochLimitError,
    FetchCancelled,
    IkeSaRecord,
    IkeSpis,
    InvalidRequestError,
    NotFoundError,
    RevisionGoneError,
    SaKey,
    SpiCollisionError,
    StaleEpochError,
    StoreError,
    StoreUnavailableError,
)
from appliance.store.config import ClientConfig, load_psk
from appliance.store.rto import RetransmissionTimer
from appliance.wire import WireError, entries
from appliance.wire.constants import (
    CHANNEL_OVERHEAD,
    HEADER_LENGTH,
    ExchangeType,
    ProtocolId,
    RemovedKind,
    Status,
)
from appliance.wire.messages import Message, decode_message, encode_message, encoded_payload_length
from appliance.wire.payloads import (
    Delete,
    EpochPayload,
    IkeSaPayload,
    Notify,
    PagePayload,
    Payload,
    RemovedPayload,
    ReplayStatePayload,
    RevisionPayload,
    SadEntryPayload,
    ServerIdPayload,
    SpdEntryPayload,
)


class StoreTimeoutError(StoreUnavailableError):
    """The store did not answer after every retransmission."""


class StoreRefusedError(StoreError):
    """The store answered with an error status this client has no finer class for."""


class ResponseTooLargeError(StoreError):
    """The answer does not fit the store's ``[store] max_datagram``; raise it on the store."""


_ERRORS: dict[int, type[StoreError]] = {
    Status.SPI_COLLISION: SpiCollisionError,
    Status.STALE_EPOCH: StaleEpochError,
    Status.EPOCH_LIMIT: EpochLimitError,
    Status.TOO_LARGE: ResponseTooLargeError,
    Status.NOT_FOUND: NotFoundError,
    Status.MALFORMED: InvalidRequestError,
    Status.BUSY: StoreUnavailableError,
    Status.REVISION_GONE: RevisionGoneError,
}


CONVERT_STEP = 256
"""Entries converted between two questions to a ``stop`` callback."""

log = logging.getLogger("appliance.store.client")

IN_PROGRESS_LIMIT_S = 120.0
"""How long a request is waited for while the store keeps saying it is carrying it out."""
_IN_PROGRESS_MAX_LEN = 128
"""Longer responses are not an IN_PROGRESS notice (a header and an empty Notify)."""


@dataclass(frozen=True)
class Retrieved:
    """What a retrieval gives its users: SAs with their latest stored counters, and policies.

    The one result of ``StoreClient.fetch`` (a server ID's whole state) and
    ``StoreClient.fetch_sa`` (one SA and its policies): every SA already
    carries the replay state the store holds for it (``merge_replay``), so
    no caller merges counters itself.
    """

    sad: tuple[SadEntry, ...]
    spd: tuple[SpdEntry, ...]
    source: str
    """Which store answered."""
    skipped: tuple[str, ...] = ()
    """Stored entries that did not decode, or whose replay state did not apply, and were
    left out: one line each (its place and SPI or policy index, why; never key bytes)."""
    server_id: str = ""
    """The server ID the state is stored under (its owner)."""
    epoch: int = 0
    pages: int = 0
    """Pages the retrieval took."""
    ike_sas: Mapping[IkeSpis, IkeSaRecord] = field(default_factory=dict)
    """The server ID's IKE SA records (protocol.md 4.6; empty for a lookup by SPI)."""


@dataclass
class RetrievedState:
    """A server ID's whole state, as retrieved page by page.

    The entries are kept as they came (``sad_entries`` / ``spd_entries``: the
    store's entry encoding, see ``appliance.store._convert``); ``sad`` and
    ``spd`` convert them to model objects on first use, because the model
    conversion costs far more than the transfer.

    An entry that does not convert (stored by an older version, or put
    straight into the backend) is left out of ``sad`` / ``spd``, logged once
    and named in ``skipped``; so is an SA whose stored replay state does not
    decode (installing it with older counters could reuse sequence numbers).
    The rest of the server ID's state is still there.
    """

    server_id: str
    epoch: int
    sad_entries: list[bytes] = field(default_factory=list)
    spd_entries: list[bytes] = field(default_factory=list)
    replay: dict[SaKey, ReplayStatePayload] = field(default_factory=dict)
    """The latest replay state sent for an SA since its last full store."""
    ike_sas: dict[IkeSpis, IkeSaRecord] = field(default_factory=dict)
    """The server ID's IKE SAs (protocol.md 4.6), by their SPIs."""
    pages: int = 0
    skipped: list[str] = field(default_factory=list)
    """One line per entry left out by ``convert`` (its index and SPI or policy index, why)."""
    unreadable_replay: dict[int, str] = field(default_factory=dict)
    """Index in ``sad_entries`` -> why the replay state stored after that SA did not decode."""
    unreadable: list[str] = field(default_factory=list)
    """SAs the store holds but could not read back (a tampered sealed record): each came
    as an error Notify in its place, and is reported in ``skipped`` by ``convert``."""
    revision: int = 0
    """The server ID's revision at the first page (protocol.md 5.3): a follower asks for
    the changes after it next time."""
    removed_sas: list[SaKey] = field(default_factory=list)
    """Changes only (``StoreClient.get_changes``): SAs removed after the asked revision."""
    removed_policies: list[bytes] = field(default_factory=list)
    """Changes only: the store's IDs of SPD entries removed after the asked revision."""
    removed_ike_sas: list[IkeSpis] = field(default_factory=list)
    """Changes only: IKE SAs removed after the asked revision."""
    _sad: list[SadEntry] | None = field(default=None, repr=False)
    _spd: list[SpdEntry] | None = field(default=None, repr=False)

    @property
    def sad_payloads(self) -> list[SadEntryPayload]:
        return [conv.sad_payload_from_entry(e) for e in self.sad_entries]

    @property
    def spd_payloads(self) -> list[SpdEntryPayload]:
        return [conv.spd_payload_from_entry(e) for e in self.spd_entries]

    @property
    def sad(self) -> list[SadEntry]:
        if self._sad is None:
            self.convert()
            assert self._sad is not None
        return self._sad

    @property
    def spd(self) -> list[SpdEntry]:
        if self._spd is None:
            self.convert()
            assert self._spd is not None
        return self._spd

    def convert(self, stop: Callable[[], bool] | None = None) -> None:
        """Convert the entries to model objects now (``sad`` and ``spd`` do it on first use).

        ``stop`` is asked every ``CONVERT_STEP`` entries; when it answers True
        the conversion ends with ``FetchCancelled`` and nothing is kept.
        Entries that do not convert are skipped (see the class); converting
        again changes nothing.
        """
        if self._sad is not None and self._spd is not None:
            return
        sad: list[SadEntry] = []
        spd: list[SpdEntry] = []
        skipped: list[str] = list(self.unreadable)
        for i, entry in enumerate(self.sad_entries):
            if stop is not None and i % CONVERT_STEP == 0 and stop():
                raise FetchCancelled(f"conversion of {self.server_id} stopped")
            try:
                if i in self.unreadable_replay:
                    reason = f"its replay state: {self.unreadable_replay[i]}"
                    raise UndecodableEntryError(reason)
                sad.append(conv.sad_from_stored(entry))
            except UndecodableEntryError as exc:
                skipped.append(f"{conv.describe_stored('SAD', i + 1, entry)}: {exc}")
        for i, entry in enumerate(self.spd_entries):
            if stop is not None and i % CONVERT_STEP == 0 and stop():
                raise FetchCancelled(f"conversion of {self.server_id} stopped")
            try:
                spd.append(conv.spd_from_stored(entry))
            except UndecodableEntryError as exc:
                skipped.append(f"{conv.describe_stored('SPD', i + 1, entry)}: {exc}")
        for line in skipped:
            log.warning("server ID %s: stored %s; skipped", self.server_id, line)
        self._sad, self._spd, self.skipped = sad, spd, skipped

    def merged(self, source: str, stop: Callable[[], bool] | None = None) -> Retrieved:
        """The state with each SA's stored replay state merged in (converting first).

        An SA whose replay state does not apply is left out, logged and named
        in ``skipped``: installing it with older counters could reuse
        sequence numbers.
        """
        self.convert(stop)
        skipped = list(self.skipped)
        sad: list[SadEntry] = []
        for sa in self.sad:
            update = self.replay.get(SaKey.of(sa)) if self.replay else None
            if update is None:
                sad.append(sa)
                continue
            try:
                sad.append(merge_replay(sa, update))
            except ApplianceError as exc:
                line = f"SA spi 0x{sa.spi:08x} dst {sa.daddr}: its replay state: {exc}"
                log.warning("server ID %s: stored %s; skipped", self.server_id, line)
                skipped.append(line)
        return Retrieved(
            tuple(sad),
            tuple(self.spd),
            source,
            tuple(skipped),
            self.server_id,
            self.epoch,
            self.pages,
            dict(self.ike_sas),
        )


@dataclass
class SaAnswer:
    """One SA retrieved by (SPI, destination, protocol), with its owner and policies."""

    server_id: str
    epoch: int
    sad: SadEntry
    spd: list[SpdEntry]
    replay: ReplayStatePayload | None
    ike_sa: IkeSaRecord | None
    """The owner's IKE SA that names this SA's SPI among its CHILD SAs, if stored."""


def policies_for(sa: SadEntry, spd: Iterable[SpdEntry]) -> list[SpdEntry]:
    """The policies that use ``sa``: a template with its reqid, protocol and (if set) address."""
    return PolicyIndex(spd).policies_for(sa)


class PolicyIndex:
    """Policies by template reqid, so that grouping N SAs with N policies is O(N)."""

    def __init__(self, spd: Iterable[SpdEntry]) -> None:
        self._by_reqid: dict[int, list[SpdEntry]] = {}
        for pol in spd:
            for reqid in {t.reqid for t in pol.templates if t.reqid}:
                self._by_reqid.setdefault(reqid, []).append(pol)

    def policies_for(self, sa: SadEntry) -> list[SpdEntry]:
        if not sa.reqid:
            return []
        out = []
        for pol in self._by_reqid.get(sa.reqid, ()):
            for tmpl in pol.templates:
                if (
                    tmpl.reqid == sa.reqid
                    and tmpl.proto == sa.proto
                    and int(tmpl.daddr) in (0, int(sa.daddr))
                ):
                    out.append(pol)
                    break
        return out


def merge_replay(sa: SadEntry, replay: ReplayStatePayload) -> SadEntry:
    """``sa`` with the counters of its latest replay update (for restore and snapshots)."""
    return entries.apply_replay_update(sa, replay)


class StoreClient:
    """A connection to one store server."""

    def __init__(
        self,
        server: str,
        port: int,
        psk: bytes,
        node_id: str,
        *,
        timeout: float = 0.5,
        retries: int = 5,
        max_datagram: int = 1400,
        window: int = 8,
    ) -> None:
        self.server = str(ipaddress.ip_address(server))
        self.port = port
        self.node_id = node_id
        self.timeout = timeout
        self.retries = retries
        self.max_datagram = max_datagram
        # Keep what is in flight well inside the server's receive buffer.
        self.window = max(1, min(window, 256 * 1024 // max_datagram))
        self._addr = (self.server, port)
        family = socket.AF_INET6 if ":" in self.server else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self._sock.connect(self._addr)
        self._sock.setblocking(False)
        self._channel = ChannelEndpoint(
            psk,
            node_id,
            Side.CLIENT,
            ChannelConfig(
                handshake_initial_timeout=timeout,
                handshake_attempts=retries + 1,
                # After a store restart our association is unknown there: re-handshake soon.
                dead_peer_timeout=max(1.0, timeout * 4),
            ),
        )
        # A random start keeps a restarted client's message IDs apart from its old ones,
        # which the server may still hold in its retransmission cache.
        self._next_id = int.from_bytes(os.urandom(4), "big")
        self.retransmissions = 0
        self.rtt = LatencyHistogram()
        """Round trips of requests answered after one transmission (Karn's rule: a
        retransmitted request's answer cannot be matched to one transmission)."""
        self.rto = RetransmissionTimer(timeout)
        """The first wait of each request, learnt from those same round trips."""
        self._raw = False
        self._in_progress: set[int] = set()
        """Message IDs the store said it is still carrying out (IN_PROGRESS) since the
        exchange last looked."""

    @classmethod
    def from_config(cls, cfg: ClientConfig, **overrides: Any) -> StoreClient:
        params: dict[str, Any] = {
            "timeout": cfg.timeout,
            "retries": cfg.retries,
            "max_datagram": cfg.max_datagram,
        }
        params.update(overrides)
        return cls(cfg.server, cfg.port, load_psk(cfg.psk_file), cfg.node_id, **params)

    def __enter__(self) -> StoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Tell the store to forget our association (an authenticated CLOSE), then close."""
        if self._sock.fileno() >= 0:
            self._channel.disconnect()
            self._flush()
        self._sock.close()

    # -- the I/O loop -----------------------------------------------------------------

    @property
    def channel_drops(self) -> Counter[str]:
        """Datagrams this client's channel dropped, by reason (``DropReason`` value)."""
        # dict() copies in one step: the metrics thread reads while the client's thread counts.
        return Counter({reason.value: n for reason, n in dict(self._channel.drops).items()})

    def _where(self) -> str:
        return f"store {self.server} port {self.port}"

    def _flush(self) -> None:
        for datagram, _ in self._channel.datagrams_to_send(time.monotonic()):
            # ICMP-refused or buffer full: the retransmission timer covers it.
            with contextlib.suppress(OSError):
                self._sock.send(datagram)

    def connect(self) -> None:
        """Run the handshake (a call does it on demand too); StoreTimeoutError if no answer."""
        if self._channel.established:
            return
        self._channel.connect(self._addr, time.monotonic())
        self._flush()
        while not self._channel.established:
            self._pump(time.monotonic() + self.timeout, {})

    def _pump(self, until: float, waiting: dict[int, Message | None]) -> None:
        """Wait for datagrams until ``until`` (or the channel's timer); record responses."""
        now = time.monotonic()
        timer = self._channel.get_timer()
        deadline = min(until, timer) if timer is not None else until
        readable, _, _ = select.select([self._sock], [], [], max(0.0, deadline - now))
        now = time.monotonic()
        if readable:
            while True:
                try:
                    data = self._sock.recv(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break  # ICMP port unreachable: keep waiting, the timer retransmits
                for event in self._channel.receive_datagram(data, self._addr, now):
                    self._event(event, waiting)
        timer = self._channel.get_timer()
        if timer is not None and now >= timer:
            self._channel.handle_timer(now)
            while (pending := self._channel.next_event()) is not None:
                self._event(pending, waiting)
        self._flush()

    def _event(self, event: object, waiting: dict[int, Message | None]) -> None:
        if isinstance(event, HandshakeFailed):
            raise StoreTimeoutError(
                f"{self._where()} did not answer the handshake ({event.reason}); "
                "check the address, port, firewall and that both use the same cluster key"
            )
        if isinstance(event, DataReceived):
            try:
                message: Any = (_rawwire.split if self._raw else decode_message)(event.data)
            except WireError:
                return
            if message.response and message.message_id in waiting:
                if isinstance(message, Message):  # decoded already: no second decode
                    status = message.status
                    notice = status is not None and status.status == Status.IN_PROGRESS
                else:
                    notice = _in_progress(event.data)
                if notice:
                    self._in_progress.add(message.message_id)
                else:
                    waiting[message.message_id] = message

    def _new_id(self) -> int:
        mid = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        return mid

    def exchange(
        self, requests: Sequence[tuple[ExchangeType, Sequence[Payload]]], raw: bool = False
    ) -> list[Any]:
        """Send requests (``window`` at a time) and return their responses, in order.

        With ``raw``, responses are :class:`~._rawwire.RawMessage` (entries undecoded).
        """
        self._raw = raw
        self.connect()
        messages = [Message(ex, self._new_id(), tuple(p)) for ex, p in requests]
        encoded = [encode_message(m) for m in messages]
        waiting: dict[int, Any] = {}
        timers: dict[int, tuple[float, float, int]] = {}  # id -> (deadline, timeout, attempts)
        sent_at: dict[int, float] = {}  # id -> first transmission
        index_of = {m.message_id: i for i, m in enumerate(messages)}
        results: list[Any] = [None] * len(messages)
        next_to_send = 0
        done = 0
        while done < len(messages):
            now = time.monotonic()
            while next_to_send < len(messages) and len(timers) < self.window:
                mid = messages[next_to_send].message_id
                waiting[mid] = None
                self._channel.send(encoded[next_to_send], now)
                first_wait = self.rto.rto
                timers[mid] = (now + first_wait, first_wait, 1)
                sent_at[mid] = now
                next_to_send += 1
            self._flush()
            self._pump(min(t[0] for t in timers.values()), waiting)
            now = time.monotonic()
            answered = [mid for mid in timers if waiting.get(mid) is not None]
            for mid in answered:
                results[index_of[mid]] = waiting.pop(mid)
                if timers[mid][2] == 1:
                    self.rtt.observe(now - sent_at[mid])
                    self.rto.observe(now - sent_at[mid])
                del timers[mid]
                done += 1
            if answered:
                # The store works through a window one commit after another: restart the
                # timers of the requests queued behind the one answered, as TCP restarts
                # its timer on an ACK of new data (RFC 6298 5.3), so the last of a window
                # is not given up on while the first ones commit. An earlier request still
                # unanswered was more likely lost: its timer runs on.
                last = max(index_of[mid] for mid in answered)
                for mid, (_, wait, attempts) in timers.items():
                    if index_of[mid] > last:
                        timers[mid] = (now + wait, wait, attempts)
            for mid in self._in_progress & timers.keys():
                # The store is carrying it out (it answered a retransmission so): its
                # retransmissions so far do not count, up to IN_PROGRESS_LIMIT_S in all.
                if now - sent_at[mid] < IN_PROGRESS_LIMIT_S:
                    _, wait, _ = timers[mid]
                    timers[mid] = (now + wait, wait, 1)
            self._in_progress.clear()
            for mid in list(timers):
                deadline, timeout, attempts = timers[mid]
                if now < deadline:
                    continue
                if attempts > self.retries:
                    raise StoreTimeoutError(
                        f"{self._where()} did not answer {messages[index_of[mid]].exchange.name} "
                        f"after {attempts} attempts"
                    )
                self.retransmissions += 1
                self._channel.send(encoded[index_of[mid]], now)
                wait = self.rto.backoff(timeout, attempts)
                timers[mid] = (now + wait, wait, attempts + 1)
        return [r for r in results if r is not None]

    def _call(self, exchange: ExchangeType, payloads: Sequence[Payload]) -> Message:
        (response,) = self.exchange([(exchange, payloads)])
        assert isinstance(response, Message)
        check_response(response)
        return response

    # -- operations ----------------------------------------------------------------

    def heartbeat(self, servers: bool = True) -> dict[str, Any]:
        """The store's statistics, with ``servers``: one entry per server ID.

        The summary is one small round trip (``servers=False`` is the liveness
        check); the server list follows in pages (protocol.md 5.6).
        """
        stats = _json_of(self._call(ExchangeType.HEARTBEAT, ()))
        if servers:
            stats["servers"] = self._server_list()
        return stats

    stats = heartbeat

    def _server_list(self) -> list[dict[str, Any]]:
        by_id: dict[str, dict[str, Any]] = {}
        cursor = b""
        while True:
            page = PagePayload(min(self.max_datagram, 65535), cursor)
            response = self._call(ExchangeType.HEARTBEAT, [page])
            for server in _json_of(response).get("servers", []):
                by_id[server["server_id"]] = server  # pages are no snapshot: an ID may repeat
            next_page = response.first(PagePayload)
            if not response.more or next_page is None:
                return list(by_id.values())
            cursor = next_page.cursor

    def server_stats(self, server_id: str) -> dict[str, Any] | None:
        """What the store holds for ``server_id``: ``{"server_id", "epoch", "sas", "policies"}``.

        None when the store holds nothing for it. Reads the Heartbeat server
        list page by page and stops at the page that names it (one small
        round trip when the store serves few server IDs): the daemon's health
        probe, which must not fetch the state itself.
        """
        cursor = b""
        while True:
            page = PagePayload(min(self.max_datagram, 65535), cursor)
            response = self._call(ExchangeType.HEARTBEAT, [page])
            for server in _json_of(response).get("servers", []):
                if isinstance(server, dict) and server.get("server_id") == server_id:
                    return server
            next_page = response.first(PagePayload)
            if not response.more or next_page is None:
                return None
            cursor = next_page.cursor

    def claim(self, server_id: str, epoch: int = 0) -> int:
        """Raise ``server_id``'s epoch (0: current + 1); returns the new epoch."""
        response = self._call(
            ExchangeType.SA_STOR, [ServerIdPayload.parse(server_id), EpochPayload(epoch)]
        )
        ep = response.first(EpochPayload)
        return epoch if ep is None else ep.epoch

    def _pack(
        self, server_id: str, epoch: int, groups: Iterable[Sequence[Payload]]
    ) -> list[list[Payload]]:
        head: list[Payload] = [ServerIdPayload.parse(server_id), EpochPayload(epoch)]
        budget = (
            self.max_datagram
            - CHANNEL_OVERHEAD
            - HEADER_LENGTH
            - sum(encoded_payload_length(p) for p in head)
        )
        messages: list[list[Payload]] = []
        current: list[Payload] = []
        used = 0
        for entries_group in groups:
            # Each entry is encoded once, here; the message encoding then only copies bytes.
            group = [chunk for p in entries_group for chunk in _pre_encoded(p)]
            size = sum(encoded_payload_length(p) for p in group)
            if size > budget:
                raise InvalidRequestError(
                    f"one entry (an SA with its policies, or an IKE SA) takes {size} bytes, "
                    f"more than a {self.max_datagram}-byte datagram holds; raise max_datagram"
                )
            if current and used + size > budget:
                messages.append(head + current)
                current, used = [], 0
            current += group
            used += size
        if current:
            messages.append(head + current)
        return messages

    def put_entries(
        self,
        server_id: str,
        epoch: int,
        sad: Sequence[SadEntry],
        spd: Sequence[SpdEntry] = (),
        *,
        replay: dict[SaKey, ReplayStatePayload] | None = None,
    ) -> int:
        """Store SAs with the policies that use them, and the other policies on their own.

        Each datagram is one transaction at the store; a bulk store of many
        datagrams is not atomic as a whole (a snapshot can be re-sent).
        Returns the number of SA_Stor messages sent.
        """
        used: set[int] = set()
        groups: list[list[Payload]] = []
        index = PolicyIndex(spd)
        for sa in sad:
            group: list[Payload] = [conv.sad_to_payload(sa)]
            key = SaKey.of(sa)
            if replay and key in replay:
                group.append(replay[key])
            for pol in index.policies_for(sa):
                used.add(id(pol))
                group.append(conv.spd_to_payload(pol))
            groups.append(group)
        # Policies without an SA go first in their message, before any SAD entry.
        standalone = [[conv.spd_to_payload(p)] for p in spd if id(p) not in used]
        messages = self._pack(server_id, epoch, standalone) + self._pack(server_id, epoch, groups)
        self._store_messages(messages)
        return len(messages)

    def put_ike_sas(
        self,
        server_id: str,
        epoch: int,
        ike_sas: Sequence[IkeSaRecord] = (),
        removed: Sequence[IkeSpis] = (),
    ) -> int:
        """Store IKE SAs (each replaces the stored one with its SPIs) and delete others.

        The deletions go last, so that a rekeyed IKE SA's successor is stored
        before the IKE SA it replaces is deleted.  Each datagram is one
        transaction; returns the number of SA_Stor messages sent.
        """
        both = {i.spis for i in ike_sas} & set(removed)
        if both:
            raise InvalidRequestError(f"IKE SAs {sorted(both)} are both stored and deleted")
        groups: list[list[Payload]] = [
            [IkeSaPayload(*i.spis, i.child_spis, i.record)] for i in ike_sas
        ]
        # 16 octets each: in Delete payloads of 64 (1 kB), that any datagram holds.
        groups += [[Delete.for_ike_sas(removed[i : i + 64])] for i in range(0, len(removed), 64)]
        messages = self._pack(server_id, epoch, groups)
        self._store_messages(messages)
        return len(messages)

    def _store_messages(self, messages: list[list[Payload]]) -> None:
        for response in self.exchange([(ExchangeType.SA_STOR, m) for m in messages]):
            check_response(response)

    def put_snapshot(self, snapshot: Snapshot, epoch: int, server_id: str | None = None) -> int:
        """Store every SA and policy of a snapshot under ``server_id`` (default: its node ID)."""
        return self.put_entries(server_id or snapshot.node_id, epoch, snapshot.sad, snapshot.spd)

    def delete(
        self,
        server_id: str,
        epoch: int,
        spis: Sequence[tuple[int, int]] = (),
        policy_indexes: Sequence[int] = (),
    ) -> None:
        """Delete SAs named by (SPI, IP protocol) and policies by kernel index, in one message."""
        payloads: list[Payload] = [ServerIdPayload.parse(server_id), EpochPayload(epoch)]
        by_proto: dict[int, list[int]] = {}
        for spi, proto in spis:
            by_proto.setdefault(proto, []).append(spi)
        for proto, proto_spis in by_proto.items():
            pid = {50: ProtocolId.ESP, 51: ProtocolId.AH, 108: ProtocolId.IPCOMP}[proto]
            payloads.append(Delete(pid, tuple(proto_spis)))
        if policy_indexes:
            payloads.append(Delete(ProtocolId.SPD_INDEX, tuple(policy_indexes)))
        self._call(ExchangeType.SA_STOR, payloads)

    def check_epoch(self, server_id: str, epoch: int) -> None:
        """Raise ``StaleEpochError`` if ``epoch`` no longer owns ``server_id``; change nothing.

        An SA_Stor whose only entry is a Delete payload naming no SPI: the
        store checks the epoch as for any write and has nothing to delete.
        An active node probes with it so that it learns it was fenced even
        when it has nothing to publish (docs/protocol.md, "Fencing probe").
        """
        payloads: list[Payload] = [
            ServerIdPayload.parse(server_id),
            EpochPayload(epoch),
            Delete(ProtocolId.ESP, ()),
        ]
        self._call(ExchangeType.SA_STOR, payloads)

    def update_replay(self, server_id: str, epoch: int, sas: Sequence[SadEntry]) -> int:
        """Send the counters of SAs stored before (small, frequent); returns the messages sent.

        Only each SA's replay state and lifetime counters go (a Replay State
        payload), not the SA.
        """
        states = (entries.replay_update_for(sa) for sa in sas)
        messages = self._pack(server_id, epoch, ([s] for s in states))
        self._store_messages(messages)
        return len(messages)

    def get_server(self, server_id: str, stop: Callable[[], bool] | None = None) -> RetrievedState:
        """Every SA, policy and IKE SA stored under ``server_id`` (all pages).

        ``stop`` is asked before each page after the first; when it answers
        True the retrieval ends with ``FetchCancelled`` (a hot standby's
        background fetch, overtaken by a takeover).
        """
        return self._walk(server_id, [ServerIdPayload.parse(server_id)], stop)

    def get_changes(
        self, server_id: str, since: int, stop: Callable[[], bool] | None = None
    ) -> RetrievedState:
        """What changed under ``server_id`` after revision ``since`` (all pages).

        The SAs and policies stored or updated since, as they are now, and in
        ``removed_sas`` / ``removed_policies`` the ones removed since;
        ``revision`` is the one to ask from next time. ``RevisionGoneError``
        when the store no longer holds those changes: retrieve everything
        with ``get_server``. ``stop`` as in ``get_server``.
        """
        head: list[Payload] = [ServerIdPayload.parse(server_id), RevisionPayload(since)]
        return self._walk(server_id, head, stop)

    def _walk(
        self, server_id: str, head: list[Payload], stop: Callable[[], bool] | None
    ) -> RetrievedState:
        """The pages of one bulk SA_Retr (protocol.md 5.3), gathered."""
        state = RetrievedState(server_id, 0)
        cursor = b""
        page_size = min(self.max_datagram, 65535)
        while True:
            if cursor and stop is not None and stop():
                raise FetchCancelled(f"retrieval of {server_id} stopped after {state.pages} pages")
            request: list[Payload] = [*head, PagePayload(page_size, cursor)]
            (raw,) = self.exchange([(ExchangeType.SA_RETR, request)], raw=True)
            first_page = state.pages == 0
            state.pages += 1
            items = _rawwire.parse_retr_items(raw.chunks)
            status = tuple(p for p in items if isinstance(p, Notify | EpochPayload))
            check_response(Message(raw.exchange, raw.message_id, status, True))
            last: _rawwire.SadBody | None = None
            next_cursor = None
            status_notify = next((p for p in items if isinstance(p, Notify)), None)
            for p in items:
                if isinstance(p, _rawwire.SadBody):
                    state.sad_entries.append(conv.ENTRY_FORMAT_WIRE_V1 + p.body)
                    last = p
                elif isinstance(p, _rawwire.UnreadableReplay) and last is not None:
                    state.unreadable_replay[len(state.sad_entries) - 1] = p.reason
                elif isinstance(p, _rawwire.RawSpd):
                    state.spd_entries.append(conv.ENTRY_FORMAT_WIRE_V1 + p.stored())
                elif isinstance(p, ReplayStatePayload):
                    state.replay[conv.key_of_replay(p)] = p
                elif isinstance(p, IkeSaPayload):
                    state.ike_sas[p.spis] = IkeSaRecord(p.spis, p.child_spis, p.record)
                elif isinstance(p, EpochPayload):
                    state.epoch = p.epoch
                elif isinstance(p, RevisionPayload):
                    # Later pages may be newer; what came before the first is all in the walk.
                    if first_page:
                        state.revision = p.revision
                elif isinstance(p, RemovedPayload):
                    if p.kind == RemovedKind.SA:
                        state.removed_sas.append(
                            conv.raw_sa_key(p.spi, p.family, p.daddr, p.protocol)
                        )
                    elif p.kind == RemovedKind.IKE_SA:
                        state.removed_ike_sas.append(p.ike_spis)
                    else:
                        state.removed_policies.append(p.policy_id)
                elif isinstance(p, PagePayload):
                    next_cursor = p.cursor
                elif isinstance(p, Notify) and p is not status_notify:
                    # An SA (or IKE SA) the store could not read back, reported in its place.
                    spi = "an SA" if p.spi is None else f"SA spi 0x{p.spi:08x}"
                    if p.protocol_id == ProtocolId.IKE:
                        spi = "an IKE SA"
                    state.unreadable.append(f"{spi}: {p.text or p.status}")
            if not raw.more or next_cursor is None:
                return state
            cursor = next_cursor

    def fetch(self, server_id: str, stop: Callable[[], bool] | None = None) -> Retrieved:
        """Every SA (with its latest counters) and policy stored under ``server_id``.

        ``get_server`` then ``RetrievedState.merged``; ``stop`` cancels between
        pages and conversion steps (``FetchCancelled``).
        """
        return self.get_server(server_id, stop).merged(self.server, stop)

    def fetch_sa(self, spi: int, dst: str, proto: int | str = "esp") -> Retrieved:
        """One SA, with its latest counters, and its policies; ``sad`` holds that one SA.

        ``NotFoundError`` if the store has none; ``UndecodableEntryError`` if
        the SA, one of its policies or its replay state does not decode or
        apply (older counters could reuse sequence numbers).
        """
        answer = self.get_spi(spi, dst, proto)
        sa = answer.sad
        if answer.replay is not None:
            try:
                sa = merge_replay(sa, answer.replay)
            except ApplianceError as exc:
                raise UndecodableEntryError(f"stored replay state does not apply: {exc}") from None
        return Retrieved(
            (sa,), tuple(answer.spd), self.server, (), answer.server_id, answer.epoch, 1
        )

    def get_spi(self, spi: int, dst: str, proto: int | str = "esp") -> SaAnswer:
        """One SA with its SPD entries; NotFoundError if the store has none.

        ``_convert.UndecodableEntryError`` if the SA or one of its policies is
        stored but does not decode to the model.
        """
        key = SaKey.make(spi, dst, proto)
        response = self._call(ExchangeType.SA_RETR, [conv.lookup_payload(key)])
        sid = response.first(ServerIdPayload)
        ep = response.first(EpochPayload)
        sad = response.first(SadEntryPayload)
        if sid is None or sad is None:
            raise StoreRefusedError(f"{self._where()} answered an SA lookup without the SA")
        ike = response.first(IkeSaPayload)
        try:
            model_sa = conv.sad_from_payload(sad)
            model_spd = [conv.spd_from_payload(p) for p in response.all(SpdEntryPayload)]
        except InvalidRequestError as exc:
            raise UndecodableEntryError(f"stored {key} does not decode: {exc}") from None
        return SaAnswer(
            str(sid),
            ep.epoch if ep else 0,
            model_sa,
            model_spd,
            response.first(ReplayStatePayload),
            None if ike is None else IkeSaRecord(ike.spis, ike.child_spis, ike.record),
        )


def _pre_encoded(payload: Payload) -> list[Payload]:
    """An entry payload as raw chunks (an SPD entry is three: SPD, TSi, TSr)."""
    if isinstance(payload, SadEntryPayload):
        return [conv.sad_raw_payload(conv.sad_entry_bytes(payload))]
    if isinstance(payload, SpdEntryPayload):
        return list(conv.spd_raw_payloads(conv.spd_entry_bytes(payload)))
    return [payload]


def _in_progress(data: bytes) -> bool:
    """Is this raw response the store's IN_PROGRESS notice (a header and one Notify)?"""
    if len(data) > _IN_PROGRESS_MAX_LEN:
        return False  # a real answer: not decoded twice
    try:
        status = decode_message(data).status
    except WireError:
        return False
    return status is not None and status.status == Status.IN_PROGRESS


def check_response(response: Message) -> None:
    """Raise the matching StoreError if the response's status is an error."""
    status: Notify | None = response.status
    if status is None:
        raise StoreRefusedError("the store answered without a status")
    if status.status == Status.OK:
        return
    text = status.text or f"status {status.status}"
    cls = _ERRORS.get(status.status, StoreRefusedError)
    if cls is StaleEpochError:
        ep = response.first(EpochPayload)
        raise StaleEpochError(f"store refused: {text}", ep.epoch if ep else 0)
    if cls is EpochLimitError:
        ep = response.first(EpochPayload)
        raise EpochLimitError(f"store refused: {text}", ep.epoch if ep else None)
    raise cls(f"store refused: {text}")


def _json_of(response: Message) -> dict[str, Any]:
    """The JSON object in a Heartbeat answer's status Notify ({} if there is none)."""
    status = response.status
    try:
        value = json.loads(status.data) if status and status.data else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
