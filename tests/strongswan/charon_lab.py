"""Two real charons in two network namespaces, the gateway's with the ``ha`` plugin.

Shared by ``tests/data/strongswan_ha/record.py`` (which records what the
plugin sends) and the lab test of the relay.  Root on a kernel with ESP (the
lab VM); :func:`charon_lab` always removes what it made.

- two network namespaces, ``iha-<random>-hagw`` (the gateway) and
  ``iha-<random>-hacl`` (the client), joined by a veth pair carrying
  192.0.2.1/24 (gateway) and 192.0.2.2/24 (client);
- one charon per namespace, each in its own mount namespace with a tmpfs on
  /run (so pid file, FIFO and sockets stay private) and vici on
  tcp://127.0.0.1:4502 (9p takes no unix sockets);
- on the gateway, the ha plugin with ``local = 127.0.0.1``, ``remote =
  127.0.0.2``, ``segment_count = 1`` and no secret, so the plugin sends plain
  datagrams from 127.0.0.1:4510 to 127.0.0.2:4510, where nothing listens
  until the caller binds something there in the gateway's namespace;
- the IKE SA ``gw`` with CHILD SAs ``net`` and ``net2``, loaded in both;
- with ``build(standby=True)``, a third namespace ``iha-<random>-hasb``: a
  second gateway with the same charon configuration (its own log), joined to
  the first by a sync link (198.18.0.1/24 and 198.18.0.2/24, for the store),
  and with no client link until :meth:`CharonLab.move_link` hands it the
  gateway's veth end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from netns_lab.charon import HA_LOCAL as HA_LOCAL
from netns_lab.charon import HA_REMOTE as HA_REMOTE
from netns_lab.charon import HEARTBEAT_WAIT_S as HEARTBEAT_WAIT_S
from netns_lab.charon import PLUGINS, VICI, start_command

GW_ADDR, CL_ADDR = "192.0.2.1", "192.0.2.2"
GW_SYNC, SB_SYNC = "198.18.0.1", "198.18.0.2"
"""The gateways' ends of the sync link (``build(standby=True)``)."""
HA_PORT = 4510
# The lab's charon conventions (ha addresses, vici on TCP loopback, plugins, the wait for
# the plugin's heartbeat timeout, the private /run) are netns_lab.charon's.

# Traffic selectors as configured on the gateway (the client has them mirrored).
NET_LOCAL_TS, NET_REMOTE_TS = "198.51.100.0/24", "203.0.113.0/24"
NET2_LOCAL_TS, NET2_REMOTE_TS = "dynamic[tcp/443]", "203.0.113.128/25[tcp]"
NET2_GW_TS = f"{GW_ADDR}/32[tcp/443]"  # what "dynamic" becomes; the client asks for this

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


def run(cmd: list[str], check: bool = True, timeout: float = 60) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr}")
    return result.stdout + result.stderr


