"""The relay against a real charon's ``ha`` plugin (root, a kernel with ESP: the lab VM).

Two charons in two namespaces (``charon_lab``); in the gateway's namespace the
relay takes the plugin's ``remote`` address 127.0.0.2 on an asyncio loop of its
own thread.  The client sets up an IKE SA with two CHILD SAs, rekeys it and
terminates it, and after each step the relay's book must agree with what the
gateway's charon and kernel hold.  ``IPSEC_HA_CHARON_LAB_LOGS=DIR`` keeps
charon's logs and configurations there.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import TypeVar

import pytest

from appliance.netns import run_in_netns
from appliance.strongswan.ha_message import HaAttributeType, HaMessage, HaNumber
from appliance.strongswan.ike_record import decode_record, encode_record
from appliance.strongswan.ike_state import (
    IkeBook,
    IkeEvent,
    IkeSaState,
    IkeSpis,
    format_spis,
    kernel_spi,
)
from appliance.strongswan.relay import HaRelay, RelayAddresses
from tests.strongswan.charon_lab import (
    GW_ADDR,
    HA_LOCAL,
    HA_REMOTE,
    HEARTBEAT_WAIT_S,
    CharonLab,
    charon_lab,
    run,
)

pytestmark = pytest.mark.lab

T = TypeVar("T")
WAIT_S = 30.0
"""How long a step may take to reach the book (and swanctl): TCG is slow."""


@dataclass
class TracingBook(IkeBook):
    """An :class:`IkeBook` that writes down every message it is handed, for the failures."""

    trail: list[str] = field(default_factory=list)

    def handle(self, message: HaMessage) -> list[IkeEvent]:
        ike = message.ike_sa_id
        spis = "" if ike is None else f" {ike.initiator_spi:016x}_i"
        self.trail.append(f"{message.type.name}{spis}")
        return super().handle(message)


class RelayThread:
    """The relay, on an asyncio loop in a thread inside ``netns``."""

    def __init__(self, netns: str) -> None:
        self.book = TracingBook()
        self.events: list[IkeEvent] = []
        addresses = RelayAddresses(relay=IPv4Address(HA_REMOTE), charon=IPv4Address(HA_LOCAL))
        self.relay = HaRelay(addresses, on_events=self.events.extend, book=self.book)
        self.loop = asyncio.new_event_loop()
        self._started: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._main, args=(netns,), name="ha-relay", daemon=True
        )
        self._thread.start()
        try:
            self._started.result(timeout=WAIT_S)
        except BaseException:
            self.close()
            raise

    def _main(self, netns: str) -> None:
        try:
            run_in_netns(netns, self._serve)
        except BaseException as exc:
            if not self._started.done():
                self._started.set_exception(exc)
        finally:
            self.loop.close()

    def _serve(self) -> None:
        try:
            self.loop.run_until_complete(self.relay.start())
        except BaseException as exc:
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        try:
            self.loop.run_forever()
        finally:
            self.relay.close()
            self.loop.run_until_complete(asyncio.sleep(0))  # the transport's closing

    def call(self, work: Callable[[], T]) -> T:
        """``work()`` run on the relay's loop, between two datagrams."""

        async def job() -> T:
            return work()

        return asyncio.run_coroutine_threadsafe(job(), self.loop).result(timeout=WAIT_S)

    def sas(self) -> dict[IkeSpis, IkeSaState]:
        return self.call(lambda: dict(self.book.sas))

    def wait(self, what: str, done: Callable[[dict[IkeSpis, IkeSaState]], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not done(self.sas()):
            if time.monotonic() > deadline:
                trail = self.call(lambda: list(self.book.trail))
                pytest.fail(f"the book did not come to hold {what}; it was handed {trail}")
            time.sleep(0.2)

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=WAIT_S)


@pytest.fixture
def lab(require_root: None) -> Iterator[CharonLab]:
    with charon_lab(logs=os.environ.get("IPSEC_HA_CHARON_LAB_LOGS")) as lab:
        lab.build()
        yield lab


@pytest.fixture
def relay(lab: CharonLab) -> Iterator[RelayThread]:
    relay = RelayThread(lab.gw_ns)
    try:
        yield relay
    finally:
        relay.close()


_IKE_SA = re.compile(r"^\S+: #\d+, \w+, IKEv2, ([0-9a-f]{16})_i\*? ([0-9a-f]{16})_r", re.M)
_XFRM_SA = re.compile(r"^src (\S+) dst (\S+)\n\s+proto esp spi 0x([0-9a-f]+)", re.M)


def gateway_ike_sas(lab: CharonLab) -> list[IkeSpis]:
    """The IKE SAs ``swanctl --list-sas`` shows on the gateway."""
    text = lab.swanctl(lab.gw_ns, "--list-sas")
    return [(int(i, 16), int(r, 16)) for i, r in _IKE_SA.findall(text)]


def gateway_esp_spis(lab: CharonLab) -> tuple[set[int], set[int]]:
    """The SPIs of the gateway kernel's ESP SAs: (inbound, outbound)."""
    inbound: set[int] = set()
    outbound: set[int] = set()
    for _src, dst, spi in _XFRM_SA.findall(run(["ip", "-n", lab.gw_ns, "xfrm", "state"])):
        (inbound if dst == GW_ADDR else outbound).add(int(spi, 16))
    return inbound, outbound


def book_esp_spis(state: IkeSaState) -> tuple[set[int], set[int]]:
    """The kernel SPIs of the book's CHILD SAs: (inbound, outbound)."""
    spis: tuple[set[int], set[int]] = (set(), set())
    for child in state.all_children:
        for found, attr in zip(
            spis, (HaAttributeType.INBOUND_SPI, HaAttributeType.OUTBOUND_SPI), strict=True
        ):
            number = child.add.get(attr)
            assert isinstance(number, HaNumber), f"a CHILD_ADD without {attr.name}"
            found.add(kernel_spi(number))
    return spis


def wait_gateway_ike_sas(lab: CharonLab, count: int) -> list[IkeSpis]:
    deadline = time.monotonic() + WAIT_S
    while len(found := gateway_ike_sas(lab)) != count:
        assert time.monotonic() < deadline, f"the gateway holds IKE SAs {found}, not {count}"
        time.sleep(0.5)
    return found


def only(sas: dict[IkeSpis, IkeSaState]) -> IkeSaState | None:
    return next(iter(sas.values())) if len(sas) == 1 else None


def check_against_gateway(lab: CharonLab, state: IkeSaState) -> None:
    """The book's IKE SA and CHILD SAs are the gateway's, and its record reads back."""
    (gateway,) = wait_gateway_ike_sas(lab, 1)
    assert format_spis(state.spis) == format_spis(gateway)
    assert len(state.all_children) == 2
    inbound, outbound = book_esp_spis(state)
    assert (inbound, outbound) == gateway_esp_spis(lab)
    assert len(inbound) == len(outbound) == 2
    assert decode_record(encode_record(state)) == state


# Extended since 2026-12-07, for the lab tier's time: the default set has the same relay
# inside the daemon against a real charon through the same steps (test_ike_daemon_lab.py),
# and the book of a real charon's IKE SA with two CHILD SAs (test_safety_net_lab.py).
@pytest.mark.extended
def test_relay_books_the_ike_sa_a_real_charon_syncs(lab: CharonLab, relay: RelayThread) -> None:
    gw_ns, cl_ns = lab.gw_ns, lab.cl_ns
    started = time.monotonic()
    lab.start_charon(gw_ns)  # the relay already listens on the plugin's remote address
    lab.start_charon(cl_ns)
    lab.load()
    time.sleep(max(0.0, started + HEARTBEAT_WAIT_S - time.monotonic()))

    lab.swanctl(cl_ns, "--initiate", "--child", "net")
    lab.swanctl(cl_ns, "--initiate", "--child", "net2")

    def settled(sas: dict[IkeSpis, IkeSaState]) -> bool:
        state = only(sas)
        return state is not None and state.update is not None and len(state.all_children) == 2

    relay.wait("one IKE SA with two CHILD SAs", settled)
    first = only(relay.sas())
    assert first is not None
    check_against_gateway(lab, first)

    lab.swanctl(cl_ns, "--rekey", "--ike", "gw")

    def rekeyed(sas: dict[IkeSpis, IkeSaState]) -> bool:
        return settled(sas) and first.spis not in sas

    relay.wait("the rekeyed IKE SA alone, with both CHILD SAs", rekeyed)
    second = only(relay.sas())
    assert second is not None
    check_against_gateway(lab, second)
    assert {c.inbound_spi for c in second.all_children} == {
        c.inbound_spi for c in first.all_children
    }

    lab.swanctl(cl_ns, "--terminate", "--ike", "gw")
    relay.wait("no IKE SA", lambda sas: not sas)
    assert wait_gateway_ike_sas(lab, 0) == []

    drops, ignored, trail = relay.call(
        lambda: (Counter(relay.relay.drops), Counter(relay.book.ignored), list(relay.book.trail))
    )
    print(f"messages: {[m for m in trail if m != 'STATUS']}")
    print(f"ignored: {dict(ignored)}; socket errors: {relay.relay.socket_errors}")
    assert drops == Counter()
