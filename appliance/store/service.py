"""What the store does with one request: a decoded message in, a response message out.

No sockets and no clock: the UDP server (:mod:`.server`) feeds it requests
that came through the protected channel, and it talks only to the backend.

Requests (protocol.md 5.3; the payload order carries the grouping):

* **SA_Stor** = Server ID, Epoch, then any of: SAD Entry (followed by the SPD
  entries, the Replay State and the IKE SA that belong to that SA), SPD
  entries before the first SAD entry (policies without an SA), Replay State
  payloads for SAs not in the message (replay-only update), Delete payloads.
  The whole message is one backend transaction.  An SA_Stor with no entry
  and no Delete is a *claim*: it raises the server ID's epoch (Epoch 0 means
  "current + 1"); the new master sends it when it takes over.
* **SA_Retr** with an SA Lookup = one SA by (SPI, destination, protocol):
  the answer holds its owner's Server ID and Epoch, the SAD entry, its replay
  state and IKE SA if stored, and its SPD entries.
* **SA_Retr** with a Server ID (and a Page payload to resume) = one page of
  that server's state: SAD entries (each followed by its replay state), then
  SPD entries; the M flag and a Page payload with the cursor if more follow.
* **Heartbeat** = liveness; the answer's OK Notify carries the store's
  statistics as JSON.

Every response starts with a status Notify (constants.Status).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.store import _convert as conv
from appliance.store import _rawwire
from appliance.store.base import (
    Batch,
    InvalidRequestError,
    NotFoundError,
    PolicyRecord,
    SaKey,
    SaPut,
    SaStore,
    StaleEpochError,
    StoreError,
)
from appliance.store.base import Status as StoreStatus
from appliance.wire._errors import WireError
from appliance.wire.constants import (
    DEFAULT_MAX_DATAGRAM,
    GENERIC_HEADER_LENGTH,
    IPPROTO_TO_PROTOCOL_ID,
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
    ReplayStatePayload,
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
    StoreStatus.NOT_FOUND: Status.NOT_FOUND,
    StoreStatus.INVALID: Status.MALFORMED,
    StoreStatus.UNAVAILABLE: Status.BUSY,
    StoreStatus.INTERNAL: Status.INTERNAL,
}

#: Smallest reply a requester may ask for; below it not even one SA fits.
MIN_PAGE_DATAGRAM = 576


@dataclass
class ServiceCounters:
    requests: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


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
    ) -> None:
        self.store = store
        self.counters = ServiceCounters()
        self._extra_stats = extra_stats or dict

    def handle_bytes(self, data: bytes) -> bytes:
        """The encoded response to one decrypted request (error responses included)."""
        try:
            exchange, message_id, _ = peek_header(data)
        except WireError:
            return b""
        try:
            if exchange == ExchangeType.SA_STOR:
                raw = _rawwire.split(data)
                request = Message(raw.exchange, raw.message_id, (), raw.response, raw.more)
                items = _rawwire.parse_stor_items(raw.chunks)
            else:
                request = decode_message(data)
                items = list(request.payloads)
            if request.response:
                raise WireError("a response was sent as a request")
        except WireError as exc:
            self._count_error(exc.status)
            return encode_message(error_response(exchange, message_id, exc.status, str(exc)))
        return encode_message(self.handle(request, items))

    def handle_many(self, requests: list[bytes]) -> list[bytes]:
        """Responses to several requests, committed together (one fsync for all).

        Each request is still its own all-or-nothing unit.  If the group
        commit itself fails, nothing of it is durable and every request gets
        an error response, so nothing is acknowledged that is not stored.
        """
        try:
            with self.store.group():
                return [self._handle_guarded(data) for data in requests]
        except StoreError as exc:
            self._count_error(Status.BUSY)
            replies = []
            for data in requests:
                exchange, message_id, _ = peek_header(data)
                reply = error_response(exchange, message_id, Status.BUSY, str(exc))
                replies.append(encode_message(reply))
            return replies

    def _handle_guarded(self, data: bytes) -> bytes:
        try:
            return self.handle_bytes(data)
        except Exception as exc:  # a bug must cost one request, not the whole group
            log.exception("request failed")
            exchange, message_id, _ = peek_header(data)
            reply = error_response(exchange, message_id, Status.INTERNAL, type(exc).__name__)
            return encode_message(reply)

    def _count_error(self, status: Status) -> None:
        self.counters.errors[status.name] = self.counters.errors.get(status.name, 0) + 1

    def handle(self, request: Message, items: list[object] | None = None) -> Message:
        """The response to ``request``; backend errors become error Notifies."""
        name = request.exchange.name
        self.counters.requests[name] = self.counters.requests.get(name, 0) + 1
        if items is None:
            items = list(request.payloads)
        try:
            if request.exchange == ExchangeType.SA_STOR:
                payloads = self._store(items)
            elif request.exchange == ExchangeType.SA_RETR:
                payloads = self._retrieve(request)
            else:
                extra = [p for p in items if not isinstance(p, ServerIdPayload | UnknownPayload)]
                if extra:
                    raise InvalidRequestError("a Heartbeat takes no payload but a Server ID")
                payloads = [Notify(Status.OK, data=json.dumps(self.stats()).encode())]
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
            if isinstance(exc, StaleEpochError):
                payloads.append(EpochPayload(exc.current_epoch))
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
        # The SA being assembled: key, entry, policies, IKE SA, replay state.
        group: list[Any] | None = None

        def close_group() -> None:
            if group is not None:
                puts.append(SaPut(group[0], group[1], tuple(group[2]), group[3], group[4]))

        for p in items:
            if isinstance(p, _rawwire.RawSad):
                close_group()
                key = conv.raw_sa_key(p.spi, p.family, p.daddr, p.protocol)
                group = [key, conv.ENTRY_FORMAT_WIRE_V1 + p.body, [], None, None]
            elif isinstance(p, _rawwire.RawSpd):
                entry = conv.ENTRY_FORMAT_WIRE_V1 + p.stored()
                pid = (
                    conv.policy_id_for_index(p.index)
                    if p.index
                    else conv.policy_id_for_identity(p.body, p.tsi, p.tsr)
                )
                (standalone if group is None else group[2]).append(PolicyRecord(pid, entry))
            elif isinstance(p, ReplayStatePayload):
                key = conv.key_of_replay(p)
                if group is not None and key == group[0]:
                    if group[4] is not None:
                        raise InvalidRequestError(f"two Replay State payloads for SA {key}")
                    group[4] = conv.replay_to_bytes(p)
                else:
                    replay.append((key, conv.replay_to_bytes(p)))
            elif isinstance(p, IkeSaPayload):
                if group is None or group[3] is not None:
                    raise InvalidRequestError("an IKE SA payload must follow its SAD entry, once")
                group[3] = p.data
            elif isinstance(p, Delete):
                has_delete = True
                if p.protocol_id == ProtocolId.SPD_INDEX:
                    delete_pols += [conv.policy_id_for_index(i) for i in p.spis]
                else:
                    proto = {ProtocolId.ESP: 50, ProtocolId.AH: 51, ProtocolId.IPCOMP: 108}[
                        ProtocolId(p.protocol_id)
                    ]
                    for spi in p.spis:
                        delete_sas += self.store.keys_for_spi(server_id, spi, proto)
        close_group()
        batch = Batch(
            tuple(puts), tuple(standalone), tuple(delete_sas), tuple(delete_pols), tuple(replay)
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
            return self._retrieve_spi(conv.key_of_lookup(lookup))
        if kinds in ([ServerIdPayload], [ServerIdPayload, PagePayload]):
            sid = payloads[0]
            page = payloads[1] if len(payloads) == 2 else PagePayload()
            assert isinstance(sid, ServerIdPayload) and isinstance(page, PagePayload)
            return self._retrieve_page(str(sid), page)
        raise InvalidRequestError(
            "SA_Retr takes one SA Lookup, or one Server ID and at most one Page payload"
        )

    def _retrieve_spi(self, key: SaKey) -> list[Payload]:
        found = self.store.get_by_spi(key)
        if found is None:
            raise NotFoundError(f"no SA {key} in the store")
        out: list[Payload] = [
            Notify(Status.OK),
            ServerIdPayload.parse(found.server_id),
            EpochPayload(found.epoch),
            *self._sa_payloads(found.sa.entry, found.sa.replay, found.sa.ike_sa),
        ]
        out += [q for p in found.policies for q in conv.spd_raw_payloads(p.entry)]
        return out

    def _sa_payloads(self, entry: bytes, replay: bytes | None, ike: bytes | None) -> list[Payload]:
        out: list[Payload] = [conv.sad_raw_payload(entry)]
        if replay is not None:
            out.append(UnknownPayload(PayloadType.REPLAY_STATE, replay))
        if ike is not None:
            out.append(IkeSaPayload(ike))
        return out

    def _retrieve_page(self, server_id: str, page: PagePayload) -> list[Payload]:
        max_len = page.max_length or DEFAULT_MAX_DATAGRAM
        if max_len < MIN_PAGE_DATAGRAM:
            raise InvalidRequestError(f"page max length {max_len} is below {MIN_PAGE_DATAGRAM}")
        head: list[Payload] = [Notify(Status.OK), ServerIdPayload.parse(server_id)]
        cursor = page.cursor or None
        backend_page = self.store.get_page(server_id, cursor, max(4, max_len // 200))
        head.append(EpochPayload(backend_page.epoch))
        budget = page_budget(max_len, head)
        body: list[Payload] = []
        used = 0
        resume: bytes | None = None
        items: list[tuple[bytes, Sequence[Payload]]] = []
        for sa in backend_page.sas:
            items.append(
                (self.store.sa_cursor(sa.key), self._sa_payloads(sa.entry, sa.replay, sa.ike_sa))
            )
        for pol in backend_page.policies:
            items.append(
                (self.store.policy_cursor(pol.policy_id), conv.spd_raw_payloads(pol.entry))
            )
        for item_cursor, payloads in items:
            size = sum(_encoded_size(p) for p in payloads)
            if used + size > budget:
                if not body:
                    raise InvalidRequestError(
                        f"an entry of {size} bytes does not fit a {max_len}-byte reply"
                    )
                break
            body += payloads
            used += size
            resume = item_cursor
        else:
            resume = backend_page.cursor
        out = head + body
        if resume is not None:
            out.append(PagePayload(0, resume))
        return out

    def stats(self) -> dict[str, Any]:
        st = self.store.stats()
        return {
            "backend": st.backend,
            "size_bytes": st.size_bytes,
            "servers": [
                {"server_id": s.server_id, "epoch": s.epoch, "sas": s.sas, "policies": s.policies}
                for s in st.servers
            ],
            "backend_info": st.extra,
            "requests": dict(self.counters.requests),
            "errors": dict(self.counters.errors),
            **self._extra_stats(),
        }
