"""The channel endpoint: handshake, AEAD protection and anti-replay, sans-IO.

See the package docstring for the theory of operation and docs/protocol.md
section 6 for the bytes.
"""

from __future__ import annotations

import enum
import hmac
import logging
import os
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance.channel import _format as fmt
from appliance.channel._errors import LocalChannelError, RemoteChannelError
from appliance.channel._replay import ReplayWindow
from appliance.channel.events import (
    AssociationClosed,
    DataReceived,
    DropReason,
    Event,
    HandshakeCompleted,
    HandshakeFailed,
    NetworkAddress,
)

log = logging.getLogger("appliance.channel")

MAX_SEQUENCE = (1 << 64) - 1

_Answer = TypeVar("_Answer", fmt.Cookie, fmt.Resp)


class Side(enum.Enum):
    """Which end of the channel an endpoint is."""

    CLIENT = "client"
    """Initiates handshakes (a gateway node talking to the store)."""
    SERVER = "server"
    """Answers handshakes (the store); holds one association per client."""


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """Limits and timers; the defaults suit a store on a LAN or a short WAN hop."""

    replay_window: int = 1024
    rekey_after_messages: int = 1 << 32
    """The client starts a new handshake once it has sent this many datagrams."""
    rekey_after_seconds: float = 3600.0
    association_lifetime_seconds: float = 7200.0
    """Hard limit: an association older than this is deleted on both sides."""
    retire_grace_seconds: float = 30.0
    """After a rekey the old association still receives for this long."""
    handshake_initial_timeout: float = 0.5
    handshake_max_timeout: float = 8.0
    handshake_attempts: int = 8
    dead_peer_timeout: float = 10.0
    """Client: sent data but nothing authenticated back for this long -> new handshake."""
    half_open_timeout: float = 30.0
    """Server: an association with no authenticated data yet is dropped after this long."""
    idle_timeout_seconds: float = 900.0
    """Server: an association with no authenticated data for this long is dropped (a client
    that has been quiet for half of it starts a new handshake before sending)."""
    max_half_open: int = 64
    """Server: half-open associations in all; beyond it the oldest one of the address
    holding most of them is evicted."""
    max_half_open_per_source: int = 16
    """Server: half-open associations from one source address; beyond it its oldest goes."""
    max_associations: int = 1024
    """Server: associations in all; beyond it the least recently used one of the address
    holding most of them is evicted."""
    max_associations_per_source: int = 256
    """Server: associations from one source address; beyond it its least recently used goes.
    (A per-address limit above the total one is harmless: the total one applies first.)"""
    cookie_secret_seconds: float = 30.0
    """Server: the cookie secret rotates this often; a cookie is good for one to two periods."""
    max_remembered_inits: int = 16384
    """Server: nonces of accepted INITs remembered while their cookies are valid; when full,
    the cookie secrets are replaced (every outstanding cookie becomes invalid)."""
    max_queued: int = 1024
    """Client: plaintexts queued while no association is up."""

    def __post_init__(self) -> None:
        limits = {
            "max_half_open": self.max_half_open,
            "max_half_open_per_source": self.max_half_open_per_source,
            "max_associations": self.max_associations,
            "max_associations_per_source": self.max_associations_per_source,
            "max_remembered_inits": self.max_remembered_inits,
        }
        for name, value in limits.items():
            if value < 1:
                raise LocalChannelError(f"channel config: {name} must be at least 1, got {value}")
        if self.cookie_secret_seconds <= 0:
            raise LocalChannelError("channel config: cookie_secret_seconds must be positive")


@dataclass(eq=False)
class _Association:
    local_id: bytes
    peer_id: bytes
    peer_node_id: str
    addr: NetworkAddress
    send_aead: AESGCM
    send_salt: bytes
    recv_aead: AESGCM
    recv_salt: bytes
    window: ReplayWindow
    created: float
    expires: float
    last_received: float
    """When authenticated data last arrived (creation time until then)."""
    send_seq: int = 0
    confirmed: bool = False
    """Authenticated data has arrived on it (a server counts unconfirmed ones as half-open)."""
    nr: bytes = b""
    """Server: our handshake nonce, to answer a retransmitted INIT with the same RESP."""
    init_key: tuple[bytes, bytes] | None = None


