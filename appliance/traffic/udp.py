"""The socket adapter: one UDP socket, a monotonic clock, the sans-IO probe core.

``run(spec)`` sends probes at a fixed rate (``send``; ``echo`` once it knows
its peer) and books every probe that arrives, until the duration and the
linger time are over or ``stop`` is set. The socket is opened inside
``spec.netns`` (``run_in_netns``) and stays bound to that namespace, so the
loop itself runs in the calling thread.

A failing ``sendto`` (e.g. EPERM while an XFRM block policy gates the
flow, or ENETUNREACH while routes move) is counted, not fatal: during a
failover that is exactly what the lab wants to see.
"""

from __future__ import annotations

import errno
import ipaddress
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.netns import run_in_netns
from appliance.traffic.analysis import RESULT_FORMAT
from appliance.traffic.probe import (
    HEADER_SIZE,
    RateSchedule,
    Receiver,
    TrafficError,
    encode_probe,
)

Endpoint = tuple[str, int]
Mode = Literal["send", "recv", "echo"]


def parse_endpoint(text: str, *, need_port: bool = True) -> Endpoint:
    """``ADDR:PORT`` or ``[V6ADDR]:PORT`` (``ADDR`` alone when ``need_port`` is False: port 0)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise TrafficError(f"{text!r} is not ADDR:PORT with an IP address")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise TrafficError(f"{text!r} is not ADDR:PORT with an IP address") from None
    if not port_text:
        if need_port:
            raise TrafficError(f"{text!r} has no port (ADDR:PORT, [V6ADDR]:PORT)")
        return address, 0
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise TrafficError(f"{text!r}: port must be 1..65535")
    return address, int(port_text)


@dataclass
class RunSpec:
    """What one traffic process does."""

    mode: Mode
    bind: Endpoint
    duration_s: float
    peer: Endpoint | None = None
    """Where to send (``send``); ``echo`` learns it from the first probe of another flow."""
    rate: float = 0.0
    """Probes per second to send (0: receive only)."""
    flow: int = 1
    size: int = HEADER_SIZE
    linger_s: float = 0.5
    """Keep receiving this long after the last probe is sent."""
    netns: str | None = None

    def __post_init__(self) -> None:
        if self.duration_s <= 0:
            raise TrafficError(f"duration must be positive, not {self.duration_s}")
        if self.linger_s < 0:
            raise TrafficError(f"linger must not be negative, not {self.linger_s}")
        if self.mode == "send" and (self.peer is None or self.rate <= 0):
            raise TrafficError("send needs a destination and a positive rate")
        if not 0 <= self.flow <= 0xFFFF_FFFF:
            raise TrafficError(f"flow id must be 0..4294967295, not {self.flow}")


@dataclass
class RunResult:
    """What happened, JSON-ready through ``to_dict``."""

    spec: RunSpec
    start_ns: int
    end_ns: int = 0
    sent: int = 0
    send_errors: dict[str, int] = field(default_factory=dict)
    peer: Endpoint | None = None
    receiver: Receiver = field(default_factory=Receiver)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RESULT_FORMAT,
            "mode": self.spec.mode,
            "netns": self.spec.netns,
            "bind": f"{self.spec.bind[0]}:{self.spec.bind[1]}",
            "peer": f"{self.peer[0]}:{self.peer[1]}" if self.peer else None,
            "clock": "CLOCK_MONOTONIC",
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "sent": {
                "flow": self.spec.flow,
                "count": self.sent,
                "rate": self.spec.rate,
                "errors": dict(self.send_errors),
            }
            if self.sent
            else None,
            "malformed": self.receiver.malformed,
            "received": [
                {
                    "flow": flow.flow,
                    "stats": flow.stats(),
                    "arrivals": [list(a) for a in flow.arrivals],
                }
                for flow in sorted(self.receiver.flows.values(), key=lambda f: f.flow)
            ],
        }


def open_socket(bind: Endpoint, netns: str | None) -> socket.socket:
    """A non-blocking UDP socket bound to ``bind`` inside ``netns``."""
    family = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET

    def work() -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind(bind)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise TrafficError(f"cannot bind UDP {bind[0]}:{bind[1]}: {exc.strerror}") from None
        return sock

    return run_in_netns(netns, work)


def run(
    spec: RunSpec,
    stop: threading.Event | None = None,
    clock: Callable[[], int] = time.monotonic_ns,
    ready: Callable[[Endpoint], None] | None = None,
) -> RunResult:
    """Run one traffic process; ``ready`` gets the bound address once the socket is open."""
    stop = stop or threading.Event()
    sock = open_socket(spec.bind, spec.netns)
    try:
        bound = sock.getsockname()[:2]
        if ready is not None:
            ready((bound[0], bound[1]))
        return _loop(sock, spec, stop, clock)
    finally:
        sock.close()


def _loop(
    sock: socket.socket, spec: RunSpec, stop: threading.Event, clock: Callable[[], int]
) -> RunResult:
    start = clock()
    duration_ns = int(spec.duration_s * 1e9)
    result = RunResult(spec=spec, start_ns=start, peer=spec.peer)
    schedule = RateSchedule(spec.rate, start, duration_ns) if spec.mode == "send" else None
    end = start + duration_ns + int(spec.linger_s * 1e9)
    while not stop.is_set():
        now = clock()
        if now >= end and (schedule is None or schedule.done):
            break
        if schedule is not None and result.peer is not None:
            for _ in range(schedule.due(now)):
                _send_one(sock, result, schedule, spec, clock)
        wake = end
        if schedule is not None and result.peer is not None:
            due = schedule.next_due_ns()
            if due is not None:
                wake = min(wake, due)
        timeout = max(0, min(wake - clock(), 100_000_000)) / 1e9
        readable, _, _ = select.select([sock], [], [], timeout)
        if readable:
            _drain(sock, result, spec, clock)
            if spec.mode == "echo" and schedule is None and result.peer is not None:
                # The reverse stream runs for what is left of the duration.
                remaining = start + duration_ns - clock()
                if spec.rate > 0 and remaining > 0:
                    schedule = RateSchedule(spec.rate, clock(), remaining)
    result.end_ns = clock()
    return result


def _send_one(
    sock: socket.socket,
    result: RunResult,
    schedule: RateSchedule,
    spec: RunSpec,
    clock: Callable[[], int],
) -> None:
    assert result.peer is not None
    data = encode_probe(spec.flow, schedule.sent, clock(), spec.size)
    try:
        sock.sendto(data, result.peer)
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        result.send_errors[name] = result.send_errors.get(name, 0) + 1
    # A probe that could not leave is still a used sequence number: the receiver counts it lost.
    schedule.mark_sent(1)
    result.sent = schedule.sent


def _drain(sock: socket.socket, result: RunResult, spec: RunSpec, clock: Callable[[], int]) -> None:
    while True:
        try:
            data, address = sock.recvfrom(65535)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # ICMP errors (ECONNREFUSED) surface on the next recv of a UDP socket; ignore them.
            continue
        probe = result.receiver.receive(data, clock())
        if (
            spec.mode == "echo"
            and result.peer is None
            and probe is not None
            and probe.flow != spec.flow
        ):
            result.peer = (address[0], address[1])
