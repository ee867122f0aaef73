"""An in-memory client/server pair: datagrams pass between them without sockets."""

from __future__ import annotations

from collections.abc import Callable

from appliance.channel import ChannelConfig, ChannelEndpoint, DataReceived, Event, Side

PSK = bytes(range(32))
CLIENT_ADDR = ("198.51.100.10", 40000)
SERVER_ADDR = ("192.0.2.10", 4501)

Filter = Callable[[bytes], bool]


class Pair:
    """A client and a server, and a clock; ``flush`` delivers until both are quiet."""

    def __init__(
        self,
        client: ChannelEndpoint | None = None,
        server: ChannelEndpoint | None = None,
        config: ChannelConfig | None = None,
    ) -> None:
        self.now = 1000.0
        self.client = client or ChannelEndpoint(PSK, "gw-a", Side.CLIENT, config)
        self.server = server or ChannelEndpoint(PSK, "store-1", Side.SERVER, config)
        self.client_events: list[Event] = []
        self.server_events: list[Event] = []
        self.to_server: list[bytes] = []
        """Every datagram the client sent, in order (for replay tests)."""
        self.to_client: list[bytes] = []

    def flush(
        self, drop_to_server: Filter | None = None, drop_to_client: Filter | None = None
    ) -> None:
        for _ in range(50):
            moved = False
            for datagram, addr in self.client.datagrams_to_send(self.now):
                assert addr == SERVER_ADDR
                self.to_server.append(datagram)
                moved = True
                if drop_to_server is None or not drop_to_server(datagram):
                    self.server_events += self.server.receive_datagram(
                        datagram, CLIENT_ADDR, self.now
                    )
            for datagram, addr in self.server.datagrams_to_send(self.now):
                assert addr == CLIENT_ADDR
                self.to_client.append(datagram)
                moved = True
                if drop_to_client is None or not drop_to_client(datagram):
                    self.client_events += self.client.receive_datagram(
                        datagram, SERVER_ADDR, self.now
                    )
            if not moved:
                return
        raise AssertionError("datagrams kept flowing")

    def advance(self, seconds: float) -> None:
        """Move the clock, firing every timer that falls due on the way."""
        target = self.now + seconds
        for _ in range(10_000):
            timers = [
                t for t in (self.client.get_timer(), self.server.get_timer()) if t is not None
            ]
            due = min(timers) if timers else None
            if due is None or due > target:
                break
            self.now = max(self.now, due)
            for endpoint, events in (
                (self.client, self.client_events),
                (self.server, self.server_events),
            ):
                endpoint.handle_timer(self.now)
                while (event := endpoint.next_event()) is not None:
                    events.append(event)
            self.flush()
        else:
            raise AssertionError("a timer keeps firing without making progress")
        self.now = target

    def connect(self) -> None:
        self.client.connect(SERVER_ADDR, self.now)
        self.flush()

    def received_by_server(self) -> list[bytes]:
        return [e.data for e in self.server_events if isinstance(e, DataReceived)]

    def received_by_client(self) -> list[bytes]:
        return [e.data for e in self.client_events if isinstance(e, DataReceived)]


def client_and_server(config: ChannelConfig | None = None) -> Pair:
    pair = Pair(config=config)
    pair.connect()
    assert pair.client.established
    return pair


def connect_from(
    server: ChannelEndpoint,
    addr: tuple[str, int],
    now: float,
    node_id: str = "gw-x",
    *,
    confirm: bool = True,
    config: ChannelConfig | None = None,
    server_events: list[Event] | None = None,
) -> ChannelEndpoint:
    """A new client at ``addr`` that runs its handshake with ``server`` (no clock movement).

    Without ``confirm`` the client's confirmation is lost, so the association
    stays half-open at the server.
    """
    client = ChannelEndpoint(PSK, node_id, Side.CLIENT, config)
    client.connect(SERVER_ADDR, now)
    for _ in range(10):
        to_server = [d for d, _ in client.datagrams_to_send(now)]
        if not confirm:
            to_server = [d for d in to_server if d[0] != 3]
        for datagram in to_server:
            events = server.receive_datagram(datagram, addr, now)
            if server_events is not None:
                server_events += events
        to_client = [d for d, a in server.datagrams_to_send(now) if a == addr]
        if not to_server and not to_client:
            break
        for datagram in to_client:
            client.receive_datagram(datagram, SERVER_ADDR, now)
    return client
