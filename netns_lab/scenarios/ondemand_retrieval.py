"""On-demand SA retrieval through a cold third gateway: real ESP, the guard's real trap.

Run as root on a kernel with ESP and nft_queue (the lab VM)::

    python -m netns_lab.scenarios.ondemand_retrieval [--flood N] [--json]

What happens
------------
1. A lab (client, gw1, gw2, server; keepalived) with the appliance on gw1
   and gw2 (``netns_lab.services``); the tunnel client <-> VIP is keyed on
   the client and gw1 (``netns_lab.tunnel``), and gw1's daemon stores it.
2. A third gateway ``gw3`` joins both segments (192.0.2.4, 198.51.100.4).
   It is not part of VRRP and holds no SA; it has the outside VIP on its
   loopback (answering no ARP for it), the nftables guard with the
   unknown-SPI trap, and a daemon with ``[ondemand] enabled`` whose stores
   are gw1's and gw2's.
3. Sequence-numbered UDP runs client -> server (replies return through gw1,
   which holds the inside VIP). Then the client's route to the VIP is
   changed to go through gw3: the first ESP packets trap, gw3's daemon
   runs one SA_Retr by SPI, installs the SA with its policies, holds the
   SPI; the held packets are accepted and the traffic flows through gw3.
4. ESP with an SPI the store does not know is dropped and counted.
5. A flood of random-SPI ESP from the client (``flood`` packets, raw
   socket) while the tunnel's traffic continues; afterwards the retrievals
   started (gw3's counters) and the SA_Retr requests each store saw are
   compared with what ``[ondemand].rate`` and ``burst`` allow.

gw3's namespace is ``iha-<run id>-gw3``: the lab's own teardown and
``ipsec-ha-lab down`` do not know it, so this scenario removes it in a
``finally`` (processes killed first), before the lab goes.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, netns

from appliance.errors import ApplianceError, LabError
from appliance.netns import run_in_netns
from appliance.nft import apply_guard, guard_status, parse_nft_section
from appliance.store.client import StoreClient
from appliance.store.config import load_psk
from appliance.traffic.analysis import analyse
from appliance.xfrm.socket import XfrmSocket
from netns_lab import build, keepalived, tunnel
from netns_lab.lab import SETTLE_TIMEOUT, Lab, LabInterrupted, wait_for
from netns_lab.plan import GATEWAYS, INSIDE, OUTSIDE, address_of
from netns_lab.scenarios.ipsec_failover import RESUMED_PACKETS, Traffic
from netns_lab.scenarios.narration import Narration
from netns_lab.services import STORE_PORT, Services, SyncSettings, read_daemon_status

GW3_ROLE = "gw3"
GW3_ADDRESSES = {OUTSIDE: "192.0.2.4/24", INSIDE: "198.51.100.4/24"}
TRAP_QUEUE = 3
UNKNOWN_SPI = 0xDEAD0001
UNKNOWN_PACKETS = 3
TUNNEL_RATE = 100.0
"""Tunnel packets/s (each way).  Until its SPI is held a tunnel's packets take the userspace
queue; the SPI is held only once the queue holds none of them (docs/ondemand.md)."""


@dataclass(frozen=True)
class Limits:
    """gw3's ``[ondemand]`` and trap settings."""

    rate: float = 5.0
    burst: int = 10
    timeout_s: float = 20.0
    """Generous: under TCG a retrieval (store, XFRM, libnftables) takes a good fraction of 1 s."""
    max_held_per_spi: int = 1024
    trap_rate: int = 200
    trap_burst: int = 100


