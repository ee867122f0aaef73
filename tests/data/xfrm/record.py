"""Record raw NETLINK_XFRM messages from a real kernel into recordings.json.

Run as root on a kernel with ESP (the lab VM):

    scripts/lab-vm --timeout 900 -- .venv/bin/python tests/data/xfrm/record.py

State is created with iproute2 (``ip xfrm``), independently of our encoder,
inside a throwaway network namespace; the kernel's answers (dump entries,
GET replies, acks, errors) and the notifications an all-groups listener
receives are stored byte for byte, each with the command that produced it.
Keys are fixed test patterns, not secrets.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from appliance.xfrm import constants as c
from appliance.xfrm.netlink import RawMessage, iter_messages
from appliance.xfrm.socket import XfrmSocket, group_mask, open_xfrm_socket
from tests.xfrm.oracle import structs as s

OUT = Path(__file__).with_name("recordings.json")
NS = f"iha-{secrets.token_hex(3)}-rec"
K16 = "0x" + "11" * 16
K20 = "0x" + "22" * 20
K32 = "0x" + "33" * 32
K36 = "0x" + "44" * 36

records: list[dict[str, Any]] = []


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", "-n", NS, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}: {proc.stderr.strip()}")
    return proc


def record(name: str, kind: str, produced_by: str, msgs: list[RawMessage]) -> None:
    for i, msg in enumerate(msgs):
        records.append(
            {
                "name": f"{name}.{i}" if len(msgs) > 1 else name,
                "kind": kind,
                "type": c.XFRM_MSG_NAMES.get(msg.type, f"NLMSG_{msg.type}"),
                "produced_by": produced_by,
                "hex": msg.data.hex(),
            }
        )


class Listener:
    """All-groups NETLINK_XFRM listener in the namespace."""

    def __init__(self) -> None:
        groups = group_mask(range(1, c.XFRMNLGRP_MAX + 1))
        self.sock = open_xfrm_socket(NS, groups)

    def collect(self, wait: float = 0.3) -> list[RawMessage]:
        out: list[RawMessage] = []
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return out
            data = self.sock.recv(1 << 20)
            out.extend(iter_messages(data))


def dump(xs: XfrmSocket, msg_type: int) -> list[RawMessage]:
    seq = xs.next_seq()
    hdr = struct.pack("=IHHII", 16, msg_type, c.NLM_F_REQUEST | c.NLM_F_DUMP, seq, 0)
    return xs.exchange(hdr, seq, dump=True)


def ask(
    xs: XfrmSocket, msg: Any, msg_type: int, flags: int = c.NLM_F_REQUEST | c.NLM_F_ACK
) -> list[RawMessage]:
    seq = xs.next_seq()
    msg["header"].update({"type": msg_type, "flags": flags, "sequence_number": seq})
    msg.encode()
    return xs.exchange(bytes(msg.data), seq)


def a4(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, text).ljust(16, b"\0")


def main() -> None:
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        run()
    finally:
        subprocess.run(["ip", "netns", "del", NS])
    OUT.write_text(
        json.dumps(
            {
                "kernel": platform.release(),
                "recorded_by": "tests/data/xfrm/record.py",
                "messages": records,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {len(records)} messages to {OUT}")


def run() -> None:
    for module in ("dummy", "xfrm_ipcomp", "deflate"):
        subprocess.run(["modprobe", module], capture_output=True)
    ip("link", "set", "lo", "up")
    ip("link", "add", "d0", "type", "dummy")
    ip("addr", "add", "192.0.2.1/24", "dev", "d0")
    ip("link", "set", "d0", "up")
    ip("route", "add", "198.51.100.0/24", "dev", "d0")
    listener = Listener()
    xs = XfrmSocket(NS)

    base = ["xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp"]
    sa_cmds = {
        "sa_aead": [
            *base,
            "spi",
            "0x100",
            "reqid",
            "1",
            "mode",
            "tunnel",
            "aead",
            "rfc4106(gcm(aes))",
            K20,
            "128",
            "replay-window",
            "32",
        ],
        "sa_crypt_auth_trunc_lifetimes": [
            *base,
            "spi",
            "0x101",
            "reqid",
            "2",
            "mode",
            "tunnel",
            "enc",
            "cbc(aes)",
            K16,
            "auth-trunc",
            "hmac(sha256)",
            K32,
            "128",
            "sel",
            "src",
            "203.0.113.0/24",
            "dst",
            "198.51.100.0/24",
            "proto",
            "tcp",
            "dport",
            "443",
            "limit",
            "time-soft",
            "3600",
            "limit",
            "time-hard",
            "7200",
            "limit",
            "byte-soft",
            "1000000",
            "limit",
            "packet-hard",
            "5000",
            "flag",
            "noecn",
            "flag",
            "decap-dscp",
            "extra-flag",
            "dont-encap-dscp",
        ],
        "sa_esn": [
            *base,
            "spi",
            "0x102",
            "reqid",
            "3",
            "mode",
            "tunnel",
            "aead",
            "rfc4106(gcm(aes))",
            K36,
            "128",
            "flag",
            "esn",
            "replay-window",
            "128",
            "replay-oseq",
            "77",
            "replay-oseq-hi",
            "2",
        ],
        "sa_encap": [
            *base,
            "spi",
            "0x103",
            "reqid",
            "4",
            "mode",
            "tunnel",
            "aead",
            "rfc4106(gcm(aes))",
            K20,
            "128",
            "encap",
            "espinudp",
            "4500",
            "4500",
            "0.0.0.0",
        ],
        "sa_mark_ifid": [
            *base,
            "spi",
            "0x104",
            "reqid",
            "5",
            "mode",
            "tunnel",
            "aead",
            "rfc4106(gcm(aes))",
            K20,
            "128",
            "mark",
            "0x5",
            "mask",
            "0xff",
            "if_id",
            "7",
            "output-mark",
            "0x9",
            "mask",
            "0xf",
            "tfcpad",
            "256",
        ],
        "sa_ipv6_transport": [
            "xfrm",
            "state",
            "add",
            "src",
            "2001:db8::1",
            "dst",
            "2001:db8::2",
            "proto",
            "esp",
            "spi",
            "0x105",
            "mode",
            "transport",
            "enc",
            "cbc(aes)",
            K16,
            "auth",
            "hmac(sha1)",
            K20,
        ],
        "sa_ah": [
            "xfrm",
            "state",
            "add",
            "src",
            "192.0.2.1",
            "dst",
            "192.0.2.2",
            "proto",
            "ah",
            "spi",
            "0x106",
            "mode",
            "transport",
            "auth",
            "hmac(sha256)",
            K32,
        ],
        "sa_comp": [
            "xfrm",
            "state",
            "add",
            "src",
            "192.0.2.1",
            "dst",
            "192.0.2.2",
            "proto",
            "comp",
            "spi",
            "0x107",
            "mode",
            "tunnel",
            "comp",
            "deflate",
        ],
    }
    for name, cmd in sa_cmds.items():
        proc = ip(*cmd, check=name != "sa_comp")
        if proc.returncode:
            print(f"skipped {name}: {proc.stderr.strip()}")
            continue
        record(f"event_{name}", "event", "ip " + " ".join(cmd), listener.collect())
    record(
        "sa_dump",
        "reply",
        "dump XFRM_MSG_GETSA after the sa_* commands",
        dump(xs, c.XFRM_MSG_GETSA),
    )

    # GETSA of one SA, and the error for a missing one
    get = s.xfrm_usersa_id()
    get.update(
        {"daddr": a4("192.0.2.2"), "spi": 0x101, "family": c.AF_INET, "proto": c.IPPROTO_ESP}
    )
    get["attrs"] = []
    record(
        "getsa_reply", "reply", "GETSA spi 0x101 (with NLM_F_ACK)", ask(xs, get, c.XFRM_MSG_GETSA)
    )
    get = s.xfrm_usersa_id()
    get.update(
        {"daddr": a4("192.0.2.2"), "spi": 0xDEAD, "family": c.AF_INET, "proto": c.IPPROTO_ESP}
    )
    get["attrs"] = []
    record(
        "error_getsa_enoent", "error", "GETSA spi 0xdead (absent)", ask(xs, get, c.XFRM_MSG_GETSA)
    )

    # EEXIST with an extended ack
    proc = ip(*sa_cmds["sa_aead"], check=False)
    print("duplicate add:", proc.stderr.strip())
    seq = xs.next_seq()
    dup = s.xfrm_usersa_info()
    first = next(m for m in dump(xs, c.XFRM_MSG_GETSA) if m.type == c.XFRM_MSG_NEWSA)
    data = bytearray(first.data)
    struct.pack_into("=HHII", data, 4, c.XFRM_MSG_NEWSA, c.NLM_F_REQUEST | c.NLM_F_ACK, seq, 0)
    record(
        "error_newsa_eexist", "error", "NEWSA replaying a dumped SA", xs.exchange(bytes(data), seq)
    )
    del dup

    # GETAE on the ESN and non-ESN SAs
    for spi, name in ((0x100, "getae_reply"), (0x102, "getae_reply_esn")):
        ae = s.xfrm_aevent_id()
        ae["sa_id"] = {
            "daddr": a4("192.0.2.2"),
            "spi": spi,
            "family": c.AF_INET,
            "proto": c.IPPROTO_ESP,
        }
        ae["saddr"] = a4("192.0.2.1")
        ae["flags"] = c.XFRM_AE_RVAL | c.XFRM_AE_LVAL
        ae["reqid"] = 0
        ae["attrs"] = []
        record(name, "reply", f"GETAE spi 0x{spi:x}", ask(xs, ae, c.XFRM_MSG_GETAE))

    # NEWAE with NLM_F_REPLACE: ack + AE event
    ae = s.xfrm_aevent_id()
    ae["sa_id"] = {
        "daddr": a4("192.0.2.2"),
        "spi": 0x100,
        "family": c.AF_INET,
        "proto": c.IPPROTO_ESP,
    }
    ae["saddr"] = a4("192.0.2.1")
    ae["flags"] = c.XFRM_AE_RVAL
    ae["reqid"] = 0
    ae["attrs"] = [("XFRMA_REPLAY_VAL", {"oseq": 1000, "seq": 0, "bitmap": 0})]
    listener.collect(0.05)
    record(
        "ack_newae",
        "ack",
        "NEWAE replace oseq=1000 on spi 0x100",
        ask(xs, ae, c.XFRM_MSG_NEWAE, c.NLM_F_REQUEST | c.NLM_F_ACK | c.NLM_F_REPLACE),
    )
    record("event_newae", "event", "after NEWAE replace on spi 0x100", listener.collect())
    print(
        ip(
            "xfrm",
            "state",
            "get",
            "src",
            "192.0.2.1",
            "dst",
            "192.0.2.2",
            "proto",
            "esp",
            "spi",
            "0x100",
        ).stdout
    )

    # ALLOCSPI
    spi = s.xfrm_userspi_info()
    info = s.xfrm_usersa_info_struct.zero()
    info["id"] = {"daddr": a4("192.0.2.2"), "spi": 0, "proto": c.IPPROTO_ESP}
    info["saddr"] = a4("192.0.2.1")
    info["family"] = c.AF_INET
    info["mode"] = c.XFRM_MODE_TUNNEL
    info["reqid"] = 9
    info["seq"] = 4242
    info["sel"]["family"] = c.AF_INET
    spi.update({"info": info, "min": 0x2000, "max": 0x2FFF})
    spi["attrs"] = []
    record(
        "allocspi_reply",
        "reply",
        "ALLOCSPI 0x2000-0x2fff dst 192.0.2.2 reqid 9 seq 4242",
        ask(xs, spi, c.XFRM_MSG_ALLOCSPI),
    )
    record("event_allocspi", "event", "after ALLOCSPI", listener.collect())

    # UPDSA and DELSA events
    upd = list(sa_cmds["sa_encap"])
    upd[2] = "update"
    ip(*upd)
    record("event_updsa", "event", "ip " + " ".join(upd), listener.collect())
    delete = [
        "xfrm",
        "state",
        "delete",
        "src",
        "192.0.2.1",
        "dst",
        "192.0.2.2",
        "proto",
        "esp",
        "spi",
        "0x103",
    ]
    ip(*delete)
    record("event_delsa", "event", "ip " + " ".join(delete), listener.collect())

    # Policies: two templates, in/fwd, IPv6, block, mark/if_id, priority
    pol_cmds = {
        "policy_out_2tmpl": [
            "xfrm",
            "policy",
            "add",
            "src",
            "203.0.113.0/24",
            "dst",
            "198.51.100.0/24",
            "dir",
            "out",
            "priority",
            "100",
            "tmpl",
            "src",
            "192.0.2.1",
            "dst",
            "192.0.2.2",
            "proto",
            "esp",
            "mode",
            "tunnel",
            "reqid",
            "1",
            "tmpl",
            "src",
            "192.0.2.1",
            "dst",
            "192.0.2.2",
            "proto",
            "ah",
            "mode",
            "tunnel",
            "reqid",
            "2",
        ],
        "policy_in": [
            "xfrm",
            "policy",
            "add",
            "src",
            "198.51.100.0/24",
            "dst",
            "203.0.113.0/24",
            "dir",
            "in",
            "tmpl",
            "src",
            "192.0.2.2",
            "dst",
            "192.0.2.1",
            "proto",
            "esp",
            "mode",
            "tunnel",
            "reqid",
            "1",
        ],
        "policy_fwd_mark_ifid": [
            "xfrm",
            "policy",
            "add",
            "src",
            "198.51.100.0/24",
            "dst",
            "203.0.113.0/24",
            "dir",
            "fwd",
            "mark",
            "0x5",
            "mask",
            "0xff",
            "if_id",
            "7",
            "tmpl",
            "src",
            "192.0.2.2",
            "dst",
            "192.0.2.1",
            "proto",
            "esp",
            "mode",
            "tunnel",
        ],
        "policy_ipv6_block": [
            "xfrm",
            "policy",
            "add",
            "src",
            "2001:db8:1::/64",
            "dst",
            "2001:db8:2::/64",
            "proto",
            "udp",
            "sport",
            "500",
            "dir",
            "out",
            "action",
            "block",
        ],
        "policy_acquire": [
            "xfrm",
            "policy",
            "add",
            "src",
            "192.0.2.0/24",
            "dst",
            "198.51.100.0/24",
            "dir",
            "out",
            "tmpl",
            "src",
            "192.0.2.1",
            "dst",
            "192.0.2.99",
            "proto",
            "esp",
            "mode",
            "tunnel",
            "reqid",
            "11",
        ],
    }
    for name, cmd in pol_cmds.items():
        ip(*cmd)
        record(f"event_{name}", "event", "ip " + " ".join(cmd), listener.collect())
    record(
        "policy_dump",
        "reply",
        "dump XFRM_MSG_GETPOLICY after the policy_* commands",
        dump(xs, c.XFRM_MSG_GETPOLICY),
    )
    upd = list(pol_cmds["policy_in"])
    upd[2] = "update"
    upd[upd.index("in") + 1 :] = ["priority", "50", *upd[upd.index("in") + 1 :]]
    ip(*upd)
    record("event_updpolicy", "event", "ip " + " ".join(upd), listener.collect())

    # ACQUIRE: traffic that matches policy_acquire without an SA
    subprocess.run(
        ["ip", "netns", "exec", NS, "ping", "-c", "1", "-W", "1", "198.51.100.7"],
        capture_output=True,
    )
    record(
        "event_acquire",
        "event",
        "ping 198.51.100.7 matching policy_acquire (no SA)",
        listener.collect(1.0),
    )

    # MIGRATE: move policy_in's template and SA 0x100's peer
    mig = s.xfrm_migrate_msg()
    mig["sel"] = {
        "daddr": a4("203.0.113.0"),
        "saddr": a4("198.51.100.0"),
        "family": c.AF_INET,
        "prefixlen_d": 24,
        "prefixlen_s": 24,
    }
    mig["index"] = 0
    mig["dir"] = c.XFRM_POLICY_IN
    mig["attrs"] = [
        ("XFRMA_POLICY_TYPE", {"type": 0, "reserved1": 0, "reserved2": 0}),
        (
            "XFRMA_MIGRATE",
            [
                {
                    "old_daddr": a4("192.0.2.1"),
                    "old_saddr": a4("192.0.2.2"),
                    "new_daddr": a4("192.0.2.1"),
                    "new_saddr": a4("192.0.2.3"),
                    "proto": c.IPPROTO_ESP,
                    "mode": c.XFRM_MODE_TUNNEL,
                    "reserved": 0,
                    "reqid": 1,
                    "old_family": c.AF_INET,
                    "new_family": c.AF_INET,
                }
            ],
        ),
        (
            "XFRMA_KMADDRESS",
            {
                "local": a4("192.0.2.1"),
                "remote": a4("192.0.2.3"),
                "reserved": 0,
                "family": c.AF_INET,
            },
        ),
    ]
    record(
        "ack_migrate",
        "ack",
        "MIGRATE policy in 198.51.100.0/24->203.0.113.0/24 peer .2 -> .3",
        ask(xs, mig, c.XFRM_MSG_MIGRATE),
    )
    record("event_migrate", "event", "after MIGRATE", listener.collect())

    # Soft + hard expiry of an SA and a policy
    exp = [
        *base,
        "spi",
        "0x1ff",
        "mode",
        "tunnel",
        "aead",
        "rfc4106(gcm(aes))",
        K20,
        "128",
        "limit",
        "time-soft",
        "1",
        "limit",
        "time-hard",
        "2",
    ]
    ip(*exp)
    listener.collect(0.05)
    pexp = [
        "xfrm",
        "policy",
        "add",
        "src",
        "192.0.2.128/25",
        "dst",
        "198.51.100.128/25",
        "dir",
        "in",
        "limit",
        "time-soft",
        "1",
        "limit",
        "time-hard",
        "2",
    ]
    ip(*pexp)
    listener.collect(0.05)
    record(
        "event_expire",
        "event",
        "ip " + " ".join(exp) + " ; ip " + " ".join(pexp) + " ; wait 4 s",
        listener.collect(4.0),
    )

    # Deletes and flushes
    pdel = [
        "xfrm",
        "policy",
        "delete",
        "src",
        "198.51.100.0/24",
        "dst",
        "203.0.113.0/24",
        "dir",
        "fwd",
        "mark",
        "0x5",
        "mask",
        "0xff",
        "if_id",
        "7",
    ]
    ip(*pdel)
    record("event_delpolicy", "event", "ip " + " ".join(pdel), listener.collect())
    flush = s.xfrm_usersa_flush()
    flush["proto"] = c.IPSEC_PROTO_ANY
    flush["attrs"] = []
    record("ack_flushsa", "ack", "FLUSHSA proto 255", ask(xs, flush, c.XFRM_MSG_FLUSHSA))
    record("event_flushsa", "event", "after FLUSHSA", listener.collect())
    pflush = s.xfrm_flushpolicy()
    pflush["attrs"] = []
    record("ack_flushpolicy", "ack", "FLUSHPOLICY", ask(xs, pflush, c.XFRM_MSG_FLUSHPOLICY))
    record("event_flushpolicy", "event", "after FLUSHPOLICY", listener.collect())
    xs.close()
    listener.sock.close()


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("record.py needs root (run it in the lab VM)")
    main()
