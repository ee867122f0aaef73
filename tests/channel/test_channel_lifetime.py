"""Association lifetime at the server: explicit close, LRU eviction, per-address limits.

Issue 14, point 4: associations of clients that had exited lived for 15
minutes, so about 1,000 short sessions filled the table and new clients were
refused.
"""

from __future__ import annotations

import pytest
from channel_pair import CLIENT_ADDR, SERVER_ADDR, client_and_server, connect_from

from appliance.channel import (
    AssociationClosed,
    ChannelConfig,
    ChannelEndpoint,
    DropReason,
    Event,
    LocalChannelError,
    Side,
)
from appliance.channel import _format as fmt

pytestmark = pytest.mark.unit

PSK = bytes(range(32))


def _addr(host: int, port: int = 40000) -> tuple[str, int]:
    return (f"198.51.100.{host}", port)


def _server(**limits: int) -> ChannelEndpoint:
    return ChannelEndpoint(PSK, "store-1", Side.SERVER, ChannelConfig(**limits))


def test_a_closing_client_is_forgotten_by_the_server_at_once() -> None:
    pair = client_and_server()
    association = pair.server.associations()[0][0]
    pair.client.disconnect()
    ((close, addr),) = pair.client.datagrams_to_send(pair.now)
    assert addr == SERVER_ADDR and close[0] == fmt.TYPE_CLOSE and len(close) == 36
    assert not pair.client.associations() and not pair.client.established
    (closed,) = pair.server.receive_datagram(close, CLIENT_ADDR, pair.now)
    assert closed == AssociationClosed(association, "gw-a", "closed by the peer")
    assert not pair.server.associations()
    # A replayed CLOSE finds nothing; a disconnected client does not reconnect by itself.
    pair.server.receive_datagram(close, CLIENT_ADDR, pair.now)
    assert pair.server.drops == {DropReason.UNKNOWN_ASSOCIATION: 1}
    pair.advance(3600.0)
    assert pair.client.datagrams_to_send(pair.now) == [] and not pair.server.associations()


def test_a_close_is_authenticated() -> None:
    pair = client_and_server()
    pair.client.send(b"request", pair.now)
    ((data, _),) = pair.client.datagrams_to_send(pair.now)
    as_close = bytes([fmt.TYPE_CLOSE]) + data[1:]  # the type is in the AAD
    assert pair.server.receive_datagram(as_close, CLIENT_ADDR, pair.now) == []
    pair.client.disconnect()
    assert isinstance(pair.client.next_event(), AssociationClosed)
    ((close, _),) = pair.client.datagrams_to_send(pair.now)
    forged = close[:-1] + bytes([close[-1] ^ 1])
    assert pair.server.receive_datagram(forged, CLIENT_ADDR, pair.now) == []
    assert len(pair.server.associations()) == 1
    assert pair.server.drops == {DropReason.AUTH_FAILED: 2}
    assert pair.client.receive_datagram(close, SERVER_ADDR, pair.now) == []
    assert pair.client.drops == {DropReason.WRONG_ROLE: 1}  # only clients close


def test_disconnect_is_for_clients() -> None:
    with pytest.raises(LocalChannelError, match="only a client"):
        _server().disconnect()


def test_a_full_table_takes_a_new_client_by_evicting_the_least_recently_used() -> None:
    server = _server(max_associations=3, max_associations_per_source=3)
    clients = [connect_from(server, _addr(i), 0.0, f"gw-{i}") for i in range(3)]
    first = [a for a, _, _ in server.associations()]
    clients[0].send(b"still here", 1.0)  # gw-0 used most recently now; gw-1 is the LRU
    for datagram, _ in clients[0].datagrams_to_send(1.0):
        server.receive_datagram(datagram, _addr(0), 1.0)
    events: list[Event] = []
    newcomer = connect_from(server, _addr(9), 2.0, "gw-9", server_events=events)
    assert newcomer.established
    kept = [a for a, _, _ in server.associations()]
    assert len(kept) == 3 and first[1] not in kept and first[0] in kept
    evicted = [e for e in events if isinstance(e, AssociationClosed)]
    assert [(e.association, e.reason) for e in evicted] == [
        (first[1], "evicted: association table full")
    ]


def test_a_thousand_dead_sessions_from_many_addresses_never_lock_out_a_new_client() -> None:
    server = _server()  # the defaults: 1024 in all, 256 per address
    for index in range(1100):
        connect_from(server, _addr(index % 5, 40000 + index), 0.0)  # never closes
    assert len(server.associations()) == 1024
    newcomer = connect_from(server, _addr(200), 1.0, "late")
    assert newcomer.established and newcomer.handshake_retransmissions == 0
    assert len(server.associations()) == 1024
    assert not server.drops


def test_one_address_cannot_hold_more_than_its_share() -> None:
    server = _server(max_associations=8, max_associations_per_source=4)
    others = [connect_from(server, _addr(i + 1), 0.0, f"gw-{i}") for i in range(3)]
    kept = {a for a, _, _ in server.associations()}
    for port in range(50):  # one busy address opens and abandons association after association
        connect_from(server, _addr(66, 30000 + port), 1.0, "busy")
    by_host = [addr[0] for _, _, addr in server.associations()]
    assert by_host.count(_addr(66)[0]) == 4
    assert kept <= {a for a, _, _ in server.associations()}  # nobody else lost anything
    assert all(c.established for c in others)


def test_a_full_table_evicts_from_the_address_holding_most() -> None:
    server = _server(max_associations=6, max_associations_per_source=4)
    quiet = connect_from(server, _addr(1), 0.0, "quiet")  # the oldest of all
    for port in range(4):
        connect_from(server, _addr(66, 30000 + port), 1.0, "busy")
    connect_from(server, _addr(2), 2.0, "other")
    connect_from(server, _addr(3), 3.0, "newcomer")  # full: busy's oldest goes, not quiet
    hosts = [addr[0] for _, _, addr in server.associations()]
    assert hosts.count(_addr(66)[0]) == 3 and _addr(1)[0] in hosts
    assert quiet.established


def test_half_open_handshakes_from_one_address_cannot_stop_another() -> None:
    server = _server(max_half_open=8, max_half_open_per_source=2)
    for port in range(100):  # a holder of the key that never confirms, one address
        connect_from(server, _addr(66, 30000 + port), 0.0, "flood", confirm=False)
    assert len(server.associations()) == 2
    legit = connect_from(server, _addr(7), 0.0, "gw-a")
    assert legit.established
    # The legitimate association is confirmed, so no later flood can evict it.
    for port in range(100):
        connect_from(server, _addr(66, 31000 + port), 0.0, "flood", confirm=False)
    assert ("gw-a", _addr(7)) in [(n, a) for _, n, a in server.associations()]


def test_a_full_half_open_table_evicts_the_oldest_of_the_address_holding_most() -> None:
    server = _server(max_half_open=4, max_half_open_per_source=2)
    connect_from(server, _addr(1), 0.0, "slow", confirm=False)
    for host in (66, 67):
        for port in range(2):
            connect_from(server, _addr(host, 30000 + port), 1.0, "flood", confirm=False)
    assert len(server.associations()) == 4  # slow + 66's newest + 67's two
    assert "slow" in [n for _, n, _ in server.associations()]


def test_a_total_limit_below_the_per_address_one_still_admits_newcomers() -> None:
    server = _server(max_associations=3)  # as with [store].max_peers = 3
    for port in range(10):
        assert connect_from(server, _addr(1, 30000 + port), 0.0).established
    assert len(server.associations()) == 3
