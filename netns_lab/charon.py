"""strongSwan's charon on the lab's hosts: the client's IKE daemon, and the gateways' with
the ``ha`` plugin that ipsec-ha relays (docs/strongswan.md).

Each charon runs in its host's network namespace and in a mount namespace of
its own with a tmpfs on /run, so that pid file, sockets and the plugin's
FIFO stay private; vici listens on TCP loopback (``VICI``, 9p takes no unix
sockets), which each namespace has to itself. That tmpfs hides the lab's run
dir (under /run), so configurations and logs go to a folder of their own
(``Charons.folder``, 0700, removed by ``close``; the configurations hold the
lab's PSK).

- The client initiates the IKE SA ``vip`` to the outside VIP, with one CHILD
  SA ``net`` between its protected address and the inside segment (ESP
  AES-GCM-128). A scenario may have it initiate a second IKE SA, ``vip2``,
  whose CHILD SA ``net2`` protects ``SECOND_PROTECTED`` (``initiate_second``):
  a tunnel set up after a takeover, on the new active gateway.
- Every charon keys its inbound SAs with the window ``CHARON_REPLAY_WINDOW``
  (4096, the lab client's; ``netns_lab.tunnel`` says why): the gateways'
  too, so that a replay drop the new active gateway counts is the appliance's,
  not the VM's reordering. charon keys such a window as an ESN replay state
  (128 words), which the daemon moves at a takeover.
- Each gateway answers for the VIP with the mirror configuration (both
  CHILD SAs in its connection ``vip``); its ha
  plugin talks to ``HA_LOCAL`` -> ``HA_REMOTE``, where the daemon's relay
  listens (``[ike]`` in ``netns_lab.services``), with ``segment_count = 1``.

The processes are the lab's: its teardown kills what runs in its namespaces.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.errors import LabError
from netns_lab.lab import Lab, wait_for
from netns_lab.plan import (
    CLIENT_PROTECTED,
    INSIDE,
    OUTSIDE,
    SECOND_PROTECTED,
    address_of,
    vip_address,
)
from netns_lab.tunnel import CLIENT_REPLAY_WINDOW

VICI = "tcp://127.0.0.1:4502"
HA_LOCAL, HA_REMOTE = "127.0.0.1", "127.0.0.2"
"""The ha plugin's ``local`` and ``remote``: the daemon's ``[ike] charon`` and ``relay``."""
HEARTBEAT_WAIT_S = 4.0
"""After a gateway's charon starts: past its heartbeat_timeout (2.1 s), when the plugin,
hearing no peer, has taken segment 1 (the daemon's plans switch it from then on)."""
IKE_NAME, CHILD_NAME = "vip", "net"
SECOND_IKE_NAME, SECOND_CHILD_NAME = "vip2", "net2"
"""The client's second IKE SA and its CHILD SA (``initiate_second``)."""
CHARON_REPLAY_WINDOW = CLIENT_REPLAY_WINDOW
"""Every lab charon's ``replay_window`` (module docstring)."""
CLIENT_DPD_DELAY_S = 10
"""The client checks the gateway with DPD after this long without inbound IKE or ESP: above a
takeover's gap, so it comes once the scenario's traffic has stopped (``dpd_answered``)."""

PLUGINS = (
    "random nonce aes sha1 sha2 hmac kdf gmp pem pkcs1 x509 revocation constraints "
    "pubkey kernel-netlink socket-default vici updown"
)
"""What works with Debian's strongswan-charon alone (``ha`` needs libcharon-extra-plugins)."""

STRONGSWAN_CONF = """\
charon {{
    load = {plugins}
    install_routes = no
    install_virtual_ip = no{settings}
    filelog {{
        log {{
            path = {log}
            default = 1
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
"""

HA_TEMPLATE = """\
        ha {{
            local = {local}
            remote = {remote}
            segment_count = 1
        }}"""
HA_SECTION = HA_TEMPLATE.format(local=HA_LOCAL, remote=HA_REMOTE)
"""The gateways' ha plugin, relayed by the daemon on loopback."""

SWANCTL_CONF = """\
connections {{
{connections}
}}
secrets {{
    ike-lab {{
{ids}        secret = "{psk}"
    }}
}}
"""
LAB_IDS = ("gw.lab.example", "client.lab.example")
"""The identities that share the lab's PSK."""

CONNECTION = """\
    {ike} {{
        local_addrs = {me}
        remote_addrs = {peer}
        proposals = aes128-sha256-modp2048{options}
        local {{
            auth = psk
            id = {my_id}
        }}
        remote {{
            auth = psk
            id = {peer_id}
        }}
        children {{
{children}
        }}
    }}"""

CHILD = """\
            {child} {{
                local_ts = {local_ts}
                remote_ts = {remote_ts}
                esp_proposals = aes128gcm16
                replay_window = {window}{options}
            }}"""


def swanctl_connections(gateway: bool, me: str, peer: str) -> str:
    """The ``connections`` of a gateway (``vip`` with both CHILD SAs: charon picks the one
    whose selectors the client proposes) or of the client (``vip`` with DPD, and ``vip2``
    with ``unique = never``: it must not send INITIAL_CONTACT, which would make the
    gateway delete the client's first IKE SA)."""
    ids = ("gw.lab.example", "client.lab.example")
    my_id, peer_id = ids if gateway else ids[::-1]

    def child(name: str, protected: str) -> str:
        ends = (INSIDE.network, protected) if gateway else (protected, INSIDE.network)
        return CHILD.format(
            child=name, local_ts=ends[0], remote_ts=ends[1], window=CHARON_REPLAY_WINDOW,
            options="",
        )  # fmt: skip

    def connection(name: str, children: list[str], options: str) -> str:
        return CONNECTION.format(
            ike=name, me=me, peer=peer, my_id=my_id, peer_id=peer_id, options=options,
            children="\n".join(children),
        )  # fmt: skip

    first, second = child(CHILD_NAME, CLIENT_PROTECTED), child(SECOND_CHILD_NAME, SECOND_PROTECTED)
    if gateway:
        return connection(IKE_NAME, [first, second], "")
    return "\n".join([
        connection(IKE_NAME, [first], f"\n        dpd_delay = {CLIENT_DPD_DELAY_S}s"),
        connection(SECOND_IKE_NAME, [second], "\n        unique = never"),
    ])  # fmt: skip


_EMPTY_INFORMATIONAL = re.compile(
    r"(generating|parsed) INFORMATIONAL (request|response) (\d+) \[ \]"
)
_IKE_SA = re.compile(r"^(\S+): #\d+, (\w+), IKEv2, ([0-9a-f]{16})_i\*? ([0-9a-f]{16})_r", re.M)


def parse_ike_sas(text: str, name: str | None = None) -> list[tuple[str, str]]:
    """``swanctl --list-sas`` output: each IKE SA's state and ``<spi_i>_<spi_r>``, only those
    of the connection ``name`` if given."""
    return [
        (state, f"{i}_{r}")
        for conn, state, i, r in _IKE_SA.findall(text)
        if name is None or conn == name
    ]


def start_command(config: Path) -> list[str]:
    """charon with ``config``, in a mount namespace of its own with a private /run."""
    script = f"mount -t tmpfs tmpfs /run && STRONGSWAN_CONF={config} exec /usr/lib/ipsec/charon"
    return ["unshare", "-m", "sh", "-c", script]


@dataclass
class Charons:
    """The lab's charons: the client's and each gateway's (``start``, ``kill``, ``swanctl``)."""

    lab: Lab
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    folder: Path = field(init=False)
    lab_configs: bool = True
    """Write the lab's configurations (module docstring); False: ``configure`` each host."""

    def __post_init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=f"iha-{self.lab.run_id}-charon-"))
        if not self.lab_configs:
            return
        psk = secrets.token_hex(16)
        vip, client = vip_address(OUTSIDE), address_of("client", OUTSIDE)
        for host in ("client", "gw1", "gw2"):
            gateway = host != "client"
            me, peer = (vip, client) if gateway else (client, vip)
            self.configure(
                host,
                ha=HA_SECTION if gateway else "",
                connections=swanctl_connections(gateway, me, peer),
                psk=psk,
            )

    def configure(
        self,
        host: str,
        *,
        ha: str,
        connections: str,
        psk: str,
        settings: str = "",
        ids: tuple[str, ...] = LAB_IDS,
    ) -> None:
        """Write ``host``'s strongswan.conf (the ``ha`` plugin section if any, more
        ``settings`` of charon's) and its swanctl.conf (``connections``, and the PSK that
        ``ids`` share)."""
        owners = "".join(f"        id-{n} = {identity}\n" for n, identity in enumerate(ids))
        self._write(self.config(host), STRONGSWAN_CONF.format(
            plugins=PLUGINS + (" ha" if ha else ""), log=self.log(host), vici=VICI, ha=ha,
            settings=settings,
        ))  # fmt: skip
        self._write(
            self.swanctl_config(host),
            SWANCTL_CONF.format(connections=connections, psk=psk, ids=owners),
        )

    @staticmethod
    def _write(path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def config(self, host: str) -> Path:
        return self.folder / f"{host}-strongswan.conf"

    def swanctl_config(self, host: str) -> Path:
        return self.folder / f"{host}-swanctl.conf"

    def log(self, host: str) -> Path:
        return self.folder / f"{host}-charon.log"

    def close(self, keep: Path | None = None) -> None:
        """Kill what still runs, copy the logs to ``keep`` if given, remove the folder."""
        for host in list(self.procs):
            if self.procs[host].poll() is None:
                self.kill(host)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for log in self.folder.glob("*-charon.log"):
                shutil.copy(log, keep / log.name)
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- processes ------------------------------------------------------------
    def start(self, host: str) -> None:
        """Start ``host``'s charon and load its connection (returns once it answers vici)."""
        command = self.lab.command(host, start_command(self.config(host)))
        self.procs[host] = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(
            f"{host}'s charon to answer vici",
            lambda: "uptime" in self.swanctl(host, "--stats", check=False),
            60.0,
            0.5,
        )
        self.swanctl(host, "--load-all", "--file", str(self.swanctl_config(host)))

    def kill(self, host: str) -> None:
        """SIGKILL ``host``'s charon (a crash: its kernel SAs stay where they are)."""
        proc = self.procs.pop(host, None)
        if proc is None or proc.poll() is not None:
            raise LabError(f"charon is not running in {host}")
        os.killpg(proc.pid, 9)
        proc.wait(timeout=30)

    def swanctl(self, host: str, *args: str, check: bool = True) -> str:
        result = self.lab.exec(host, ["swanctl", *args, "--uri", VICI], check=check, timeout=90)
        return result.stdout + result.stderr

    # -- what they hold ---------------------------------------------------------
    def ike_sas(self, host: str, name: str | None = None) -> list[tuple[str, str]]:
        """``swanctl --list-sas`` on ``host``: each IKE SA's state and ``<spi_i>_<spi_r>``
        (``parse_ike_sas``)."""
        return parse_ike_sas(self.swanctl(host, "--list-sas", check=False), name)

    def ike_sa_inits(self, host: str) -> int:
        """IKE_SA_INIT requests ``host``'s charon sent (its log)."""
        try:
            text = self.log(host).read_text(errors="replace")
        except FileNotFoundError:
            return 0
        return text.count("generating IKE_SA_INIT request")

    def log_lines(self, host: str) -> list[str]:
        try:
            return self.log(host).read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def dpd_answered(self, host: str, after: int) -> bool:
        """True once ``host``'s charon sent a DPD request, past line ``after`` of its log,
        and parsed the response to it (IKEv2 DPD: an empty INFORMATIONAL exchange)."""
        lines = self.log_lines(host)[after:]
        for i, line in enumerate(lines):
            if "sending DPD request" not in line:
                continue
            for later in lines[i + 1 :]:
                sent = _EMPTY_INFORMATIONAL.search(later)
                if sent and sent.group(1) == "generating" and sent.group(2) == "request":
                    wanted = sent.group(3)
                    return any(
                        (m := _EMPTY_INFORMATIONAL.search(x)) is not None
                        and m.group(1, 2, 3) == ("parsed", "response", wanted)
                        for x in lines[i + 1 :]
                    )
        return False

    def initiate(self) -> None:
        """The client sets up the IKE SA and its CHILD SA with the VIP."""
        self._initiate(IKE_NAME, CHILD_NAME)

    def initiate_second(self) -> None:
        """The client sets up its second IKE SA, ``vip2``, and its CHILD SA with the VIP
        (the client's ``SECOND_PROTECTED`` must be configured)."""
        self._initiate(SECOND_IKE_NAME, SECOND_CHILD_NAME)

    def _initiate(self, ike: str, child: str) -> None:
        self.swanctl("client", "--initiate", "--child", child)
        wait_for(
            f"the client's IKE SA {ike} to be ESTABLISHED",
            lambda: [s for s, _ in self.ike_sas("client", ike)] == ["ESTABLISHED"],
            60.0,
            0.5,
        )

    def wait_established(self, host: str, spis: str, timeout: float = 60.0) -> None:
        wait_for(
            f"{host}'s charon to hold IKE SA {spis} ESTABLISHED",
            lambda: ("ESTABLISHED", spis) in self.ike_sas(host),
            timeout,
            0.5,
        )

    def settle(self, since: float) -> None:
        """Wait until the gateways' plugins have taken their segment (``HEARTBEAT_WAIT_S``)."""
        time.sleep(max(0.0, since + HEARTBEAT_WAIT_S - time.monotonic()))
