"""Benchmark: the takeover of N strongSwan tunnels, with ipsec-ha and two references.

For each N (default 10 and 100) and each way, this builds a lab
(``netns_lab``: client, gw1, gw2, server; keepalived VRRPv3, advert_int 1 s)
with charon on the client and on both gateways (``netns_lab.charon``), then:

1. the client sets up N tunnels to the VIP, each its own IKE SA (``t<i>``)
   and CHILD SA (``c<i>``) between one protected /32 of 198.19.0.0/16 on the
   client's loopback and the inside segment; gw1 answers them (one
   connection whose CHILD SA the client's selectors narrow);
2. the standby side learns them (by way, below), and ``PINGS`` pings through
   each tunnel move its counters;
3. gw1 crashes: SIGKILL to its keepalived, its charon and, with ipsec-ha,
   its daemon;
4. the bench waits until gw2's charon holds N IKE SAs ESTABLISHED (the same
   ones, or new ones where the client had to set them up again), then pings
   through each tunnel once more.

The ways (``--ways``):

- ``ipsec-ha``: the product. Cold standby, ``[ike] feed``, the nftables gate
  (``netns_lab.services``); each gateway's ha plugin talks to its daemon.
  gw2's daemon feeds its charon the stored IKE SAs at MASTER, moves the
  counters of the CHILD SAs charon installs, and activates charon.
- ``ipsec-ha-hot``: the same with hot standbys. gw2's daemon follows the
  store, and its charon holds every IKE SA passive (with the CHILD SAs it
  installed) before the crash; at MASTER the daemon only moves counters and
  activates charon.
- ``ha-plugin``: strongSwan's ha plugin alone, peer to peer between the
  gateways' inside addresses (``segment_count = 1``, its heartbeat). gw1's
  charon starts first and takes the segment; gw2's holds the IKE SAs passive
  and takes the segment when gw1's heartbeat stops. No ipsec-ha. The plugin
  does not sync ESP sequence numbers.
- ``none``: no sync. gw2's charon knows nothing; the client finds out by
  DPD (``dpd_delay`` ``DPD_DELAY_S``, ``dpd_action = restart``) and sets every
  tunnel up again.

Every charon here retransmits after 2 s, then 2.8 s, 3.9 s and 5.5 s,
and gives up 14.2 s after the request (``retransmit_timeout = 2``,
``retransmit_base = 1.4``, ``retransmit_tries = 3``; charon's defaults,
4 s, 1.8 and 5 tries, give up after 165 s): the ``none`` figures include
that wait, the others do not depend on it. With 1 s instead of 2 s, 8 of 10
IKE_SA_INITs set up at once under TCG gave up before gw1 answered. Every inbound SA has a
replay window of 4096.

Figures, all from the run (monotonic clock of the VM):

- ``VIP``: from the kill until keepalived put the VIPs on gw2;
- ``VIP -> IKE up``: from then until gw2's charon lists N IKE SAs
  ESTABLISHED; with ipsec-ha, also until the daemon's takeover is done (the
  counters moved, outbound open);
- ipsec-ha only: ``MASTER -> done``, from the daemon reading MASTER until its
  takeover was done (its own timeline), and ``MASTER -> IKE up``;
- ``kill -> IKE up``;
- ``same IKE SAs``: how many of the client's IKE SAs kept their SPIs;
- ``replay drops``: the client's ``XfrmInStateSeqError`` over the takeover
  and the pings after it, and ``pings``: the echo replies to the pings after
  the takeover, of N x ``PINGS``;
- ipsec-ha only: ``safety net``, what gw2's first check after the takeover
  found through charon's vici (``kept N``: charon holds every fed IKE SA).

It needs root and a kernel with ESP: run it in the lab VM::

    scripts/lab-vm --timeout 3600 -- .venv/bin/python bench/ike_failover.py
    scripts/lab-vm --timeout 3600 -- .venv/bin/python bench/ike_failover.py \\
        --n 10 --ways ipsec-ha none --json

Progress lines go to stderr, the table (or JSON) to stdout. A way that fails
prints FAILED and the reason in its row; the others still run.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import secrets
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError, LabError
from netns_lab.charon import CHILD, CONNECTION, HA_SECTION, HA_TEMPLATE, HEARTBEAT_WAIT_S, Charons
from netns_lab.lab import Lab, wait_for
from netns_lab.plan import INSIDE, OUTSIDE, address_of, vip_address
from netns_lab.scenarios.ipsec_failover import IKE_MAX_DATAGRAM
from netns_lab.services import Services, SyncSettings
from netns_lab.tunnel import replay_errors

WAYS = ("ipsec-ha", "ipsec-ha-hot", "ha-plugin", "none")
MODES = {"ipsec-ha": "cold", "ipsec-ha-hot": "hot"}
"""The ways with ipsec-ha, and their standby mode."""
PROTECTED = ipaddress.IPv4Network("198.19.0.0/16")
"""The client's protected addresses, one /32 per tunnel (on its loopback)."""
MAX_TUNNELS = 1000
PINGS = 3
"""Pings through each tunnel before the crash and after the takeover."""
DPD_DELAY_S = 2
"""The client's ``dpd_delay`` with ``none`` (how it finds out that gw2 knows nothing)."""
RETRANSMIT = """
    retransmit_timeout = 2.0
    retransmit_base = 1.4
    retransmit_tries = 3"""
