"""IPsec failover that keeps the tunnel: real ESP, real keepalived, the appliance on both gateways.

Run as root on a kernel with ESP (the lab VM: ``scripts/demo``)::

    python -m netns_lab.scenarios.ipsec_failover [--mode cold|hot] [--how kill|link|split]
        [--naive] [--no-failback] [--plot FILE] [--json]

What happens
------------
1. A lab (client, gw1, gw2, server; keepalived VRRPv3 on the gateways) with
   the appliance on both gateways (``netns_lab.services``: a store and the
   daemon each, the embedded two-node setup).
2. The tunnel client <-> VIP is keyed on the client and on gw1, as IKE
   would (``netns_lab.tunnel``); the client's inbound replay window is 4096.
3. Sequence-numbered UDP runs both ways between the client's protected
   address and the server (``appliance.traffic``), ``rate`` packets/s each.
4. gw1 fails: ``kill`` sends SIGKILL to its keepalived and its daemon (a
   crash), ``link`` takes its outside link down (keepalived sees FAULT).
   gw2 takes over: its daemon reads MASTER from keepalived's FIFO, claims
   the epoch, fetches the state, installs it with the sequence jump.
5. With ``failback``, gw1 comes back (restarted, or link up: BACKUP, since
   nopreempt), then gw2 fails the same way and gw1 takes over again.
6. Verdict: the client counted no replay errors (``XfrmInStateSeqError``
   and its SAs' replay counters), its SAs are the very ones keyed at the
   start (no new SA), and traffic flowed both ways after each takeover.

``IPSEC_HA_LAB_LOGS=DIR`` keeps the stores', daemons' and keepalived's logs.

``ike`` keys the tunnel with strongSwan instead (``IPSEC_HA_LAB_CHARON_LOGS=DIR``
keeps the charons' logs): charon on the client and on
both gateways (``netns_lab.charon``), the daemons with ``[ike] feed`` (the
nftables gate). The client initiates the IKE SA to the VIP; at a takeover
the new active's daemon feeds its charon the IKE SA from the store, moves
the counters of the SAs charon installs, and activates charon. A hot
standby's charon holds the IKE SA passive before the failure (it is fed as
the store changes): the scenario waits for that, and its takeover feeds
nothing. A
crash kills the gateway's charon too. The verdict adds the IKE side: the
client's IKE SA is the one it set up, ESTABLISHED on the active gateway, the
client sent one IKE_SA_INIT in all, a CHILD rekey by the client through
the last active gateway succeeds, and then the client's DPD (``dpd_delay``
10 s, once idle) is answered. The gateways' inbound windows are 4096 there,
and the verdict counts their replay drops too. With ``failback``, once gw2
has taken over, the client sets up a second IKE SA through it and pings
through it; after the failback that tunnel must still be the same on the
client, ESTABLISHED on gw1 (which learnt it from the store only) and answer
pings.

``naive`` replaces the appliance with what a naive copy would do: snapshot
gw1's SAs while traffic runs, and after the failure restore that snapshot
on gw2 without the jump. The client must then count replay errors; the
test of the real thing runs this first, to prove the check can fail.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import LabError
from appliance.nft.gate import NftGate
from appliance.traffic.analysis import analyse, plot_rate
from appliance.traffic.probe import Arrival
from appliance.traffic.udp import RunResult, RunSpec
from appliance.traffic.udp import run as run_traffic
from netns_lab import keepalived, tunnel
from netns_lab.charon import (
    CHILD_NAME,
    CLIENT_DPD_DELAY_S,
    IKE_NAME,
    SECOND_IKE_NAME,
    Charons,
)
from netns_lab.esp_capture import EspCapture, summarise
from netns_lab.lab import SETTLE_TIMEOUT, Lab, wait_for
from netns_lab.plan import (
    CLIENT_PROTECTED,
    GATEWAYS,
    INSIDE,
    OUTSIDE,
    PRIORITIES,
    ROUTES,
    SECOND_PROTECTED,
    address_of,
    vip_address,
)
from netns_lab.scenarios.narration import Narration, run_from_command_line
from netns_lab.services import STORE_PORT, Services, SyncSettings

CLIENT_PORT, SERVER_PORT = 40001, 40002
# What cuts VRRP between the gateways and nothing else (IP protocol 112).
_CUT_VRRP = """table inet iha_cut {
    chain input {
        type filter hook input priority -10; policy accept;
        ip protocol vrrp drop
    }
}
"""
_CUT_STORE = f"""table inet iha_cut_store {{
    chain output {{
        type filter hook output priority -10; policy accept;
        udp dport {STORE_PORT} drop
    }}
}}
"""
STORE_GAPS = ("recovered", "during")
STORE_GAP_S = 4.0
"""How long gw2's store link stays cut after the second pair is stored."""
RESUMED_PACKETS = 20
"""Packets each way through the new active gateway that count as "traffic resumed"."""


IKE_MAX_DATAGRAM = 65000
"""``[store] max_datagram`` with ``[ike]`` (an IKE SA record is never split)."""

GATE_PINGS = 5
"""Pings a hot standby behind the nftables gate sends towards the client (``_probe_gate``)."""
NEW_TUNNEL_PINGS = 5
"""Pings from the client through its second strongSwan tunnel, on the gateway that set it up
and after the failback (``_set_up_new_tunnel``, ``_new_tunnel_verdict``)."""


