"""Benchmark: restoring N SA pairs with policies, ipsec-ha vs ``ip -batch``.

For each N (default 1,000 and 10,000) this builds N SA pairs (in + out) and
3N policies (in/out/fwd), as an ``ip -batch`` file, installs them once into
a source namespace and snapshots that with ipsec-ha (not timed). Then, in
the same run and into fresh namespaces, it times:

* ipsec-ha: ``read_snapshot_file`` + ``restore_netns`` (the library path
  ``ipsec-ha restore`` runs, from file to done), and the ``ipsec-ha restore``
  command as a whole (with Python start-up);
* iproute2: ``ip -n NS -batch FILE`` with the same content.

It prints both times and the ratio (target: ipsec-ha at most 1.5x iproute2),
then how long a bare Python start-up and a few imports take on the same
machine, the fixed part of the command's time.
It needs root and a kernel with ESP: run it in the lab VM::

    scripts/lab-vm --timeout 1800 -- .venv/bin/python bench/restore.py

Addresses are IPv6 from 2001:db8::/32; namespaces are named iha-<random>-*
and always removed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance.restore import restore_netns
from appliance.snapshot import read_snapshot_file, take_snapshot, write_snapshot_file

LOCAL = "2001:db8:ffff::1"


def batch_lines(pairs: int) -> list[str]:
    """``ip -batch`` lines for ``pairs`` SA pairs and their in/out/fwd policies."""
    lines = []
    for i in range(pairs):
        peer = f"2001:db8:fffe::{i >> 16:x}:{i & 0xFFFF:x}"
        mine, theirs = f"2001:db8:1:{i:x}::/64", f"2001:db8:2:{i:x}::/64"
        reqid = i + 1
        for src, dst, spi in ((LOCAL, peer, 0x100000 + 2 * i), (peer, LOCAL, 0x100001 + 2 * i)):
            key = "0x" + secrets.token_hex(20)
            lines.append(
                f"xfrm state add src {src} dst {dst} proto esp spi {spi:#x} reqid {reqid}"
                f" mode tunnel aead rfc4106(gcm(aes)) {key} 128 flag esn replay-window 128"
            )
        for direction, src_net, dst_net, tsrc, tdst in (
            ("out", mine, theirs, LOCAL, peer),
            ("in", theirs, mine, peer, LOCAL),
            ("fwd", theirs, mine, peer, LOCAL),
        ):
            lines.append(
                f"xfrm policy add src {src_net} dst {dst_net} dir {direction}"
                f" tmpl src {tsrc} dst {tdst} proto esp reqid {reqid} mode tunnel"
            )
    return lines


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def count(ns: str, what: str) -> int:
    listing = subprocess.run(
        ["ip", "-n", ns, "xfrm", what], check=True, capture_output=True, text=True
    ).stdout
    return sum(1 for line in listing.splitlines() if line.startswith("src "))


def bench(pairs: int, workdir: Path, prefix: str, made: list[str]) -> dict[str, float]:
    def netns(name: str) -> str:
        full = f"{prefix}{name}-{pairs}"
        sh("ip", "netns", "add", full)
        made.append(full)
        return full

    batch = workdir / f"batch-{pairs}.txt"
    batch.write_text("\n".join(batch_lines(pairs)) + "\n")
    os.chmod(batch, 0o600)
    source = netns("src")
    sh("ip", "-n", source, "-batch", str(batch))
    snap_file = workdir / f"snap-{pairs}.json"
    write_snapshot_file(snap_file, take_snapshot(source, "bench"))

    target_ip, target_lib, target_cli = netns("ip"), netns("lib"), netns("cli")
    start = time.perf_counter()
    sh("ip", "-n", target_ip, "-batch", str(batch))
    t_ip = time.perf_counter() - start

    start = time.perf_counter()
    report = restore_netns(read_snapshot_file(snap_file), target_lib)
    t_lib = time.perf_counter() - start
    assert not report.failures, report.failures

    start = time.perf_counter()
    sh(
        sys.executable,
        "-m",
        "appliance",
        "restore",
        str(snap_file),
        "--netns",
        target_cli,
        "--json",
    )
    t_cli = time.perf_counter() - start

    for ns in (target_ip, target_lib, target_cli):
        assert count(ns, "state") == 2 * pairs, ns
        assert count(ns, "policy") == 3 * pairs, ns
    return {"ip": t_ip, "lib": t_lib, "cli": t_cli}


def startup_times() -> dict[str, float]:
    """Wall times of a few bare Python start-ups, to show the fixed part of the cli figure."""
    probes = (
        ("python -c pass", ["-c", "pass"]),
        ("import typer, pydantic", ["-c", "import typer, pydantic"]),
        ("import pyroute2", ["-c", "import pyroute2"]),
        ("ipsec-ha version", ["-m", "appliance", "version"]),
    )
    times = {}
    for label, args in probes:
        start = time.perf_counter()
        sh(sys.executable, *args)
        times[label] = time.perf_counter() - start
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", nargs="*", type=int, default=[1000, 10000])
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/restore.py: run as root inside the lab VM (see --help)", file=sys.stderr)
        return 2
    prefix = f"iha-{secrets.token_hex(3)}-"
    made: list[str] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print(
                f"{'pairs':>7} {'SAs':>6} {'policies':>8} {'ip -batch':>10} "
                f"{'ipsec-ha lib':>12} {'ratio':>6} {'ipsec-ha cli':>12} {'ratio':>6}"
            )
            ip_times = {}
            for pairs in args.pairs:
                t = bench(pairs, Path(tmp), prefix, made)
                ip_times[pairs] = t["ip"]
                print(
                    f"{pairs:>7} {2 * pairs:>6} {3 * pairs:>8} {t['ip']:>9.3f}s "
                    f"{t['lib']:>11.3f}s {t['lib'] / t['ip']:>6.2f} "
                    f"{t['cli']:>11.3f}s {t['cli'] / t['ip']:>6.2f}",
                    flush=True,
                )
                for ns in [n for n in made if n.endswith(f"-{pairs}")]:
                    subprocess.run(["ip", "netns", "del", ns], check=False)
                    made.remove(ns)
            startup = startup_times()
            print(
                "start-up alone, for scale: "
                + "; ".join(f"{label} {seconds:.3f}s" for label, seconds in startup.items())
            )
            # The command's floor: no Python program starts faster than this.
            for pairs, ip_time in ip_times.items():
                print(
                    f"{pairs} pairs: 1.5x ip -batch is {1.5 * ip_time:.3f}s; a bare "
                    f"`python -c pass` takes {startup['python -c pass']:.3f}s of it",
                    flush=True,
                )
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
