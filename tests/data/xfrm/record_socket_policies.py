"""Record a policy dump holding per-socket policies into socket_policies.json.

Run as root (any kernel with XFRM; no ESP needed, so the host will do):

    .venv/bin/python tests/data/xfrm/record_socket_policies.py

In a throwaway namespace, one IPv4 and one IPv6 UDP socket get per-socket
ALLOW policies out and in, as charon gives its IKE sockets; ``ip xfrm``
adds one ordinary policy beside them. The whole policy dump is stored byte
for byte (the NLMSG_DONE included), with ``ip xfrm policy``'s text of the
same state, and the kernel's answer to a DELPOLICY naming a per-socket
direction.
"""

from __future__ import annotations

import json
import platform
import secrets
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "xfrm"))

from bypass_sockets import bypass_socket

from appliance.model import Selector
from appliance.xfrm import codec
from appliance.xfrm import constants as c
from appliance.xfrm.netlink import RawMessage
from appliance.xfrm.socket import XfrmSocket

OUT = Path(__file__).with_name("socket_policies.json")
NS = f"iha-{secrets.token_hex(3)}-rec"
ORDINARY = (
    "ip xfrm policy add src 198.51.100.0/24 dst 203.0.113.0/24 dir out "
    "tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 1 mode tunnel"
)


def record(name: str, kind: str, produced_by: str, msgs: list[RawMessage]) -> list[dict[str, Any]]:
    return [
        {
            "name": f"{name}.{i}",
            "kind": kind,
            "type": c.XFRM_MSG_NAMES.get(msg.type, f"NLMSG_{msg.type}"),
            "produced_by": produced_by,
            "hex": msg.data.hex(),
        }
        for i, msg in enumerate(msgs)
    ]


def run() -> dict[str, Any]:
    sockets = [bypass_socket(NS, socket.AF_INET), bypass_socket(NS, socket.AF_INET6)]
    try:
        subprocess.run(["ip", "-n", NS, *ORDINARY.split()[1:]], check=True)
        with XfrmSocket(NS) as xs:
            seq = xs.next_seq()
            request = struct.pack(
                "=IHHII", 16, c.XFRM_MSG_GETPOLICY, c.NLM_F_REQUEST | c.NLM_F_DUMP, seq, 0
            )
            messages = record(
                "policy_dump",
                "reply",
                f"{ORDINARY}; a UDP socket per family with setsockopt IP_XFRM_POLICY / "
                "IPV6_XFRM_POLICY: action allow, dir out then in (strongSwan bypass_socket)",
                xs.exchange(request, seq, dump=True),
            )
            seq = xs.next_seq()
            delete = codec.encode_policy_id(
                c.XFRM_MSG_DELPOLICY,
                c.NLM_F_REQUEST | c.NLM_F_ACK,
                seq,
                Selector(),
                c.XFRM_POLICY_MAX + c.XFRM_POLICY_OUT,
            )
            messages += record(
                "delete_socket_out",
                "error",
                "DELPOLICY, selector all zero (IPv4 any), dir 4 (socket out)",
                xs.exchange(delete, seq),
            )
        text = subprocess.run(
            ["ip", "-n", NS, "xfrm", "policy"], check=True, capture_output=True, text=True
        ).stdout
    finally:
        for sock in sockets:
            sock.close()
    return {"ip_xfrm_policy": text.splitlines(), "messages": messages}


def main() -> None:
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        recorded = run()
    finally:
        subprocess.run(["ip", "netns", "del", NS])
    OUT.write_text(
        json.dumps(
            {
                "kernel": platform.release(),
                "recorded_by": "tests/data/xfrm/record_socket_policies.py",
                **recorded,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {len(recorded['messages'])} messages to {OUT}")


if __name__ == "__main__":
    main()
