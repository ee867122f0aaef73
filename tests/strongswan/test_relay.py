"""The relay's socket, on loopback: it takes only the local charon's datagrams,
feeds the book, counts what it drops, and sends to charon."""

from __future__ import annotations

import asyncio
import logging
import socket
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from ha_recordings import datagrams

from appliance.errors import ConfigError
from appliance.strongswan import HaMessageType, decode, encode
from appliance.strongswan.ike_state import IkeEvent, IkeSaChanged
from appliance.strongswan.relay import HaRelay, RelayAddresses

pytestmark = pytest.mark.unit

RELAY, CHARON = IPv4Address("127.0.0.2"), IPv4Address("127.0.0.1")


def _free_port(address: IPv4Address) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((str(address), 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("relay", "charon", "match"),
    [
        ("192.0.2.1", "127.0.0.1", "relay address 192.0.2.1 is not a loopback address"),
        ("127.0.0.2", "198.51.100.7", "charon address 198.51.100.7 is not a loopback"),
        ("::1", "127.0.0.1", "not of the same address family"),
    ],
)
def test_addresses_must_be_loopback_and_of_one_family(relay: str, charon: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RelayAddresses(ip_address(relay), ip_address(charon))


def test_relay_and_charon_cannot_share_an_address_and_port() -> None:
    with pytest.raises(ConfigError, match="cannot both be ::1 port 4510"):
        RelayAddresses(IPv6Address("::1"), IPv6Address("::1"))
    RelayAddresses(IPv6Address("::1"), IPv6Address("::1"), port=4511)


async def _exchange(caplog: pytest.LogCaptureFixture) -> None:
    charon_port = _free_port(CHARON)
    addresses = RelayAddresses(RELAY, CHARON, _free_port(RELAY), charon_port)
    seen: list[IkeEvent] = []
    relay = HaRelay(addresses, seen.extend)
    await relay.start()
    charon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        charon.bind((str(CHARON), charon_port))
        charon.setblocking(False)
        stranger.bind(("127.0.0.3", 0))
        target = (str(RELAY), addresses.port)
        recorded = [r.data for r in datagrams()]
        initiate = [r.data for r in datagrams() if r.step == "initiate"]
        # Another local process is not charon: the connected socket never sees it.
        for data in initiate:
            stranger.sendto(data, target)
        for data in [*recorded[:10], b"\x03\xff", b"\x04\x01", *recorded[10:]]:
            charon.sendto(data, target)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while relay.received < len(recorded) + 2 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert relay.received == len(recorded) + 2
        assert relay.drops == {"HaMessageError": 1, "HaVersionError": 1}
        assert relay.book.sas == {}  # the run ends with the IKE SA deleted
        changed = [e for e in seen if isinstance(e, IkeSaChanged)]
        assert {e.state.spis for e in changed} and len(seen) > 10

        # The relay sends to charon, and only charon.
        status = next(m for m in map(decode, recorded) if m.type is HaMessageType.STATUS)
        relay.send([status])
        await asyncio.sleep(0.05)
        assert charon.recv(2048) == encode(status)
    finally:
        relay.close()
        charon.close()
        stranger.close()
    text = caplog.text
    assert "dropped a datagram of 2 bytes" in text and "version 4" in text


def test_the_relay_takes_charons_datagrams_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "appliance.strongswan.relay")
    asyncio.run(_exchange(caplog))


def test_a_taken_address_is_named() -> None:
    async def clash() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind((str(RELAY), 0))
            port = taken.getsockname()[1]
            relay = HaRelay(RelayAddresses(RELAY, CHARON, port), lambda events: None)
            with pytest.raises(OSError, match=f"cannot bind 127.0.0.2 port {port}"):
                await relay.start()

    asyncio.run(clash())


def test_send_before_start_is_a_bug() -> None:
    relay = HaRelay(RelayAddresses(RELAY, CHARON), lambda events: None)
    with pytest.raises(RuntimeError, match="not started"):
        relay.send([])