@dataclass(eq=False)
class _PendingHandshake:
    local_id: bytes
    ni: bytes
    datagram: bytes
    """The INIT sent (and retransmitted): first without a cookie, then with the server's."""
    addr: NetworkAddress
    next_send: float
    timeout: float
    attempts: int = 1
    cookie: bytes = b""


@dataclass
class _Counters:
    received: int = 0
    cookies_sent: int = 0
    handshake_retransmissions: int = 0
    drops: Counter[DropReason] = field(default_factory=Counter)


def _source(addr: NetworkAddress) -> NetworkAddress:
    """The host part of a socket address: limits are per source address, not per port."""
    return addr[0] if isinstance(addr, tuple) and addr else addr


class ChannelEndpoint:
    """One node's end of the protected channel (client or server role)."""

    def __init__(
        self,
        psk: bytes,
        node_id: str,
        role: Side | str,
        config: ChannelConfig | None = None,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not isinstance(psk, bytes) or len(psk) < fmt.MIN_PSK_LENGTH:
            raise LocalChannelError(f"the cluster key must be at least {fmt.MIN_PSK_LENGTH} bytes")
        encoded_id = node_id.encode("utf-8")
        if not 1 <= len(encoded_id) <= fmt.MAX_NODE_ID_LENGTH:
            raise LocalChannelError("the node ID must be 1-255 bytes of UTF-8")
        self.role = Side(role)
        self.node_id = node_id
        self.config = config or ChannelConfig()
        self._psk = psk
        self._node_id_bytes = encoded_id
        self._handshake_key = fmt.handshake_key(psk)
        self._random = random_bytes
        self._associations: OrderedDict[bytes, _Association] = OrderedDict()
        """Least recently used first (a server moves an association to the end on data)."""
        self._by_init: dict[tuple[bytes, bytes], bytes] = {}
        self._seen_inits: deque[tuple[float, bytes]] = deque()
        """(forget after, Ni) of INITs that created an association, oldest first."""
        self._seen_init_set: set[bytes] = set()
        self._cookie_secret = b""
        self._cookie_rotated: float | None = None
        """When the current cookie secret was drawn (None: none yet)."""
        self._previous_cookie: tuple[bytes, float] | None = None
        self._pending: _PendingHandshake | None = None
        self._current: bytes | None = None
        self._retiring: dict[bytes, float] = {}
        self._server_addr: NetworkAddress = None
        self._want_connection = False
        self._awaiting_since: float | None = None
        self._unsent: deque[bytes] = deque()
        self._outgoing: list[tuple[bytes, NetworkAddress]] = []
        self._events: deque[Event] = deque()
        self._counters = _Counters()

    # -- public state ---------------------------------------------------
    @property
    def drops(self) -> Counter[DropReason]:
        """Dropped datagrams per reason since creation."""
        return self._counters.drops

    @property
    def datagrams_received(self) -> int:
        """Authenticated data datagrams accepted."""
        return self._counters.received

    @property
    def cookies_sent(self) -> int:
        """Server: COOKIE datagrams sent (each an INIT answered without keeping state)."""
        return self._counters.cookies_sent

    @property
    def handshake_retransmissions(self) -> int:
        """Client: INITs resent because no answer came in time, since creation."""
        return self._counters.handshake_retransmissions

    @property
    def established(self) -> bool:
        """Client: an association is up; server: at least one association exists."""
        if self.role is Side.CLIENT:
            return self._current is not None
        return bool(self._associations)

    @property
    def current_association(self) -> bytes | None:
        """Client: the association new data goes out on."""
        return self._current

    def associations(self) -> list[tuple[bytes, str, NetworkAddress]]:
        """(association ID, peer node ID, peer address) of every association."""
        return [(a.local_id, a.peer_node_id, a.addr) for a in self._associations.values()]

    def half_open(self) -> int:
        """Server: associations whose client has not yet sent authenticated data.

        What ``max_half_open_per_source`` limits per address; the store's metrics show it.
        """
        return sum(1 for a in self._associations.values() if not a.confirmed)

    def address_of(self, association: bytes) -> NetworkAddress:
        return self._get(association).addr

    # -- client: handshake ------------------------------------------------
    def connect(self, addr: NetworkAddress, now: float) -> None:
        """Client: start a handshake with the server at ``addr`` (again, if called again)."""
        if self.role is not Side.CLIENT:
            raise LocalChannelError("only a client endpoint initiates handshakes")
        self._server_addr = addr
        self._want_connection = True
        self._start_handshake(now)

    def _start_handshake(self, now: float) -> None:
        local_id = self._new_association_id()
        ni = self._random(fmt.NONCE_LENGTH)
        datagram = fmt.build_init(self._handshake_key, local_id, ni, self._node_id_bytes)
        timeout = self.config.handshake_initial_timeout
        self._pending = _PendingHandshake(
            local_id, ni, datagram, self._server_addr, now + timeout, timeout
        )
        self._awaiting_since = None
        self._queue(datagram, self._server_addr)

    # -- sending ------------------------------------------------------------
    def protect(self, plaintext: bytes, association: bytes | None = None) -> bytes:
        """Seal ``plaintext`` into one data datagram for ``association`` (client: current)."""
        return self._seal(fmt.TYPE_DATA, plaintext, self._get(self._resolve(association)))

    def _seal(self, datagram_type: int, plaintext: bytes, assoc: _Association) -> bytes:
        if assoc.send_seq + 1 >= MAX_SEQUENCE:
            # Never reuse a nonce: this association cannot send any more.
            raise LocalChannelError("the association's sequence numbers are exhausted; rekey first")
        assoc.send_seq += 1
        header = fmt.DATA_HEADER.pack(datagram_type, fmt.VERSION, 0, assoc.peer_id, assoc.send_seq)
        sealed = assoc.send_aead.encrypt(
            fmt.aead_nonce(assoc.send_salt, assoc.send_seq), plaintext, header
        )
        return header + sealed

    def send(self, plaintext: bytes, now: float, association: bytes | None = None) -> None:
        """Queue ``plaintext`` for ``datagrams_to_send``; a client buffers it until connected."""
        if self.role is Side.CLIENT and association is None:
            current = self._associations.get(self._current) if self._current else None
            stale = (
                current is not None
                and now - current.last_received >= self.config.idle_timeout_seconds / 2
            )
            if stale and self._pending is None:
                # The server may have forgotten this quiet association: get a fresh one first.
                self._start_handshake(now)
            if current is None or stale:
                if len(self._unsent) >= self.config.max_queued:
                    raise LocalChannelError("too many messages queued while the channel is down")
                self._unsent.append(plaintext)
                return
            if self._awaiting_since is None:
                self._awaiting_since = now
        resolved = self._resolve(association)
        self._queue(self.protect(plaintext, resolved), self._get(resolved).addr)
        if (
            self.role is Side.CLIENT
            and self._pending is None
            and self._get(resolved).send_seq >= self.config.rekey_after_messages
        ):
            self._start_handshake(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        """Datagrams to put on the wire now, with their destination."""
        out, self._outgoing = self._outgoing, []
        return out

    def next_event(self) -> Event | None:
        """The oldest event not yet handed out (from timers), or None."""
        return self._events.popleft() if self._events else None

    # -- receiving ----------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> list[Event]:
        """Handle one UDP payload; return the events it caused (and any pending ones).

        Never raises for bad input: an invalid datagram is dropped and counted.
        """
        if len(data) < 4 or data[1] != fmt.VERSION or data[2:4] != b"\0\0":
            self._drop(DropReason.MALFORMED, addr, data)
        elif data[0] == fmt.TYPE_DATA:
            self._receive_data(data, addr, now)
        elif data[0] == fmt.TYPE_INIT:
            self._receive_init(data, addr, now)
        elif data[0] == fmt.TYPE_COOKIE:
            self._receive_cookie(data, addr, now)
        elif data[0] == fmt.TYPE_RESP:
            self._receive_resp(data, addr, now)
        elif data[0] == fmt.TYPE_CLOSE:
            if self.role is Side.SERVER:
                self._receive_data(data, addr, now)
            else:
                self._drop(DropReason.WRONG_ROLE, addr, data)
        else:
            self._drop(DropReason.MALFORMED, addr, data)
        events = list(self._events)
        self._events.clear()
        return events

    def _receive_data(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        if len(data) < fmt.DATA_HEADER_LENGTH + fmt.TAG_LENGTH:
            self._drop(DropReason.MALFORMED, addr, data)
            return
        _, _, _, receiver_id, seq = fmt.DATA_HEADER.unpack_from(data)
        assoc = self._associations.get(receiver_id)
        if assoc is None:
            self._drop(DropReason.UNKNOWN_ASSOCIATION, addr, data)
            return
        if seq == 0:
            self._drop(DropReason.MALFORMED, addr, data)
            return
        replay = assoc.window.check(seq)
        if replay is not None:
            self._drop(replay, addr, data)
            return
        header = data[: fmt.DATA_HEADER_LENGTH]
        try:
            plaintext = assoc.recv_aead.decrypt(
                fmt.aead_nonce(assoc.recv_salt, seq), data[fmt.DATA_HEADER_LENGTH :], header
            )
        except InvalidTag:
            self._drop(DropReason.AUTH_FAILED, addr, data)
            return
        if data[0] == fmt.TYPE_CLOSE:
            if plaintext:
                self._drop(DropReason.MALFORMED, addr, data)
            else:
                self._close(receiver_id, "closed by the peer")
            return
        assoc.window.update(seq)
        assoc.addr = addr
        assoc.last_received = now
        assoc.confirmed = True
        self._associations.move_to_end(receiver_id)
        if receiver_id == self._current:
            self._awaiting_since = None
        self._counters.received += 1
        if plaintext:  # an empty datagram only confirms the association (see _receive_resp)
            self._events.append(DataReceived(plaintext, assoc.local_id, assoc.peer_node_id, addr))

    def _receive_init(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        if self.role is not Side.SERVER:
            self._drop(DropReason.WRONG_ROLE, addr, data)
            return
        try:
            init = fmt.parse_init(data)
            peer_node_id = init.node_id.decode("utf-8")
        except (RemoteChannelError, UnicodeDecodeError):
            self._drop(DropReason.MALFORMED, addr, data)
            return
        if not hmac.compare_digest(init.mac, fmt.mac(self._handshake_key, init.signed)):
            self._drop(DropReason.HANDSHAKE_AUTH_FAILED, addr, data)
            return
        if not init.cookie:
            self._send_cookie(init, addr, now)
            return
        if not self._cookie_valid(init, addr, now):
            # Forged, for another address, or minted before a rotation or a restart: no
            # state; the client (if it is one) gets a fresh cookie and tries again.
            self._drop(DropReason.COOKIE_INVALID, addr, data)
            self._send_cookie(init, addr, now)
            return
        existing = self._by_init.get((init.initiator_aid, init.ni))
        if existing is not None:
            # A retransmitted INIT: our response was lost. Answer again, allocate nothing.
            self._queue(self._resp(data, self._associations[existing]), addr)
            return
        self._forget_old_inits(now)
        if init.ni in self._seen_init_set:
            self._drop(DropReason.HANDSHAKE_REPLAYED, addr, data)
            return
        self._make_room(_source(addr))
        self._remember_init(init.ni, now)
        local_id = self._new_association_id()
        nr = self._random(fmt.NONCE_LENGTH)
        keys = fmt.session_keys(
            self._psk, init.ni, nr, init.initiator_aid, local_id, init.node_id, self._node_id_bytes
        )
        assoc = self._new_association(
            local_id,
            init.initiator_aid,
            peer_node_id,
            addr,
            now,
            send=(keys.r2i_key, keys.r2i_salt),
            recv=(keys.i2r_key, keys.i2r_salt),
        )
        assoc.nr = nr
        assoc.init_key = (init.initiator_aid, init.ni)
        self._by_init[assoc.init_key] = local_id
        self._queue(self._resp(data, assoc), addr)
        self._events.append(HandshakeCompleted(local_id, peer_node_id, addr))

    def _resp(self, init_datagram: bytes, assoc: _Association) -> bytes:
        return fmt.build_resp(
            self._handshake_key,
            init_datagram,
            assoc.peer_id,
            assoc.local_id,
            assoc.nr,
            self._node_id_bytes,
        )

    # -- server: cookies (stateless until the client proves its address) ----------
    def _cookie_secrets(self, now: float) -> tuple[bytes, ...]:
        """The secrets a cookie may be under now: each is used for one period to mint
        cookies and accepted for two, so a cookie is good for one to two periods."""
        period = self.config.cookie_secret_seconds
        if self._cookie_rotated is None or now >= self._cookie_rotated + period:
            if self._cookie_rotated is not None:
                self._previous_cookie = (self._cookie_secret, self._cookie_rotated)
            self._cookie_secret = self._random(fmt.KEY_LENGTH)
            self._cookie_rotated = now
        previous = self._previous_cookie
        if previous is not None and now < previous[1] + 2 * period:
            return self._cookie_secret, previous[0]
        return (self._cookie_secret,)

    def _send_cookie(self, init: fmt.Init, addr: NetworkAddress, now: float) -> None:
        secret = self._cookie_secrets(now)[0]
        cookie = fmt.cookie_value(secret, repr(addr).encode(), init.identity)
        self._counters.cookies_sent += 1
        self._queue(
            fmt.build_cookie(self._handshake_key, init.initiator_aid, init.ni, cookie), addr
        )

    def _cookie_valid(self, init: fmt.Init, addr: NetworkAddress, now: float) -> bool:
        address = repr(addr).encode()
        return any(
            hmac.compare_digest(init.cookie, fmt.cookie_value(secret, address, init.identity))
            for secret in self._cookie_secrets(now)
        )

    # -- server: association limits -------------------------------------------------
    def _make_room(self, source: NetworkAddress) -> None:
        """Evict until a new association from ``source`` fits every limit."""
        while (victim := self._victim(source)) is not None:
            self._close(victim[0].local_id, victim[1])

    def _victim(self, source: NetworkAddress) -> tuple[_Association, str] | None:
        cfg = self.config
        table = list(self._associations.values())  # least recently used first
        half_open = [a for a in table if not a.confirmed]
        mine = [a for a in table if _source(a.addr) == source]
        mine_half_open = [a for a in mine if not a.confirmed]
        if len(mine_half_open) >= cfg.max_half_open_per_source:
            return mine_half_open[0], "evicted: half-open limit of its address"
        if len(half_open) >= cfg.max_half_open:
            return _lru_of_largest_source(half_open), "evicted: half-open limit"
        if len(mine) >= cfg.max_associations_per_source:
            return mine[0], "evicted: association limit of its address"
        if len(table) >= cfg.max_associations:
            return _lru_of_largest_source(table), "evicted: association table full"
        return None

    def _answer_to_pending(
        self, data: bytes, addr: NetworkAddress, parse: Callable[[bytes], _Answer]
    ) -> tuple[_Answer, _PendingHandshake] | None:
        """A COOKIE or RESP that answers our pending INIT, its MAC checked; else a drop (None).

        A COOKIE's MAC also covers our Ni, a RESP's our whole INIT: only the
        server we sent that INIT to can make either.
        """
        if self.role is not Side.CLIENT:
            self._drop(DropReason.WRONG_ROLE, addr, data)
            return None
        try:
            answer = parse(data)
        except RemoteChannelError:
            self._drop(DropReason.MALFORMED, addr, data)
            return None
        pending = self._pending
        if pending is None or answer.initiator_aid != pending.local_id:
            self._drop(DropReason.HANDSHAKE_UNEXPECTED, addr, data)
            return None
        covered = pending.ni if isinstance(answer, fmt.Cookie) else pending.datagram
        if not hmac.compare_digest(
            answer.mac, fmt.mac(self._handshake_key, covered, answer.signed)
        ):
            self._drop(DropReason.HANDSHAKE_AUTH_FAILED, addr, data)
            return None
        return answer, pending

    def _receive_cookie(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        answered = self._answer_to_pending(data, addr, fmt.parse_cookie)
        if answered is None:
            return
        cookie, pending = answered
        if cookie.cookie == pending.cookie:
            return  # a duplicate: the INIT with this cookie is already on its way
        if pending.cookie:
            # The server replaced our cookie (rotation or restart): that costs an attempt,
            # so that cookies alone can never keep a handshake going forever.
            if pending.attempts >= self.config.handshake_attempts:
                self._drop(DropReason.HANDSHAKE_UNEXPECTED, addr, data)
                return
            pending.attempts += 1
        pending.cookie = cookie.cookie
        pending.datagram = fmt.build_init(
            self._handshake_key, pending.local_id, pending.ni, self._node_id_bytes, cookie.cookie
        )
        pending.next_send = now + pending.timeout
        self._queue(pending.datagram, pending.addr)

    def _receive_resp(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        answered = self._answer_to_pending(data, addr, fmt.parse_resp)
        if answered is None:
            return
        resp, pending = answered
        try:
            peer_node_id = resp.node_id.decode("utf-8")
        except UnicodeDecodeError:
            self._drop(DropReason.MALFORMED, addr, data)
            return
        keys = fmt.session_keys(
            self._psk,
            pending.ni,
            resp.nr,
            pending.local_id,
            resp.responder_aid,
            self._node_id_bytes,
            resp.node_id,
        )
        self._pending = None
        self._new_association(
            pending.local_id,
            resp.responder_aid,
            peer_node_id,
            addr,
            now,
            send=(keys.i2r_key, keys.i2r_salt),
            recv=(keys.r2i_key, keys.r2i_salt),
            confirmed=True,
        )
        if self._current is not None:
            # Rekey: the old association still receives in-flight replies for a while.
            self._retiring[self._current] = now + self.config.retire_grace_seconds
        self._current = pending.local_id
        self._events.append(HandshakeCompleted(pending.local_id, peer_node_id, addr))
        # An empty datagram tells the server at once that we hold the keys, so the
        # association stops counting as half-open even if we have nothing to say yet.
        self._queue(self.protect(b"", pending.local_id), addr)
        while self._unsent:
            self.send(self._unsent.popleft(), now)

    # -- timers ----------------------------------------------------------------
    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next run, or None."""
        times: list[float] = []
        if self._pending is not None:
            times.append(self._pending.next_send)
        times.extend(self._retiring.values())
        for assoc in self._associations.values():
            times.append(assoc.expires)
            if self.role is Side.SERVER:
                times.append(assoc.last_received + self.config.idle_timeout_seconds)
                if not assoc.confirmed:
                    times.append(assoc.created + self.config.half_open_timeout)
        current = self._associations.get(self._current) if self._current else None
        if current is not None and self._pending is None:
            times.append(current.created + self.config.rekey_after_seconds)
            if self._awaiting_since is not None:
                times.append(self._awaiting_since + self.config.dead_peer_timeout)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Retransmit, rekey and expire whatever is due at ``now``; events go to ``next_event``."""
        pending = self._pending
        if pending is not None and now >= pending.next_send:
            if pending.attempts >= self.config.handshake_attempts:
                self._pending = None
                self._want_connection = False
                self._events.append(
                    HandshakeFailed(pending.addr, f"no answer after {pending.attempts} attempts")
                )
            else:
                pending.attempts += 1
                pending.timeout = min(pending.timeout * 2, self.config.handshake_max_timeout)
                pending.next_send = now + pending.timeout
                self._counters.handshake_retransmissions += 1
                self._queue(pending.datagram, pending.addr)
        for local_id, until in list(self._retiring.items()):
            if now >= until:
                self._close(local_id, "replaced by a newer association")
        for assoc in list(self._associations.values()):
            if now >= assoc.expires:
                self._close(assoc.local_id, "lifetime expired")
            elif (
                self.role is Side.SERVER
                and not assoc.confirmed
                and now >= assoc.created + self.config.half_open_timeout
            ):
                self._close(assoc.local_id, "no data after the handshake")
            elif (
                self.role is Side.SERVER
                and now >= assoc.last_received + self.config.idle_timeout_seconds
            ):
                self._close(assoc.local_id, "idle")
        self._maybe_rekey(now)

    def _maybe_rekey(self, now: float) -> None:
        if self.role is not Side.CLIENT or self._pending is not None or self._server_addr is None:
            return
        current = self._associations.get(self._current) if self._current else None
        if current is None:
            # The association expired or was closed: a client that wants a channel reconnects.
            if self._want_connection:
                self._start_handshake(now)
            return
        dead = (
            self._awaiting_since is not None
            and now >= self._awaiting_since + self.config.dead_peer_timeout
        )
        if (
            dead
            or current.send_seq >= self.config.rekey_after_messages
            or now >= current.created + self.config.rekey_after_seconds
        ):
            self._start_handshake(now)

    def close(self, association: bytes) -> None:
        """Forget an association at once (no message is sent; see ``disconnect``)."""
        self._close(association, "closed locally")

    def disconnect(self) -> None:
        """Client: send an authenticated CLOSE on every association, then forget them all.

        The server forgets each association when its CLOSE arrives; one that is
        lost costs the server a table entry until it is idle or evicted.  Take
        the CLOSE datagrams from ``datagrams_to_send``.
        """
        if self.role is not Side.CLIENT:
            raise LocalChannelError("only a client endpoint closes its associations")
        self._want_connection = False
        self._pending = None
        self._unsent.clear()
        for local_id, assoc in list(self._associations.items()):
            if assoc.send_seq + 1 < MAX_SEQUENCE:
                self._queue(self._seal(fmt.TYPE_CLOSE, b"", assoc), assoc.addr)
            self._close(local_id, "closed locally")

    # -- internals ---------------------------------------------------------------
    def _resolve(self, association: bytes | None) -> bytes:
        if association is not None:
            return association
        if self._current is None:
            raise LocalChannelError("no association to send on: the handshake has not completed")
        return self._current

    def _get(self, association: bytes) -> _Association:
        assoc = self._associations.get(association)
        if assoc is None:
            raise LocalChannelError(f"association {association.hex()} does not exist")
        return assoc

    def _new_association_id(self) -> bytes:
        while True:
            candidate = self._random(fmt.ASSOCIATION_ID_LENGTH)
            if candidate not in self._associations and any(candidate):
                return candidate

    def _new_association(
        self,
        local_id: bytes,
        peer_id: bytes,
        peer_node_id: str,
        addr: NetworkAddress,
        now: float,
        *,
        send: tuple[bytes, bytes],
        recv: tuple[bytes, bytes],
        confirmed: bool = False,
    ) -> _Association:
        assoc = _Association(
            local_id=local_id,
            peer_id=peer_id,
            peer_node_id=peer_node_id,
            addr=addr,
            send_aead=AESGCM(send[0]),
            send_salt=send[1],
            recv_aead=AESGCM(recv[0]),
            recv_salt=recv[1],
            window=ReplayWindow(self.config.replay_window),
            created=now,
            expires=now + self.config.association_lifetime_seconds,
            last_received=now,
            confirmed=confirmed,
        )
        self._associations[local_id] = assoc
        return assoc

    def _close(self, local_id: bytes, reason: str) -> None:
        assoc = self._associations.pop(local_id, None)
        self._retiring.pop(local_id, None)
        if assoc is None:
            return
        if assoc.init_key is not None:
            self._by_init.pop(assoc.init_key, None)
        if local_id == self._current:
            self._current = None
            self._awaiting_since = None
        self._events.append(AssociationClosed(local_id, assoc.peer_node_id, reason))

    def _remember_init(self, ni: bytes, now: float) -> None:
        """Remember Ni for as long as a cookie minted before ``now`` can be valid."""
        if len(self._seen_inits) >= self.config.max_remembered_inits:
            # No room to remember more: make every outstanding cookie invalid instead, so
            # that no INIT we forget here can come back with a valid cookie.
            self._cookie_rotated = self._previous_cookie = None
            self._seen_inits.clear()
            self._seen_init_set.clear()
        self._seen_inits.append((now + 2 * self.config.cookie_secret_seconds, ni))
        self._seen_init_set.add(ni)

    def _forget_old_inits(self, now: float) -> None:
        while self._seen_inits and self._seen_inits[0][0] <= now:
            self._seen_init_set.discard(self._seen_inits.popleft()[1])

    def _queue(self, datagram: bytes, addr: NetworkAddress) -> None:
        self._outgoing.append((datagram, addr))

    def _drop(self, reason: DropReason, addr: NetworkAddress, data: bytes) -> None:
        count = self._counters.drops[reason] + 1
        self._counters.drops[reason] = count
        # Log the 1st, 2nd, 4th, 8th... drop per reason: visible, but a flood cannot flood the log.
        if count & (count - 1) == 0:
            log.warning(
                "channel dropped a datagram: reason=%s peer=%s length=%d (%d so far)",
                reason.value,
                addr,
                len(data),
                count,
            )


def _lru_of_largest_source(table: list[_Association]) -> _Association:
    """The least recently used association of the address that holds most of ``table``."""
    counts = Counter(_source(a.addr) for a in table)
    largest = max(counts.values())
    return next(a for a in table if counts[_source(a.addr)] == largest)
