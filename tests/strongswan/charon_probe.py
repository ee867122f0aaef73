"""What the strongSwan takeover lab tests read and do: tunnels, pings, replay drops.

Shared by ``test_charon_takeover_lab`` (the mechanism, driven by the test) and
``test_ike_takeover_lab`` (the daemons doing it).  Root, in the lab VM.
"""

from __future__ import annotations

import re
import socket
from typing import Any

from appliance.store.client import Retrieved
from appliance.strongswan.ha_message import HA_PORT, HaMessage, encode
from appliance.strongswan.ike_state import IkeSpis
from appliance.xfrm.socket import XfrmSocket
from tests.store.netns_star import in_netns
from tests.strongswan.charon_lab import HA_LOCAL, HA_REMOTE, CharonLab, run

GW_INNER, CL_INNER = "198.51.100.1", "203.0.113.1"
"""Inside ``net``'s traffic selectors: the gateway's and the client's inner address."""
PINGS = 100
CONTROL_PINGS = 10
JUMP = 1000
"""How far the new gateway's outbound counters move past the stored ones.  The daemon
derives its jump from its [failover] settings (docs/failover.md); here the stored
counters are exact (the test waits for them), so any jump above 0 would do."""

_IKE_SA = re.compile(r"^\S+: #\d+, (\w+), IKEv2, ([0-9a-f]{16})_i\*? ([0-9a-f]{16})_r", re.M)
_XFRM_SA = re.compile(r"^src (\S+) dst (\S+)\n\s+proto esp spi 0x([0-9a-f]+)", re.M)


# -- what the test reads ----------------------------------------------------------------------


def ike_sas(lab: CharonLab, ns: str) -> list[tuple[str, IkeSpis]]:
    """``swanctl --list-sas`` in ``ns``: each IKE SA's state and SPIs."""
    text = lab.swanctl(ns, "--list-sas", check=False)
    return [(state, (int(i, 16), int(r, 16))) for state, i, r in _IKE_SA.findall(text)]


def kernel_spis(ns: str) -> set[int]:
    """The SPIs of the ESP SAs in ``ns``'s kernel."""
    text = run(["ip", "-n", ns, "xfrm", "state"])
    return {int(spi, 16) for _s, _d, spi in _XFRM_SA.findall(text)}


def replay_drops(ns: str) -> int:
    """The namespace's XfrmInStateSeqError: ESP packets its kernel dropped as replays."""
    text = run(["ip", "netns", "exec", ns, "cat", "/proc/net/xfrm_stat"])
    found = re.search(r"^XfrmInStateSeqError\s+(\d+)", text, re.M)
    assert found, text
    return int(found.group(1))


def ping(lab: CharonLab, count: int = PINGS) -> int:
    """Pings from the client's inner address to the gateway's; how many were answered."""
    out = run(["ip", "netns", "exec", lab.cl_ns, "ping", "-q", "-c", str(count), "-i", "0.02",
               "-W", "2", "-I", CL_INNER, GW_INNER], check=False, timeout=120)  # fmt: skip
    found = re.search(r"(\d+) received", out)
    assert found, out
    return int(found.group(1))


def counters_stored(fetched: Retrieved, ns: str) -> bool:
    """The stored counters equal those of ``ns``'s kernel, SA by SA (once traffic stopped)."""
    with XfrmSocket(netns=ns) as xs:
        for sa in fetched.sad:
            ae = xs.get_ae(sa.daddr, sa.spi, sa.proto, mark=sa.mark)
            live = ae.replay_esn or ae.replay
            kept = sa.replay_esn or sa.replay
            if kept is None or live is None or (kept.oseq, kept.seq) != (live.oseq, live.seq):
                return False
    return bool(fetched.sad)


def rekey_net(lab: CharonLab, ns: str, old: set[int], wait: Any) -> set[int]:
    """Have the charon of ``ns`` rekey the CHILD SA ``net``; the client's SPIs once the old
    SAs are gone (charon deletes them 5 s later).  ``wait`` is a ``Rig.wait``."""
    lab.swanctl(ns, "--rekey", "--child", "net")

    def probe() -> set[int] | None:
        now = kernel_spis(lab.cl_ns)
        return now if len(now) == 4 and len(now - old) == 2 else None

    result: set[int] = wait(f"net rekeyed by {ns}, the old SAs deleted", probe)
    return result


def client_ike_sa_inits(lab: CharonLab) -> int:
    """IKE_SA_INIT requests the client's charon sent (its log)."""
    return (lab.work / "cl.log").read_text(errors="replace").count("generating IKE_SA_INIT request")


# -- what the test does -----------------------------------------------------------------------


def route_inner(ns: str, inner: str, peer: str, remote_net: str) -> None:
    """``inner`` on ``ns``'s loopback, and the route to ``remote_net`` via ``peer`` from it
    (charon runs with install_routes = no)."""
    run(["ip", "-n", ns, "addr", "add", f"{inner}/32", "dev", "lo"])
    run(["ip", "-n", ns, "route", "add", remote_net, "via", peer, "src", inner])


def send_to_charon(ns: str, messages: list[HaMessage]) -> None:
    """Send ``messages`` to the charon of ``ns`` from its plugin's ``remote`` address, as the
    daemon's relay does (charon's plugin accepts nothing from elsewhere)."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HA_REMOTE, HA_PORT))
        sock.connect((HA_LOCAL, HA_PORT))
        return sock

    sock = in_netns(ns, make)
    try:
        for message in messages:
            sock.send(encode(message))
    finally:
        sock.close()
