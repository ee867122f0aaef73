"""How many queued packets per second the on-demand path handles (a measurement, not a test).

    .venv/bin/python bench/ondemand_loop.py            # no root: codec + core
    sudo .venv/bin/python bench/ondemand_loop.py --netns   # also the real queue

``micro``: decode a queued-packet message, let the core decide (the positive
cache: the state right after a retrieval), encode the verdict; no socket.
It runs twice: with the codec, then with the oracle the unit tests hold the
codec to (``tests/nfqueue/nfqueue_oracle.py``, pyroute2 declarations) as
the reference, and prints the ratio.
``netns``: the service on a real NFQUEUE in a fresh namespace, a retrieval
that succeeds at once, ESP of one SPI sent as fast as a raw socket goes;
packets accepted per second of the service's wall time.  Numbers vary with
the machine; nothing here asserts them.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "ondemand"))

from ondemand_packets import esp4  # noqa: E402

from appliance.nfqueue import codec  # noqa: E402
from appliance.ondemand import OnDemandCore, OnDemandLimits, Verdict  # noqa: E402


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes(-length % 4)


def queued_message(packet_id: int, packet: bytes, queue_num: int = 3) -> bytes:
    """An NFQNL_MSG_PACKET as the kernel sends it (hdr, indev, hwaddr, skb info, payload)."""
    body = (
        _nla(1, struct.pack("!IHB", packet_id, 0x0800, 1))
        + _nla(5, struct.pack("!I", 2))
        + _nla(9, struct.pack("!H2x6s2x", 6, b"\x02\0\0\0\0\1"))
        + _nla(14, struct.pack("!I", 0))
        + _nla(10, packet)
    )
    payload = struct.pack("!BBH", 2, 0, queue_num) + body
    return struct.pack("=IHHII", 16 + len(payload), 0x0300, 0, 0, 0) + payload


def micro(count: int, reference: bool = False) -> float:
    """Packets/s through decode, core and verdict encoding.

    ``reference``: decode and encode through the oracle's pyroute2
    declarations instead of the codec's precompiled structs.
    """
    from tests.nfqueue import nfqueue_oracle as oracle

    def reference_packet(data: bytes) -> codec.QueuedPacket:
        msg = oracle.nfqnl_packet_msg(data)
        msg.decode()
        return codec.QueuedPacket(**oracle.read_packet(msg))

    core = OnDemandCore(OnDemandLimits(), now=0.0)
    core.handle_packet(1, esp4(0x1234), 0.0)
    core.handle_result(1, True, 0.0)  # from now on: the positive cache
    messages = [queued_message(i, esp4(0x1234)) for i in range(2, count + 2)]
    verdict_kind = 1  # NFQNL_MSG_VERDICT
    start = time.perf_counter()
    for data in messages:
        events = [reference_packet(data)] if reference else codec.decode(data)
        for event in events:
            assert isinstance(event, codec.QueuedPacket)
            for action in core.handle_packet(event.packet_id, event.payload, 1.0):
                assert isinstance(action, Verdict)
                if reference:
                    oracle.write_verdict(verdict_kind, 3, action.packet_id, action.accept, 1)
                else:
                    codec.encode_verdict(3, action.packet_id, action.accept, 1)
    return count / (time.perf_counter() - start)


def netns(count: int) -> tuple[float, dict[str, int]]:
    from appliance.ondemand import OnDemandService
    from tests.nfqueue.nfq_lab import ADDR4, namespace, open_socket, queue_rule

    with namespace() as name:
        queue_rule(name, 9, "meta l4proto esp")
        tx = open_socket(name, socket.AF_INET, socket.SOCK_RAW, 50)
        with OnDemandService(name, 9, lambda spi, daddr: True) as service:
            data = struct.pack("!II", 0x1234, 1) + bytes(32)
            tx.sendto(data, (ADDR4, 0))
            while service.counters().accepted < 1:
                time.sleep(0.01)
            start = time.perf_counter()
            sent = 0
            for _ in range(count):
                try:
                    tx.sendto(data, (ADDR4, 0))
                    sent += 1
                except OSError:
                    pass
            # The kernel drops what does not fit in its queue (1024): count what was decided.
            last, idle = -1, 0
            while idle < 20:
                done = service.counters()
                n = done.accepted + done.dropped_unknown
                if n == last:
                    idle += 1
                else:
                    last, idle, end = n, 0, time.perf_counter()
                time.sleep(0.01)
            counters = service.counters().as_dict()
        tx.close()
    return (counters["accepted"] - 1) / (end - start), counters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--netns", action="store_true", help="also the real queue (root)")
    args = parser.parse_args()
    ours, reference = micro(args.count), micro(args.count, reference=True)
    print(
        f"micro (decode + core + encode): {ours:,.0f} packets/s; through the oracle "
        f"(reference, same run): {reference:,.0f}; ratio {ours / reference:.1f}x"
    )
    if args.netns:
        rate, counters = netns(args.count)
        print(f"netns (service on a real queue): {rate:,.0f} packets/s accepted; "
              f"queued {counters['queued']}, accepted {counters['accepted']}")  # fmt: skip


if __name__ == "__main__":
    main()