"""charon's retransmission settings, on every host and in every way (module docstring)."""
PING_BATCH = 10
PING_WAIT_S = 5
"""Pings run ``PING_BATCH`` sources at once, each waiting ``PING_WAIT_S`` for its replies:
100 at once with 2 s left 8 tunnels without a reply under TCG, before any takeover."""
IKE_UP_TIMEOUT_S = 300.0
SAFETY_NET_WAIT_S = 120.0
"""For gw2's safety net check: it starts 2 s after the takeover, and listing N IKE SAs
through vici is slow under emulation."""
INITIATORS = 4
"""swanctl --initiate commands in flight at once, while the client sets the tunnels up."""
IKE_NAME, CHILD_NAME = "t{i}", "c{i}"


def protected(index: int) -> ipaddress.IPv4Address:
    """Tunnel ``index``'s protected address on the client."""
    if not 0 <= index < MAX_TUNNELS:
        raise ValueError(f"tunnel index {index} outside 0..{MAX_TUNNELS - 1}")
    return PROTECTED[index + 1]


# -- configuration (pure) --------------------------------------------------------------


def client_identity(index: int) -> str:
    """Tunnel ``index``'s identity on the client. One each: charon would otherwise put
    every CHILD SA into the first IKE SA, whose configuration is equal."""
    return f"t{index}.client.lab.example"


def client_connections(tunnels: int, way: str, me: str, vip: str, inside: str) -> str:
    """The client's ``connections``: one per tunnel, each with its own identity, each
    trying until it is set up (``keyingtries = 0``: under TCG, with a hundred IKE_SA_INITs
    at once, one try can run out of retransmissions)."""
    # without sync, DPD is how the client finds out; then it sets the CHILD SA up again
    dpd = f"\n        dpd_delay = {DPD_DELAY_S}s" if way == "none" else ""
    restart = f"\n{' ' * 16}dpd_action = restart" if way == "none" else ""
    out = []
    for i in range(tunnels):
        child = CHILD.format(
            child=CHILD_NAME.format(i=i), local_ts=f"{protected(i)}/32", remote_ts=inside,
            window=4096, options=restart,
        )  # fmt: skip
        out.append(CONNECTION.format(
            ike=IKE_NAME.format(i=i), me=me, peer=vip, my_id=client_identity(i),
            peer_id="gw.lab.example", options=f"\n        keyingtries = 0{dpd}", children=child,
        ))  # fmt: skip
    return "\n".join(out)


def gateway_connections(vip: str, client: str, inside: str) -> str:
    """A gateway's one connection for every tunnel's identity: its CHILD SA covers every
    protected address, and each client's proposal narrows it to its /32."""
    child = CHILD.format(
        child="net", local_ts=inside, remote_ts=str(PROTECTED), window=4096, options=""
    )
    return CONNECTION.format(
        ike="vip", me=vip, peer=client, my_id="gw.lab.example", peer_id="%any",
        options="", children=child,
    )  # fmt: skip


def ha_section(way: str, gw: str) -> str:
    """A gateway's ha plugin: to its daemon (ipsec-ha), to the other gateway (ha-plugin)."""
    if way in MODES:
        return HA_SECTION
    if way == "ha-plugin":
        other = "gw2" if gw == "gw1" else "gw1"
        return HA_TEMPLATE.format(local=address_of(gw, INSIDE), remote=address_of(other, INSIDE))
    return ""


_RECEIVED = re.compile(r"^(\S+) (\d+) received$", re.M)


