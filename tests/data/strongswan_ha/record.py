"""Record the datagrams strongSwan's ha plugin sends, into recordings.json.

Run as root on a kernel with ESP (the lab VM), in one go:

    scripts/lab-vm --timeout 900 -- .venv/bin/python tests/data/strongswan_ha/record.py

What it builds, inside the VM, and always removes again:

- two network namespaces, ``iha-<random>-hagw`` (the gateway) and
  ``iha-<random>-hacl`` (the client), joined by a veth pair carrying
  192.0.2.1/24 (gateway) and 192.0.2.2/24 (client);
- one charon per namespace, each in its own mount namespace with a tmpfs on
  /run (so pid file, FIFO and sockets stay private) and vici on
  tcp://127.0.0.1:4502 (9p takes no unix sockets);
- on the gateway, the ha plugin with ``local = 127.0.0.1``, ``remote =
  127.0.0.2``, ``segment_count = 1`` and no secret, so the plugin sends plain
  datagrams from 127.0.0.1:4510 to 127.0.0.2:4510;
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

import contextlib
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("recordings.json")
TAG = secrets.token_hex(3)
GW_NS = f"iha-{TAG}-hagw"
CL_NS = f"iha-{TAG}-hacl"
GW_ADDR, CL_ADDR = "192.0.2.1", "192.0.2.2"
HA_LOCAL, HA_REMOTE, HA_PORT = "127.0.0.1", "127.0.0.2", 4510
VICI = "tcp://127.0.0.1:4502"

# Traffic selectors as configured on the gateway (the client has them mirrored).
NET_LOCAL_TS, NET_REMOTE_TS = "198.51.100.0/24", "203.0.113.0/24"
NET2_LOCAL_TS, NET2_REMOTE_TS = "dynamic[tcp/443]", "203.0.113.128/25[tcp]"
NET2_GW_TS = f"{GW_ADDR}/32[tcp/443]"  # what "dynamic" becomes; the client asks for this

PLUGINS = (
    "random nonce aes sha1 sha2 hmac kdf gmp pem pkcs1 x509 revocation constraints "
    "pubkey kernel-netlink socket-default vici updown"
)

STRONGSWAN_CONF = """\
charon {{
    load = {plugins}
    install_routes = no
    install_virtual_ip = no
    filelog {{
        log {{
            path = {log}
            default = 1
            cfg = 2
            append = no
            flush_line = yes
        }}
    }}
    plugins {{
        vici {{
            socket = {vici}
        }}
{ha}
    }}
}}
swanctl {{
    load = pem pkcs1 x509 pubkey random
}}
"""

HA_SECTION = f"""\
        ha {{
            local = {HA_LOCAL}
            remote = {HA_REMOTE}
            segment_count = 1
            fifo_interface = yes
        }}"""

SWANCTL_CONF = """\
connections {{
    gw {{
        local_addrs = {me}
        remote_addrs = {peer}
        proposals = aes128-sha256-modp2048
        local {{
            auth = psk
            id = {my_id}
        }}
        remote {{
            auth = psk
            id = {peer_id}
        }}
        children {{
            net {{
                local_ts = {net_local}
                remote_ts = {net_remote}
                esp_proposals = aes128gcm16-modp2048
            }}
            net2 {{
                local_ts = {net2_local}
                remote_ts = {net2_remote}
                esp_proposals = aes128-sha256-modp2048-esn
            }}
        }}
    }}
}}
secrets {{
    ike-lab {{
        id-gw = gw.example
        id-cl = client.example
        secret = "lab pre-shared key, not a secret"
    }}
}}
"""

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


def run(cmd: list[str], check: bool = True, timeout: float = 60) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr}")
    return result.stdout + result.stderr


def swanctl(ns: str, *args: str, check: bool = True) -> str:
    return run(["ip", "netns", "exec", ns, "swanctl", *args, "--uri", VICI], check, timeout=90)


def start_charon(ns: str, conf: Path) -> subprocess.Popen[bytes]:
    script = f"mount -t tmpfs tmpfs /run && STRONGSWAN_CONF={conf} exec /usr/lib/ipsec/charon"
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, "unshare", "-m", "sh", "-c", script],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_vici(ns: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "uptime" in swanctl(ns, "--stats", check=False):
            return
        time.sleep(0.5)
    raise RuntimeError(f"charon in {ns} did not answer on {VICI}")


def build(work: Path) -> None:
    for ns in (GW_NS, CL_NS):
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
    run(["ip", "link", "add", "hagw0", "netns", GW_NS, "type", "veth", "peer", "hacl0",
         "netns", CL_NS])  # fmt: skip
    run(["ip", "-n", GW_NS, "addr", "add", f"{GW_ADDR}/24", "dev", "hagw0"])
    run(["ip", "-n", CL_NS, "addr", "add", f"{CL_ADDR}/24", "dev", "hacl0"])
    run(["ip", "-n", GW_NS, "link", "set", "hagw0", "up"])
    run(["ip", "-n", CL_NS, "link", "set", "hacl0", "up"])
    for name, me, peer, my_id, peer_id, ha, mirror in (
        ("gw", GW_ADDR, CL_ADDR, "gw.example", "client.example", HA_SECTION, False),
        ("cl", CL_ADDR, GW_ADDR, "client.example", "gw.example", "", True),
    ):
        (work / f"{name}.conf").write_text(
            STRONGSWAN_CONF.format(plugins=PLUGINS + (" ha" if ha else ""),
                                   log=work / f"{name}.log", vici=VICI, ha=ha)
        )  # fmt: skip
        net = (NET_REMOTE_TS, NET_LOCAL_TS) if mirror else (NET_LOCAL_TS, NET_REMOTE_TS)
        net2 = (NET2_REMOTE_TS, NET2_GW_TS) if mirror else (NET2_LOCAL_TS, NET2_REMOTE_TS)
        (work / f"{name}-swanctl.conf").write_text(
            SWANCTL_CONF.format(me=me, peer=peer, my_id=my_id, peer_id=peer_id,
                                net_local=net[0], net_remote=net[1],
                                net2_local=net2[0], net2_remote=net2[1])
        )  # fmt: skip


def gateway_state() -> dict[str, str]:
    return {
        "list_sas": swanctl(GW_NS, "--list-sas", check=False),
        "xfrm_state": run(["ip", "-n", GW_NS, "xfrm", "state"], check=False),
    }


def fifo(charon: subprocess.Popen[bytes], command: str) -> None:
    run(["nsenter", "-t", str(charon.pid), "-m", "-n", "sh", "-c",
         f"echo {command} > /run/charon.ha"])  # fmt: skip


def record(work: Path) -> dict[str, Any]:
    build(work)
    capture = work / "capture.txt"
    procs: list[subprocess.Popen[bytes]] = []
    collector = subprocess.Popen(
        ["ip", "netns", "exec", GW_NS, sys.executable, "-c", COLLECTOR, str(capture)],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    procs.append(collector)
    try:
        assert collector.stdout is not None
        if collector.stdout.readline().strip() != b"ready":
            raise RuntimeError("collector did not start")
        steps: list[tuple[str, str, float]] = []  # (name, command, start time)

        def step(name: str, command: str) -> None:
            steps.append((name, command, time.monotonic()))

        step("start", "gateway charon starts (RESYNC, heartbeats; segment taken after timeout)")
        gw = start_charon(GW_NS, work / "gw.conf")
        procs.append(gw)
        cl = start_charon(CL_NS, work / "cl.conf")
        procs.append(cl)
        wait_vici(GW_NS)
        wait_vici(CL_NS)
        swanctl(GW_NS, "--load-all", "--file", str(work / "gw-swanctl.conf"))
        swanctl(CL_NS, "--load-all", "--file", str(work / "cl-swanctl.conf"))
        time.sleep(4)  # heartbeat_timeout (2.1 s) passes: the plugin takes segment 1
        states: dict[str, dict[str, str]] = {"start": gateway_state()}

        actions: list[tuple[str, str, list[str], str]] = [
            ("segment_drop", "echo -1 > /run/charon.ha (gateway)", [], "-1"),
            ("segment_take", "echo +1 > /run/charon.ha (gateway)", [], "+1"),
            ("initiate", "client: swanctl --initiate --child net", [CL_NS, "--initiate",
                                                                    "--child", "net"], ""),
            ("add_child", "client: swanctl --initiate --child net2", [CL_NS, "--initiate",
                                                                      "--child", "net2"], ""),
            ("rekey_child_client", "client: swanctl --rekey --child net",
             [CL_NS, "--rekey", "--child", "net"], ""),
            ("rekey_child_gateway", "gateway: swanctl --rekey --child net2",
             [GW_NS, "--rekey", "--child", "net2"], ""),
            ("rekey_ike_client", "client: swanctl --rekey --ike gw",
             [CL_NS, "--rekey", "--ike", "gw"], ""),
            ("terminate_child_client", "client: swanctl --terminate --child net2",
             [CL_NS, "--terminate", "--child", "net2"], ""),
            ("terminate_ike_client", "client: swanctl --terminate --ike gw",
             [CL_NS, "--terminate", "--ike", "gw"], ""),
        ]  # fmt: skip
        for name, command, args, fifo_command in actions:
            step(name, command)
            if fifo_command:
                fifo(gw, fifo_command)
            else:
                ns, rest = args[0], args[1:]
                print(f"{name}: {swanctl(ns, *rest, check=False).strip()[-200:]}", flush=True)
            time.sleep(3)
            states[name] = gateway_state()
        end = time.monotonic()
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

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
    work = Path(tempfile.mkdtemp(prefix="record-ha-"))
    try:
        result = record(work)
    finally:
        for ns in (GW_NS, CL_NS):
            run(["ip", "netns", "del", ns], check=False)
        logs_dir = os.environ.get("RECORD_HA_LOGS")  # charon logs and configs, for debugging
        if logs_dir:
            logs = Path(logs_dir)
            logs.mkdir(parents=True, exist_ok=True)
            for f in work.glob("*"):
                with contextlib.suppress(OSError):
                    (logs / f.name).write_bytes(f.read_bytes())
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    total = sum(len(s["datagrams"]) for s in result["steps"])
    print(f"wrote {OUT}: {total} datagrams in {len(result['steps'])} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
