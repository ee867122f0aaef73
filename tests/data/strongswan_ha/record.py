"""Record the datagrams strongSwan's ha plugin sends, into recordings.json.

Run as root on a kernel with ESP (the lab VM), in one go:

    scripts/lab-vm --timeout 900 -- .venv/bin/python tests/data/strongswan_ha/record.py

What it builds, inside the VM, and always removes again, is
``tests/strongswan/charon_lab.py``'s (its docstring has the details): the
gateway's and the client's namespaces ``iha-<random>-hagw``/``-hacl`` with
192.0.2.1 and 192.0.2.2 on a veth pair, one charon in each (own mount
namespace, tmpfs /run, vici on tcp://127.0.0.1:4502), and on the gateway the
ha plugin sending plain datagrams from 127.0.0.1:4510 to 127.0.0.2:4510
(``segment_count = 1``, no secret).  To that it adds:

- a collector: a UDP socket bound to 127.0.0.2:4510 in the gateway's
  namespace that writes down every datagram it receives, with the time.

Then it drives the client through a fixed script of steps (establish the IKE
SA with CHILD SA ``net``, add ``net2``, rekey CHILD SAs from both ends, rekey
the IKE SA, terminate, drop and take the segment through the plugin's FIFO)
and files each datagram under the step during which it arrived, together with
the gateway's SAs as ``swanctl --list-sas`` and ``ip xfrm state`` showed them
after the step. The keys in the file belong to a throwaway lab run.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # run as a script: the repository

from tests.strongswan.charon_lab import (
    CL_ADDR,
    GW_ADDR,
    HA_LOCAL,
    HA_PORT,
    HA_REMOTE,
    HEARTBEAT_WAIT_S,
    NET2_GW_TS,
    NET2_REMOTE_TS,
    NET_LOCAL_TS,
    NET_REMOTE_TS,
    CharonLab,
    charon_lab,
    run,
)

OUT = Path(__file__).with_name("recordings.json")

COLLECTOR = f"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(({HA_REMOTE!r}, {HA_PORT}))
out = open(sys.argv[1], "w", buffering=1)
print("ready", flush=True)
while True:
    data = s.recv(65535)
    out.write(f"{{time.monotonic():.6f}} {{data.hex()}}\\n")
"""


def record(lab: CharonLab) -> dict[str, Any]:
    lab.build()
    gw_ns, cl_ns = lab.gw_ns, lab.cl_ns
    capture = lab.work / "capture.txt"
    collector = lab.spawn(gw_ns, [sys.executable, "-c", COLLECTOR, str(capture)], subprocess.PIPE)
    try:
        assert collector.stdout is not None
        if collector.stdout.readline().strip() != b"ready":
            raise RuntimeError("collector did not start")
        steps: list[tuple[str, str, float]] = []  # (name, command, start time)

        def step(name: str, command: str) -> None:
            steps.append((name, command, time.monotonic()))

        step("start", "gateway charon starts (RESYNC, heartbeats; segment taken after timeout)")
        gw = lab.start_charon(gw_ns)
        lab.start_charon(cl_ns)
        lab.load()
        time.sleep(HEARTBEAT_WAIT_S)  # the plugin takes segment 1
        states: dict[str, dict[str, str]] = {"start": lab.gateway_state()}

        actions: list[tuple[str, str, list[str], str]] = [
            ("segment_drop", "echo -1 > /run/charon.ha (gateway)", [], "-1"),
            ("segment_take", "echo +1 > /run/charon.ha (gateway)", [], "+1"),
            ("initiate", "client: swanctl --initiate --child net", [cl_ns, "--initiate",
                                                                    "--child", "net"], ""),
            ("add_child", "client: swanctl --initiate --child net2", [cl_ns, "--initiate",
                                                                      "--child", "net2"], ""),
            ("rekey_child_client", "client: swanctl --rekey --child net",
             [cl_ns, "--rekey", "--child", "net"], ""),
            ("rekey_child_gateway", "gateway: swanctl --rekey --child net2",
             [gw_ns, "--rekey", "--child", "net2"], ""),
            ("rekey_ike_client", "client: swanctl --rekey --ike gw",
             [cl_ns, "--rekey", "--ike", "gw"], ""),
            ("terminate_child_client", "client: swanctl --terminate --child net2",
             [cl_ns, "--terminate", "--child", "net2"], ""),
            ("terminate_ike_client", "client: swanctl --terminate --ike gw",
             [cl_ns, "--terminate", "--ike", "gw"], ""),
        ]  # fmt: skip
        for name, command, args, fifo_command in actions:
            step(name, command)
            if fifo_command:
                lab.fifo(gw, fifo_command)
            else:
                ns, rest = args[0], args[1:]
                said = lab.swanctl(ns, *rest, check=False).strip()[-200:]
                print(f"{name}: {said}", flush=True)
            time.sleep(3)
            states[name] = lab.gateway_state()
        end = time.monotonic()
    finally:
        lab.stop()

    received = [line.split() for line in capture.read_text().splitlines() if line.strip()]
    out_steps = []
    for i, (name, command, start) in enumerate(steps):
        stop = steps[i + 1][2] if i + 1 < len(steps) else end
        out_steps.append(
            {
                "step": name,
                "command": command,
                "datagrams": [h for t, h in received if start <= float(t) < stop],
                "gateway": states.get(name, {}),
            }
        )
    return {
        "strongswan": run(["dpkg-query", "-W", "-f=${Version}", "libcharon-extra-plugins"]),
        "kernel": platform.release(),
        "ha": {"local": HA_LOCAL, "remote": HA_REMOTE, "port": HA_PORT, "segment_count": 1},
        "gateway": {"address": GW_ADDR, "id": "gw.example"},
        "client": {"address": CL_ADDR, "id": "client.example"},
        "children": {
            "net": {"local_ts": NET_LOCAL_TS, "remote_ts": NET_REMOTE_TS},
            "net2": {"local_ts": NET2_GW_TS, "remote_ts": NET2_REMOTE_TS},
        },
        "steps": out_steps,
    }


def main() -> int:
    if os.geteuid() != 0:
        print("run as root inside the lab VM (see the module docstring)", file=sys.stderr)
        return 2
    # RECORD_HA_LOGS: where to keep charon's logs and configs, for debugging.
    with charon_lab(logs=os.environ.get("RECORD_HA_LOGS")) as lab:
        result = record(lab)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    total = sum(len(s["datagrams"]) for s in result["steps"])
    print(f"wrote {OUT}: {total} datagrams in {len(result['steps'])} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
