"""Restore throughput: install_batch vs ``ip -batch`` for N SA pairs with policies.

Not a test (no timing assertions); run as root on a kernel with ESP:

    scripts/lab-vm --timeout 1800 -- .venv/bin/python tests/xfrm/bench_restore.py 10000

Each SA pair is an outbound and an inbound ESP tunnel SA (AES-GCM); each
pair gets an out, in and fwd policy.  Both runs start from an empty
namespace; the install_batch time includes building the model entries.
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance.model import AeadAlgorithm, KeyMaterial, SadEntry, Selector, SpdEntry, Template
from appliance.xfrm import XfrmSocket

LOCAL = ipaddress.ip_address("192.0.2.1")
PEER = ipaddress.ip_address("192.0.2.2")
KEY = bytes(range(20))


def subnet(n: int) -> tuple[str, str]:
    """A /32 on each side per pair, from 198.18.0.0/15 (local) and 198.19 (remote)."""
    return f"198.18.{n // 256}.{n % 256}", f"198.19.{n // 256}.{n % 256}"


def ip_commands(pairs: int) -> list[str]:
    out = []
    key = "0x" + KEY.hex()
    for n in range(pairs):
        left, right = subnet(n)
        for src, dst, spi in ((LOCAL, PEER, 0x10000 + n), (PEER, LOCAL, 0x20000 + n)):
            out.append(
                f"xfrm state add src {src} dst {dst} proto esp spi {spi} reqid {n + 1} mode tunnel "
                f"aead rfc4106(gcm(aes)) {key} 128 replay-window 32"
            )
        tmpl = f"proto esp reqid {n + 1} mode tunnel"
        for a, b, direction, t_src, t_dst in (
            (left, right, "out", LOCAL, PEER),
            (right, left, "in", PEER, LOCAL),
            (right, left, "fwd", PEER, LOCAL),
        ):
            out.append(
                f"xfrm policy add src {a}/32 dst {b}/32 dir {direction} "
                f"tmpl src {t_src} dst {t_dst} {tmpl}"
            )
    return out


def model_operations(pairs: int) -> list[tuple[str, SadEntry | SpdEntry]]:
    ops: list[tuple[str, SadEntry | SpdEntry]] = []
    aead = AeadAlgorithm("rfc4106(gcm(aes))", 160, 128, KeyMaterial(KEY))
    for n in range(pairs):
        left, right = (ipaddress.ip_address(a) for a in subnet(n))
        for src, dst, spi in ((LOCAL, PEER, 0x10000 + n), (PEER, LOCAL, 0x20000 + n)):
            ops.append(
                (
                    "add_sa",
                    SadEntry(
                        daddr=dst,
                        saddr=src,
                        spi=spi,
                        reqid=n + 1,
                        mode=1,
                        replay_window=32,
                        aead=aead,
                    ),
                )
            )
        for sel_src, sel_dst, direction, t_src, t_dst in (
            (left, right, 1, LOCAL, PEER),
            (right, left, 0, PEER, LOCAL),
            (right, left, 2, PEER, LOCAL),
        ):
            ops.append(
                (
                    "add_policy",
                    SpdEntry(
                        selector=Selector(
                            daddr=sel_dst, saddr=sel_src, prefixlen_d=32, prefixlen_s=32
                        ),
                        dir=direction,
                        templates=(Template(daddr=t_dst, saddr=t_src, reqid=n + 1, mode=1),),
                    ),
                )
            )
    return ops


def main() -> None:
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    subprocess.run(["modprobe", "-a", "esp4", "xfrm_user"], check=False)
    results = {}
    for method in ("ip -batch", "install_batch"):
        ns = f"iha-{secrets.token_hex(3)}-bench"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            if method == "ip -batch":
                with tempfile.NamedTemporaryFile("w", suffix=".batch", delete=False) as f:
                    f.write("\n".join(ip_commands(pairs)) + "\n")
                start = time.perf_counter()
                subprocess.run(["ip", "-n", ns, "-batch", f.name], check=True)
                results[method] = time.perf_counter() - start
                Path(f.name).unlink()
            else:
                start = time.perf_counter()
                ops = model_operations(pairs)
                built = time.perf_counter()
                with XfrmSocket(ns) as xs:
                    failures = xs.install_batch(ops)
                results[method] = time.perf_counter() - start
                results["install only"] = time.perf_counter() - built
                assert failures == [], failures[:3]
            count = subprocess.run(
                ["ip", "-n", ns, "xfrm", "state", "count"], capture_output=True, text=True
            ).stdout.strip()
            print(f"{method}: {results[method]:.2f} s ({count})", flush=True)
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
    base = results["ip -batch"]
    print(f"  of which install_batch() alone: {results['install only']:.2f} s")
    total = results["install_batch"] / base
    print(f"ratio (model building + install_batch) / ip -batch = {total:.2f}")
    print(f"ratio install_batch() alone / ip -batch = {results['install only'] / base:.2f}")


if __name__ == "__main__":
    main()
