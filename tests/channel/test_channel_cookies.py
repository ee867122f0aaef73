"""The stateless handshake: a server keeps nothing for an INIT until its cookie comes back.

Issue 14, point 3: INITs recorded and replayed after a store restart used to
fill the half-open table and lock out new clients.
"""

from __future__ import annotations

import os

import pytest
from channel_pair import CLIENT_ADDR, PSK, SERVER_ADDR, Pair, client_and_server, connect_from
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.channel import (
    ChannelConfig,
    ChannelEndpoint,
    DropReason,
    HandshakeCompleted,
    LocalChannelError,
    Side,
)
from appliance.channel import _format as fmt

pytestmark = pytest.mark.unit

OTHER_ADDR = ("203.0.113.66", 5555)


def _types(datagrams: list[tuple[bytes, object]]) -> list[int]:
    return [d[0] for d, _ in datagrams]


def _first_round() -> tuple[ChannelEndpoint, ChannelEndpoint, bytes]:
    """A server, a client whose first INIT it has seen, and the COOKIE it answered."""
    server = ChannelEndpoint(PSK, "store-1", Side.SERVER)
    client = ChannelEndpoint(PSK, "gw-a", Side.CLIENT)
    client.connect(SERVER_ADDR, 0.0)
    ((init, _),) = client.datagrams_to_send(0.0)
    server.receive_datagram(init, CLIENT_ADDR, 0.0)
    ((cookie, _),) = server.datagrams_to_send(0.0)
    return server, client, cookie


def test_a_first_init_gets_a_small_cookie_and_costs_no_state() -> None:
    server = ChannelEndpoint(PSK, "store-1", Side.SERVER)
    client = ChannelEndpoint(PSK, "g", Side.CLIENT)  # the shortest INIT there is
    client.connect(SERVER_ADDR, 0.0)
    ((init, _),) = client.datagrams_to_send(0.0)
    for _ in range(1000):
        assert server.receive_datagram(init, CLIENT_ADDR, 0.0) == []
    assert not server.associations()
    replies = server.datagrams_to_send(0.0)
    assert _types(replies) == [fmt.TYPE_COOKIE] * 1000
    assert all(len(reply) <= len(init) for reply, _ in replies)
    assert server.cookies_sent == 1000
    assert server.get_timer() is None  # nothing to expire: nothing was kept


def test_inits_recorded_and_replayed_after_a_restart_create_nothing() -> None:
    # 64 real handshakes, every datagram recorded; then the store restarts.
    first = ChannelEndpoint(PSK, "store-1", Side.SERVER)
    recorded: list[bytes] = []
    for index in range(32):
        pair = Pair(server=first)
        pair.client = ChannelEndpoint(PSK, f"gw-{index}", Side.CLIENT)
        pair.connect()
        assert pair.client.established
        recorded += [d for d in pair.to_server if d[0] == fmt.TYPE_INIT]
    assert len(recorded) == 64  # 32 without a cookie, 32 with one
    restarted = ChannelEndpoint(PSK, "store-1", Side.SERVER)
    for source in (OTHER_ADDR, CLIENT_ADDR):
        for init in recorded:
            assert restarted.receive_datagram(init, source, pair.now) == []
            ((reply, _),) = restarted.datagrams_to_send(pair.now)
            assert reply[0] == fmt.TYPE_COOKIE and len(reply) <= len(init)
    assert not restarted.associations()
    assert restarted.drops == {DropReason.COOKIE_INVALID: 64}
    # A new client gets in at its first attempt.
    fresh = Pair(server=restarted)
    fresh.connect()
    assert fresh.client.established and fresh.client.handshake_retransmissions == 0


def test_a_cookie_is_good_only_for_the_address_it_was_made_for() -> None:
    server, client, cookie = _first_round()
    client.receive_datagram(cookie, SERVER_ADDR, 0.0)
    ((init2, _),) = client.datagrams_to_send(0.0)
    for elsewhere in (OTHER_ADDR, (CLIENT_ADDR[0], CLIENT_ADDR[1] + 1)):
        assert server.receive_datagram(init2, elsewhere, 0.0) == []
    assert not server.associations()
    assert server.drops[DropReason.COOKIE_INVALID] == 2
    (event,) = server.receive_datagram(init2, CLIENT_ADDR, 0.0)
    assert isinstance(event, HandshakeCompleted)