class CharonLab:
    """The two namespaces, their configuration in ``work``, and the processes started."""

    def __init__(self, work: Path) -> None:
        tag = secrets.token_hex(3)
        self.work = work
        self.gw_ns = f"iha-{tag}-hagw"
        self.cl_ns = f"iha-{tag}-hacl"
        self.sb_ns = f"iha-{tag}-hasb"
        """The standby gateway, made by ``build(standby=True)``."""
        self.link_ns = self.gw_ns
        """The gateway namespace that holds the veth end ``hagw0`` (and ``GW_ADDR``)."""
        self.namespaces: list[str] = []
        """The namespaces made so far (removed by :func:`charon_lab`)."""
        self.procs: list[subprocess.Popen[bytes]] = []
        """Every process started, in order (stopped last first by :meth:`stop`)."""

    def build(self, standby: bool = False) -> None:
        """Make the namespaces and the veth pair; write the charons' configurations."""
        for ns in (self.gw_ns, self.cl_ns, *((self.sb_ns,) if standby else ())):
            run(["ip", "netns", "add", ns])
            self.namespaces.append(ns)
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "link", "add", "hagw0", "netns", self.gw_ns, "type", "veth", "peer", "hacl0",
             "netns", self.cl_ns])  # fmt: skip
        run(["ip", "-n", self.gw_ns, "addr", "add", f"{GW_ADDR}/24", "dev", "hagw0"])
        run(["ip", "-n", self.cl_ns, "addr", "add", f"{CL_ADDR}/24", "dev", "hacl0"])
        run(["ip", "-n", self.gw_ns, "link", "set", "hagw0", "up"])
        run(["ip", "-n", self.cl_ns, "link", "set", "hacl0", "up"])
        if standby:
            run(["ip", "link", "add", "hasync0", "netns", self.gw_ns, "type", "veth", "peer",
                 "hasync1", "netns", self.sb_ns])  # fmt: skip
            for ns, dev, addr in (
                (self.gw_ns, "hasync0", GW_SYNC),
                (self.sb_ns, "hasync1", SB_SYNC),
            ):
                run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
                run(["ip", "-n", ns, "link", "set", dev, "up"])
        for name, me, peer, my_id, peer_id, ha, mirror in (
            ("gw", GW_ADDR, CL_ADDR, "gw.example", "client.example", HA_SECTION, False),
            ("sb", GW_ADDR, CL_ADDR, "gw.example", "client.example", HA_SECTION, False),
            ("cl", CL_ADDR, GW_ADDR, "client.example", "gw.example", "", True),
        ):
            (self.work / f"{name}.conf").write_text(
                STRONGSWAN_CONF.format(plugins=PLUGINS + (" ha" if ha else ""),
                                       log=self.work / f"{name}.log", vici=VICI, ha=ha)
            )  # fmt: skip
            net = (NET_REMOTE_TS, NET_LOCAL_TS) if mirror else (NET_LOCAL_TS, NET_REMOTE_TS)
            net2 = (NET2_REMOTE_TS, NET2_GW_TS) if mirror else (NET2_LOCAL_TS, NET2_REMOTE_TS)
            (self.work / f"{name}-swanctl.conf").write_text(
                SWANCTL_CONF.format(me=me, peer=peer, my_id=my_id, peer_id=peer_id,
                                    net_local=net[0], net_remote=net[1],
                                    net2_local=net2[0], net2_remote=net2[1])
            )  # fmt: skip

    def _name(self, ns: str) -> str:
        return {self.gw_ns: "gw", self.sb_ns: "sb"}.get(ns, "cl")

    def move_link(self, to_ns: str) -> None:
        """Move the gateway's veth end, with ``GW_ADDR``, to ``to_ns``: the VIP moves.

        Moving a device between namespaces drops its addresses, so they are set again."""
        run(["ip", "-n", self.link_ns, "link", "set", "hagw0", "netns", to_ns])
        self.link_ns = to_ns
        run(["ip", "-n", to_ns, "addr", "add", f"{GW_ADDR}/24", "dev", "hagw0"])
        run(["ip", "-n", to_ns, "link", "set", "hagw0", "up"])

    def spawn(
        self, ns: str, cmd: list[str], stdout: int | IO[bytes] | None = subprocess.DEVNULL
    ) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in ``ns``, in a session of its own (so :meth:`stop` ends it all)."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *cmd],
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def start_charon(self, ns: str) -> subprocess.Popen[bytes]:
        conf = self.work / f"{self._name(ns)}.conf"
        return self.spawn(ns, start_command(conf))

    def swanctl(self, ns: str, *args: str, check: bool = True) -> str:
        return run(["ip", "netns", "exec", ns, "swanctl", *args, "--uri", VICI], check, timeout=90)

    def wait_vici(self, ns: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "uptime" in self.swanctl(ns, "--stats", check=False):
                return
            time.sleep(0.5)
        raise RuntimeError(f"charon in {ns} did not answer on {VICI}")

    def load(self, *namespaces: str) -> None:
        """Wait for the charons' vici (default: gateway and client), then load each one's
        connection and secret."""
        namespaces = namespaces or (self.gw_ns, self.cl_ns)
        for ns in namespaces:
            self.wait_vici(ns)
        for ns in namespaces:
            conf = self.work / f"{self._name(ns)}-swanctl.conf"
            self.swanctl(ns, "--load-all", "--file", str(conf))

    def gateway_state(self) -> dict[str, str]:
        return {
            "list_sas": self.swanctl(self.gw_ns, "--list-sas", check=False),
            "xfrm_state": run(["ip", "-n", self.gw_ns, "xfrm", "state"], check=False),
        }

    def fifo(self, charon: subprocess.Popen[bytes], command: str) -> None:
        """Write ``command`` to the plugin's FIFO of ``charon`` (in its mount namespace)."""
        run(["nsenter", "-t", str(charon.pid), "-m", "-n", "sh", "-c",
             f"echo {command} > /run/charon.ha"])  # fmt: skip

    def stop(self) -> None:
        """End every process started, last first: SIGTERM, then SIGKILL after 10 s."""
        procs, self.procs = self.procs, []
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@contextlib.contextmanager
def charon_lab(logs: str | None = None) -> Iterator[CharonLab]:
    """A :class:`CharonLab` in a fresh work folder; afterwards, whatever happened, its
    processes are stopped, its namespaces removed, the work folder copied to ``logs``
    (charon's logs and configurations, for debugging) if given, and removed."""
    work = Path(tempfile.mkdtemp(prefix="charon-lab-"))
    lab = CharonLab(work)
    try:
        yield lab
    finally:
        try:
            lab.stop()
        finally:
            for ns in lab.namespaces:
                run(["ip", "netns", "del", ns], check=False)
            if logs:
                Path(logs).mkdir(parents=True, exist_ok=True)
                for f in work.glob("*"):
                    with contextlib.suppress(OSError):
                        (Path(logs) / f.name).write_bytes(f.read_bytes())
            shutil.rmtree(work, ignore_errors=True)