def ping_script(sources: list[str], server: str, count: int) -> str:
    """A shell script that pings ``server`` from every source, ``PING_BATCH`` sources at
    once, and prints ``<source> <replies> received`` for each."""
    lines = []
    for start in range(0, len(sources), PING_BATCH):
        lines += [
            f"( n=$(ping -n -q -c {count} -i 0.2 -W {PING_WAIT_S} -I {s} {server} | "
            f"sed -n 's/.* \\([0-9]*\\) received.*/\\1/p'); echo \"{s} ${{n:-0}} received\" ) &"
            for s in sources[start : start + PING_BATCH]
        ]
        lines.append("wait")
    return "\n".join([*lines, ""])


def parse_replies(text: str) -> dict[str, int]:
    """What ``ping_script`` printed: source -> echo replies."""
    return {source: int(n) for source, n in _RECEIVED.findall(text)}


# -- one run -------------------------------------------------------------------------


@dataclass
class Row:
    way: str
    tunnels: int
    vip_s: float | None = None
    """From the kill until gw2 held the VIPs."""
    master_done_s: float | None = None
    """ipsec-ha: from the daemon reading MASTER until its takeover was done."""
    master_ike_up_s: float | None = None
    """ipsec-ha: from the daemon reading MASTER until every IKE SA was ESTABLISHED on gw2
    and the takeover done (the counters moved, outbound open)."""
    ike_up_s: float | None = None
    """From gw2 holding the VIPs until its charon listed every IKE SA ESTABLISHED."""
    kill_ike_up_s: float | None = None
    same_ike_sas: int | None = None
    replay_drops: int | None = None
    pings_after: int | None = None
    pings_before: int | None = None
    advanced: int | None = None
    """ipsec-ha: outbound counters the daemon moved."""
    safety_net: dict[str, Any] | None = None
    """ipsec-ha: gw2's first safety net check after the takeover (its status file's
    ``ike.safety_net.last``: what charon held of the fed IKE SAs, through vici)."""
    setup_s: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Run:
    """One lab, one way, N tunnels; see the module docstring."""

    def __init__(self, way: str, tunnels: int, logs: Path | None = None) -> None:
        self.way, self.tunnels, self.logs = way, tunnels, logs
        self.row = Row(way, tunnels)
        self.sources = [str(protected(i)) for i in range(tunnels)]

    def __call__(self) -> Row:
        t0 = time.monotonic()
        with Lab.create(advert_int=1.0, wait_notify=False) as lab:
            services = None
            if self.way in MODES:
                settings = SyncSettings(mode=MODES[self.way], gate="nft", ike=True,
                                        store_max_datagram=IKE_MAX_DATAGRAM)  # fmt: skip
                services = Services(lab, settings)
            charons = bench_charons(lab, self.way, self.tunnels)
            try:
                if services is not None:
                    services.start()
                    services.wait_role("gw1", ("active",))
                self._prepare(lab)
                self.row.setup_s["lab"] = time.monotonic() - t0
                self._start_charons(charons)
                self._set_up_tunnels(lab, charons, services)
                self._fail_over(lab, charons, services)
            except ApplianceError as exc:
                self.row.error = str(exc)[:300]
                say(f"{self.way} N={self.tunnels}: FAILED: {exc}")
                for host in sorted(charons.procs):
                    listed = charons.swanctl(host, "--list-sas", check=False)
                    say(f"{host}'s swanctl --list-sas:\n{listed}")
            finally:
                kept = None if self.logs is None else self.logs / f"{self.way}-{self.tunnels}"
                charons.close(kept)
                if services is not None:
                    services.stop()
        return self.row

    def _prepare(self, lab: Lab) -> None:
        """The client's protected addresses; the gateways' route back to them."""
        client = address_of("client", OUTSIDE)
        script = "".join(f"addr add {s}/32 dev lo\n" for s in self.sources)
        lab.exec("client", ["ip", "-batch", "-"], input=script)
        for gw in ("gw1", "gw2"):
            lab.exec(gw, ["ip", "route", "add", str(PROTECTED), "via", client])

    def _start_charons(self, charons: Charons) -> None:
        # gw1 first, alone past its heartbeat timeout: with ha-plugin it takes the segment,
        # and gw2, hearing gw1 from its start, never does (docs/strongswan.md)
        for host in ("gw1", "gw2", "client"):
            started = time.monotonic()
            charons.start(host)
            if host != "client":
                charons.settle(started)
        if self.way == "ha-plugin":
            time.sleep(HEARTBEAT_WAIT_S)
            if any("taking all segments" in line for line in charons.log_lines("gw2")):
                raise LabError("gw2's ha plugin took the segment before the crash")

    def _set_up_tunnels(self, lab: Lab, charons: Charons, services: Services | None) -> None:
        t = time.monotonic()

        def initiate(i: int) -> None:
            charons.swanctl("client", "--initiate", "--child", CHILD_NAME.format(i=i))

        say(f"{self.way} N={self.tunnels}: charons up; the client sets up the tunnels")
        with ThreadPoolExecutor(INITIATORS) as pool:
            list(pool.map(initiate, range(self.tunnels)))
        self._wait_ike(charons, "client", "ESTABLISHED", 120.0 + self.tunnels)
        self._wait_ike(charons, "gw1", "ESTABLISHED", 60.0)
        self.row.setup_s["tunnels"] = time.monotonic() - t
        say(f"{self.way} N={self.tunnels}: {self.tunnels} tunnels up "
            f"({self.row.setup_s['tunnels']:.1f} s)")  # fmt: skip
        replies = self._ping(lab)
        self.row.pings_before = sum(replies.values())
        silent = [source for source in self.sources if not replies.get(source)]
        if silent:
            raise LabError(f"{len(silent)} tunnels answered no ping before the crash: {silent}")
        t = time.monotonic()
        if services is not None:
            wait_for(
                "gw2's store to hold every IKE SA",
                lambda: len(services.fetch("gw2").ike_sas) == self.tunnels,
                120.0,
                1.0,
            )
        if self.way in ("ipsec-ha-hot", "ha-plugin"):  # gw2's charon holds them passive
            self._wait_ike(charons, "gw2", "PASSIVE", 120.0)
        self.row.setup_s["standby"] = time.monotonic() - t

    def _fail_over(self, lab: Lab, charons: Charons, services: Services | None) -> None:
        client_before = {spis for _, spis in charons.ike_sas("client")}
        checks_before = safety_net_checks(services.status("gw2") if services else None)
        replay_before = replay_errors(lab, "client")["XfrmInStateSeqError"]
        killed = time.monotonic()
        lab.kill_keepalived("gw1", signal.SIGKILL, wait=False)
        if services is not None:
            services.kill("gw1", "daemon")
        charons.kill("gw1")
        say(f"{self.way} N={self.tunnels}: gw1 killed")
        vip_at = wait_for(
            "gw2 to hold the VIPs",
            lambda: time.monotonic() if all("gw2" in h for h in lab.vip_holders().values())
            else None,
            60.0,
            0.05,
        )  # fmt: skip
        self.row.vip_s = vip_at - killed
        up_at = self._wait_ike(charons, "gw2", "ESTABLISHED", IKE_UP_TIMEOUT_S)
        if services is not None:
            status = services.wait_role("gw2", ("active",), after=killed, timeout=60.0)
            report = status.get("report") or {}
            steps = {t["step"]: t["monotonic"] for t in report.get("timeline", [])}
            done = steps.get("done", float(status["monotonic"]))
            master = float(status["received"])
            self.row.master_done_s = done - master
            self.row.advanced = len(report.get("advanced", []))
            up_at = max(up_at, done)
            self.row.master_ike_up_s = up_at - master
        self.row.ike_up_s = up_at - vip_at
        self.row.kill_ike_up_s = up_at - killed
        client_after = {spis for _, spis in charons.ike_sas("client")}
        self.row.same_ike_sas = len(client_before & client_after)
        self.row.pings_after = sum(self._ping(lab).values())
        self.row.replay_drops = replay_errors(lab, "client")["XfrmInStateSeqError"] - replay_before
        if services is not None:  # read last: waiting for it must not delay the pings
            self.row.safety_net = self._safety_net(services, checks_before)
        say(f"{self.way} N={self.tunnels}: {row_line(self.row)}")

    @staticmethod
    def _safety_net(services: Services, checks_before: int) -> dict[str, Any]:
        """gw2's first safety net check since the kill (it runs 2 s after the takeover);
        ``{"error": ...}`` if none came: the row keeps its other figures."""

        def checked() -> dict[str, Any] | None:
            net = safety_net_status(services.status("gw2"))
            # The count moves before the findings are written: wait for both.
            return net.get("last") if int(net.get("checks") or 0) > checks_before else None

        try:
            return wait_for("gw2's safety net check", checked, SAFETY_NET_WAIT_S, 0.25)
        except LabError:
            return {"error": f"no check within {SAFETY_NET_WAIT_S:g} s"}

    def _wait_ike(self, charons: Charons, host: str, state: str, timeout: float) -> float:
        """Until ``host``'s charon lists N IKE SAs in ``state``; when (monotonic)."""

        def counted() -> float | None:
            states = [s for s, _ in charons.ike_sas(host)]
            return time.monotonic() if states.count(state) >= self.tunnels else None

        return wait_for(f"{host}'s charon to hold {self.tunnels} IKE SAs {state}", counted,
                        timeout, 0.25)  # fmt: skip

    def _ping(self, lab: Lab) -> dict[str, int]:
        script = ping_script(self.sources, address_of("server", INSIDE), PINGS)
        result = lab.exec("client", ["sh", "-c", script], check=False, timeout=120.0)
        return parse_replies(result.stdout)