def test_a_forged_cookie_is_counted_creates_nothing_and_gets_a_fresh_one() -> None:
    # Even a holder of the cluster key cannot make a cookie: it is under the server's secret.
    server = ChannelEndpoint(PSK, "store-1", Side.SERVER)
    key = fmt.handshake_key(PSK)
    aid, ni = os.urandom(8), os.urandom(32)
    forged = fmt.build_init(key, aid, ni, b"gw-a", cookie=os.urandom(fmt.COOKIE_LENGTH))
    assert server.receive_datagram(forged, CLIENT_ADDR, 0.0) == []
    assert not server.associations()
    assert server.drops == {DropReason.COOKIE_INVALID: 1}
    ((reply, _),) = server.datagrams_to_send(0.0)
    assert fmt.parse_cookie(reply).initiator_aid == aid


def test_a_stale_cookie_is_refused_and_the_client_continues_with_a_fresh_one() -> None:
    config = ChannelConfig(cookie_secret_seconds=10.0)
    pair = Pair(config=config)
    pair.client.connect(SERVER_ADDR, pair.now)
    pair.flush(drop_to_server=lambda d: len(d) >= fmt.MIN_COOKIE_INIT_LENGTH)
    assert not pair.client.established
    pair.now += 20.0  # two rotations later: the cookie the client holds is no longer valid
    pair.client.handle_timer(pair.now)  # it resends its INIT with that cookie
    pair.flush()
    assert pair.server.drops == {DropReason.COOKIE_INVALID: 1}
    assert pair.client.established and len(pair.server.associations()) == 1


def test_a_cookie_survives_one_rotation() -> None:
    pair = Pair(config=ChannelConfig(cookie_secret_seconds=10.0))
    pair.client.connect(SERVER_ADDR, pair.now)
    pair.flush(drop_to_server=lambda d: len(d) >= fmt.MIN_COOKIE_INIT_LENGTH)
    pair.now += 15.0
    pair.client.handle_timer(pair.now)
    pair.flush()
    assert pair.client.established and not pair.server.drops


def test_an_init_with_a_valid_cookie_replayed_while_its_association_lives_gets_the_same_resp() -> (
    None
):
    server, client, cookie = _first_round()
    client.receive_datagram(cookie, SERVER_ADDR, 0.0)
    ((init2, _),) = client.datagrams_to_send(0.0)
    server.receive_datagram(init2, CLIENT_ADDR, 0.0)
    assert server.receive_datagram(init2, CLIENT_ADDR, 0.0) == []
    first, second = server.datagrams_to_send(0.0)
    assert first == second and len(server.associations()) == 1
    # Once the association is gone, the same INIT is a replay, not a new association.
    server.close(server.associations()[0][0])
    server.next_event()
    assert server.receive_datagram(init2, CLIENT_ADDR, 1.0) == []
    assert not server.associations()
    assert server.drops == {DropReason.HANDSHAKE_REPLAYED: 1}


def test_a_full_replay_memory_invalidates_every_outstanding_cookie() -> None:
    server = ChannelEndpoint(PSK, "store-1", Side.SERVER, ChannelConfig(max_remembered_inits=2))
    recorded: list[bytes] = []
    for index in range(3):
        pair = Pair(server=server)
        pair.connect()
        recorded.append(next(d for d in pair.to_server if len(d) >= fmt.MIN_COOKIE_INIT_LENGTH))
        if index == 0:
            server.close(server.associations()[0][0])
    # The third handshake found the memory full: the secrets were replaced, so the first
    # INIT (forgotten with the rest) comes back with an invalid cookie, not a valid one.
    assert server.receive_datagram(recorded[0], CLIENT_ADDR, pair.now) == []
    assert server.drops == {DropReason.COOKIE_INVALID: 1}
    assert len(server.associations()) == 2


