"""The protected channel: handshake, AEAD, anti-replay, drops, rekey."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from channel_pair import CLIENT_ADDR, PSK, SERVER_ADDR, Pair, client_and_server
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.channel import (
    AssociationClosed,
    ChannelConfig,
    ChannelEndpoint,
    ChannelError,
    DataReceived,
    DropReason,
    HandshakeCompleted,
    HandshakeFailed,
    LocalChannelError,
    RemoteChannelError,
    Side,
)
from appliance.channel import _format as fmt
from appliance.channel.endpoint import MAX_SEQUENCE
from appliance.errors import ApplianceError

pytestmark = pytest.mark.unit


def _one_data_datagram(pair: Pair, plaintext: bytes = b"SA_Stor request") -> bytes:
    pair.client.send(plaintext, pair.now)
    ((datagram, addr),) = pair.client.datagrams_to_send(pair.now)
    assert addr == SERVER_ADDR
    return datagram


def test_handshake_then_data_flows_both_ways() -> None:
    pair = client_and_server()
    (completed,) = [e for e in pair.server_events if isinstance(e, HandshakeCompleted)]
    assert completed.peer_node_id == "gw-a"
    pair.client.send(b"request", pair.now)
    pair.flush()
    (request,) = [e for e in pair.server_events if isinstance(e, DataReceived)]
    assert request.data == b"request"
    assert request.peer_node_id == "gw-a"
    pair.server.send(b"response", pair.now, association=request.association)
    pair.flush()
    assert pair.received_by_client() == [b"response"]
    assert not pair.client.drops and not pair.server.drops


def test_data_sent_before_the_handshake_is_buffered_then_delivered() -> None:
    pair = Pair()
    pair.client.send(b"early", pair.now)
    pair.client.connect(SERVER_ADDR, pair.now)
    pair.flush()
    assert pair.received_by_server() == [b"early"]


def test_datagram_carries_no_plaintext_and_the_documented_overhead() -> None:
    pair = client_and_server()
    datagram = _one_data_datagram(pair, b"secret key material")
    assert b"secret key material" not in datagram
    assert len(datagram) == len(b"secret key material") + 36
    assert datagram[:4] == bytes([3, 2, 0, 0])
    assert int.from_bytes(datagram[12:20], "big") == 2  # 1 was the empty confirmation


def test_flipping_any_byte_of_a_data_datagram_gets_it_rejected() -> None:
    pair = client_and_server()
    datagram = _one_data_datagram(pair)
    for position in range(len(datagram)):
        forged = bytearray(datagram)
        forged[position] ^= 0x01
        assert pair.server.receive_datagram(bytes(forged), CLIENT_ADDR, pair.now) == []
    assert sum(pair.server.drops.values()) == len(datagram)
    assert pair.server.drops[DropReason.AUTH_FAILED] > 0
    # The forgeries did not move the replay window: the genuine datagram still passes.
    (event,) = pair.server.receive_datagram(datagram, CLIENT_ADDR, pair.now)
    assert isinstance(event, DataReceived)


def test_flipping_any_byte_of_a_handshake_message_gets_it_rejected() -> None:
    client = ChannelEndpoint(PSK, "gw-a", Side.CLIENT)
    server = ChannelEndpoint(PSK, "store-1", Side.SERVER)
    client.connect(SERVER_ADDR, 0.0)
    ((init, _),) = client.datagrams_to_send(0.0)
    for position in range(len(init)):
        forged = bytearray(init)
        forged[position] ^= 0x80
        assert server.receive_datagram(bytes(forged), CLIENT_ADDR, 0.0) == []
    assert server.datagrams_to_send(0.0) == []  # not even a cookie for a forgery
    assert sum(server.drops.values()) == len(init)
    server.receive_datagram(init, CLIENT_ADDR, 0.0)
    ((cookie, _),) = server.datagrams_to_send(0.0)
    for position in range(len(cookie)):
        forged = bytearray(cookie)
        forged[position] ^= 0x80
        assert client.receive_datagram(bytes(forged), SERVER_ADDR, 0.0) == []
    assert client.datagrams_to_send(0.0) == []
    assert sum(client.drops.values()) == len(cookie)
    client.receive_datagram(cookie, SERVER_ADDR, 0.0)
    ((init2, _),) = client.datagrams_to_send(0.0)
    for position in range(len(init2)):
        forged = bytearray(init2)
        forged[position] ^= 0x80
        server.receive_datagram(bytes(forged), CLIENT_ADDR, 0.0)
    assert not server.established
    server.datagrams_to_send(0.0)
    server.receive_datagram(init2, CLIENT_ADDR, 0.0)
    ((resp, _),) = server.datagrams_to_send(0.0)
    for position in range(len(resp)):
        forged = bytearray(resp)
        forged[position] ^= 0x80
        assert client.receive_datagram(bytes(forged), SERVER_ADDR, 0.0) == []
    assert not client.established
    (event,) = client.receive_datagram(resp, SERVER_ADDR, 0.0)
    assert isinstance(event, HandshakeCompleted)


def test_a_replayed_datagram_is_rejected() -> None:
    pair = client_and_server()
    datagram = _one_data_datagram(pair)
    assert len(pair.server.receive_datagram(datagram, CLIENT_ADDR, pair.now)) == 1
    assert pair.server.receive_datagram(datagram, CLIENT_ADDR, pair.now) == []
    assert pair.server.drops[DropReason.REPLAYED] == 1


def test_reordering_within_the_window_is_accepted_and_beyond_it_rejected() -> None:
    pair = client_and_server(ChannelConfig(replay_window=64))
    datagrams = [_one_data_datagram(pair, b"%d" % i) for i in range(100)]
    order = [*range(10, 0, -1), 0, *range(11, 100)]  # 10 first, then older ones, then the rest
    accepted = []
    for index in order[:11]:
        accepted += pair.server.receive_datagram(datagrams[index], CLIENT_ADDR, pair.now)
    assert [e.data for e in accepted if isinstance(e, DataReceived)] == [
        b"%d" % i for i in order[:11]
    ]
    for index in order[11:]:
        pair.server.receive_datagram(datagrams[index], CLIENT_ADDR, pair.now)
    # Sequence numbers 1..100 are in; 36 is now more than 64 behind 100.
    assert pair.server.receive_datagram(datagrams[35], CLIENT_ADDR, pair.now) == []
    assert pair.server.drops[DropReason.OUTSIDE_WINDOW] == 1
    assert pair.server.receive_datagram(datagrams[99], CLIENT_ADDR, pair.now) == []
    assert pair.server.drops[DropReason.REPLAYED] == 1


def test_a_wrong_cluster_key_is_rejected_at_the_handshake() -> None:
    wrong = ChannelEndpoint(bytes(32), "gw-x", Side.CLIENT)
    pair = Pair(client=wrong)
    pair.connect()
    assert not pair.client.established
    assert not pair.server.established
    assert pair.server.drops[DropReason.HANDSHAKE_AUTH_FAILED] == 1


def test_data_sealed_under_another_association_is_rejected() -> None:
    first = client_and_server()
    second = Pair(server=first.server)
    second.connect()
    datagram = _one_data_datagram(second)
    # Re-address the other association's datagram to the first association's server ID.
    target = first.server.associations()[0][0]
    forged = datagram[:4] + target + datagram[12:]
    assert first.server.receive_datagram(forged, CLIENT_ADDR, first.now) == []
    assert first.server.drops[DropReason.AUTH_FAILED] == 1


def test_a_restarted_client_gets_fresh_keys_and_never_repeats_a_datagram() -> None:
    first = client_and_server()
    before = _one_data_datagram(first, b"same plaintext")
    restarted = Pair(client=ChannelEndpoint(PSK, "gw-a", Side.CLIENT), server=first.server)
    restarted.connect()
    after = _one_data_datagram(restarted, b"same plaintext")
    # Same sequence number, same plaintext: only fresh keys make them differ.
    assert before[12:20] == after[12:20]
    assert before[20:] != after[20:]
    assert len(first.server.associations()) == 2


def test_a_restarted_peer_gets_fresh_keys_even_if_the_other_side_repeats_its_nonce() -> None:
    # A client whose RNG repeats still gets new keys from a restarted server's fresh nonce.
    def fixed(n: int) -> bytes:
        return b"\x07" * n

    outputs = []
    for _ in range(2):
        client = ChannelEndpoint(PSK, "gw-a", Side.CLIENT, random_bytes=fixed)
        pair = Pair(client=client, server=ChannelEndpoint(PSK, "store-1", Side.SERVER))
        pair.connect()
        outputs.append(_one_data_datagram(pair, b"same plaintext"))
    assert outputs[0][12:20] == outputs[1][12:20]  # same sequence number
    assert outputs[0][20:] != outputs[1][20:]


def test_an_identical_init_after_its_association_is_gone_is_a_replay() -> None:
    def fixed(n: int) -> bytes:
        return b"\x07" * n

    server = ChannelEndpoint(PSK, "store-1", Side.SERVER)
    Pair(
        client=ChannelEndpoint(PSK, "gw-a", Side.CLIENT, random_bytes=fixed), server=server
    ).connect()
    server.close(server.associations()[0][0])
    again = Pair(
        client=ChannelEndpoint(PSK, "gw-a", Side.CLIENT, random_bytes=fixed), server=server
    )
    again.connect()
    assert not again.client.established
    assert server.drops[DropReason.HANDSHAKE_REPLAYED] == 1


def test_a_restarted_server_is_found_again_by_the_dead_peer_timer() -> None:
    pair = client_and_server(ChannelConfig(dead_peer_timeout=5.0))
    pair.server = ChannelEndpoint(PSK, "store-1", Side.SERVER, ChannelConfig())
    pair.client.send(b"lost", pair.now)
    pair.flush()
    assert pair.server.drops[DropReason.UNKNOWN_ASSOCIATION] == 1
    pair.advance(6.0)
    assert pair.server.established
    pair.client.send(b"after restart", pair.now)
    pair.flush()
    assert pair.received_by_server() == [b"after restart"]


def test_a_lost_init_is_retransmitted() -> None:
    pair = Pair()
    pair.client.connect(SERVER_ADDR, pair.now)
    pair.flush(drop_to_server=lambda d: True)
    assert not pair.client.established
    pair.advance(1.0)
    assert pair.client.established


def test_a_lost_response_is_resent_without_a_second_association() -> None:
    pair = Pair()
    pair.client.connect(SERVER_ADDR, pair.now)
    pair.flush(drop_to_client=lambda d: d[0] == 2)  # every RESP is lost
    assert len(pair.server.associations()) == 1
    assert not pair.client.established
    pair.advance(1.0)  # the INIT with the cookie goes again; this time its RESP arrives
    assert pair.client.established
    assert len(pair.server.associations()) == 1
    cookie, resp, resent = pair.to_client[:3]
    assert (cookie[0], resp[0]) == (4, 2) and resent == resp


def test_the_handshake_gives_up_after_its_attempts() -> None:
    pair = Pair(config=ChannelConfig(handshake_attempts=3))
    pair.client.connect(SERVER_ADDR, pair.now)
    pair.server = ChannelEndpoint(bytes(32), "other", Side.SERVER)  # answers nothing valid
    pair.flush()
    pair.advance(60.0)
    assert any(isinstance(e, HandshakeFailed) for e in pair.client_events)
    assert len(pair.to_server) == 3
    assert pair.client.get_timer() is None


def test_the_client_confirms_the_association_at_once() -> None:
    pair = client_and_server(ChannelConfig(half_open_timeout=5.0))
    pair.advance(30.0)
    assert len(pair.server.associations()) == 1
    assert pair.received_by_server() == []  # the confirmation is not delivered as data


def test_half_open_associations_expire() -> None:
    config = ChannelConfig(half_open_timeout=5.0)
    pair = Pair(config=config)
    pair.client.connect(SERVER_ADDR, pair.now)
    pair.flush(drop_to_server=lambda d: d[0] == 3)  # the confirmation never arrives
    assert len(pair.server.associations()) == 1
    pair.server.handle_timer(pair.now + 5.0)
    assert not pair.server.associations()
    closed = pair.server.next_event()
    assert isinstance(closed, AssociationClosed) and closed.reason == "no data after the handshake"


def test_the_client_rekeys_after_n_messages_and_keeps_talking() -> None:
    pair = client_and_server(ChannelConfig(rekey_after_messages=5, retire_grace_seconds=2.0))
    first = pair.client.current_association
    for index in range(5):
        pair.client.send(b"%d" % index, pair.now)
    pair.flush()
    pair.advance(0.01)
    second = pair.client.current_association
    assert second is not None and second != first
    pair.client.send(b"after rekey", pair.now)
    pair.flush()
    assert pair.received_by_server()[-1] == b"after rekey"
    pair.advance(3.0)
    assert first not in [a for a, _, _ in pair.client.associations()]
    assert any(
        isinstance(e, AssociationClosed) and e.association == first for e in pair.client_events
    )


def test_the_client_rekeys_after_its_time_limit() -> None:
    pair = client_and_server(ChannelConfig(rekey_after_seconds=60.0))
    first = pair.client.current_association
    pair.advance(61.0)
    assert pair.client.current_association not in (None, first)


def test_drops_are_logged_without_content(caplog: pytest.LogCaptureFixture) -> None:
    pair = client_and_server()
    datagram = _one_data_datagram(pair, b"PLAINTEXT")
    forged = datagram[:-1] + bytes([datagram[-1] ^ 1])
    with caplog.at_level(logging.WARNING, logger="appliance.channel"):
        pair.server.receive_datagram(forged, CLIENT_ADDR, pair.now)
    (record,) = caplog.records
    assert "auth-failed" in record.getMessage()
    assert str(len(forged)) in record.getMessage()
    assert forged.hex()[:16] not in record.getMessage()
    assert datagram[20:28].hex() not in record.getMessage()


def test_the_drop_counters_count_per_reason() -> None:
    pair = client_and_server()
    datagram = _one_data_datagram(pair)
    pair.server.receive_datagram(b"\x03", CLIENT_ADDR, pair.now)
    pair.server.receive_datagram(b"\x09\x01\x00\x00", CLIENT_ADDR, pair.now)
    pair.server.receive_datagram(datagram[:4] + bytes(8) + datagram[12:], CLIENT_ADDR, pair.now)
    pair.server.receive_datagram(datagram, CLIENT_ADDR, pair.now)
    pair.server.receive_datagram(datagram, CLIENT_ADDR, pair.now)
    pair.client.receive_datagram(pair.to_server[0], SERVER_ADDR, pair.now)
    assert pair.server.drops == {
        DropReason.MALFORMED: 2,
        DropReason.UNKNOWN_ASSOCIATION: 1,
        DropReason.REPLAYED: 1,
    }
    assert pair.client.drops == {DropReason.WRONG_ROLE: 1}
    assert pair.server.datagrams_received == 2  # the confirmation and the datagram


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_receive_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    pair = client_and_server()
    assert pair.server.receive_datagram(data, CLIENT_ADDR, pair.now) == []
    assert pair.client.receive_datagram(data, SERVER_ADDR, pair.now) == []


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 255), st.data())
def test_receive_never_raises_on_mutated_real_datagrams(kind: int, data: st.DataObject) -> None:
    pair = client_and_server()
    datagrams = [*pair.to_server, *pair.to_client, _one_data_datagram(pair)]
    base = bytearray(data.draw(st.sampled_from(datagrams)))
    base[data.draw(st.integers(0, len(base) - 1))] = kind
    length = data.draw(st.integers(0, len(base)))
    pair.server.receive_datagram(bytes(base[:length]), CLIENT_ADDR, pair.now)
    pair.client.receive_datagram(bytes(base[:length]), SERVER_ADDR, pair.now)


def test_local_misuse_is_a_clear_local_error() -> None:
    with pytest.raises(LocalChannelError, match="at least 32 bytes"):
        ChannelEndpoint(b"short", "gw-a", Side.CLIENT)
    with pytest.raises(LocalChannelError, match="node ID"):
        ChannelEndpoint(PSK, "", Side.CLIENT)
    client = ChannelEndpoint(PSK, "gw-a", Side.CLIENT)
    with pytest.raises(LocalChannelError, match="handshake has not completed"):
        client.protect(b"x")
    server = ChannelEndpoint(PSK, "store-1", "server")
    with pytest.raises(LocalChannelError, match="only a client"):
        server.connect(SERVER_ADDR, 0.0)
    assert issubclass(ChannelError, ApplianceError)
    assert issubclass(LocalChannelError, ChannelError)
    assert issubclass(RemoteChannelError, ChannelError)


@pytest.mark.parametrize("parse", [fmt.parse_init, fmt.parse_cookie, fmt.parse_resp])
def test_a_datagram_that_does_not_parse_is_a_remote_error_counted_not_raised(
    parse: Callable[[bytes], object],
) -> None:
    garbage = bytes([fmt.TYPE_INIT, fmt.VERSION, 0, 0]) + b"\xff" * 40
    with pytest.raises(RemoteChannelError):
        parse(garbage)
    server = ChannelEndpoint(PSK, "store-1", Side.SERVER)
    assert server.receive_datagram(garbage, CLIENT_ADDR, 0.0) == []
    assert server.drops[DropReason.MALFORMED] == 1


def test_the_server_forgets_idle_associations_and_a_quiet_client_reconnects_first() -> None:
    pair = client_and_server(ChannelConfig(idle_timeout_seconds=100.0))
    first = pair.client.current_association
    pair.advance(60.0)  # quiet for more than half the idle timeout
    pair.client.send(b"after a quiet minute", pair.now)
    pair.flush()
    assert pair.client.current_association != first
    assert pair.received_by_server() == [b"after a quiet minute"]
    (request,) = [e for e in pair.server_events if isinstance(e, DataReceived)]
    pair.server.send(b"reply", pair.now, association=request.association)
    pair.flush()
    pair.advance(101.0)
    # The abandoned association went idle at the server and was removed; the new one too.
    assert not pair.server.associations()
    assert any(isinstance(e, AssociationClosed) and e.reason == "idle" for e in pair.server_events)


def test_sequence_numbers_never_wrap() -> None:
    pair = client_and_server()
    association = pair.client.current_association
    assert association is not None
    # Jump to the end of the sequence space (no public way to send 2**64 datagrams).
    pair.client._associations[association].send_seq = MAX_SEQUENCE - 2
    last = pair.client.protect(b"last")
    assert int.from_bytes(last[12:20], "big") == MAX_SEQUENCE - 1  # 2**64 - 2: the last one
    with pytest.raises(LocalChannelError, match="exhausted"):
        pair.client.protect(b"one too many")