def bench_charons(lab: Lab, way: str, tunnels: int) -> Charons:
    """The lab's charons (``netns_lab.charon.Charons``) with the bench's configurations."""
    charons = Charons(lab, lab_configs=False)
    psk = secrets.token_hex(16)
    vip, client = vip_address(OUTSIDE), address_of("client", OUTSIDE)
    ids = ("gw.lab.example", *map(client_identity, range(tunnels)))
    for host in ("client", "gw1", "gw2"):
        gateway = host != "client"
        connections = (
            gateway_connections(vip, client, INSIDE.network)
            if gateway
            else client_connections(tunnels, way, client, vip, INSIDE.network)
        )
        ha = ha_section(way, host) if gateway else ""
        charons.configure(
            host, ha=ha, connections=connections, psk=psk, settings=RETRANSMIT, ids=ids
        )
    return charons


def row_line(row: Row) -> str:
    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f} s"

    if row.error:
        return f"{row.way:10} {row.tunnels:>5}  FAILED: {row.error}"
    return (
        f"{row.way:10} {row.tunnels:>5} {s(row.vip_s):>9} {s(row.master_done_s):>14} "
        f"{s(row.master_ike_up_s):>16} "
        f"{s(row.ike_up_s):>13} {s(row.kill_ike_up_s):>15} "
        f"{row.same_ike_sas!s:>13} {row.replay_drops!s:>13} "
        f"{row.pings_after!s:>6}/{row.tunnels * PINGS}  {safety_net_cell(row.safety_net)}"
    )