@dataclass
class Takeover:
    """One failure and the takeover that followed it."""

    failed: str
    took_over: str
    how: str
    failed_at: float
    """CLOCK_MONOTONIC when the failure was caused."""
    master_at: float | None = None
    """When the new active gateway's daemon read MASTER (keepalived's FIFO)."""
    done_at: float | None = None
    """When its daemon finished the takeover."""
    resumed_at: float | None = None
    """When traffic was seen flowing both ways through it."""
    installed_sas: int = 0
    advanced: int = 0
    rekey: int = 0
    timeline: list[tuple[float, str]] = field(default_factory=list)
    client_replay: int | None = None
    """The client's ``XfrmInStateSeqError`` once traffic flowed through the new gateway."""
    fetch: dict[str, Any] = field(default_factory=dict)
    """The daemon's ``fetch-state`` detail (``followed``: from the hot standby's copy)."""
    counters: dict[str, int] = field(default_factory=dict)
    """Right after the takeover: the new gateway's outbound counter of the tunnel and the
    highest sequence number the client had received on it; the failed gateway's outbound
    counter right after the failure, when the new one was done and once traffic resumed
    (a crash spares the failed gateway's kernel: -1, it holds no such SA)."""

    @property
    def detection_ms(self) -> float | None:
        return None if self.master_at is None else 1000 * (self.master_at - self.failed_at)

    @property
    def restore_ms(self) -> float | None:
        if self.master_at is None or self.done_at is None:
            return None
        return 1000 * (self.done_at - self.master_at)


@dataclass
class Outcome:
    """What the scenario measured."""

    mode: str
    how: str
    naive: bool
    rate: float
    tunnel: dict[str, int]
    gate: str
    takeovers: list[Takeover]
    client_replay_before: dict[str, int]
    client_replay_after: dict[str, int]
    client_spis_before: list[int]
    client_spis_after: list[int]
    directions: dict[str, dict[str, Any]]
    """client->server and server->client: sent, received, lost, longest gap."""
    events: list[tuple[float, str]]
    plot: str | None = None
    origin: float = 0.0
    store_gap: dict[str, Any] = field(default_factory=dict)
    """``store_gap`` only: what gw2's follower missed and how it came back
    (``Scenario._store_link_gap``), and whether gw2 held the missed pair once active."""
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``gate = "nft"`` only: each gateway's gate (``NftGate.status``), keyed ``gw2-standby``
    (hot: once gw2 pre-installed the SAs) and by gateway at the end."""
    ike: dict[str, Any] = field(default_factory=dict)
    """``ike`` only: the client's IKE SA before and after, its state on the active gateway,
    the client's IKE_SA_INITs, and the CHILD rekey after the last takeover."""
    split: dict[str, Any] = field(default_factory=dict)
    """Split brain only: when VRRP was cut and healed, what each daemon did, the client's
    replay counters at healing and at the end, the store's outbound counter before and
    after."""
    esp: dict[str, Any] = field(default_factory=dict)
    """With ``tcpdump``: the ESP the client received on its inbound SA, by sender, and
    the packets its replay window refused, by sender (``esp_capture.summarise``)."""
    gateway_replay: dict[str, dict[str, int]] = field(default_factory=dict)
    """Each gateway's replay counters at the end (``tunnel.replay_errors``): counted over
    the whole run, the new active's after each takeover included. With ``ike`` their
    inbound windows are 4096, as the client's; the iproute2 gateways' are 32."""

    @property
    def replay_errors(self) -> int:
        """Packets the client's kernel refused as replays during the run (both counters
        see the same packets: the namespace's ``XfrmInStateSeqError`` is reported)."""
        key = "XfrmInStateSeqError"
        return self.client_replay_after[key] - self.client_replay_before[key]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["replay_errors"] = self.replay_errors
        for t, d in zip(self.takeovers, out["takeovers"], strict=True):
            d["detection_ms"], d["restore_ms"] = t.detection_ms, t.restore_ms
        return out


class Traffic:
    """Both directions of probes, in two threads, until ``stop``."""

    def __init__(self, lab: Lab, rate: float) -> None:
        self.stop_event = threading.Event()
        self.results: dict[str, RunResult] = {}
        self.errors: list[BaseException] = []
        protected = CLIENT_PROTECTED.split("/")[0]
        server = address_of("server", INSIDE)
        self.specs = {
            "server": RunSpec(
                "echo", (server, SERVER_PORT), 3600, rate=rate, flow=2, netns=lab.ns("server")
            ),
            "client": RunSpec(
                "send",
                (protected, CLIENT_PORT),
                3600,
                peer=(server, SERVER_PORT),
                rate=rate,
                flow=1,
                netns=lab.ns("client"),
            ),
        }
        self.threads = [
            threading.Thread(target=self._run, args=(name,), name=f"traffic-{name}", daemon=True)
            for name in self.specs
        ]

    def _run(self, name: str) -> None:
        try:
            self.results[name] = run_traffic(self.specs[name], self.stop_event)
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)

    def start(self) -> None:
        for thread in self.threads:  # the echo side first: it must be listening
            thread.start()
            time.sleep(0.2)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=30)
        if self.errors:
            raise LabError(f"traffic failed: {self.errors[0]}")

    def arrivals(self) -> dict[str, list[Arrival]]:
        """Direction -> arrival records."""
        out = {}
        for direction, receiver, flow in (
            ("client->server", "server", 1),
            ("server->client", "client", 2),
        ):
            result = self.results.get(receiver)
            flows = result.receiver.flows if result else {}
            out[direction] = list(flows[flow].arrivals) if flow in flows else []
        return out

    def sent(self) -> dict[str, int]:
        return {
            "client->server": self.results["client"].sent if "client" in self.results else 0,
            "server->client": self.results["server"].sent if "server" in self.results else 0,
        }


