#!/usr/bin/env python3
"""Benchmark the SA store over loopback UDP: the real server, channel and backend.

    .venv/bin/python bench/store.py                      # both backends, 10,000 SAs
    .venv/bin/python bench/store.py --backend sqlite --count 10000 --max-datagram 65000

For each backend it starts ``ipsec-ha store serve`` (and, for etcd, a
single etcd member) on 127.0.0.1 with free ports in a temp dir, then
measures, from one client:

* SA_Stor rate for COUNT SAs, each with its policy: on the wire (payloads
  encoded beforehand) and end to end from model objects (the client converts
  each SadEntry/SpdEntry to its payload first);
* SA_Retr by SPI: latency p50 / p99 over LOOKUPS sequential requests;
* bulk SA_Retr by server ID: time to retrieve all COUNT SAs and their
  policies, and separately the time to convert them to model objects.

``--mode readers`` (SQLite only) measures instead what a lookup costs while
others write: SA_Retr by SPI p50 / p99 through the real server with 0, 1, 4
and 16 writer clients (separate processes at nice 19, as if on other hosts,
each storing its own SAs in bulk without pause), each lookup followed by the
floor, an in-process read of the same row through ``SqliteStore.get_by_spi``
(no sockets, no channel), and the ratio p99 (16 writers) / p50 (no writer).
LOOKUPS per row, and at most ``--row-seconds`` per row.

    .venv/bin/python bench/store.py --mode readers --lookups 500

It prints; it asserts nothing.  Everything it starts is stopped at exit.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "store"))

from entries_factory import make_state  # noqa: E402
from etcd_process import start_single  # noqa: E402
from store_process import StoreProcess, wait_ready, write_config, write_psk  # noqa: E402

from appliance.store import _convert as conv  # noqa: E402
from appliance.store.client import PolicyIndex, StoreClient  # noqa: E402
from appliance.store.config import load_client_config, load_psk  # noqa: E402
from appliance.store.sqlite import SqliteStore  # noqa: E402
from appliance.wire.constants import ExchangeType  # noqa: E402

#: Writer clients per row of the readers table (0: the reading client alone).
WRITER_COUNTS = (0, 1, 4, 16)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_backend(backend: str, count: int, lookups: int, max_datagram: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="iha-bench-") as tmp_name:
        tmp = Path(tmp_name)
        etcd = start_single(tmp) if backend == "etcd" else None
        psk = tmp / "cluster.psk"
        write_psk(psk)
        config = write_config(
            tmp / "store.toml",
            psk,
            "127.0.0.1",
            free_udp_port(),
            backend,
            db_path=tmp / "store.db",
            etcd_endpoints=[etcd.endpoint] if etcd else None,
            server_max_datagram=max_datagram,
        )
        server = StoreProcess(config, None, tmp / "server.log")
        server.start()
        try:
            client = StoreClient.from_config(
                load_client_config(config), max_datagram=max_datagram, timeout=2.0
            )
            wait_ready(client, server)
            return measure(client, count, lookups)
        finally:
            server.kill()
            if etcd is not None:
                etcd.stop()


def measure(client: StoreClient, count: int, lookups: int) -> dict[str, Any]:
    result: dict[str, Any] = {"count": count, "max_datagram": client.max_datagram}
    # Wire-level SA_Stor: payloads encoded beforehand, one server ID.
    sad, spd = make_state(count, spi_base=0x10000000)
    index = PolicyIndex(spd)
    groups = [
        [conv.sad_to_payload(s), *(conv.spd_to_payload(p) for p in index.policies_for(s))]
        for s in sad
    ]
    messages = client._pack("bench-wire", 1, groups)
    start = time.perf_counter()
    client.exchange([(ExchangeType.SA_STOR, m) for m in messages])
    elapsed = time.perf_counter() - start
    result["stor_wire"] = {"seconds": elapsed, "sas_per_second": count / elapsed,
                           "messages": len(messages)}  # fmt: skip

    # End to end from model objects, another server ID (its own SPIs).
    sad2, spd2 = make_state(count, spi_base=0x20000000)
    start = time.perf_counter()
    client.put_entries("bench-model", 1, sad2, spd2)
    elapsed = time.perf_counter() - start
    result["stor_from_model"] = {"seconds": elapsed, "sas_per_second": count / elapsed}

    # SA_Retr by SPI.
    rng = random.Random(7)
    latencies = []
    for _ in range(lookups):
        sa = sad[rng.randrange(count)]
        start = time.perf_counter()
        answer = client.get_spi(sa.spi, str(sa.daddr))
        latencies.append(time.perf_counter() - start)
        assert answer.sad.spi == sa.spi
    latencies.sort()
    result["retr_by_spi_ms"] = {
        "p50": statistics.median(latencies) * 1e3,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1e3,
        "lookups": lookups,
    }

    # Bulk SA_Retr by server ID.
    start = time.perf_counter()
    state = client.get_server("bench-wire")
    elapsed = time.perf_counter() - start
    assert len(state.sad_entries) == count
    start = time.perf_counter()
    converted = len(state.sad) + len(state.spd)
    convert = time.perf_counter() - start
    result["retr_bulk"] = {"seconds": elapsed, "pages": state.pages,
                           "entries": converted, "model_conversion_seconds": convert}  # fmt: skip
    result["retransmissions"] = client.retransmissions
    return result


def render(backend: str, r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"{backend}: {r['count']} SAs (+1 policy each), max datagram {r['max_datagram']} bytes",
            f"  SA_Stor on the wire     {r['stor_wire']['sas_per_second']:9.0f} SAs/s "
            f"({r['stor_wire']['seconds']:.2f} s, {r['stor_wire']['messages']} messages)",
            f"  SA_Stor from the model  {r['stor_from_model']['sas_per_second']:9.0f} SAs/s "
            f"({r['stor_from_model']['seconds']:.2f} s)",
            f"  SA_Retr by SPI          p50 {r['retr_by_spi_ms']['p50']:.2f} ms, "
            f"p99 {r['retr_by_spi_ms']['p99']:.2f} ms ({r['retr_by_spi_ms']['lookups']} lookups)",
            f"  SA_Retr bulk            {r['retr_bulk']['seconds']:.3f} s for {r['count']} SAs "
            f"({r['retr_bulk']['pages']} pages); to model objects "
            f"+{r['retr_bulk']['model_conversion_seconds']:.2f} s",
            f"  retransmissions         {r['retransmissions']}",
        ]
    )


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": statistics.median(ordered) * 1e3,
        "p99": ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1e3,
    }


def _writer(
    config: str, index: int, sas: int, datagram: int, ready: Any, stop: Any, stored: Any
) -> None:
    """One writer client (its own process, node ID, server ID and SPIs): bulk SA_Stor until stop."""
    # Load generators yield the CPU: on a real network they run on other hosts.
    os.nice(19)
    cfg = load_client_config(Path(config))
    client = StoreClient(
        cfg.server,
        cfg.port,
        load_psk(cfg.psk_file),
        f"bench-w{index}",
        timeout=2.0,
        max_datagram=datagram,
    )
    sad, spd = make_state(sas, spi_base=0x40000000 + index * 0x100000)
    policy_index = PolicyIndex(spd)
    groups = [
        [conv.sad_to_payload(s), *(conv.spd_to_payload(p) for p in policy_index.policies_for(s))]
        for s in sad
    ]
    messages = client._pack(f"bench-w{index}", 1, groups)
    client.connect()
    ready.release()
    while not stop.is_set():
        client.exchange([(ExchangeType.SA_STOR, m) for m in messages])
        with stored.get_lock():
            stored.value += sas
    client.close()


def run_readers(
    count: int, lookups: int, writer_sas: int, writer_datagram: int, row_seconds: float
) -> dict[str, Any]:
    """Get-by-SPI latency through the server with 0, 1, 4, 16 writers, next to the floor."""
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="iha-bench-") as tmp_name:
        tmp = Path(tmp_name)
        psk = tmp / "cluster.psk"
        write_psk(psk)
        db = tmp / "store.db"
        config = write_config(
            tmp / "store.toml", psk, "127.0.0.1", free_udp_port(), "sqlite", db_path=db
        )
        server = StoreProcess(config, None, tmp / "server.log")
        server.start()
        store: SqliteStore | None = None
        try:
            client = StoreClient.from_config(load_client_config(config), timeout=2.0)
            wait_ready(client, server)
            sad, spd = make_state(count, spi_base=0x10000000)
            client.put_entries("bench-read", 1, sad, spd)
            store = SqliteStore(db)  # the floor: the same backend call, in this process
            rows = []
            rng = random.Random(7)
            for writers in WRITER_COUNTS:
                ready = ctx.Semaphore(0)
                stop = ctx.Event()
                stored = ctx.Value("q", 0)
                procs = [
                    ctx.Process(
                        target=_writer,
                        args=(str(config), i, writer_sas, writer_datagram, ready, stop, stored),
                        daemon=True,
                    )
                    for i in range(writers)
                ]
                for p in procs:
                    p.start()
                for _ in procs:
                    if not ready.acquire(timeout=60):
                        raise RuntimeError("a writer client did not connect")
                retrans = client.retransmissions
                udp: list[float] = []
                floor: list[float] = []
                start = time.perf_counter()
                deadline = start + row_seconds
                while len(udp) < lookups and time.perf_counter() < deadline:
                    sa = sad[rng.randrange(count)]
                    t0 = time.perf_counter()
                    answer = client.get_spi(sa.spi, str(sa.daddr))
                    t1 = time.perf_counter()
                    found = store.get_by_spi(conv.sa_key_of(sa))
                    t2 = time.perf_counter()
                    assert answer.sad.spi == sa.spi and found is not None
                    udp.append(t1 - t0)
                    floor.append(t2 - t1)
                elapsed = time.perf_counter() - start
                stop.set()
                for p in procs:
                    p.join(30)
                    if p.is_alive():
                        p.kill()
                rows.append(
                    {
                        "writers": writers,
                        "lookups": len(udp),
                        "udp_ms": _percentiles(udp),
                        "floor_ms": _percentiles(floor),
                        "retransmissions": client.retransmissions - retrans,
                        "writer_sas_per_second": stored.value / elapsed,
                    }
                )
            client.close()
        finally:
            if store is not None:
                store.close()
            server.kill()
    by = {r["writers"]: r for r in rows}
    return {
        "count": count,
        "writer_sas": writer_sas,
        "writer_datagram": writer_datagram,
        "rows": rows,
        "ratio_p99_16_over_p50_alone": by[16]["udp_ms"]["p99"] / by[0]["udp_ms"]["p50"],
    }


def render_readers(r: dict[str, Any]) -> str:
    lines = [
        f"sqlite: get-by-SPI among {r['count']} SAs while N writer clients store "
        f"{r['writer_sas']} SAs each in bulk ({r['writer_datagram']}-byte datagrams)",
        "  writers  lookups   UDP p50   UDP p99  floor p50  floor p99  retrans  writes SAs/s",
    ]
    for row in r["rows"]:
        u, f = row["udp_ms"], row["floor_ms"]
        lines.append(
            f"  {row['writers']:7d}  {row['lookups']:7d}  {u['p50']:6.2f} ms {u['p99']:6.2f} ms"
            f"  {f['p50']:6.3f} ms  {f['p99']:6.3f} ms  {row['retransmissions']:7d}"
            f"  {row['writer_sas_per_second']:12.0f}"
        )
    lines.append(f"  p99 with 16 writers / p50 with none: {r['ratio_p99_16_over_p50_alone']:.1f}x")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "etcd", "both"), default="both")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--max-datagram", type=int, default=65000)
    parser.add_argument("--json", action="store_true", help="Print JSON.")
    parser.add_argument("--mode", choices=("throughput", "readers"), default="throughput")
    parser.add_argument("--writer-sas", type=int, default=200, help="SAs per writer (readers)")
    parser.add_argument(
        "--writer-datagram", type=int, default=1400, help="writers' max datagram (readers)"
    )
    parser.add_argument("--row-seconds", type=float, default=60.0, help="bound per row (readers)")
    args = parser.parse_args()
    if args.mode == "readers":
        r = run_readers(
            args.count, args.lookups, args.writer_sas, args.writer_datagram, args.row_seconds
        )
        print(json.dumps(r, indent=2) if args.json else render_readers(r))
        print(f"(load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
        return 0
    backends = ("sqlite", "etcd") if args.backend == "both" else (args.backend,)
    results = {}
    for backend in backends:
        results[backend] = run_backend(backend, args.count, args.lookups, args.max_datagram)
        if not args.json:
            print(render(backend, results[backend]), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    print(f"(load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