def test_the_client_ignores_cookies_that_answer_nothing_it_asked() -> None:
    server = ChannelEndpoint(PSK, "store-1", Side.SERVER)
    client = ChannelEndpoint(PSK, "gw-a", Side.CLIENT)
    other = ChannelEndpoint(PSK, "gw-b", Side.CLIENT)
    other.connect(SERVER_ADDR, 0.0)
    ((init, _),) = other.datagrams_to_send(0.0)
    server.receive_datagram(init, CLIENT_ADDR, 0.0)
    ((cookie, _),) = server.datagrams_to_send(0.0)
    assert client.receive_datagram(cookie, SERVER_ADDR, 0.0) == []  # no handshake pending
    client.connect(SERVER_ADDR, 0.0)
    client.datagrams_to_send(0.0)
    forged = cookie[:4] + client._pending.local_id + cookie[12:]  # type: ignore[union-attr]
    assert client.receive_datagram(forged, SERVER_ADDR, 0.0) == []  # MAC over another Ni
    assert server.receive_datagram(cookie, CLIENT_ADDR, 0.0) == []  # a COOKIE at a server
    assert client.datagrams_to_send(0.0) == []
    assert client.drops == {
        DropReason.HANDSHAKE_UNEXPECTED: 1,
        DropReason.HANDSHAKE_AUTH_FAILED: 1,
    }
    assert server.drops == {DropReason.WRONG_ROLE: 1}


def test_a_duplicated_cookie_sends_the_init_once() -> None:
    _, client, cookie = _first_round()
    client.receive_datagram(cookie, SERVER_ADDR, 0.0)
    client.receive_datagram(cookie, SERVER_ADDR, 0.0)
    assert len(client.datagrams_to_send(0.0)) == 1


def test_an_init_with_a_cookie_shorter_than_the_largest_resp_is_malformed() -> None:
    server = ChannelEndpoint(PSK, "store-1", Side.SERVER)
    key = fmt.handshake_key(PSK)
    full = fmt.build_init(key, os.urandom(8), os.urandom(32), b"gw-a", cookie=bytes(16))
    unpadded = full[: 4 + 8 + 32 + 1 + 4 + 1 + 16] + bytes(2)
    assert server.receive_datagram(unpadded + fmt.mac(key, unpadded), CLIENT_ADDR, 0.0) == []
    assert server.drops == {DropReason.MALFORMED: 1}
    assert server.datagrams_to_send(0.0) == []


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 255), st.integers(1, 255), st.booleans())
def test_no_handshake_reply_is_larger_than_the_datagram_that_caused_it(
    client_id_length: int, server_id_length: int, lose_resp: bool
) -> None:
    pair = Pair(
        client=ChannelEndpoint(PSK, "c" * client_id_length, Side.CLIENT),
        server=ChannelEndpoint(PSK, "s" * server_id_length, Side.SERVER),
    )
    pair.client.connect(SERVER_ADDR, pair.now)
    for _ in range(3):  # with a lost RESP, the INIT goes again and is answered again
        for datagram, _ in pair.client.datagrams_to_send(pair.now):
            if datagram[0] == fmt.TYPE_DATA:
                continue
            pair.server.receive_datagram(datagram, CLIENT_ADDR, pair.now)
            for reply, _ in pair.server.datagrams_to_send(pair.now):
                assert len(reply) <= len(datagram)
                if not (lose_resp and reply[0] == fmt.TYPE_RESP):
                    pair.client.receive_datagram(reply, SERVER_ADDR, pair.now)
        pair.client.handle_timer(pair.now + 1.0)
    assert pair.client.established is not lose_resp


def test_the_limits_are_checked() -> None:
    with pytest.raises(LocalChannelError, match="max_half_open must be at least 1"):
        ChannelConfig(max_half_open=0)
    with pytest.raises(LocalChannelError, match="max_associations_per_source must be"):
        ChannelConfig(max_associations_per_source=-1)
    with pytest.raises(LocalChannelError, match="cookie_secret_seconds"):
        ChannelConfig(cookie_secret_seconds=0)


def test_a_handshake_through_cookies_still_carries_data() -> None:
    pair = client_and_server()
    assert [d[0] for d in pair.to_server[:3]] == [1, 1, 3]  # INIT, INIT with cookie, confirm
    assert [d[0] for d in pair.to_client[:2]] == [4, 2]  # COOKIE, RESP
    client = connect_from(pair.server, OTHER_ADDR, pair.now)
    assert client.established and len(pair.server.associations()) == 2