class Scenario(Narration):
    """One run; see the module docstring. ``say`` gets a line per step."""

    def __init__(
        self,
        mode: str = "cold",
        how: str = "kill",
        *,
        naive: bool = False,
        failback: bool = True,
        advert_int: float = 1.0,
        rate: float = 250.0,
        plot: Path | None = None,
        gate: str = "policy",
        store_gap: str | None = None,
        ike: bool = False,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        if how not in ("kill", "link", "split"):
            raise ValueError(f"how must be kill, link or split, not {how!r}")
        if how == "split" and naive:
            raise ValueError("the naive variant has no split-brain phase")
        if mode not in ("cold", "hot"):
            raise ValueError(f"mode must be cold or hot, not {mode!r}")
        if gate not in ("policy", "nft"):
            raise ValueError(f"gate must be policy or nft, not {gate!r}")
        if store_gap is not None and (store_gap not in STORE_GAPS or mode != "hot" or naive
                                      or how != "kill"):  # fmt: skip
            raise ValueError(
                f"store_gap is one of {', '.join(STORE_GAPS)}, for a hot standby and a kill"
            )
        if ike and (gate != "nft" or naive or store_gap):
            raise ValueError("ike needs the nft gate, and no naive copy or store gap")
        self.ike = ike
        self.charons: Charons | None = None
        self.second_spis: set[int] = set()
        """The client's SAs of its second strongSwan tunnel (``_set_up_new_tunnel``)."""
        self.capture: EspCapture | None = None
        self.store_gap = store_gap
        self.mode, self.how, self.naive, self.failback = mode, how, naive, failback
        self.gate = gate
        super().__init__(say)
        self.advert_int, self.rate, self.plot_path = advert_int, rate, plot

    # -- the run ------------------------------------------------------------------
    def run(self) -> Outcome:
        with Lab.create(advert_int=self.advert_int, wait_notify=False) as lab:
            settings = SyncSettings(
                mode=self.mode,
                gate=self.gate,
                ike=self.ike,
                store_max_datagram=IKE_MAX_DATAGRAM if self.ike else 1400,
            )
            services = None if self.naive else Services(lab, settings)
            try:
                return self._run(lab, services)
            finally:
                if self.capture is not None:
                    self.capture.stop()
                if services is not None:
                    services.stop()
                    kept = os.environ.get("IPSEC_HA_LAB_LOGS")
                    if kept:
                        services.keep_logs(Path(kept))
                if self.charons is not None:
                    logs = os.environ.get("IPSEC_HA_LAB_CHARON_LOGS")
                    self.charons.close(Path(logs) if logs else None)

    def _run(self, lab: Lab, services: Services | None) -> Outcome:
        self.event(f"lab {lab.run_id} up; gw1 holds the VIPs")
        if services is not None:
            services.start()
            # Key only once gw1's daemon acts as MASTER: a daemon still a hot standby
            # would mirror the (empty) store and remove what IKE installed.
            services.wait_role("gw1", ("active",))
            self.event(f"stores and daemons ({self.mode} standby) running on gw1 and gw2")
        keyed = self._establish_with_charon(lab) if self.ike else tunnel.establish(lab, "gw1")
        ike_before = self.charons.ike_sas("client", IKE_NAME) if self.charons else []
        gates: dict[str, dict[str, Any]] = {}
        self.event(
            f"tunnel keyed on client and gw1: SPIs 0x{keyed.spi_in:08x} (in), "
            f"0x{keyed.spi_out:08x} (out)"
        )
        if services is not None and self.mode == "hot":
            wait_for(
                "gw2 to pre-install the SAs (hot standby)",
                lambda: len(tunnel.sa_stats(lab, "gw2")) >= 2,
                SETTLE_TIMEOUT,
                0.2,
            )
            self.event("gw2 holds the SAs pre-installed, outbound gated")
            if self.charons is not None:
                charons = self.charons
                wait_for(
                    "gw2's charon to hold the IKE SA passive (hot standby)",
                    lambda: [st for st, _ in charons.ike_sas("gw2")] == ["PASSIVE"],
                    SETTLE_TIMEOUT,
                    0.5,
                )
                self.event("gw2's charon holds the IKE SA passive")
            if self.gate == "nft":
                gates["gw2-standby"] = self._probe_gate(lab, "gw2", keyed)
        spis_before = sorted(sa.spi for sa in tunnel.sa_stats(lab, "client"))
        replay_before = tunnel.replay_errors(lab, "client")
        if EspCapture.available():  # stopped by run() too, if a step fails first
            pcap = lab.run_dir / "client-esp.pcap"
            self.capture = EspCapture(lab, "client", OUTSIDE.ifname, pcap)
            self.capture.start()
        traffic = Traffic(lab, self.rate)
        traffic.start()
        self._wait_resumed(lab, "gw1", keyed, since=None)
        origin = self.event(f"traffic flows both ways at {self.rate:g} packets/s")
        takeovers = []
        snapshot = None
        if self.naive:
            from appliance.snapshot import take_snapshot

            snapshot = take_snapshot(lab.ns("gw1"))
            self.event("naive: snapshot of gw1's SAs taken (no sync from here on)")
        time.sleep(2.0)  # traffic moves the counters past what was synced or snapshotted
        split: dict[str, Any] = {}
        gap: dict[str, Any] = {}
        if self.store_gap is not None:
            assert services is not None
            gap = self._store_link_gap(lab, services)
        if self.how == "split":
            assert services is not None
            split = self._split_brain(lab, services, keyed)
        else:
            takeovers.append(self._fail_over(lab, services, keyed, "gw1", "gw2", snapshot))
        new_tunnel: dict[str, Any] = {}
        if self.charons is not None and self.failback and self.how != "split":
            new_tunnel = self._set_up_new_tunnel(lab, "gw2")
        if gap:
            held = {sa.spi for sa in tunnel.sa_stats(lab, "gw2")}
            gap["pair_on_new_active"] = {gap["pair_in"], gap["pair_out"]} <= held
        if self.failback and not self.naive and self.how != "split":
            assert services is not None
            self._bring_back(lab, services, "gw1")
            self._wait_store_current(lab, services, "gw1", "gw2", keyed)
            time.sleep(2.0)
            takeovers.append(self._fail_over(lab, services, keyed, "gw2", "gw1", None))
        time.sleep(1.0)
        traffic.stop()
        self.event("traffic stopped")
        replay_after = tunnel.replay_errors(lab, "client")
        gateway_replay = {gw: tunnel.replay_errors(lab, gw) for gw in GATEWAYS}
        zero = takeovers[0].failed_at if takeovers else split.get("cut_at", origin)
        esp = self._esp_summary(lab, keyed, zero)
        if self.gate == "nft":
            gates.update({gw: NftGate(lab.ns(gw)).status().to_dict() for gw in GATEWAYS})
        # the tunnel keyed at the start (not the client's second strongSwan tunnel)
        spis_after = sorted(
            sa.spi for sa in tunnel.sa_stats(lab, "client") if sa.spi not in self.second_spis
        )
        ike: dict[str, Any] = {}
        if self.charons is not None:
            active = takeovers[-1].took_over if takeovers else "gw1"
            if new_tunnel:
                new_tunnel.update(self._new_tunnel_verdict(lab, active))
            ike = self._ike_verdict(lab, active, ike_before, spis_after)
            ike["new_tunnel"] = new_tunnel
            # each daemon's check of its charon after its takeovers (status ike.safety_net)
            ike["safety_net"] = {
                gw: (((services.status(gw) if services else None) or {}).get("ike") or {}).get(
                    "safety_net"
                )
                for gw in GATEWAYS
            }
        arrivals = traffic.arrivals()
        sent = traffic.sent()
        first_fail = int((takeovers[0].failed_at if takeovers else split["cut_at"]) * 1e9)
        directions = {}
        for direction, records in arrivals.items():
            summary = analyse(records, first_fail, sent[direction])
            last = takeovers[-1].resumed_at if takeovers else split.get("resumed_at")
            directions[direction] = {
                "sent": sent[direction],
                "received": summary.received,
                "lost": summary.lost,
                "max_gap_ms": round(summary.max_gap_ms, 1),
                "gap_at_ms": None
                if summary.gap_start_ms is None
                else round(summary.gap_start_ms),  # from the first failure
                "lost_ranges": len(summary.lost_ranges),
                "reordered": summary.reordered,
                # arrivals once traffic ran through the last active gateway
                "received_at_end": sum(
                    1 for a in records if last is not None and a.recv_ns > int(last * 1e9)
                ),
            }
        plot = None
        if self.plot_path is not None and takeovers:
            # The first takeover, from 2 s before the failure to 3 s after traffic resumed.
            first = takeovers[0]
            lo = first_fail - 2_000_000_000
            hi = int(((first.resumed_at or first.failed_at) + 3.0) * 1e9)
            window = {d: [a for a in r if lo <= a.recv_ns <= hi] for d, r in arrivals.items()}
            title = (
                f"ipsec-ha failover {first.failed} -> {first.took_over} ({self.mode}, {self.how})"
            )
            plot = str(plot_rate(window, self.plot_path, first_fail, title=title))
        return Outcome(
            mode=self.mode,
            how=self.how,
            naive=self.naive,
            rate=self.rate,
            tunnel={"spi_in": keyed.spi_in, "spi_out": keyed.spi_out},
            gate=self.gate,
            gates=gates,
            store_gap=gap,
            takeovers=takeovers,
            client_replay_before=replay_before,
            client_replay_after=replay_after,
            client_spis_before=spis_before,
            client_spis_after=spis_after,
            directions=directions,
            events=self.events,
            plot=plot,
            origin=origin,
            split=split,
            ike=ike,
            esp=esp,
            gateway_replay=gateway_replay,
        )

    def _esp_summary(self, lab: Lab, keyed: tunnel.Tunnel, zero: float) -> dict[str, Any]:
        """The client's inbound ESP by sender (the gateways named by their outside MAC),
        times in ms from ``zero`` (monotonic: the first failure)."""
        capture = self.capture
        if capture is None:
            return {}
        arrivals = capture.stop()
        if capture.error:
            return {"error": capture.error}
        names = {}
        for gw in GATEWAYS:
            with lab.ipr(gw) as ipr:
                link = ipr.link("get", ifname=OUTSIDE.ifname)[0]
                names[link.get("IFLA_ADDRESS")] = gw
        wall_origin = int((time.time() - time.monotonic() + zero) * 1e9)
        return summarise(arrivals, keyed.spi_out, tunnel.CLIENT_REPLAY_WINDOW, names, wall_origin)

    # -- steps --------------------------------------------------------------------
    def _fail(self, lab: Lab, services: Services | None, gw: str) -> float:
        if self.how == "kill":
            at = self.event(
                f"SIGKILL to {gw}'s keepalived" + ("" if services is None else " and daemon")
            )
            lab.kill_keepalived(gw, signal.SIGKILL, wait=False)
            if services is not None:
                services.kill(gw, "daemon")
            if self.charons is not None:
                self.charons.kill(gw)
            lab.wait_keepalived_exit(gw)
            return at
        at = self.event(f"{gw}'s outside link down")
        lab.exec(gw, ["ip", "link", "set", OUTSIDE.ifname, "down"])
        return at

    def _fail_over(
        self,
        lab: Lab,
        services: Services | None,
        keyed: tunnel.Tunnel,
        old: str,
        new: str,
        snapshot: Any,
    ) -> Takeover:
        failed_at = self._fail(lab, services, old)
        take = Takeover(old, new, self.how, failed_at)
        # the failed gateway's kernel outlives a crash: its counter shows whether it
        # still encrypted after the takeover (a sender the jump cannot cover)
        take.counters["old_oseq_at_fail"] = _oseq(lab, old, keyed.spi_out)
        take.counters["new_oseq_before"] = _oseq(lab, new, keyed.spi_out)
        take.counters["client_replay_at_fail"] = tunnel.replay_errors(lab, "client")[
            "XfrmInStateSeqError"
        ]
        deadline = keepalived.dead_interval(self.advert_int, PRIORITIES[new]) + SETTLE_TIMEOUT
        if services is None:
            from appliance.restore import restore_netns

            # after a SIGKILL the old keepalived leaves its VIPs configured: wait for
            # the new one to hold them too (it answers ARP and sent gratuitous ARP)
            wait_for(
                f"{new} to hold the VIPs",
                lambda: all(new in h for h in lab.vip_holders().values()),
                deadline,
            )
            take.master_at = self.event(f"{new} holds the VIPs")
            restored = restore_netns(snapshot, lab.ns(new))  # no jump: the naive copy
            take.done_at = self.event(f"naive: snapshot restored on {new} without a jump")
            take.installed_sas = restored.sa_added
        else:
            status = services.wait_role(new, ("active",), after=failed_at, timeout=deadline)
            report = status.get("report") or {}
            take.master_at = float(status["received"])
            steps = {t["step"]: t["monotonic"] for t in report.get("timeline", [])}
            take.done_at = steps.get("done", float(status["monotonic"]))
            take.counters["old_oseq_at_done"] = _oseq(lab, old, keyed.spi_out)
            take.installed_sas = int(report.get("installed_sas", 0))
            take.advanced = len(report.get("advanced", []))
            take.rekey = len(report.get("rekey", []))
            take.timeline = [(t["monotonic"], t["step"]) for t in report.get("timeline", [])]
            take.fetch = next(
                (t.get("detail") or {} for t in report.get("timeline", [])
                 if t["step"] == "fetch-state"),
                {},
            )  # fmt: skip
            self.events.append((take.master_at, f"{new}'s daemon reads MASTER from keepalived"))
            for at, step in take.timeline[1:]:
                self.events.append((at, f"{new}'s daemon: {step}"))
            self.event(
                f"{new} active: {take.installed_sas} SAs installed, "
                f"{take.advanced} outbound counters advanced"
            )
        in_client = {sa.spi: sa for sa in tunnel.sa_stats(lab, "client")}.get(keyed.spi_out)
        take.counters["gateway_oseq"] = _oseq(lab, new, keyed.spi_out)
        take.counters["client_seq"] = in_client.seq if in_client else -1
        take.resumed_at = self._wait_resumed(lab, new, keyed, since=take.done_at)
        take.client_replay = tunnel.replay_errors(lab, "client")["XfrmInStateSeqError"]
        take.counters["old_oseq_after"] = _oseq(lab, old, keyed.spi_out)
        self.event(f"traffic flows both ways through {new}")
        return take

    def _store_link_gap(self, lab: Lab, services: Services) -> dict[str, Any]:
        """gw2 (hot standby) loses its link to every store while gw1 keys a second pair
        and traffic moves the counters; then the link comes back. ``recovered``: wait
        until gw2's kernel holds the pair; ``during``: return at once (the kill follows,
        a takeover during the follower's recovery)."""

        def polls() -> dict[str, int]:
            health = (services.status("gw2") or {}).get("health") or {}
            return dict(health.get("follow_polls") or {})

        def gw2_holds(pair: tunnel.Tunnel) -> bool:
            return {pair.spi_in, pair.spi_out} <= {sa.spi for sa in tunnel.sa_stats(lab, "gw2")}

        before = polls()
        self.event("gw2's link to the stores cut (its requests to the sync port dropped)")
        lab.exec("gw2", ["nft", "-f", "-"], input=_CUT_STORE)
        pair = tunnel.add_pair(lab, "gw1", SECOND_PROTECTED)
        self.event(
            f"gw1 keys a second pair (0x{pair.spi_in:08x}, 0x{pair.spi_out:08x}) "
            "that gw2 cannot learn yet"
        )
        wait_for(
            "gw1's store to hold the second pair",
            lambda: services.stored_oseq("gw1", pair.spi_out) is not None,
            SETTLE_TIMEOUT,
            0.2,
        )
        time.sleep(STORE_GAP_S)  # traffic moves the stored counters on meanwhile
        missed = not gw2_holds(pair)
        revision_cut = (services.status("gw2") or {}).get("health", {}).get("follow_revision")
        lab.exec("gw2", ["nft", "delete", "table", "inet", "iha_cut_store"])
        healed_at = self.event("gw2's link to the stores restored")
        after: dict[str, int] | None = None
        if self.store_gap == "recovered":
            wait_for("gw2 to hold the second pair", lambda: gw2_holds(pair), SETTLE_TIMEOUT, 0.2)
            after = polls()
            self.event(f"gw2 holds the second pair; its polls {before} -> {after}")
        return {
            "missed": missed,
            "pair_in": pair.spi_in,
            "pair_out": pair.spi_out,
            "polls_before": before,
            "polls_after": after,
            "revision_at_cut": revision_cut,
            "healed_at": healed_at,
        }

    def _probe_gate(self, lab: Lab, gw: str, keyed: tunnel.Tunnel) -> dict[str, Any]:
        """Send pings that the standby's real out policy would encrypt; the gate must drop
        them before the transform: its counter moves, the SA's sequence number does not.

        The SA's outer source is the VIP, and without it the kernel cannot route the
        ESP (no bundle, no transform): a standby is gated by that too, but not at the
        moment it matters, once keepalived gave it the VIP and before ``open-outbound``
        (or in a split brain). So the VIP goes on the standby's loopback for the probe,
        with ``arp_ignore = 1`` so that it answers no ARP for it, and is taken off after.
        """

        def oseq() -> int:
            return _oseq(lab, gw, keyed.spi_out)

        vip = f"{vip_address(OUTSIDE)}/32"
        arp_ignore = "net.ipv4.conf.all.arp_ignore"
        was = lab.exec(gw, ["sysctl", "-n", arp_ignore]).stdout.strip()
        lab.exec(gw, ["sysctl", "-qw", f"{arp_ignore}=1"])
        lab.exec(gw, ["ip", "addr", "add", vip, "dev", "lo"])
        try:
            before = oseq()
            target = CLIENT_PROTECTED.split("/")[0]
            lab.exec(gw, ["ping", "-n", "-q", "-c", str(GATE_PINGS), "-i", "0.2", "-W", "1",
                          "-I", address_of(gw, INSIDE), target], check=False)  # fmt: skip
        finally:
            lab.exec(gw, ["ip", "addr", "del", vip, "dev", "lo"], check=False)
            lab.exec(gw, ["sysctl", "-qw", f"{arp_ignore}={was}"], check=False)
        status = NftGate(lab.ns(gw)).status().to_dict()
        self.event(
            f"{gw}: {GATE_PINGS} pings towards the client; the gate dropped "
            f"{status['dropped_packets']}, outbound SA counter {before} -> {oseq()}"
        )
        return {**status, "oseq_before_pings": before, "oseq_after_pings": oseq()}

    def _split_brain(self, lab: Lab, services: Services, keyed: tunnel.Tunnel) -> dict[str, Any]:
        """Cut VRRP between the gateways (both become MASTER), watch, heal, check."""
        stored_before = services.stored_oseq("gw2", keyed.spi_out)
        cut_at = self.event("VRRP between gw1 and gw2 cut (both drop the other's adverts)")
        for gw in GATEWAYS:
            lab.exec(gw, ["nft", "-f", "-"], input=_CUT_VRRP)
        deadline = keepalived.dead_interval(self.advert_int, PRIORITIES["gw2"]) + SETTLE_TIMEOUT
        services.wait_role("gw2", ("active",), after=cut_at, timeout=deadline)
        self.event("gw2 is MASTER too: two masters")
        fenced: dict[str, int] = {gw: 0 for gw in GATEWAYS}
        end = time.monotonic() + 8.0
        was = {gw: False for gw in GATEWAYS}
        while time.monotonic() < end:
            for gw in GATEWAYS:
                st = services.status(gw) or {}
                now_fenced = bool(st.get("fenced"))
                if now_fenced and not was[gw]:
                    fenced[gw] += 1
                    self.event(f"{gw} fenced by the store (a newer epoch): outbound gated")
                elif was[gw] and not now_fenced:
                    self.event(f"{gw} reclaimed ownership")
                was[gw] = now_fenced
            time.sleep(0.1)
        replay_split = tunnel.replay_errors(lab, "client")
        healed_at = self.event("VRRP healed")
        for gw in GATEWAYS:
            lab.exec(gw, ["nft", "delete", "table", "inet", "iha_cut"])
        services.wait_role("gw2", ("standby",), after=healed_at, timeout=deadline)
        self.event("gw2 back to BACKUP (gw1 has the higher priority)")
        wait_for(
            "gw1 to own the state again",
            lambda: (
                (st := services.status("gw1")) and st.get("publishing") and not st.get("fenced")
            ),
            SETTLE_TIMEOUT,
            0.1,
        )
        self.event("gw1 active and publishing, not fenced")
        resumed = self._wait_resumed(lab, "gw1", keyed, since=healed_at)
        self.event("traffic flows both ways through gw1")
        at_heal = tunnel.replay_errors(lab, "client")
        time.sleep(3.0)
        after_heal = tunnel.replay_errors(lab, "client")
        stored_after = services.stored_oseq("gw1", keyed.spi_out)
        return {
            "cut_at": cut_at,
            "healed_at": healed_at,
            "resumed_at": resumed,
            "fenced": fenced,
            "client_replay_end_of_split": replay_split,
            "client_replay_once_resumed": at_heal,
            "client_replay_3s_later": after_heal,
            "stored_oseq_before": stored_before,
            "stored_oseq_after": stored_after,
        }

    def _bring_back(self, lab: Lab, services: Services, gw: str) -> None:
        if self.how == "kill":
            back_at = self.event(f"{gw}'s keepalived and daemon restarted")
            lab.start_keepalived(gw)
            services.start_daemon(gw)
        else:
            back_at = self.event(f"{gw}'s outside link up")
            lab.exec(gw, ["ip", "link", "set", OUTSIDE.ifname, "up"])
            # The kernel dropped the static routes through the link when it went
            # down and does not bring them back: put the lab's back, as an
            # operator's network configuration would.
            for dst, via in ROUTES[gw]:
                lab.exec(gw, ["ip", "route", "replace", dst, "via", via])
        # keepalived reports BACKUP (nopreempt: the VIPs stay where they are)
        services.wait_role(gw, ("standby",), after=back_at)
        if self.charons is not None and self.how == "kill":
            # After the daemon, whose relay then sees charon start (docs/strongswan.md).
            started = time.monotonic()
            self.charons.start(gw)
            self.charons.settle(started)
            self.event(f"{gw}'s charon restarted")
        wait_for(
            f"{gw} to be backup without the VIPs",
            lambda: not any(gw in h for h in lab.vip_holders().values()),
            SETTLE_TIMEOUT,
        )
        self.event(f"{gw} is standby again")

    def _wait_store_current(
        self, lab: Lab, services: Services, back: str, active: str, keyed: tunnel.Tunnel
    ) -> None:
        """Wait until ``back``'s own store holds an outbound counter at least the active
        gateway's of now, so that the failback starts from a current store. Under TCG a
        store starved while its gateway restarts has been seen 11.7 s behind the active's
        writes, and a takeover reads the first store that answers (docs/failover.md, "A
        gateway whose daemon died", last paragraph)."""

        def oseq() -> int:
            return max(0, _oseq(lab, active, keyed.spi_out))  # no SA yet: 0

        wanted = oseq()
        start = time.monotonic()
        wait_for(
            f"{back}'s store to hold {active}'s outbound counter {wanted}",
            lambda: (services.stored_oseq(back, keyed.spi_out) or 0) >= wanted,
            SETTLE_TIMEOUT,
            0.5,
        )
        self.event(
            f"{back}'s store holds {active}'s counters (waited {time.monotonic() - start:.1f} s)"
        )

    def _establish_with_charon(self, lab: Lab) -> tunnel.Tunnel:
        """charon on the gateways (after their daemons) and the client; the client sets up
        the IKE SA with the VIP; the tunnel's SPIs as the client's kernel holds them."""
        self.charons = charons = Charons(lab)
        started = time.monotonic()
        for host in ("gw1", "gw2", "client"):
            charons.start(host)
        charons.settle(started)
        charons.initiate()
        vip = vip_address(OUTSIDE)
        spis = {(sa.src == vip): sa.spi for sa in tunnel.sa_stats(lab, "client")}
        if len(spis) != 2:
            raise LabError(f"the client holds {tunnel.sa_stats(lab, 'client')}, not one pair")
        self.event(f"the client set up IKE SA {charons.ike_sas('client')[0][1]} with the VIP")
        return tunnel.Tunnel(spi_in=spis[False], spi_out=spis[True])

    def _set_up_new_tunnel(self, lab: Lab, active: str) -> dict[str, Any]:
        """After a takeover: the client sets up a second IKE SA (``vip2``) through ``active``
        and pings the server through it, so that its counters move. A tunnel that only the
        new active gateway ever held: the failback must carry it back from the store."""
        charons = self.charons
        assert charons is not None
        lab.exec("client", ["ip", "addr", "add", SECOND_PROTECTED, "dev", "lo"])
        held = {sa.spi for sa in tunnel.sa_stats(lab, "client")}
        charons.initiate_second()
        self.second_spis = {sa.spi for sa in tunnel.sa_stats(lab, "client")} - held
        ike = charons.ike_sas("client", SECOND_IKE_NAME)
        replies = self._pings_through_new_tunnel(lab)
        self.event(
            f"the client set up a second IKE SA {ike[0][1]} through {active}; "
            f"{replies} of {NEW_TUNNEL_PINGS} pings through it answered"
        )
        return {
            "set_up_on": active,
            "client_before": ike,
            "spis_before": sorted(self.second_spis),
            "replies_before": replies,
        }

    def _new_tunnel_verdict(self, lab: Lab, active: str) -> dict[str, Any]:
        """The second tunnel once the failback is done: the client's IKE SA and SAs, the
        active gateway's IKE SA, and pings through it."""
        charons = self.charons
        assert charons is not None
        replies = self._pings_through_new_tunnel(lab)
        client = charons.ike_sas("client", SECOND_IKE_NAME)
        held = {spis for _, spis in client}
        on_active = [sa for sa in charons.ike_sas(active) if sa[1] in held]
        spis = sorted({sa.spi for sa in tunnel.sa_stats(lab, "client")} & self.second_spis)
        self.event(
            f"the second tunnel after the failback: {replies} of {NEW_TUNNEL_PINGS} pings "
            f"answered through {active}"
        )
        return {
            "active": active,
            "client_after": client,
            "on_active": on_active,
            "spis_after": spis,
            "replies_after": replies,
        }

    def _pings_through_new_tunnel(self, lab: Lab) -> int:
        """Echo replies to ``NEW_TUNNEL_PINGS`` pings from ``SECOND_PROTECTED`` to the server."""
        result = lab.exec("client", [
            "ping", "-n", "-q", "-c", str(NEW_TUNNEL_PINGS), "-i", "0.2", "-W", "2",
            "-I", SECOND_PROTECTED.split("/")[0], address_of("server", INSIDE),
        ], check=False)  # fmt: skip
        found = re.search(r"(\d+) (?:packets )?received", result.stdout)
        return int(found.group(1)) if found else 0

    def _ike_verdict(
        self, lab: Lab, active: str, before: list[tuple[str, str]], spis: list[int]
    ) -> dict[str, Any]:
        """The IKE side once traffic stopped: the client's IKE SA, the active gateway's, the
        IKE_SA_INITs, and a CHILD rekey by the client through ``active``."""
        charons = self.charons
        assert charons is not None
        after = charons.ike_sas("client", IKE_NAME)
        # the gateway names every IKE SA from the client "vip": this one by its SPIs
        on_active = [sa for sa in charons.ike_sas(active) if sa[1] in {s for _, s in before}]
        charons.swanctl("client", "--rekey", "--child", CHILD_NAME)
        old = set(spis)

        def rekeyed() -> list[int] | None:
            now = {sa.spi for sa in tunnel.sa_stats(lab, "client")} - self.second_spis
            return sorted(now) if len(now) == 2 and not now & old else None

        try:
            new_spis: list[int] | None = wait_for("the client's CHILD rekey", rekeyed, 60.0, 0.5)
        except LabError:
            new_spis = None
        self.event(f"the client rekeyed its CHILD SA through {active}: {new_spis is not None}")
        # Idle now: after dpd_delay without inbound IKE or ESP the client's charon sends DPD,
        # which only the active gateway's charon, holding the IKE SA, can answer.
        mark = len(charons.log_lines("client"))
        try:
            wait_for(
                "the client's DPD to be answered",
                lambda: charons.dpd_answered("client", mark),
                CLIENT_DPD_DELAY_S + 60.0,
                1.0,
            )
            dpd = True
        except LabError:
            dpd = False
        self.event(f"the client's DPD answered through {active}: {dpd}")
        return {
            "client_before": before,
            "client_after": after,
            "active": active,
            "on_active": on_active,
            "ike_sa_inits": charons.ike_sa_inits("client"),
            "rekeyed_spis": new_spis,
            "client_after_rekey": charons.ike_sas("client", IKE_NAME),
            "dpd_answered": dpd,
            "client_after_dpd": charons.ike_sas("client", IKE_NAME),
        }

    def _wait_resumed(self, lab: Lab, gw: str, keyed: tunnel.Tunnel, since: float | None) -> float:
        """Wait until both of the tunnel's SAs on ``gw`` carried RESUMED_PACKETS more packets."""

        def counts() -> dict[int, int]:
            return {sa.spi: sa.packets for sa in tunnel.sa_stats(lab, gw)}

        start = counts()

        def resumed() -> float | None:
            now = counts()
            for spi in (keyed.spi_in, keyed.spi_out):
                if now.get(spi, 0) - start.get(spi, 0) < RESUMED_PACKETS:
                    return None
            return time.monotonic()

        return wait_for(f"traffic both ways through {gw}", resumed, SETTLE_TIMEOUT, 0.05)


# -- the report ---------------------------------------------------------------------
def _oseq(lab: Lab, host: str, spi: int) -> int:
    """``host``'s outbound counter of the SA ``spi`` (-1: it holds no such SA)."""
    sa = {sa.spi: sa for sa in tunnel.sa_stats(lab, host)}.get(spi)
    return sa.oseq if sa else -1


def report_lines(outcome: Outcome) -> list[str]:
    """The readable timeline and summary table."""
    zero = outcome.takeovers[0].failed_at if outcome.takeovers else outcome.origin
    lines = ["timeline (ms from the first failure):"]
    for at, text in sorted(outcome.events):
        lines.append(f"  {1000 * (at - zero):9.1f}  {text}")
    lines.append("")
    head = f"  {'':28}" + "".join(
        f"{t.failed}->{t.took_over:>3}".rjust(14) for t in outcome.takeovers
    )
    lines += ["summary:", head]

    def row(label: str, values: list[str]) -> None:
        lines.append(f"  {label:28}" + "".join(v.rjust(14) for v in values))

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f} ms"

    tk = outcome.takeovers
    row("VRRP detection", [ms(t.detection_ms) for t in tk])
    row("restore (MASTER -> done)", [ms(t.restore_ms) for t in tk])
    row(
        "traffic resumed after fail",
        [ms(None if t.resumed_at is None else 1000 * (t.resumed_at - t.failed_at)) for t in tk],
    )
    row("SAs installed", [str(t.installed_sas) for t in tk])
    row("counters advanced", [str(t.advanced) for t in tk])
    row("client replay errors at fail", [str(t.counters.get("client_replay_at_fail")) for t in tk])
    row("client replay errors so far", [str(t.client_replay) for t in tk])
    row("new gateway's oseq at done", [str(t.counters.get("gateway_oseq")) for t in tk])
    row("client's highest seq then", [str(t.counters.get("client_seq")) for t in tk])
    row("new gateway's oseq before", [str(t.counters.get("new_oseq_before")) for t in tk])
    row("old gateway's oseq at fail", [str(t.counters.get("old_oseq_at_fail")) for t in tk])
    row("old gateway's oseq at done", [str(t.counters.get("old_oseq_at_done")) for t in tk])
    row("old gateway's oseq after", [str(t.counters.get("old_oseq_after")) for t in tk])
    lines.append("")
    for direction, d in outcome.directions.items():
        lines.append(
            f"  {direction}: sent {d['sent']}, received {d['received']}, "
            f"lost {d['lost']} (in {d['lost_ranges']} ranges), reordered {d['reordered']}, "
            f"longest gap "
            f"{d['max_gap_ms']:.0f} ms (from {d['gap_at_ms']} ms)"
        )
    lines.append(
        f"  replay errors at the client: {outcome.replay_errors} "
        f"(before {outcome.client_replay_before}, after {outcome.client_replay_after})"
    )
    if outcome.gateway_replay:
        lines.append(
            "  replay errors at the gateways (whole run): "
            + ", ".join(f"{gw} {c}" for gw, c in outcome.gateway_replay.items())
        )
    esp = outcome.esp
    if esp.get("error"):
        lines.append(f"  ESP at the client: no capture ({esp['error']})")
    elif esp:
        lines.append(
            f"  ESP at the client (SA 0x{esp['spi']:08x}): {esp['packets']}; "
            f"late {esp['late'] or 0} (deepest {esp['deepest']}), "
            f"numbers reused {esp['reused'] or 0}, below a window of {esp['window']} "
            f"{esp['old'] or 0}"
            + (
                ""
                if esp["first_refused_ms"] is None
                else f", from {esp['first_refused_ms']} to {esp['last_refused_ms']} ms"
            )
        )
    same = outcome.client_spis_before == outcome.client_spis_after
    lines.append(
        f"  client SAs: {'unchanged' if same else 'CHANGED'} "
        f"({', '.join(f'0x{s:08x}' for s in outcome.client_spis_after)})"
    )
    if outcome.ike:
        ike = outcome.ike
        lines.append(
            f"  client IKE SA: {ike['client_before']} -> {ike['client_after']}; on "
            f"{ike['active']}: {ike['on_active']}; client IKE_SA_INITs: {ike['ike_sa_inits']}; "
            f"CHILD rekey after the last takeover: "
            f"{'ok' if ike['rekeyed_spis'] else 'FAILED'}; the client's DPD after it: "
            f"{'answered' if ike['dpd_answered'] else 'NOT ANSWERED'}"
        )
        for gw, net in (ike.get("safety_net") or {}).items():
            last = (net or {}).get("last") or {}
            lines.append(
                f"  safety net on {gw}: {(net or {}).get('checks', 0)} check(s); last: "
                + (", ".join(f"{k} {v}" for k, v in last.items()) or "none")
            )
        new = ike.get("new_tunnel") or {}
        if new:
            lines.append(
                f"  second tunnel, set up on {new['set_up_on']}: IKE SA {new['client_before']}"
                f" -> {new.get('client_after')}; on {new.get('active')}: "
                f"{new.get('on_active')}; pings answered {new['replies_before']} before, "
                f"{new.get('replies_after')} after the failback (of {NEW_TUNNEL_PINGS})"
            )
    if outcome.plot:
        lines.append(f"  plot: {outcome.plot}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mode", choices=("cold", "hot"), default="cold")
    parser.add_argument("--how", choices=("kill", "link", "split"), default="kill")
    parser.add_argument("--naive", action="store_true", help="copy SAs without the jump")
    parser.add_argument("--no-failback", action="store_true")
    parser.add_argument("--advert-int", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=250.0, help="packets/s each way")
    parser.add_argument("--plot", type=Path, help="write a PNG of packets per 10 ms here")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    parser.add_argument(
        "--store-gap",
        choices=STORE_GAPS,
        help="hot, kill: cut gw2's store link while gw1 keys a second pair",
    )
    parser.add_argument("--gate", choices=("policy", "nft"), default="policy",
                        help="[failover] gate of both daemons")  # fmt: skip
    parser.add_argument(
        "--ike",
        action="store_true",
        help="key the tunnel with strongSwan (charon on the client and the gateways, "
        "[ike] feed on the daemons; needs --mode cold --gate nft)",
    )
    args = parser.parse_args(argv)
    say: Callable[[str], None] = (lambda _: None) if args.json else print
    scenario = Scenario(
        args.mode,
        args.how,
        naive=args.naive,
        failback=not args.no_failback,
        advert_int=args.advert_int,
        rate=args.rate,
        plot=args.plot,
        gate=args.gate,
        store_gap=args.store_gap,
        ike=args.ike,
        say=lambda s: say(s),
    )
    return run_from_command_line(scenario, args.json, report_lines)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["GATEWAYS", "Outcome", "Scenario", "Takeover", "main", "report_lines"]
