"""What the store does with one request: a decoded message in, a response message out.

No sockets and no clock: the UDP server (:mod:`.server`) feeds it requests
that came through the protected channel, and it talks only to the backend.

Requests (protocol.md 5.3; the payload order carries the grouping):

* **SA_Stor** = Server ID, Epoch, then any of: IKE SA payloads and SPD entries
  before the first SAD entry (IKE SAs; policies without an SA), SAD Entry
  (followed by the SPD entries and the Replay State that belong to that SA),
  Replay State payloads for SAs not in the message (replay-only update),
  Delete payloads (of SAs, SPD entries, IKE SAs).
  The whole message is one backend transaction.  An SA_Stor with no entry
  and no Delete is a *claim*: it raises the server ID's epoch (Epoch 0 means
  "current + 1"); the new master sends it when it takes over.
* **SA_Retr** with an SA Lookup = one SA by (SPI, destination, protocol):
  the answer holds its owner's Server ID and Epoch, the SAD entry, its replay
  state if stored, the owner's IKE SA that names the SPI among its CHILD SAs
  if there is one, and its SPD entries.
* **SA_Retr** with a Server ID (and a Page payload to resume) = one page of
  that server's state: SAD entries (each followed by its replay state), then
  SPD entries, then IKE SAs; the M flag and a Page payload with the cursor if
  more follow.
* **Heartbeat** = liveness; the answer's OK Notify carries a summary of the
  store's statistics as JSON.  With a Page payload it carries one page of
  the per-server list instead (``{"servers": [...]}``), resumed like bulk
  retrieval, so any number of server IDs fits (protocol.md 5.6).

Every response fits the store's ``max_datagram`` (protected, i.e. with the
channel overhead), and a page also the requester's maximum: a response
that cannot fit becomes a TOO_LARGE error (or, for an error, a shorter text).

Every response starts with a status Notify (constants.Status).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.store import _convert as conv
from appliance.store import _rawwire
from appliance.store.base import (
    Batch,
    EpochLimitError,
    IkeSaRecord,
    IkeSpis,
    InvalidRequestError,
    NotFoundError,
    PolicyRecord,
    SaKey,
    SaPut,
    SaRecord,
    SaStore,
    StaleEpochError,
    StoreError,
    format_spis,
)
from appliance.store.base import Status as StoreStatus
from appliance.wire import LocalWireError, RemoteWireError, WireError
from appliance.wire.constants import (
    CHANNEL_OVERHEAD,
    DEFAULT_MAX_DATAGRAM,
    GENERIC_HEADER_LENGTH,
    HEADER_LENGTH,
    IPPROTO_TO_PROTOCOL_ID,
    MAX_MESSAGE_LENGTH,
    ExchangeType,
    PayloadType,
    ProtocolId,
    Status,
)
from appliance.wire.messages import (
    Message,
    decode_message,
    encode_message,
    encoded_payload_length,
    page_budget,
    peek_header,
)
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
    SaLookupPayload,
    ServerIdPayload,
    UnknownPayload,
)

log = logging.getLogger("appliance.store.service")

_STOR_PAYLOADS = (
    ServerIdPayload,
    EpochPayload,
    _rawwire.RawSad,
    _rawwire.RawSpd,
    ReplayStatePayload,
    IkeSaPayload,
    Delete,
)

WIRE_STATUS = {
    StoreStatus.OK: Status.OK,
    StoreStatus.SPI_COLLISION: Status.SPI_COLLISION,
    StoreStatus.STALE_EPOCH: Status.STALE_EPOCH,
    StoreStatus.EPOCH_LIMIT: Status.EPOCH_LIMIT,
    StoreStatus.NOT_FOUND: Status.NOT_FOUND,
    StoreStatus.INVALID: Status.MALFORMED,
    StoreStatus.UNAVAILABLE: Status.BUSY,
    StoreStatus.INTERNAL: Status.INTERNAL,
    StoreStatus.REVISION_GONE: Status.REVISION_GONE,
}

#: Smallest reply a requester may ask for; below it not even one SA fits.
MIN_PAGE_DATAGRAM = 576

#: What may follow the Server ID of an SA_Retr by Server ID: the whole state, or the
#: changes after a revision (protocol.md 5.3), each with or without a Page.
_BULK_TAILS: tuple[list[type], ...] = (
    [],
    [PagePayload],
    [RevisionPayload],
    [RevisionPayload, PagePayload],
)
#: Shortest entry of a Heartbeat server page: '{"server_id":"a","epoch":0,"sas":0,"policies":0},'.
_MIN_SERVER_JSON = 49
#: Bytes of a Notify payload before its data (generic header, protocol, SPI size, type).
_NOTIFY_HEAD = GENERIC_HEADER_LENGTH + 4


class ResponseTooLarge(Exception):
    """A response cannot fit the maximum datagram; answered with TOO_LARGE."""


@dataclass
class ServiceCounters:
    requests: dict[str, int] = field(default_factory=dict)
    """Decoded requests per exchange name (the Heartbeat summary's ``requests``)."""
    errors: dict[str, int] = field(default_factory=dict)
    """Errors per status name (the Heartbeat summary's ``errors``)."""
    spi_lookups: int = 0
    """SA_Retr requests by SPI, a share of ``requests["SA_RETR"]`` (the summary's
    ``spi_lookups``): the on-demand retrievals, apart from bulk and change reads."""
    responses: dict[tuple[str, str], int] = field(default_factory=dict)
    """Responses per (exchange, status), both lower case: every answered request once,
    with the status it was answered with (``ok`` or the error's name, e.g. ``not_found``);
    the exchange is ``unknown`` for a number that is none of ours."""


_Answer = tuple[bytes, tuple[str, str] | None]
"""An encoded response and its (exchange, status) labels; None: no response (unreadable)."""


def response_labels(exchange: int, status: Status) -> tuple[str, str]:
    """The (exchange, status) pair a response is counted under in ``ServiceCounters.responses``."""
    try:
        name = ExchangeType(exchange).name.lower()
    except ValueError:
        name = "unknown"
    return name, status.name.lower()


def _encoded_size(payload: Payload) -> int:
    # Stored entries travel as raw chunks: their size is known without encoding them.
    if isinstance(payload, UnknownPayload):
        return GENERIC_HEADER_LENGTH + len(payload.body)
    return encoded_payload_length(payload)


def error_response(request_exchange: int, message_id: int, status: Status, text: str) -> Message:
    """A response with only an error Notify (for a request we could not even decode)."""
    try:
        exchange = ExchangeType(request_exchange)
    except ValueError:
        exchange = ExchangeType.HEARTBEAT
    return Message(exchange, message_id, (Notify(status, data=text.encode()[:512]),), response=True)


class StoreService:
    """Turns requests into backend calls and responses."""

    def __init__(
        self,
        store: SaStore,
        extra_stats: Callable[[], dict[str, Any]] | None = None,
        max_datagram: int = DEFAULT_MAX_DATAGRAM,
    ) -> None:
        self.store = store
        self.counters = ServiceCounters()
        # Reader threads and the writer count concurrently (server.py); a dict += is not atomic.
        self._counters_lock = threading.Lock()
        self._extra_stats = extra_stats or dict
        self.max_datagram = max_datagram
        """Largest protected datagram of any response (``[store] max_datagram``)."""

    def handle_bytes(self, data: bytes) -> bytes:
        """The encoded response to one decrypted request (error responses included)."""
        answer = self._respond(data)
        self._count_responses([answer])
        return answer[0]

    def _respond(self, data: bytes) -> _Answer:
        """:meth:`handle_bytes`, not yet counted in ``counters.responses``."""
        try:
            exchange, message_id, _ = peek_header(data)
        except RemoteWireError:
            return b"", None
        try:
            if exchange == ExchangeType.SA_STOR:
                raw = _rawwire.split(data)
                request = Message(raw.exchange, raw.message_id, (), raw.response, raw.more)
                items = _rawwire.parse_stor_items(raw.chunks)
            else:
                request = decode_message(data)
                items = list(request.payloads)
            if request.response:
                raise RemoteWireError("a response was sent as a request")
        except WireError as exc:
            self._count_error(exc.status)
            return self._fitted(
                exchange, error_response(exchange, message_id, exc.status, str(exc))
            )
        return self._fitted(exchange, self.handle(request, items))

    def _fitted(self, exchange: int, response: Message) -> _Answer:
        """``response`` fitted, with the labels it is to be counted under once it leaves."""
        data, status = self._fit(response)
        return data, response_labels(exchange, status)

    def _count_responses(self, answers: list[_Answer]) -> None:
        with self._counters_lock:
            counts = self.counters.responses
            for _, labels in answers:
                if labels is not None:
                    counts[labels] = counts.get(labels, 0) + 1

    def fit(self, response: Message) -> bytes:
        """``response`` encoded, within ``max_datagram`` once protected (protocol.md 2).

        An error's text is shortened; any other response that does not fit
        becomes a TOO_LARGE error, so no oversized datagram ever leaves.
        """
        return self._fit(response)[0]

    def _fit(self, response: Message) -> tuple[bytes, Status]:
        """:meth:`fit`, with the status the encoded response carries."""
        room = self.max_datagram - CHANNEL_OVERHEAD
        status = response.status
        try:
            data = encode_message(response)
        except LocalWireError:  # past the 65,507-byte message limit: too large for any datagram
            data = b""
            size = f"more than {MAX_MESSAGE_LENGTH}"
        else:
            if len(data) <= room:
                return data, Status.OK if status is None else Status(status.status)
            size = str(len(data))
        if status is not None and status.status != Status.OK and data:
            cut = status.data[: max(0, len(status.data) - (len(data) - room))]
            notify = Notify(status.status, status.protocol_id, status.spi, _utf8_prefix(cut))
            rest = tuple(p for p in response.payloads if p is not status)
            shortened = Message(response.exchange, response.message_id, (notify, *rest), True)
            return encode_message(shortened), Status(status.status)
        self._count_error(Status.TOO_LARGE)
        text = (
            f"the {response.exchange.name} response would take {size} bytes, more than this "
            f"store's max_datagram of {self.max_datagram} allows; raise [store] max_datagram"
        )
        reply = Message(
            response.exchange,
            response.message_id,
            (Notify(Status.TOO_LARGE, data=text.encode()),),
            True,
        )
        return encode_message(reply), Status.TOO_LARGE

    def handle_many(self, requests: list[bytes]) -> list[bytes]:
        """Responses to several requests, committed together (one fsync for all).

        Each request is still its own all-or-nothing unit.  If the group
        commit itself fails, nothing of it is durable and every request gets
        an error response, so nothing is acknowledged that is not stored.
        """
        try:
            with self.store.group():
                answers = [self._respond_guarded(data) for data in requests]
        except StoreError as exc:
            self._count_error(Status.BUSY)
            answers = []
            for data in requests:
                exchange, message_id, _ = peek_header(data)
                reply = error_response(exchange, message_id, Status.BUSY, str(exc))
                answers.append(self._fitted(exchange, reply))
        # Counted once the group's fate is known: a request whose group failed is BUSY.
        self._count_responses(answers)
        return [reply for reply, _ in answers]

    def handle_read(self, data: bytes) -> bytes:
        """The response to one read-only request (SA_Retr, Heartbeat), outside any group.

        The server calls it from its reader threads, next to the writer's
        group commit (SQLite reads each use a connection of their own).
        """
        answer = self._respond_guarded(data)
        self._count_responses([answer])
        return answer[0]

    def _respond_guarded(self, data: bytes) -> _Answer:
        try:
            return self._respond(data)
        except Exception as exc:  # a bug must cost one request, not the whole group
            log.exception("request failed")
            exchange, message_id, _ = peek_header(data)
            reply = error_response(exchange, message_id, Status.INTERNAL, type(exc).__name__)
            return self._fitted(exchange, reply)

    def response_counts(self) -> dict[tuple[str, str], int]:
        """A copy of ``counters.responses`` (safe from any thread)."""
        with self._counters_lock:
            return dict(self.counters.responses)

    def _count_error(self, status: Status) -> None:
        with self._counters_lock:
            self.counters.errors[status.name] = self.counters.errors.get(status.name, 0) + 1

    def handle(self, request: Message, items: list[object] | None = None) -> Message:
        """The response to ``request``; backend errors become error Notifies."""
        name = request.exchange.name
        with self._counters_lock:
            self.counters.requests[name] = self.counters.requests.get(name, 0) + 1
        if items is None:
            items = list(request.payloads)
        try:
            if request.exchange == ExchangeType.SA_STOR:
                payloads = self._store(items)
            elif request.exchange == ExchangeType.SA_RETR:
                payloads = self._retrieve(request)
            else:
                payloads = self._heartbeat(items)
        except ResponseTooLarge as exc:
            self._count_error(Status.TOO_LARGE)
            payloads = [Notify(Status.TOO_LARGE, data=str(exc).encode()[:1024])]
        except StoreError as exc:
            status = WIRE_STATUS[exc.status]
            self._count_error(status)
            key = getattr(exc, "key", None)
            notify = Notify(status, data=str(exc).encode()[:1024])
            if isinstance(key, SaKey):
                # The Notify names the SPI the status is about (protocol.md 4.1).
                protocol = IPPROTO_TO_PROTOCOL_ID[key.proto]
                notify = Notify(status, protocol, key.spi, notify.data)
            payloads = [notify]
            current = getattr(exc, "current_epoch", None)
            if isinstance(exc, StaleEpochError | EpochLimitError) and current is not None:
                payloads.append(EpochPayload(current))
        more = any(isinstance(p, PagePayload) for p in payloads)
        return Message(request.exchange, request.message_id, tuple(payloads), True, more)

    # -- SA_Stor ------------------------------------------------------------------

    def _store(self, items: list[object]) -> list[Payload]:
        items = [p for p in items if not isinstance(p, UnknownPayload)]
        sids = [p for p in items if isinstance(p, ServerIdPayload)]
        eps = [p for p in items if isinstance(p, EpochPayload)]
        if len(sids) != 1 or len(eps) != 1:
            raise InvalidRequestError("SA_Stor needs exactly one Server ID and one Epoch payload")
        for p in items:
            if not isinstance(p, _STOR_PAYLOADS):
                raise InvalidRequestError(
                    f"{type(p).__name__} is not allowed in an SA_Stor request"
                )
        sid, ep = sids[0], eps[0]
        server_id, epoch = str(sid), ep.epoch
        puts: list[SaPut] = []
        standalone: list[PolicyRecord] = []
        replay: list[tuple[SaKey, bytes]] = []
        delete_sas: list[SaKey] = []
        delete_pols: list[bytes] = []
        has_delete = False
        ike_sas: list[IkeSaRecord] = []
        delete_ike: list[IkeSpis] = []
        # The SA being assembled: key, entry, policies, (unused), replay state, model SA.
        group: list[Any] | None = None
        replays = 0

        def close_group() -> None:
            if group is not None:
                puts.append(SaPut(group[0], group[1], tuple(group[2]), replay=group[4]))

        # Every entry is decoded to the model before anything is stored (docs/store.md,
        # "What the server stores"): the first that does not decode refuses the message.
        for p in items:
            if isinstance(p, _rawwire.RawSad):
                close_group()
                key = conv.sa_key_of_payload(p.payload)
                where = f"SAD entry {p.ordinal} ({key})"
                sa = conv.admit_sad(p.payload, where, key)
                group = [key, conv.ENTRY_FORMAT_WIRE_V1 + p.body, [], None, None, sa]
            elif isinstance(p, _rawwire.RawSpd):
                assert p.payload is not None  # parse_stor_items decodes every SPD entry
                conv.admit_spd(p.payload, f"SPD entry {p.ordinal} (policy index {p.index})")
                entry = conv.ENTRY_FORMAT_WIRE_V1 + p.stored()
                pid = (
                    conv.policy_id_for_index(p.index)
                    if p.index
                    else conv.policy_id_for_identity(p.body, p.tsi, p.tsr)
                )
                (standalone if group is None else group[2]).append(PolicyRecord(pid, entry))
            elif isinstance(p, ReplayStatePayload):
                replays += 1
                key = conv.key_of_replay(p)
                own = group is not None and key == group[0]
                where = f"Replay State {replays} ({key})"
                conv.admit_replay(p, group[5] if group is not None and own else None, where, key)
                if group is not None and own:
                    if group[4] is not None:
                        raise InvalidRequestError(f"two Replay State payloads for SA {key}")
                    group[4] = conv.replay_to_bytes(p)
                else:
                    replay.append((key, conv.replay_to_bytes(p)))
            elif isinstance(p, IkeSaPayload):
                # IKE SAs stand alone (4.6): after a SAD entry one would read as that SA's.
                if group is not None:
                    raise InvalidRequestError(
                        "an IKE SA payload must come before the first SAD entry"
                    )
                ike_sas.append(IkeSaRecord(p.spis, p.child_spis, p.record))
            elif isinstance(p, Delete):
                has_delete = True
                if p.protocol_id == ProtocolId.IKE:
                    delete_ike += p.ike_spis
                elif p.protocol_id == ProtocolId.SPD_INDEX:
                    delete_pols += [conv.policy_id_for_index(i) for i in p.spis]
                else:
                    proto = {ProtocolId.ESP: 50, ProtocolId.AH: 51, ProtocolId.IPCOMP: 108}[
                        ProtocolId(p.protocol_id)
                    ]
                    for spi in p.spis:
                        delete_sas += self.store.keys_for_spi(server_id, spi, proto)
        close_group()
        batch = Batch(
            tuple(puts),
            tuple(standalone),
            tuple(delete_sas),
            tuple(delete_pols),
            tuple(replay),
            tuple(ike_sas),
            tuple(delete_ike),
        )
        if batch or has_delete:
            self.store.apply(server_id, epoch, batch)
            new_epoch = max(epoch, self.store.epoch(server_id))
        else:
            new_epoch = self.store.claim(server_id, epoch or None)
        return [Notify(Status.OK), EpochPayload(new_epoch)]

    # -- SA_Retr ------------------------------------------------------------------

    def _retrieve(self, request: Message) -> list[Payload]:
        payloads = [p for p in request.payloads if not isinstance(p, UnknownPayload)]
        kinds = [type(p) for p in payloads]
        if kinds == [SaLookupPayload]:
            lookup = payloads[0]
            assert isinstance(lookup, SaLookupPayload)
            with self._counters_lock:
                self.counters.spi_lookups += 1
            return self._retrieve_spi(conv.key_of_lookup(lookup))
        if kinds[:1] == [ServerIdPayload] and kinds[1:] in _BULK_TAILS:
            sid = payloads[0]
            assert isinstance(sid, ServerIdPayload)
            page = next((p for p in payloads if isinstance(p, PagePayload)), PagePayload())
            since = next((p for p in payloads if isinstance(p, RevisionPayload)), None)
            if since is None:
                return self._retrieve_page(str(sid), page)
            return self._retrieve_changes(str(sid), since.revision, page)
        raise InvalidRequestError(
            "SA_Retr takes one SA Lookup, or one Server ID, at most one Revision "
            "and at most one Page payload, in that order"
        )

    def _retrieve_spi(self, key: SaKey) -> list[Payload]:
        found = self.store.get_by_spi(key)
        if found is None:
            raise NotFoundError(f"no SA {key} in the store")
        out: list[Payload] = [
            Notify(Status.OK),
            ServerIdPayload.parse(found.server_id),
            EpochPayload(found.epoch),
            *self._sa_payloads(found.sa.entry, found.sa.replay),
        ]
        if found.ike_sa is not None and found.ike_sa.unreadable is None:
            out.append(_ike_sa_payload(found.ike_sa))
        out += [q for p in found.policies for q in conv.spd_raw_payloads(p.entry)]
        return out

    def _sa_payloads(self, entry: bytes, replay: bytes | None) -> list[Payload]:
        out: list[Payload] = [conv.sad_raw_payload(entry)]
        if replay is not None:
            out.append(UnknownPayload(PayloadType.REPLAY_STATE, replay))
        return out

    def _page_size(self, page: PagePayload) -> int:
        """The largest protected reply for a page: the requester's maximum, within ours."""
        asked = page.max_length or DEFAULT_MAX_DATAGRAM
        if asked < MIN_PAGE_DATAGRAM:
            raise InvalidRequestError(f"page max length {asked} is below {MIN_PAGE_DATAGRAM}")
        return min(asked, self.max_datagram)

    def _retrieve_page(self, server_id: str, page: PagePayload) -> list[Payload]:
        max_len = self._page_size(page)
        cursor = page.cursor or None
        backend_page = self.store.get_page(server_id, cursor, max(4, max_len // 200))
        items = self._entry_items(backend_page.sas, backend_page.policies, backend_page.ike_sas)
        head = self._bulk_head(server_id, backend_page.epoch, backend_page.revision)
        return self._fit_page(head, items, backend_page.cursor, page, max_len)

    def _retrieve_changes(self, server_id: str, since: int, page: PagePayload) -> list[Payload]:
        """The changes after ``since`` (protocol.md 5.3): entries as now, then removals."""
        max_len = self._page_size(page)
        cursor = page.cursor or None
        changes = self.store.get_changes(server_id, since, cursor, max(4, max_len // 200))
        items = self._entry_items(changes.sas, changes.policies, changes.ike_sas)
        for key in changes.removed_sas:
            lookup = conv.lookup_payload(key)
            removed = RemovedPayload.for_sa(key.spi, key.proto, lookup.family, lookup.daddr)
            items.append((self.store.removed_sa_cursor(key), [removed]))
        for pid in changes.removed_policies:
            items.append((self.store.removed_policy_cursor(pid), [RemovedPayload.for_policy(pid)]))
        for spis in changes.removed_ike_sas:
            items.append(
                (self.store.removed_ike_sa_cursor(spis), [RemovedPayload.for_ike_sa(spis)])
            )
        head = self._bulk_head(server_id, changes.epoch, changes.revision)
        return self._fit_page(head, items, changes.cursor, page, max_len)

    @staticmethod
    def _bulk_head(server_id: str, epoch: int, revision: int) -> list[Payload]:
        return [
            Notify(Status.OK),
            ServerIdPayload.parse(server_id),
            EpochPayload(epoch),
            RevisionPayload(revision),
        ]

    def _entry_items(
        self,
        sas: Sequence[SaRecord],
        policies: Sequence[PolicyRecord],
        ike_sas: Sequence[IkeSaRecord],
    ) -> list[tuple[bytes, Sequence[Payload]]]:
        """Each SA, policy and IKE SA of a page as (cursor after it, its payloads)."""
        items: list[tuple[bytes, Sequence[Payload]]] = []
        for sa in sas:
            if sa.unreadable is not None:
                # In its place, a Notify naming it: the requester skips and reports it (5.3).
                protocol = IPPROTO_TO_PROTOCOL_ID[sa.key.proto]
                text = sa.unreadable.encode()[:512]
                payloads: Sequence[Payload] = [Notify(Status.MALFORMED, protocol, sa.key.spi, text)]
            else:
                payloads = self._sa_payloads(sa.entry, sa.replay)
            items.append((self.store.sa_cursor(sa.key), payloads))
        for pol in policies:
            items.append(
                (self.store.policy_cursor(pol.policy_id), conv.spd_raw_payloads(pol.entry))
            )
        for ike in ike_sas:
            if ike.unreadable is not None:
                # As for an SA: a Notify in its place, naming the IKE SA in its text.
                why = f"IKE SA {format_spis(ike.spis)}: {ike.unreadable}"
                payloads = [Notify(Status.MALFORMED, ProtocolId.IKE, data=why.encode()[:512])]
            else:
                payloads = [_ike_sa_payload(ike)]
            items.append((self.store.ike_sa_cursor(ike.spis), payloads))
        return items

    def _fit_page(
        self,
        head: list[Payload],
        items: list[tuple[bytes, Sequence[Payload]]],
        backend_cursor: bytes | None,
        page: PagePayload,
        max_len: int,
    ) -> list[Payload]:
        """As many whole items as fit the reply, and the cursor after the last one sent."""
        budget = page_budget(max_len, head)
        body: list[Payload] = []
        used = 0
        resume: bytes | None = None
        for item_cursor, payloads in items:
            size = sum(_encoded_size(p) for p in payloads)
            if used + size > budget:
                if not body:
                    raise ResponseTooLarge(
                        f"an entry of {size} bytes does not fit a {max_len}-byte reply "
                        f"(the smaller of the requested {page.max_length or DEFAULT_MAX_DATAGRAM} "
                        f"and this store's max_datagram {self.max_datagram})"
                    )
                break
            body += payloads
            used += size
            resume = item_cursor
        else:
            resume = backend_cursor
        out = head + body
        if resume is not None:
            out.append(PagePayload(0, resume))
        return out

    # -- Heartbeat ----------------------------------------------------------------

    def _heartbeat(self, items: list[object]) -> list[Payload]:
        payloads = [p for p in items if not isinstance(p, UnknownPayload)]
        kinds = [type(p) for p in payloads if not isinstance(p, ServerIdPayload)]
        if len(payloads) - len(kinds) > 1 or kinds not in ([], [PagePayload]):
            raise InvalidRequestError(
                "a Heartbeat takes no payload but a Server ID and, for the server list, a Page"
            )
        page = next((p for p in payloads if isinstance(p, PagePayload)), None)
        if page is None:
            return [Notify(Status.OK, data=self._summary_json())]
        return self._server_page(page)

    def summary(self) -> dict[str, Any]:
        """The store's statistics without the per-server list (the Heartbeat answer)."""
        st = self.store.summary()
        with self._counters_lock:
            requests, errors = dict(self.counters.requests), dict(self.counters.errors)
            spi_lookups = self.counters.spi_lookups
        return {
            "backend": st.backend,
            "size_bytes": st.size_bytes,
            "server_count": st.server_count,
            "backend_info": st.extra,
            "requests": requests,
            "spi_lookups": spi_lookups,
            "errors": errors,
            **self._extra_stats(),
        }

    def _summary_json(self) -> bytes:
        # Keys in order while they fit (they always do at 1400 bytes); "truncated" if not.
        room = self.max_datagram - CHANNEL_OVERHEAD - HEADER_LENGTH - _NOTIFY_HEAD
        room -= len(b',"truncated":true}') + 1
        parts: list[bytes] = []
        used = 0
        truncated = False
        for key, value in self.summary().items():
            part = _compact({key: value})[1:-1]
            if used + len(part) + 1 > room:
                truncated = True
                continue
            parts.append(part)
            used += len(part) + 1
        if truncated:
            parts.append(b'"truncated":true')
        return b"{" + b",".join(parts) + b"}"

    def _server_page(self, page: PagePayload) -> list[Payload]:
        """One page of the server list: ``{"servers": [...]}``; the cursor is the next index."""
        max_len = self._page_size(page)
        if page.cursor and len(page.cursor) != 4:
            raise InvalidRequestError("a Heartbeat page cursor is 4 bytes")
        start = int.from_bytes(page.cursor, "big")
        room = page_budget(max_len, [Notify(Status.OK)]) - len(b'{"servers":[]}')
        limit = room // _MIN_SERVER_JSON + 1
        servers = self.store.server_stats(start, limit + 1)  # one more: are there more?
        entries: list[bytes] = []
        used = 0
        for s in servers[:limit]:
            entry = _compact(
                {"server_id": s.server_id, "epoch": s.epoch, "sas": s.sas, "policies": s.policies}
            )
            if used + len(entry) + 1 > room:
                break
            entries.append(entry)
            used += len(entry) + 1
        if servers and not entries:
            raise ResponseTooLarge(f"one server's statistics do not fit a {max_len}-byte reply")
        data = b'{"servers":[' + b",".join(entries) + b"]}"
        out: list[Payload] = [Notify(Status.OK, data=data)]
        if len(entries) < len(servers):
            out.append(PagePayload(0, (start + len(entries)).to_bytes(4, "big")))
        return out


def _ike_sa_payload(ike: IkeSaRecord) -> IkeSaPayload:
    return IkeSaPayload(ike.spis[0], ike.spis[1], ike.child_spis, ike.record)


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _utf8_prefix(data: bytes) -> bytes:
    """``data`` without a UTF-8 sequence cut at its end."""
    return data.decode("utf-8", "ignore").encode()
