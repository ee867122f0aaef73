"""The service's argument checks, and the order it acts in, with a scripted fake queue.

Its behaviour on a real queue is in test_ondemand_service_netns.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from ondemand_packets import esp4

from appliance.ondemand import OnDemandLimits, OnDemandService
from appliance.ondemand import service as service_module

pytestmark = pytest.mark.unit

VIP = "192.0.2.10"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"queue_num": 65536}, "ondemand.queue: 65536 is outside 0-65535"),
        ({"queue_num": 1, "workers": 0}, "ondemand.workers: 0 is not at least 1"),
    ],
)
def test_service_refuses_bad_arguments_before_touching_the_kernel(
    kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        OnDemandService(None, retrieve=lambda spi, daddr: True, **kwargs)  # type: ignore[arg-type]


@dataclass
class Packet:
    packet_id: int
    payload: bytes


class BusyQueue:
    """Stands in for NfQueue: while ``busy``, every read returns one more packet of SPI 0x900
    and stops short of dry (a queue that keeps filling); then reads find it dry.  Every
    read, verdict and hold is logged in order."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.busy = True
        self.next_id = 1
        self._r, self._w = socket.socketpair()
        self._w.send(b"x")  # readable until closed: the loop keeps reading
        self.drained = False
        self.overruns = 0

    def fileno(self) -> int:
        return self._r.fileno()

    def receive(self, timeout: float = 0.0, max_packets: int = 64) -> list[Packet]:
        if not self.busy:
            self.drained = True
            self.log.append(("read", None))
            return []
        time.sleep(0.001)
        self.drained = False
        packet = Packet(self.next_id, esp4(0x900))
        self.next_id += 1
        self.log.append(("read", packet.packet_id))
        return [packet]

    def verdicts(self, verdicts: Iterable[tuple[int, bool]]) -> None:
        self.log.append(("verdicts", list(verdicts)))

    def close(self) -> None:
        self._r.close()
        self._w.close()


@pytest.fixture
def busy_queue(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[tuple[str, Any]], Any]]:
    log: list[tuple[str, Any]] = []
    made: list[BusyQueue] = []

    def make(*args: object, **kwargs: object) -> BusyQueue:
        made.append(BusyQueue(log))
        return made[0]

    monkeypatch.setattr(service_module, "NfQueue", make)
    yield log, made


def wait(event: threading.Event) -> None:
    assert event.wait(5), "timed out"


def test_hold_waits_for_a_dry_read_after_the_verdicts(
    busy_queue: tuple[list[tuple[str, Any]], list[BusyQueue]],
) -> None:
    log, made = busy_queue
    release, held = threading.Event(), threading.Event()

    def retrieve(spi: int, daddr: str) -> bool:
        return release.wait(5)

    def on_retrieved(spi: int, daddr: str) -> None:
        log.append(("hold", (spi, daddr)))
        held.set()

    limits = OnDemandLimits(max_held_per_spi=100_000)
    service = OnDemandService(None, 3, retrieve, limits=limits, on_retrieved=on_retrieved)
    service.start()
    try:
        q = made[0]
        while service.counters().queued < 5:  # some packets held behind the retrieval
            time.sleep(0.01)
        release.set()
        while service.counters().accepted < 10:  # the result came, more were accepted
            time.sleep(0.01)
        # Packets keep coming and every read stops short of dry: no hold.
        assert not held.wait(0.3)
        q.busy = False
        wait(held)
        counters = service.counters()
    finally:
        service.stop()
    hold = log.index(("hold", (0x900, VIP)))
    read = [v for kind, v in log[:hold] if kind == "read" and v is not None]
    accepted = [pid for kind, v in log[:hold] if kind == "verdicts" for pid, ok in v if ok]
    # Every packet read before the hold was accepted before it, in the order read ...
    assert accepted == read
    # ... and the queue was read dry after the last of those verdicts.
    last = max(i for i, (kind, _) in enumerate(log[:hold]) if kind == "verdicts")
    assert ("read", None) in log[last - 1 : hold]
    assert [e for e in log if e[0] == "hold"] == [("hold", (0x900, VIP))]
    assert (counters.holds, counters.holds_forced, counters.retrievals) == (1, 0, 1)