def safety_net_status(status: dict[str, Any] | None) -> dict[str, Any]:
    """A daemon status file's ``ike.safety_net`` ({} without ``[ike]`` or a status)."""
    return ((status or {}).get("ike") or {}).get("safety_net") or {}


def safety_net_checks(status: dict[str, Any] | None) -> int:
    """The safety net checks a daemon's status file counts (0 without ``[ike]``)."""
    return int(safety_net_status(status).get("checks") or 0)


def safety_net_cell(last: dict[str, Any] | None) -> str:
    """The safety net's findings, as "kept 100" or "error: ..." ("-": not run)."""
    if last is None:
        return "-"
    if last.get("error"):
        return f"error: {last['error']}"
    skip = {"error", "initiated", "initiate_failed"}
    found = [f"{k.replace('_', ' ')} {v}" for k, v in last.items() if k not in skip and v]
    for k in ("initiated", "initiate_failed"):
        if last.get(k):
            found.append(f"{k.replace('_', ' ')} {last[k]}")
    return ", ".join(found) or "nothing held"


HEADER = (
    f"{'way':10} {'N':>5} {'VIP':>9} {'MASTER -> done':>14} {'MASTER -> IKE up':>16} "
    f"{'VIP -> IKE up':>13} "
    f"{'kill -> IKE up':>15} {'same IKE SAs':>13} {'replay drops':>13} {'pings':>10}"
    "  safety net"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100],
                        help=f"tunnels per run (1..{MAX_TUNNELS})")  # fmt: skip
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--logs", type=Path, help="keep the charons' logs of each run here")
    args = parser.parse_args(argv)
    for n in args.n:
        if not 1 <= n <= MAX_TUNNELS:
            parser.error(f"--n {n}: the bench sets up 1 to {MAX_TUNNELS} tunnels")
    rows = []
    for n in args.n:
        for way in args.ways:
            say(f"{way} N={n}: building the lab")
            rows.append(Run(way, n, args.logs)())
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(HEADER)
        for row in rows:
            print(row_line(row))
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