@dataclass
class Outcome:
    """What the scenario measured."""

    tunnel: dict[str, int]
    retrieval: dict[str, Any]
    """After the route change: gw3's counters and the tunnel through it."""
    unknown: dict[str, Any]
    """The unknown SPI: gw3's counters after it."""
    flood: dict[str, Any]
    """The flood: packets sent, seconds, retrievals started, store SA_Retr, the bound."""
    directions: dict[str, dict[str, Any]]
    lost_before_flood: int
    """client -> server packets sent before the flood that never arrived."""
    arrived_during_flood: int
    """client -> server packets sent during the flood that arrived."""
    gw3_namespace: str = ""
    diagnostics: dict[str, Any] = field(default_factory=dict)
    """Sequence numbers around the route change, for whoever reads a failure."""
    gw3_xfrm_errors: dict[str, int] = field(default_factory=dict)
    """gw3's non-zero /proc/net/xfrm_stat counters (why a packet did not decrypt)."""
    final: dict[str, Any] = field(default_factory=dict)
    """gw3's on-demand counters at the end (``holds``: SPIs held after a retrieval)."""
    rate: float = 0.0
    """Tunnel packets/s."""
    events: list[tuple[float, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ThirdGateway:
    """gw3: a namespace on both lab segments, its guard and its daemon; ``remove`` undoes all."""

    def __init__(self, lab: Lab, limits: Limits) -> None:
        self.lab = lab
        self.limits = limits
        self.ns = f"iha-{lab.run_id}-{GW3_ROLE}"
        self.run_dir = lab.run_dir
        self.daemon_config = self.run_dir / "gw3-daemon.toml"
        self.daemon_log = self.run_dir / "gw3-daemon.log"
        self.status_file = self.run_dir / "gw3-status.json"
        self.notify_log = self.run_dir / "gw3-notify.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None
        self.created = False

    def build(self) -> None:
        if build.netns_path(self.ns).exists():
            raise LabError(f"namespace {self.ns} already exists")
        netns.create(self.ns)
        self.created = True
        with IPRoute(netns=self.ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        for segment, cidr in GW3_ADDRESSES.items():
            with IPRoute(netns=self.lab.ns(segment.bridge)) as sw:
                # The switch port named after the host, as the lab's own build does.
                sw.link("add", ifname=GW3_ROLE, kind="veth",
                        peer={"ifname": segment.ifname, "net_ns_fd": self.ns})  # fmt: skip
                bridge = sw.link_lookup(ifname=segment.bridge)[0]
                port = sw.link_lookup(ifname=GW3_ROLE)[0]
                sw.link("set", index=port, master=bridge, state="up")
            with IPRoute(netns=self.ns) as ipr:
                iface = ipaddress.ip_interface(cidr)
                index = ipr.link_lookup(ifname=segment.ifname)[0]
                ipr.addr("add", index=index, address=str(iface.ip),
                         prefixlen=iface.network.prefixlen)  # fmt: skip
                ipr.link("set", index=index, state="up")
        with IPRoute(netns=self.ns) as ipr:
            # The VIP on loopback: ESP to it is local, but gw3 must not claim it on the wire.
            vip = tunnel.VIP
            ipr.addr("add", index=ipr.link_lookup(ifname="lo")[0], address=vip, prefixlen=32)
        build.write_sysctl(self.ns, "net.ipv4.ip_forward", "1")
        for conf in ("all", "default", "out0", "in0"):
            build.write_sysctl(self.ns, f"net.ipv4.conf.{conf}.rp_filter", "0")
        for conf in ("all", "out0"):
            build.write_sysctl(self.ns, f"net.ipv4.conf.{conf}.arp_ignore", "1")
            build.write_sysctl(self.ns, f"net.ipv4.conf.{conf}.arp_announce", "2")
        apply_guard(self.ns, parse_nft_section(self._nft_table()))

    def _nft_table(self) -> dict[str, Any]:
        return {
            "vips": [tunnel.VIP],
            "trap_queue": TRAP_QUEUE,
            "trap_rate": self.limits.trap_rate,
            "trap_burst": self.limits.trap_burst,
        }

    def start_daemon(self, psk: Path) -> None:
        lim = self.limits
        stores = ", ".join(f'"{address_of(gw, INSIDE)}"' for gw in GATEWAYS)
        text = (
            f'[node]\nid = "gw3"\nserver_id = "{tunnel.VIP}"\nnode_index = 2\n'
            f'[store]\nservers = [{stores}]\nport = {STORE_PORT}\npsk_file = "{psk}"\n'
            "timeout_s = 0.5\nretries = 3\n"
            f'[failover]\nstatus_file = "{self.status_file}"\n'
            f'[nft]\nvips = ["{tunnel.VIP}"]\ntrap_queue = {TRAP_QUEUE}\n'
            f"trap_rate = {lim.trap_rate}\ntrap_burst = {lim.trap_burst}\n"
            f"[ondemand]\nenabled = true\nrate = {lim.rate}\nburst = {lim.burst}\n"
            f"timeout_s = {lim.timeout_s}\nmax_held_per_spi = {lim.max_held_per_spi}\n"
        )
        fd = os.open(self.daemon_config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        log_fd = os.open(self.daemon_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net={build.netns_path(self.ns)}", "--", sys.executable, "-m",
                 "appliance", "daemon", "--config", str(self.daemon_config), "--verbose",
                 "--notify-log", str(self.notify_log)],
                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(log_fd)

    def status(self) -> dict[str, Any] | None:
        return read_daemon_status(self.status_file)

    def ondemand(self) -> dict[str, Any]:
        """The daemon's on-demand counters from its status file."""
        if self.proc is None or self.proc.poll() is not None:
            raise LabError(f"gw3's daemon exited: {keepalived.tail(self.daemon_log)}")
        st = self.status() or {}
        od = st.get("ondemand")
        return od if isinstance(od, dict) else {}

    def wait_ondemand(
        self, what: str, check: Callable[[dict[str, Any]], bool], timeout: float = SETTLE_TIMEOUT
    ) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            od = self.ondemand()
            return od if od and check(od) else None

        try:
            return wait_for(what, done, timeout, 0.1)
        except LabError as exc:
            raise LabError(
                f"{exc}; gw3 on-demand {self.ondemand()}; log: {keepalived.tail(self.daemon_log)}"
            ) from None

    def xfrm_errors(self) -> dict[str, int]:
        """The namespace's non-zero /proc/net/xfrm_stat counters."""
        return {k: v for k, v in tunnel.namespace_xfrm_stat(self.ns).items() if v}

    def sa_packets(self) -> dict[int, int]:
        with XfrmSocket(self.ns) as xs:
            return {sa.spi: sa.lifetime_cur.packets for sa in xs.dump_sad()}

    def remove(self) -> None:
        """Stop the daemon, empty and remove the namespace (its veths go with it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.created:
            build.kill_namespace_processes([self.ns])
            build.remove_namespaces([self.ns])
            self.created = False


def esp_packet(spi: int, seq: int = 1) -> bytes:
    return struct.pack("!II", spi, seq) + bytes(32)


def flood_spis(count: int, avoid: set[int], seed: int | None = None) -> list[int]:
    """``count`` random SPIs (0x100..0xffffffff) outside ``avoid``."""
    rng = random.Random(seed)
    out: list[int] = []
    while len(out) < count:
        spi = rng.randrange(0x100, 0x1_0000_0000)
        if spi not in avoid:
            out.append(spi)
    return out


class Scenario(Narration):
    """One run; see the module docstring. ``say`` gets a line per step."""

    def __init__(
        self,
        flood: int = 50_000,
        rate: float = TUNNEL_RATE,
        limits: Limits | None = None,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.flood_count, self.rate = flood, rate
        self.limits = limits or Limits()
        super().__init__(say)

    def run(self) -> Outcome:
        with Lab.create(advert_int=1.0, wait_notify=False) as lab:
            services = Services(lab, SyncSettings())
            gw3 = ThirdGateway(lab, self.limits)
            try:
                return self._run(lab, services, gw3)
            finally:
                gw3.remove()
                services.stop()

    def _run(self, lab: Lab, services: Services, gw3: ThirdGateway) -> Outcome:
        self.event(f"lab {lab.run_id} up; gw1 holds the VIPs")
        services.start()
        gw3.build()
        gw3.start_daemon(services.psk)
        self.event("stores and daemons on gw1 and gw2; gw3 built (guard, VIP on lo)")
        keyed = tunnel.establish(lab, "gw1")
        self.event(f"tunnel keyed on client and gw1: SPI 0x{keyed.spi_in:08x} inbound")
        probe = self._probe_clients(lab, gw3, services.psk)
        try:
            return self._measure(lab, gw3, keyed, probe)
        finally:
            for client in probe:
                client.close()

    def _probe_clients(self, lab: Lab, gw3: ThirdGateway, psk_file: Path) -> list[StoreClient]:
        # Opened in gw3's namespace: the stores listen on the inside segment.
        psk = load_psk(psk_file)

        def opener(gw: str) -> Callable[[], StoreClient]:
            return lambda: StoreClient(
                address_of(gw, INSIDE), STORE_PORT, psk, "lab-probe", timeout=0.5, retries=5
            )

        return [run_in_netns(gw3.ns, opener(gw)) for gw in GATEWAYS]

    def _store_retr(self, probe: list[StoreClient]) -> dict[str, int]:
        # By SPI only: the gateways' health probes and followers read the stores by
        # server ID meanwhile, more of them the slower the machine.
        return {c.server: int(c.stats().get("spi_lookups", 0)) for c in probe}

    def _measure(
        self, lab: Lab, gw3: ThirdGateway, keyed: tunnel.Tunnel, probe: list[StoreClient]
    ) -> Outcome:
        def stored() -> bool:
            # The SA with its in and fwd policies (gw1's daemon stores them separately).
            try:
                return all(len(c.get_spi(keyed.spi_in, tunnel.VIP).spd) >= 2 for c in probe)
            except ApplianceError:
                return False

        wait_for("both stores to hold the tunnel's SA and policies", stored, SETTLE_TIMEOUT, 0.2)
        gw3.wait_ondemand("gw3's on-demand service to run", lambda od: bool(od.get("running")))
        self.event("both stores hold the SA; gw3's daemon traps unknown SPIs")
        assert not gw3.sa_packets(), "gw3 must start without SAs"

        traffic = Traffic(lab, self.rate)
        traffic.start()
        try:
            return self._with_traffic(lab, gw3, keyed, probe, traffic)
        finally:
            traffic.stop_event.set()
            with contextlib.suppress(LabError):
                traffic.stop()

    def _with_traffic(
        self,
        lab: Lab,
        gw3: ThirdGateway,
        keyed: tunnel.Tunnel,
        probe: list[StoreClient],
        traffic: Traffic,
    ) -> Outcome:
        self._wait_packets(lambda: {sa.spi: sa.packets for sa in tunnel.sa_stats(lab, "gw1")},
                           keyed.spi_in, "traffic through gw1")  # fmt: skip
        self.event(f"traffic client -> server through gw1 at {self.rate:g} packets/s")
        gw3_out = str(ipaddress.ip_interface(GW3_ADDRESSES[OUTSIDE]).ip)
        lab.exec("client", ["ping", "-c", "1", "-W", "5", gw3_out])  # resolve its MAC first
        answer = probe[0].get_spi(keyed.spi_in, tunnel.VIP)
        stored = answer.replay.seq if answer.replay is not None else None
        with lab.ipr("client") as ipr:
            ipr.route("add", dst=f"{tunnel.VIP}/32", gateway=gw3_out)
        switched = self.event("client's route to the VIP now goes through gw3")
        diag: dict[str, Any] = {"store_seq_before_switch": stored}
        for host, name in (("client", "oseq"), ("gw1", "seq")):
            for sa in tunnel.sa_stats(lab, host):
                if sa.spi == keyed.spi_in:
                    diag[f"{host}_{name}_at_switch"] = getattr(sa, name)
        self._wait_packets(gw3.sa_packets, keyed.spi_in, "traffic through gw3")
        after_switch = gw3.wait_ondemand(
            "gw3 to count the retrieval",
            lambda od: od.get("sas", {}).get("installed", 0) >= 1 and od.get("accepted", 0) >= 1,
        )
        for sa in tunnel.namespace_sa_stats(gw3.ns, "gw3"):
            if sa.spi == keyed.spi_in:
                diag["gw3_after_retrieval"] = {
                    "seq": sa.seq, "packets": sa.packets, "replay_failed": sa.replay_failed
                }  # fmt: skip
        self.event(
            f"gw3 retrieved the SA: {after_switch.get('retrievals')} retrieval(s), "
            f"{after_switch.get('accepted')} held packet(s) accepted"
        )

        client_tx = run_in_netns(
            lab.ns("client"),
            lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ESP),
        )
        try:
            for seq in range(1, UNKNOWN_PACKETS + 1):
                client_tx.sendto(esp_packet(UNKNOWN_SPI, seq), (tunnel.VIP, 0))
            after_unknown = gw3.wait_ondemand(
                "gw3 to drop the unknown SPI",
                lambda od: od.get("dropped_unknown", 0) >= UNKNOWN_PACKETS,
            )
            self.event(f"unknown SPI 0x{UNKNOWN_SPI:08x}: {UNKNOWN_PACKETS} packets dropped")
            flood = self._flood(lab, gw3, keyed, probe, client_tx)
        finally:
            client_tx.close()

        self._wait_packets(gw3.sa_packets, keyed.spi_in, "traffic through gw3 after the flood")
        self.event("traffic still flows through gw3 after the flood")
        traffic.stop()
        arrivals = traffic.arrivals()
        sent = traffic.sent()
        directions = {
            d: analyse(records, None, sent[d]).to_dict() for d, records in arrivals.items()
        }
        c2s = arrivals["client->server"]
        start_ns, end_ns = int(flood["started"] * 1e9), int(flood["ended"] * 1e9)
        # Sent before the flood: every sequence number below the first one sent during it.
        first_during = min(
            (a.seq for a in c2s if a.send_ns >= start_ns), default=sent["client->server"]
        )
        arrived = {a.seq for a in c2s if a.seq < first_during}
        lost_before = first_during - len(arrived)
        during = sum(1 for a in c2s if start_ns <= a.send_ns <= end_ns)
        switch_ns = int(switched * 1e9)
        diag["last_seq_arrived_before_switch"] = max(
            (a.seq for a in c2s if a.send_ns < switch_ns), default=None
        )
        diag["lost_ranges_c2s"] = directions["client->server"]["lost_ranges"]
        diag["gw3_log"] = [
            line[-160:]
            for line in gw3.daemon_log.read_text(errors="replace").splitlines()
            if "ondemand" in line and f"{keyed.spi_in:08x}" in line
        ][-12:]
        return Outcome(
            tunnel={"spi_in": keyed.spi_in, "spi_out": keyed.spi_out},
            retrieval=after_switch,
            unknown=after_unknown,
            flood=flood,
            directions=directions,
            lost_before_flood=lost_before,
            arrived_during_flood=during,
            gw3_namespace=gw3.ns,
            diagnostics=diag,
            gw3_xfrm_errors=gw3.xfrm_errors(),
            final=gw3.ondemand(),
            rate=self.rate,
            events=self.events,
        )

    def _flood(
        self,
        lab: Lab,
        gw3: ThirdGateway,
        keyed: tunnel.Tunnel,
        probe: list[StoreClient],
        tx: socket.socket,
    ) -> dict[str, Any]:
        packets = [esp_packet(spi) for spi in flood_spis(self.flood_count, {keyed.spi_in})]
        before = gw3.ondemand()
        store_before = self._store_retr(probe)
        errors: list[BaseException] = []
        refused = [0]

        def send() -> None:
            try:
                for data in packets:
                    try:
                        tx.sendto(data, (tunnel.VIP, 0))
                    except OSError as exc:
                        # A full device queue refuses a packet: a flood may lose some.
                        if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                            raise
                        refused[0] += 1
            except BaseException as exc:  # reported below
                errors.append(exc)

        started = self.event(f"flood of {len(packets)} random-SPI ESP packets starts")
        thread = threading.Thread(target=send, name="esp-flood", daemon=True)
        thread.start()
        thread.join(timeout=SETTLE_TIMEOUT * 2)
        ended = self.event("flood sent")
        if thread.is_alive() or errors:
            raise LabError(f"the flood did not finish: {errors[:1]}")
        time.sleep(1.0)  # what was queued is decided; the bound includes this second
        after = gw3.ondemand()
        store_after = self._store_retr(probe)
        measured = time.monotonic()
        trap = guard_status(gw3.ns).categories()["spi_trap"]
        retrievals = int(after.get("retrievals", 0)) - int(before.get("retrievals", 0))
        # Window [started - 1 s, measured]: `before` was read up to a second before `started`.
        bound = self.limits.burst + self.limits.rate * (measured - started + 1.0)
        return {
            "sent": len(packets) - refused[0],
            "started": started,
            "ended": ended,
            "seconds": round(ended - started, 2),
            "retrievals": retrievals,
            "rate_limited": int(after.get("dropped_rate_limited", 0))
            - int(before.get("dropped_rate_limited", 0)),
            "queued": int(after.get("queued", 0)) - int(before.get("queued", 0)),
            "store_sa_retr": {s: store_after[s] - store_before.get(s, 0) for s in store_after},
            "bound": bound,
            "guard_trap": trap,
        }

    def _wait_packets(self, counts: Callable[[], dict[int, int]], spi: int, what: str) -> float:
        start = counts().get(spi, 0)
        return wait_for(
            what,
            lambda: time.monotonic() if counts().get(spi, 0) - start >= RESUMED_PACKETS else None,
            SETTLE_TIMEOUT,
            0.1,
        )


def report_lines(outcome: Outcome) -> list[str]:
    """A readable summary."""
    zero = outcome.events[0][0] if outcome.events else 0.0
    lines = ["timeline (ms):"]
    lines += [f"  {1000 * (at - zero):9.1f}  {text}" for at, text in outcome.events]
    r, u, f, end = outcome.retrieval, outcome.unknown, outcome.flood, outcome.final
    lines += [
        "",
        f"tunnel at {outcome.rate:g} packets/s",
        f"retrieval: {r.get('retrievals')} started, {r.get('accepted')} packets accepted, "
        f"dropped {sum(v for k, v in r.items() if k.startswith('dropped_'))}",
        f"at the end: holds {end.get('holds')} (forced {end.get('holds_forced')}), "
        f"hold failures {end.get('sas', {}).get('hold_failures')}, "
        f"queue overruns {end.get('queue_overruns')}",
        f"unknown SPI: dropped_unknown {u.get('dropped_unknown')}, "
        f"retrieval_failures {u.get('retrieval_failures')}",
        f"flood: {f['sent']} packets in {f['seconds']} s; {f['queued']} queued, "
        f"{f['rate_limited']} rate-limited, {f['retrievals']} retrievals "
        f"(bound {f['bound']:.1f}); store SA_Retr {f['store_sa_retr']}",
        f"client -> server: lost before the flood {outcome.lost_before_flood}, "
        f"arrived during the flood {outcome.arrived_during_flood}",
        f"gw3 xfrm_stat: {outcome.gw3_xfrm_errors or 'no errors'}",
        f"diagnostics: {outcome.diagnostics}",
    ]
    for direction, d in outcome.directions.items():
        lines.append(f"  {direction}: received {d['received']}, lost {d['lost']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--flood", type=int, default=50_000, help="random-SPI packets to send")
    parser.add_argument("--rate", type=float, default=TUNNEL_RATE, help="tunnel packets/s")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    args = parser.parse_args(argv)
    say: Callable[[str], None] = (lambda _: None) if args.json else print
    try:
        outcome = Scenario(args.flood, args.rate, say=say).run()
    except LabInterrupted as exc:
        print(f"scenario: {exc}; the lab was removed", file=sys.stderr)
        return 128 + exc.signum
    except (ApplianceError, subprocess.SubprocessError) as exc:
        print(f"scenario: error: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(outcome.to_dict(), indent=2) if args.json else "\n".join(report_lines(outcome))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
