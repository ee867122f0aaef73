"""The service on the host kernel, with a fake retrieve function.

Packets are queued by a rule like the guard's trap (see tests/nfqueue/nfq_lab)
inside a fresh namespace and sent to its own addresses; what the service
accepts arrives at a raw ESP (or UDP) socket, what it drops does not.  The
fake retrieval blocks on an event the test sets, so "concurrent" is a fact
of the test, not of timing.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from appliance.errors import KernelError
from appliance.ondemand import OnDemandCounters, OnDemandLimits, OnDemandService
from tests.nfqueue.nfq_lab import ADDR4, ADDR6, namespace, open_socket, queue_rule

pytestmark = pytest.mark.netns

QUEUE = 777
GOOD, BAD, BROKEN, SLOW, MARKER = 0x1111, 0x2222, 0x3333, 0x4444, 0xFFFFFFFF
NOT_MARKER = "@th,0,32 != 0xffffffff"


@pytest.fixture
def netns(require_root: None) -> Iterator[str]:
    with namespace() as name:
        queue_rule(name, QUEUE, f"meta l4proto esp {NOT_MARKER}", "udp dport 4500")
        yield name


class FakeStore:
    """Counts calls; GOOD succeeds once ``gate`` is set, BAD fails, BROKEN raises."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[tuple[int, str]] = []
        self.lock = threading.Lock()

    def retrieve(self, spi: int, daddr: str) -> bool:
        with self.lock:
            self.calls.append((spi, daddr))
        if spi == BROKEN:
            raise RuntimeError("store unreachable")
        if spi in (GOOD, SLOW):
            self.gate.wait(10)
            return spi == GOOD
        return False


def wait_for(service: OnDemandService, done: Callable[[OnDemandCounters], bool]) -> None:
    for _ in range(200):
        if done(service.counters()):
            return
        assert service.error is None, service.error
        time.sleep(0.02)
    raise AssertionError(f"counters never got there: {service.counters()}")


def esp(spi: int, text: bytes = b"data") -> bytes:
    return struct.pack("!II", spi, 1) + text


def arrived_spis(rx: socket.socket, header: int) -> list[int]:
    """SPIs received up to the (never queued) marker packet."""
    rx.settimeout(2)
    spis = []
    while True:
        (spi,) = struct.unpack_from("!I", rx.recv(4096), header)
        if spi == MARKER:
            return spis
        spis.append(spi)


@pytest.mark.parametrize(("family", "addr"), [(socket.AF_INET, ADDR4), (socket.AF_INET6, ADDR6)])
def test_one_retrieval_per_spi_and_verdicts(netns: str, family: int, addr: str) -> None:
    store = FakeStore()
    rx = open_socket(netns, family, socket.SOCK_RAW, 50)
    tx = open_socket(netns, family, socket.SOCK_RAW, 50)
    with OnDemandService(netns, QUEUE, store.retrieve) as service:
        for _ in range(5):
            tx.sendto(esp(GOOD), (addr, 0))
            tx.sendto(esp(BAD), (addr, 0))
        tx.sendto(esp(BROKEN), (addr, 0))
        wait_for(service, lambda c: c.queued == 11 and c.dropped_unknown == 6)
        # BAD and BROKEN have failed; all five GOOD packets wait for one retrieval.
        assert not store.gate.is_set()
        assert service.counters().accepted == 0
        store.gate.set()
        wait_for(service, lambda c: c.accepted == 5)
        tx.sendto(esp(MARKER), (addr, 0))
        assert arrived_spis(rx, 20 if family == socket.AF_INET else 0) == [GOOD] * 5
        counters = service.counters()
    assert sorted(store.calls) == [(GOOD, addr), (BAD, addr), (BROKEN, addr)]
    assert counters.retrievals == 3
    assert counters.retrieval_failures == 2
    assert counters.dropped_unknown == 6


