"""Helpers for the NFQUEUE tests: a namespace, and a rule that queues packets to us.

The namespace (``iha-<hex>-nfq``) has 192.0.2.1 and 2001:db8::1 on its
loopback; traffic sent to them from inside it passes the input hook, which
is where the appliance's trap sits.

The queueing rule: the guard uses nftables' ``queue`` statement, which
needs ``nft_queue``.  The dev host's kernel lacks it but has nft_compat
and the xtables NFQUEUE target, so where ``queue`` is refused this helper
appends the xtables target to a regular chain over raw nfnetlink (nft
cannot write compat expressions).  Both queue the same way: nfnetlink_queue
is the same below them, and the lab VM's kernel takes the first form.
"""

from __future__ import annotations

import secrets
import socket
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from appliance.netns import run_in_netns

ADDR4 = "192.0.2.1"
ADDR6 = "2001:db8::1"
TABLES = (("ip", "iha_nfq_test4"), ("ip6", "iha_nfq_test6"))


def run(
    *argv: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done


@contextmanager
def namespace() -> Iterator[str]:
    """A fresh namespace, ADDR4 and ADDR6 on its loopback; removed afterwards."""
    name = f"iha-{secrets.token_hex(3)}-nfq"
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "-n", name, "addr", "add", f"{ADDR4}/32", "dev", "lo")
        run("ip", "-n", name, "addr", "add", f"{ADDR6}/128", "dev", "lo", "nodad")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def queue_rule(netns: str, queue_num: int, *matches: str) -> str:
    """Queue input packets matching any of ``matches`` (nft syntax, both families).

    Returns how: ``"nft_queue"`` or ``"xt_NFQUEUE"``.
    """
    script = ""
    for family, table in TABLES:
        script += (
            f"table {family} {table} {{\n chain trap {{\n }}\n"
            f" chain input {{\n  type filter hook input priority 0; policy accept;\n"
            + "".join(f"  {match} jump trap\n" for match in matches)
            + " }\n}\n"
        )
    run("ip", "netns", "exec", netns, "nft", "-f", "-", stdin=script)
    native = "".join(f"add rule {f} {t} trap queue num {queue_num}\n" for f, t in TABLES)
    tried = run("ip", "netns", "exec", netns, "nft", "-f", "-", stdin=native, check=False)
    if tried.returncode == 0:
        return "nft_queue"
    run_in_netns(netns, lambda: _append_xt_nfqueue(queue_num))
    return "xt_NFQUEUE"


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes(-length % 4)


def _nfmsg(kind: int, flags: int, seq: int, family: int, res_id: int, body: bytes) -> bytes:
    payload = struct.pack("!BBH", family, 0, res_id) + body
    return struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 0) + payload


def _append_xt_nfqueue(queue_num: int) -> None:
    """``... trap NFQUEUE --queue-num N`` via nft_compat, one batch per family."""
    nested = 0x8000
    # struct xt_NFQ_info_v3 { __u16 queuenum, queues_total, flags; }, padded to 8 (XT_ALIGN).
    info = struct.pack("=HHHxx", queue_num, 1, 0)
    target = _nla(1, b"NFQUEUE\0") + _nla(2, struct.pack("!I", 3)) + _nla(3, info)
    expr = _nla(1 | nested, _nla(1, b"target\0") + _nla(2 | nested, target))
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
    try:
        sock.bind((0, 0))
        sock.settimeout(2)
        for nfproto, (_family, table) in zip((2, 10), TABLES, strict=True):
            rule = _nla(1, table.encode() + b"\0") + _nla(2, b"trap\0") + _nla(4 | nested, expr)
            batch = (
                _nfmsg(0x10, 1, 1, 0, 10, b"")  # NFNL_MSG_BATCH_BEGIN, res_id NFTABLES
                + _nfmsg((10 << 8) | 6, 1 | 4 | 0x400 | 0x800, 2, nfproto, 0, rule)  # NEWRULE
                + _nfmsg(0x11, 1, 3, 0, 10, b"")  # NFNL_MSG_BATCH_END
            )
            sock.send(batch)
            reply = sock.recv(65536)
            _length, kind, _flags, _seq, _pid, error = struct.unpack_from("=IHHIIi", reply)
            if kind != 2 or error != 0:
                raise AssertionError(f"xt NFQUEUE rule refused: type {kind}, error {error}")
    finally:
        sock.close()


def open_socket(netns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside ``netns`` (it stays there)."""
    return run_in_netns(netns, lambda: socket.socket(family, kind, proto))
