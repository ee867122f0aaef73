"""The relay's socket: the peer address of the local charon's ``ha`` plugin.

charon's plugin binds its ``local`` address and ``connect()``s to its
``remote`` one, both on UDP port 4510 by default.  The relay owns exactly that
``remote`` address, on loopback, and connects back to charon's ``local``: a
connected UDP socket receives only datagrams from the address it is connected
to, so nothing but the local charon can feed the relay, and the relay can
answer it (feeding a passive charon, answering its RESYNC).

This adapter only moves bytes.  Every datagram is decoded
(``ha_message.decode``) and handed to the :class:`~.ike_state.IkeBook`; what
changed goes to the ``on_events`` callback.  A datagram that does not decode,
or that the book refuses, changes nothing: it is counted in :attr:`drops` by
reason and logged at WARNING with the reason only (the codec's messages name
types and offsets, never an attribute's bytes).  The addresses must be
loopback ones: the plugin's datagrams carry DH secrets in the clear.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

from appliance.errors import ConfigError
from appliance.netns import run_in_netns
from appliance.strongswan.ha_message import (
    HA_PORT,
    HaMessage,
    HaMessageError,
    HaMessageType,
    decode,
    encode,
)
from appliance.strongswan.ike_state import IkeBook, IkeEvent

log = logging.getLogger("appliance.strongswan.relay")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class RelayAddresses:
    """Where the relay listens and where the local charon's plugin sends from."""

    relay: IPAddress
    """The plugin's ``remote``: the relay binds it."""
    charon: IPAddress
    """The plugin's ``local``: the only source the relay accepts."""
    port: int = HA_PORT
    """The relay's port (the plugin sends to 4510, and there is no setting for it)."""
    charon_port: int = HA_PORT
    """The plugin's own port (4510, likewise)."""

    def __post_init__(self) -> None:
        for what, address in (("relay", self.relay), ("charon", self.charon)):
            if not address.is_loopback:
                raise ConfigError(
                    f"ha relay: the {what} address {address} is not a loopback address; the "
                    "plugin's datagrams carry DH secrets in the clear, so both ends must be "
                    "on loopback (for example charon local = 127.0.0.1, remote = 127.0.0.2)"
                )
        if self.relay.version != self.charon.version:
            raise ConfigError(
                f"ha relay: {self.relay} and {self.charon} are not of the same address family"
            )
        if (self.relay, self.port) == (self.charon, self.charon_port):
            raise ConfigError(
                f"ha relay: relay and charon cannot both be {self.relay} port {self.port}"
            )


class HaRelay(asyncio.DatagramProtocol):
    """One relay socket, feeding an :class:`IkeBook`."""

    def __init__(
        self,
        addresses: RelayAddresses,
        on_events: Callable[[list[IkeEvent]], None],
        book: IkeBook | None = None,
    ) -> None:
        self.addresses = addresses
        self.book = book if book is not None else IkeBook()
        self.on_events = on_events
        self.received = 0
        """Datagrams taken from the socket."""
        self.drops: Counter[str] = Counter()
        """Datagrams that changed nothing because they were bad, by reason."""
        self.socket_errors = 0
        """Errors the socket reported (ICMP port unreachable while charon is down)."""
        self.last_received: float | None = None
        """``time.monotonic()`` of the last datagram (charon's plugin sends a STATUS every
        second: silence means charon, or its plugin, is down)."""
        self.resyncs = 0
        """RESYNCs from charon: its plugin sends one when charon starts."""
        self.last_resync: float | None = None
        """``time.monotonic()`` of the last RESYNC: charon started then, and its plugin
        takes every segment ``heartbeat_timeout`` later unless a STATUS comes."""
        self.segment_takes = 0
        """SEGMENT_TAKEs from charon: it took a segment (its watchdog, when no heartbeat
        came), and its IKE SAs there became ESTABLISHED."""
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self, netns: str | None = None) -> None:
        """Bind the relay address and connect to charon's, in ``netns`` (None: our own;
        charon's loopback is the namespace's); ``OSError`` names the address."""
        sock = await asyncio.to_thread(run_in_netns, netns, self._socket)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, sock=sock)

    def _socket(self) -> socket.socket:
        a = self.addresses
        family = socket.AF_INET if a.relay.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((str(a.relay), a.port))
            sock.connect((str(a.charon), a.charon_port))
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno, f"ha relay: cannot bind {a.relay} port {a.port}: {exc.strerror}"
            ) from None
        return sock

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def send(self, messages: Iterable[HaMessage]) -> None:
        """Send messages to the local charon (feeding it, answering it)."""
        if self._transport is None:
            raise RuntimeError("ha relay is not started")
        for message in messages:
            self._transport.sendto(encode(message))

    # -- asyncio.DatagramProtocol -------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A datagram endpoint's transport is a DatagramTransport (not by isinstance).
        self._transport = cast(asyncio.DatagramTransport, transport)
        log.info(
            "ha relay listening on %s port %d for charon at %s port %d",
            self.addresses.relay,
            self.addresses.port,
            self.addresses.charon,
            self.addresses.charon_port,
        )

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.received += 1
        self.last_received = time.monotonic()
        try:
            message = decode(data)
            if message.type is HaMessageType.RESYNC:
                self.resyncs += 1
                self.last_resync = self.last_received
            elif message.type is HaMessageType.SEGMENT_TAKE:
                self.segment_takes += 1
            events = self.book.handle(message)
        except HaMessageError as exc:
            reason = type(exc).__name__
            self.drops[reason] += 1
            log.warning("ha relay: dropped a datagram of %d bytes: %s", len(data), exc)
            return
        if events:
            self.on_events(events)

    def error_received(self, exc: Exception) -> None:
        # A connected UDP socket reports ICMP errors (charon not listening) here.
        self.socket_errors += 1
        log.warning("ha relay: socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