def test_timeout_drops_and_negative_cache_stops_asking(netns: str) -> None:
    store = FakeStore()
    rx = open_socket(netns, socket.AF_INET, socket.SOCK_RAW, 50)
    tx = open_socket(netns, socket.AF_INET, socket.SOCK_RAW, 50)
    limits = OnDemandLimits(timeout=0.2, negative_ttl=60.0)
    with OnDemandService(netns, QUEUE, store.retrieve, limits=limits) as service:
        tx.sendto(esp(SLOW), (ADDR4, 0))
        tx.sendto(esp(SLOW), (ADDR4, 0))
        wait_for(service, lambda c: c.dropped_timeout == 2)
        tx.sendto(esp(SLOW), (ADDR4, 0))
        wait_for(service, lambda c: c.dropped_unknown == 1)
        store.gate.set()
        wait_for(service, lambda c: c.late_results == 1)
        tx.sendto(esp(MARKER), (ADDR4, 0))
        assert arrived_spis(rx, 20) == []
    assert store.calls == [(SLOW, ADDR4)]


def test_rate_limit_drops_beyond_the_burst(netns: str) -> None:
    store = FakeStore()
    tx = open_socket(netns, socket.AF_INET, socket.SOCK_RAW, 50)
    limits = OnDemandLimits(rate=0.001, burst=3)
    with OnDemandService(netns, QUEUE, store.retrieve, limits=limits) as service:
        for spi in range(0x5000, 0x5008):
            tx.sendto(esp(spi), (ADDR4, 0))
        wait_for(service, lambda c: c.queued == 8 and c.dropped_unknown == 3)
        counters = service.counters()
    assert counters.retrievals == 3
    assert counters.dropped_rate_limited == 5
    assert len(store.calls) == 3


def test_ike_and_esp_in_udp_on_4500(netns: str) -> None:
    store = FakeStore()
    store.gate.set()
    rx = open_socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((ADDR4, 4500))
    tx = open_socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
    with OnDemandService(netns, QUEUE, store.retrieve) as service:
        tx.sendto(b"\0\0\0\0ike-message", (ADDR4, 4500))
        tx.sendto(esp(BAD), (ADDR4, 4500))
        tx.sendto(esp(GOOD), (ADDR4, 4500))
        wait_for(service, lambda c: c.accepted == 2 and c.dropped_unknown == 1)
        counters = service.counters()
        rx.settimeout(2)
        got = {rx.recv(100) for _ in range(2)}
        rx.settimeout(0.3)
        with pytest.raises(TimeoutError):
            rx.recv(100)  # BAD's packet was dropped
    assert got == {b"\0\0\0\0ike-message", esp(GOOD)}
    assert counters.not_esp == 1
    assert sorted(store.calls) == [(GOOD, ADDR4), (BAD, ADDR4)]


def test_start_fails_clearly_when_the_queue_is_taken(netns: str) -> None:
    store = FakeStore()
    with OnDemandService(netns, QUEUE, store.retrieve) as first:
        second = OnDemandService(netns, QUEUE, store.retrieve)
        with pytest.raises(KernelError, match=f"cannot bind NFQUEUE {QUEUE}"):
            second.start()
        second.stop()
        assert first.running
    assert not first.running


def test_on_retrieved_runs_after_the_held_packets_were_delivered(netns: str) -> None:
    store = FakeStore()
    rx = open_socket(netns, socket.AF_INET, socket.SOCK_RAW, 50)
    tx = open_socket(netns, socket.AF_INET, socket.SOCK_RAW, 50)
    seen: list[tuple[int, str, int]] = []
    done = threading.Event()

    def on_retrieved(spi: int, daddr: str) -> None:
        # The accept verdicts came first: the held packets already sit in rx's queue.
        waiting = 0
        while True:
            try:
                rx.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            waiting += 1
        seen.append((spi, daddr, waiting))
        done.set()

    with OnDemandService(netns, QUEUE, store.retrieve, on_retrieved=on_retrieved) as service:
        for _ in range(3):
            tx.sendto(esp(GOOD), (ADDR4, 0))
        tx.sendto(esp(BAD), (ADDR4, 0))
        wait_for(service, lambda c: c.queued == 4 and c.dropped_unknown == 1)
        store.gate.set()  # all three GOOD packets are held behind the one retrieval
        assert done.wait(10)
        # Once the queue was read dry, not by the fallback.
        wait_for(service, lambda c: c.holds == 1)
        assert service.counters().holds_forced == 0
    assert seen == [(GOOD, ADDR4, 3)]
