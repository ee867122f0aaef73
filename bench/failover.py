"""Benchmark: a failover of N SA pairs, cold and hot standby, timed by the daemon itself.

For each standby mode (cold, hot) and each N (default 100, 1,000 and 10,000)
this builds a lab (``netns_lab``: client, gw1, gw2, server; keepalived VRRPv3,
advert_int 1 s) with the appliance on both gateways (``netns_lab.services``:
an SQLite store and ``ipsec-ha daemon`` each), then:

1. installs N tunnel-mode SA pairs (in + out, AES-GCM, distinct SPIs) and
   their in/out/fwd policies on gw1 in one netlink batch, as IKE would
   (``XfrmSocket.install_batch``; peers from 198.18.0.0/16, one protected
   /32 per peer from 198.19.0.0/16, the lab's inside segment behind the VIP);
2. waits until the standby side holds all of it: gw2's store lists 2N SAs
   and 3N policies under the server ID (its heartbeat statistics, asked from
   inside gw2's namespace), and in hot mode gw2's kernel holds the 2N SAs and
   N policies per direction too (``ip xfrm state/policy count``); and gw2's
   follower is current (a poll after that found no change: ``follow_polls``
   in its status; in cold mode its copy is in memory only);
3. kills gw1 as the failover scenario does (SIGKILL to keepalived and the
   daemon) and waits for gw2's daemon to report ``active``;
4. checks gw2's kernel (2N SAs, N policies per direction, every outbound
   policy opened, every outbound counter advanced). A run that fails a check
   prints FAILED and the reason instead of figures.

The figures all come from the run: VRRP detection is the time from the kill
to gw2's daemon reading MASTER from keepalived's FIFO (``received`` in its
status); MASTER -> SAs installed and MASTER -> done are steps of the
daemon's own timeline (``report.timeline``: ``sas-installed``, and ``done``
once outbound is open and publishing started). The setup columns say where
the rest of the wall time goes (lab and daemons up, the batch on gw1, the
standby catching up). It needs root and a kernel with ESP: run it in the lab
VM::

    scripts/lab-vm --timeout 3000 -- .venv/bin/python bench/failover.py
    scripts/lab-vm --timeout 3000 -- .venv/bin/python bench/failover.py \\
        --modes cold --n 100 1000 --json

Progress lines with timestamps go to stderr; the table (or JSON) to stdout;
a failed run also prints the daemons' and stores' last log lines to stderr.
Every lab is torn down before the next one is built. ``--notify-timeout``
sets the daemons' bound on a takeover (``[failover] notify_timeout_s``, 60 s
in the lab): under TCG, with thousands of SAs, the takeover can take longer,
and a takeover past its bound leaves outbound gated and is reported FAILED.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import pathlib
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from appliance.errors import ApplianceError, LabError
from appliance.model import (
    AeadAlgorithm,
    Direction,
    KeyMaterial,
    Mode,
    SadEntry,
    Selector,
    SpdEntry,
    Template,
)

# The lab's addressing: the SAs end at the outside VIP and protect the inside segment.
LOCAL = ipaddress.IPv4Address("192.0.2.1")
LOCAL_NET = ipaddress.IPv4Network("198.51.100.0/24")
PEERS = ipaddress.IPv4Network("198.18.0.0/16")
REMOTE_NETS = ipaddress.IPv4Network("198.19.0.0/16")
MAX_PAIRS = PEERS.num_addresses - 2
"""One peer (and one protected /32) per pair, neither the network nor the broadcast address."""
SPI_BASE = 0x10000
AEAD = "rfc4106(gcm(aes))"
AEAD_KEY_BITS = 160
"""A 128-bit AES key and the 32-bit salt, as iproute2's ``aead ... 0x<40 hex> 128``."""
ICV_BITS = 128
INBOUND_REPLAY_WINDOW = 32
POLL_S = 1.0
PROGRESS_S = 30.0
LOG_LINES = 25
MAX_NOTIFY_TIMEOUT = 300.0
"""The most ``[failover] notify_timeout_s`` the daemon accepts."""

Ops = list[tuple[str, SadEntry | SpdEntry]]


# -- the state IKE would install (pure) ------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """The addresses and SPIs of SA pair ``index``."""

    index: int
    peer: ipaddress.IPv4Address
    remote: ipaddress.IPv4Address
    """The peer's protected address (a /32 behind it)."""
    spi_in: int
    spi_out: int
    reqid: int


def pair(index: int) -> Pair:
    """Pair ``index`` (0 <= index < MAX_PAIRS): distinct peer, protected /32, SPIs, reqid."""
    if not 0 <= index < MAX_PAIRS:
        raise ValueError(f"pair index {index} outside 0..{MAX_PAIRS - 1}")
    return Pair(
        index=index,
        peer=PEERS[index + 1],
        remote=REMOTE_NETS[index + 1],
        spi_in=SPI_BASE + 2 * index,
        spi_out=SPI_BASE + 2 * index + 1,
        reqid=index + 1,
    )


def _aead() -> AeadAlgorithm:
    return AeadAlgorithm(
        AEAD, AEAD_KEY_BITS, ICV_BITS, KeyMaterial(secrets.token_bytes(AEAD_KEY_BITS // 8))
    )


def pair_operations(p: Pair) -> Ops:
    """``install_batch`` operations for one pair: 2 SAs, then its out/in/fwd policies."""
    sa_in = SadEntry(
        daddr=LOCAL,
        saddr=p.peer,
        spi=p.spi_in,
        mode=Mode.TUNNEL,
        reqid=p.reqid,
        replay_window=INBOUND_REPLAY_WINDOW,
        aead=_aead(),
    )
    sa_out = SadEntry(
        daddr=p.peer, saddr=LOCAL, spi=p.spi_out, mode=Mode.TUNNEL, reqid=p.reqid, aead=_aead()
    )
    local, remote = LOCAL_NET.network_address, p.remote
    to_peer = Selector(saddr=local, prefixlen_s=LOCAL_NET.prefixlen, daddr=remote, prefixlen_d=32)
    from_peer = Selector(saddr=remote, prefixlen_s=32, daddr=local, prefixlen_d=LOCAL_NET.prefixlen)
    out_tmpl = Template(daddr=p.peer, saddr=LOCAL, mode=Mode.TUNNEL, reqid=p.reqid)
    in_tmpl = Template(daddr=LOCAL, saddr=p.peer, mode=Mode.TUNNEL, reqid=p.reqid)
    return [
        ("add_sa", sa_in),
        ("add_sa", sa_out),
        ("add_policy", SpdEntry(selector=to_peer, dir=Direction.OUT, templates=(out_tmpl,))),
        ("add_policy", SpdEntry(selector=from_peer, dir=Direction.IN, templates=(in_tmpl,))),
        ("add_policy", SpdEntry(selector=from_peer, dir=Direction.FWD, templates=(in_tmpl,))),
    ]


def ip_batch_lines(pairs: int) -> list[str]:
    """``ip -batch`` lines with the content of ``operations(pairs)`` (fresh keys).

    The cold floor's reference: iproute2 installing the same SAs and policies.
    """
    sas: list[str] = []
    policies: list[str] = []
    local, inside = LOCAL, LOCAL_NET
    for i in range(pairs):
        p = pair(i)
        for src, dst, spi, extra in (
            (p.peer, local, p.spi_in, f" replay-window {INBOUND_REPLAY_WINDOW}"),
            (local, p.peer, p.spi_out, ""),
        ):
            key = "0x" + secrets.token_hex(AEAD_KEY_BITS // 8)
            sas.append(
                f"xfrm state add src {src} dst {dst} proto esp spi {spi:#x} reqid {p.reqid}"
                f" mode tunnel aead {AEAD} {key} {ICV_BITS}{extra}"
            )
        for direction, s_net, d_net, tsrc, tdst in (
            ("out", inside, f"{p.remote}/32", local, p.peer),
            ("in", f"{p.remote}/32", inside, p.peer, local),
            ("fwd", f"{p.remote}/32", inside, p.peer, local),
        ):
            policies.append(
                f"xfrm policy add src {s_net} dst {d_net} dir {direction}"
                f" tmpl src {tsrc} dst {tdst} proto esp reqid {p.reqid} mode tunnel"
            )
    return sas + policies


def operations(pairs: int) -> Ops:
    """Every pair's SAs first, then every policy (policies name SAs by template)."""
    if not 1 <= pairs <= MAX_PAIRS:
        raise ValueError(f"the number of SA pairs must be 1..{MAX_PAIRS}, not {pairs}")
    sas: Ops = []
    policies: Ops = []
    for i in range(pairs):
        for op in pair_operations(pair(i)):
            (sas if op[0] == "add_sa" else policies).append(op)
    return sas + policies


# -- one run ---------------------------------------------------------------------------


@dataclass
class Row:
    """One (mode, N) run: the figures, or why there are none."""

    mode: str
    pairs: int
    ok: bool = False
    error: str | None = None
    detection_ms: float | None = None
    installed_ms: float | None = None
    done_ms: float | None = None
    installed_sas: int | None = None
    advanced: int | None = None
    setup_s: dict[str, float] = field(default_factory=dict)
    """lab (lab and daemons up), install (the batch on gw1); then, from the end of the
    install: store (gw2's store holds everything: the active published it) and standby
    (the standby holds it and its follower is current)."""
    timeline_ms: dict[str, float] = field(default_factory=dict)
    """Each step of gw2's takeover, ms after it read MASTER."""
    opened_ms: float | None = None
    """MASTER -> outbound open (the ``outbound-opened`` milestone)."""
    newae_floor_ms: float | None = None
    """One pipelined NEWAE batch over all N outbound SAs, in gw2 after the takeover."""
    ip_batch_floor_ms: float | None = None
    """``ip -batch`` of the same SAs and policies into an empty namespace (cold's floor, and
    what the hot standby's catch-up is set against)."""
    followed: bool | None = None
    """Hot: the takeover started from the follower's copy (``fetch-state``'s report)."""

    @property
    def floor_ms(self) -> float | None:
        """hot: the NEWAE batch; cold: ``ip -batch`` plus the NEWAE batch."""
        if self.newae_floor_ms is None:
            return None
        if self.mode == "hot":
            return self.newae_floor_ms
        if self.ip_batch_floor_ms is None:
            return None
        return self.ip_batch_floor_ms + self.newae_floor_ms

    @property
    def opened_vs_floor(self) -> float | None:
        floor = self.floor_ms
        if self.opened_ms is None or not floor:
            return None
        return self.opened_ms / floor


_SAD_COUNT = re.compile(r"SAD count (\d+)")
_SPD_COUNT = re.compile(r"SPD IN\s+(\d+)\s+OUT\s+(\d+)\s+FWD\s+(\d+)")


def parse_counts(sad_text: str, spd_text: str) -> tuple[int, tuple[int, int, int]]:
    """``ip xfrm state count`` and ``ip xfrm policy count`` output -> (SAs, (in, out, fwd))."""
    sad = _SAD_COUNT.search(sad_text)
    spd = _SPD_COUNT.search(spd_text)  # the first line: the SPD proper, not socket policies
    if sad is None or spd is None:
        raise LabError(f"unexpected `ip xfrm ... count` output: {sad_text!r} {spd_text!r}")
    return int(sad.group(1)), (int(spd.group(1)), int(spd.group(2)), int(spd.group(3)))


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Run:
    """One lab, one mode, N pairs; see the module docstring."""

    def __init__(self, mode: str, pairs: int, args: argparse.Namespace) -> None:
        self.mode, self.pairs, self.args = mode, pairs, args
        self.row = Row(mode, pairs)

    def __call__(self) -> Row:
        from netns_lab.lab import Lab
        from netns_lab.services import Services, SyncSettings

        ops = operations(self.pairs)  # before the lab: keys are drawn here, not timed
        t0 = time.monotonic()
        with Lab.create(advert_int=self.args.advert_int, wait_notify=False) as lab:
            settings = SyncSettings(
                mode=self.mode,
                notify_timeout_s=self.args.notify_timeout,
                store_max_datagram=self.args.max_datagram,
                gate=self.args.gate,
            )
            services = Services(lab, settings)
            try:
                if self.args.hthresh4 is not None:
                    # Both gateways alike, before any policy exists (see --hthresh4).
                    for gw in ("gw1", "gw2"):
                        lab.exec(gw, ["ip", "xfrm", "policy", "set", "hthresh4",
                                      *map(str, self.args.hthresh4)])  # fmt: skip
                services.start()
                # IKE installs on the active gateway only: until keepalived made gw1 MASTER
                # its daemon may still be a hot standby, mirroring the (empty) store.
                services.wait_role("gw1", ("active",))
                self.row.setup_s["lab"] = time.monotonic() - t0
                say(
                    f"{self.mode} N={self.pairs}: lab {lab.run_id} and daemons up "
                    f"({self.row.setup_s['lab']:.1f} s)"
                )
                self._install(lab, ops)
                self._wait_standby(lab, services)
                self._fail_over(lab, services)
            except ApplianceError:
                self._show_logs(services)
                raise
            finally:
                services.stop()
                if self.args.logs is not None:
                    self._save_logs(services)
        return self.row

    def _save_logs(self, services: Any) -> None:
        """Copy the daemons' and stores' logs to --logs before the lab is removed."""
        dest = self.args.logs / f"{self.mode}-{self.pairs}"
        dest.mkdir(parents=True, exist_ok=True)
        for gw in ("gw1", "gw2"):
            f = services.files(gw)
            for what, path in (("daemon", f.daemon_log), ("store", f.store_log)):
                with contextlib.suppress(OSError):
                    shutil.copyfile(path, dest / f"{gw}-{what}.log")
        say(f"{self.mode} N={self.pairs}: logs saved in {dest}")

    def _show_logs(self, services: Any) -> None:
        """The daemons' and stores' last log lines, to stderr (the lab is removed next)."""
        for gw in ("gw1", "gw2"):
            f = services.files(gw)
            for what, path in (("daemon", f.daemon_log), ("store", f.store_log)):
                try:
                    lines = path.read_text(errors="replace").splitlines()
                except OSError:
                    lines = ["(none)"]
                say(f"{self.mode} N={self.pairs}: {gw}'s {what} log, last {LOG_LINES} lines:")
                for line in lines[-LOG_LINES:]:
                    print(f"    {line[:300]}", file=sys.stderr)

    # -- steps -------------------------------------------------------------------------

    def _install(self, lab: Any, ops: Ops) -> None:
        from appliance.xfrm.socket import XfrmSocket

        start = time.monotonic()
        with XfrmSocket(lab.ns("gw1")) as xs:
            failures = xs.install_batch(ops)
        if failures:
            raise LabError(
                f"gw1 refused {len(failures)} of {len(ops)} changes; first: {failures[0].message}"
            )
        self.row.setup_s["install"] = time.monotonic() - start
        say(
            f"{self.mode} N={self.pairs}: {len(ops)} changes installed on gw1 "
            f"({self.row.setup_s['install']:.1f} s)"
        )

    def _counts(self, lab: Any, gw: str) -> tuple[int, tuple[int, int, int]]:
        sad = lab.exec(gw, ["ip", "xfrm", "state", "count"]).stdout
        spd = lab.exec(gw, ["ip", "xfrm", "policy", "count"]).stdout
        return parse_counts(sad, spd)

    def _store_counts(self, client: Any) -> tuple[int, int]:
        from appliance.store.base import StoreError
        from netns_lab.plan import OUTSIDE, vip_address

        try:
            stats = client.heartbeat()
        except StoreError:
            return -1, -1
        for server in stats.get("servers", []):
            if server.get("server_id") == vip_address(OUTSIDE):
                return int(server.get("sas", 0)), int(server.get("policies", 0))
        return 0, 0

    def _wait_standby(self, lab: Any, services: Any) -> None:
        """Wait until gw2's store (and in hot mode its kernel) holds everything gw1 has."""
        from appliance.netns import run_in_netns
        from appliance.store.client import StoreClient
        from appliance.store.config import load_psk
        from netns_lab.lab import wait_for
        from netns_lab.plan import INSIDE, address_of
        from netns_lab.services import STORE_PORT

        n = self.pairs
        start = time.monotonic()
        last = [start]

        def progress(text: str) -> None:
            if time.monotonic() - last[0] >= PROGRESS_S:
                last[0] = time.monotonic()
                say(
                    f"{self.mode} N={n}: waiting for the standby, "
                    f"{time.monotonic() - start:.0f} s: {text}"
                )

        def make_client() -> StoreClient:
            # The socket is created in gw2's namespace and stays bound to it.
            return StoreClient(
                address_of("gw2", INSIDE),
                STORE_PORT,
                load_psk(services.psk),
                "bench-observer",
                timeout=1.0,
                retries=3,
            )

        client = run_in_netns(lab.ns("gw2"), make_client)
        try:

            def store_full() -> bool:
                for gw in ("gw1", "gw2"):
                    if not services.alive(gw, "daemon") or not services.alive(gw, "store"):
                        raise LabError(f"a daemon or store in {gw} exited")
                sas, pols = self._store_counts(client)
                progress(f"gw2's store holds {sas} SAs, {pols} policies")
                return sas == 2 * n and pols == 3 * n

            wait_for(
                "gw2's store to hold every SA and policy",
                store_full,
                self.args.sync_timeout,
                POLL_S,
            )
        finally:
            client.close()
        self.row.setup_s["store"] = time.monotonic() - start

        def unchanged_polls() -> int:
            health = (services.status("gw2") or {}).get("health") or {}
            return int((health.get("follow_polls") or {}).get("unchanged", 0))

        def wait_current() -> None:
            # The store is whole (hot: and the kernel): one poll that then finds nothing
            # new says the follower's copy is current. Until then the store may still
            # be taking the active's resync, and a takeover would catch up on it.
            seen = unchanged_polls()

            def current() -> bool:
                progress(f"gw2's follower: {seen} unchanged polls before, {unchanged_polls()} now")
                return unchanged_polls() > seen

            remaining = max(1.0, self.args.sync_timeout - (time.monotonic() - start))
            wait_for("gw2's follower to be current", current, remaining, POLL_S)

        if self.mode == "cold":
            wait_current()
        if self.mode == "hot":

            def kernel_full() -> bool:
                sas, dirs = self._counts(lab, "gw2")
                progress(f"gw2's kernel holds {sas} SAs, policies in/out/fwd {dirs}")
                return sas == 2 * n and dirs == (n, n, n)

            remaining = max(1.0, self.args.sync_timeout - (time.monotonic() - start))
            wait_for(
                "gw2's kernel to hold every SA and policy (hot standby)",
                kernel_full,
                remaining,
                POLL_S,
            )
            wait_current()
        self.row.setup_s["standby"] = time.monotonic() - start
        say(
            f"{self.mode} N={n}: the standby holds everything ({self.row.setup_s['standby']:.1f} s)"
        )

    def _outbound_below_jump(self, lab: Any, services: Any) -> int:
        """How many outbound SAs in gw2's kernel count below the configured jump."""
        from appliance.failover.config import load_daemon_config
        from appliance.xfrm.socket import XfrmSocket

        jump = load_daemon_config(services.files("gw2").daemon_config).oseq_jump
        with XfrmSocket(lab.ns("gw2")) as xs:
            sad = xs.dump_sad()
        return sum(1 for sa in sad if sa.saddr == LOCAL and (sa.oseq64 or 0) < jump)

    def _wait_takeover(self, services: Any, failed_at: float, timeout: float) -> dict[str, Any]:
        """gw2's status once its MASTER transition ended; a failed one raises at once.

        (``Services.wait_role`` would wait out its timeout: after a failed plan
        the daemon keeps its old role.)
        """
        from netns_lab.lab import wait_for

        def ended() -> dict[str, Any] | None:
            if not services.alive("gw2", "daemon"):
                raise LabError(f"the daemon in gw2 exited: {services.log_tail('gw2')}")
            st = services.status("gw2")
            if not st or st.get("state") != "MASTER" or (st.get("received") or 0) < failed_at:
                return None
            if not st.get("ok"):
                raise LabError(f"gw2's takeover failed: {st.get('error')}")
            return st if st.get("role") == "active" else None

        result: dict[str, Any] = wait_for("gw2's daemon to take over", ended, timeout, 0.1)
        return result

    def _fail_over(self, lab: Any, services: Any) -> None:
        from netns_lab import keepalived
        from netns_lab.lab import SETTLE_TIMEOUT
        from netns_lab.plan import PRIORITIES

        n = self.pairs
        failed_at = time.monotonic()
        lab.kill_keepalived("gw1", signal.SIGKILL, wait=False)
        services.kill("gw1", "daemon")
        lab.wait_keepalived_exit("gw1")
        deadline = (
            keepalived.dead_interval(self.args.advert_int, PRIORITIES["gw2"])
            + SETTLE_TIMEOUT
            + self.args.notify_timeout
        )
        status = self._wait_takeover(services, failed_at, deadline)
        report = status.get("report") or {}
        received = float(status["received"])
        steps = {t["step"]: float(t["monotonic"]) for t in report.get("timeline", [])}
        self.row.timeline_ms = {k: round(1000 * (v - received), 1) for k, v in steps.items()}
        say(f"{self.mode} N={n}: gw2 active; timeline (ms after MASTER): {self.row.timeline_ms}")
        sas, dirs = self._counts(lab, "gw2")
        opened = int(report.get("opened", 0))
        advanced = len(report.get("advanced", []))
        problems = []
        if sas != 2 * n:
            problems.append(f"gw2's kernel holds {sas} SAs, not {2 * n}")
        if dirs != (n, n, n):
            problems.append(f"gw2's kernel holds policies in/out/fwd {dirs}, not {(n, n, n)}")
        if opened != n:
            problems.append(f"{opened} outbound policies opened, not {n}")
        # Hot standby pre-installs outbound SAs with the jump already applied, so an idle
        # SA needs no advance at takeover; what must hold is the kernel's counter.
        low = self._outbound_below_jump(lab, services)
        if low:
            problems.append(f"{low} outbound SAs on gw2 have a counter below the jump")
        if report.get("rekey"):
            problems.append(f"{len(report['rekey'])} SAs left for rekey")
        if "sas-installed" not in steps or "done" not in steps:
            problems.append(f"the timeline lacks sas-installed or done: {sorted(steps)}")
        if problems:
            raise LabError("; ".join(problems))
        self.row.detection_ms = 1000 * (received - failed_at)
        self.row.installed_ms = 1000 * (steps["sas-installed"] - received)
        self.row.done_ms = 1000 * (steps["done"] - received)
        self.row.installed_sas = int(report.get("installed_sas", 0))
        self.row.advanced = advanced
        if "outbound-opened" in steps:
            self.row.opened_ms = 1000 * (steps["outbound-opened"] - received)
        fetch: dict[str, Any] = next(
            (t for t in report.get("timeline", []) if t["step"] == "fetch-state"), {}
        )
        self.row.followed = (fetch.get("detail") or {}).get("followed")
        say(f"{self.mode} N={n}: fetch-state from the follower's copy: {self.row.followed}")
        details = {t["step"]: t["detail"] for t in report.get("timeline", []) if t.get("detail")}
        say(f"{self.mode} N={n}: step details: {json.dumps(details)}")
        self._measure_floors(lab)
        self.row.ok = True

    def _measure_floors(self, lab: Any) -> None:
        """The floors, in this run on these SAs (see ``Row.floor_ms``)."""
        from appliance.xfrm.socket import XfrmSocket

        with XfrmSocket(lab.ns("gw2")) as xs:
            outbound = [sa for sa in xs.dump_sad() if sa.saddr == LOCAL]
            # The counters as they are: a NEWAE that moves nothing, sent like the jump's.
            start = time.monotonic()
            failures = xs.install_batch([("set_replay", sa) for sa in outbound])
            self.row.newae_floor_ms = 1000 * (time.monotonic() - start)
        if failures:
            raise LabError(f"the NEWAE floor: gw2 refused {len(failures)} of {len(outbound)}")
        from netns_lab.plan import NS_PREFIX

        batch = lab.run_dir / "floor-batch.txt"
        batch.write_text("\n".join(ip_batch_lines(self.pairs)) + "\n")
        os.chmod(batch, 0o600)
        scratch = f"{NS_PREFIX}{lab.run_id}-floor"  # the lab's prefix: its sweep finds it
        subprocess.run(["ip", "netns", "add", scratch], check=True)
        try:
            if self.args.hthresh4 is not None:
                subprocess.run(["ip", "-n", scratch, "xfrm", "policy", "set", "hthresh4",
                                *map(str, self.args.hthresh4)], check=True)  # fmt: skip
            start = time.monotonic()
            subprocess.run(["ip", "-n", scratch, "-batch", str(batch)], check=True)
            self.row.ip_batch_floor_ms = 1000 * (time.monotonic() - start)
        finally:
            subprocess.run(["ip", "netns", "del", scratch], check=False)
            batch.unlink(missing_ok=True)
        say(
            f"{self.mode} N={self.pairs}: floors: NEWAE {self.row.newae_floor_ms:.0f} ms, "
            f"ip -batch {self.row.ip_batch_floor_ms:.0f} ms"
        )


# -- the report ------------------------------------------------------------------------

HEADER = (
    f"{'mode':<5} {'N':>6} {'VRRP detection':>15} {'MASTER->SAs installed':>22} "
    f"{'MASTER->outbound open':>22} {'MASTER->done':>13} {'floor':>9} {'open/floor':>10} "
    f"{'installed SAs':>14} {'advanced':>9}   "
    f"{'setup: lab':>10} {'install':>8} {'catch-up: store':>15} {'+follow':>9} "
    f"{'follow/ip -batch':>16}"
)


def row_line(row: Row) -> str:
    """One line of the table; a failed run names its reason and shows no figures."""
    head = f"{row.mode:<5} {row.pairs:>6}"
    if not row.ok:
        return f"{head}  FAILED: {row.error}"
    s = row.setup_s

    def sec(key: str) -> str:
        return f"{s[key]:.1f} s" if key in s else "-"

    def ms(value: float | None, width: int) -> str:
        return f"{value:>{width - 3}.0f} ms" if value is not None else f"{'-':>{width}}"

    ratio = row.opened_vs_floor
    # The follower's part: from gw2's store holding everything to the standby being current.
    follow_s = s["standby"] - s["store"] if "standby" in s and "store" in s else None
    follow = f"{follow_s:.1f} s" if follow_s is not None else "-"
    batch = row.ip_batch_floor_ms
    vs_batch = f"{1000 * follow_s / batch:.1f}x" if follow_s is not None and batch else "-"
    return (
        f"{head} {row.detection_ms:>12.0f} ms {row.installed_ms:>19.0f} ms "
        f"{ms(row.opened_ms, 22)} {row.done_ms:>10.0f} ms {ms(row.floor_ms, 9)} "
        f"{(f'{ratio:.1f}x' if ratio is not None else '-'):>10} "
        f"{row.installed_sas:>14} {row.advanced:>9}   "
        f"{sec('lab'):>10} {sec('install'):>8} {sec('store'):>15} {follow:>9} {vs_batch:>16}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", choices=("cold", "hot"), default=["cold", "hot"])
    parser.add_argument(
        "--n",
        nargs="+",
        type=int,
        default=[100, 1000, 10000],
        metavar="N",
        help="numbers of SA pairs",
    )
    parser.add_argument("--advert-int", type=float, default=1.0, help="VRRP advert interval, s")
    parser.add_argument(
        "--gate",
        choices=("policy", "nft"),
        default="policy",
        help="the daemons' [failover] gate: a block policy per out policy, or one nftables rule",
    )
    parser.add_argument(
        "--notify-timeout",
        type=float,
        default=60.0,
        help="the daemons' [failover] notify_timeout_s (the takeover's bound)",
    )
    parser.add_argument(
        "--max-datagram",
        type=int,
        default=1400,
        metavar="BYTES",
        help="the daemons' [store] max_datagram: page size of the takeover's bulk SA_Retr",
    )
    parser.add_argument(
        "--hthresh4",
        type=int,
        nargs=2,
        metavar=("LBITS", "RBITS"),
        help=(
            "set the gateways' SPD hash thresholds (ip xfrm policy set hthresh4) first; "
            "24 24 hashes the bench's /24-/32 policies, whose insertion the kernel "
            "otherwise does in its inexact lists, slower than linearly in their number"
        ),
    )
    parser.add_argument(
        "--sync-timeout",
        type=float,
        default=1800.0,
        help="how long the standby may take to catch up, s",
    )
    parser.add_argument(
        "--logs",
        type=pathlib.Path,
        metavar="DIR",
        help="save each run's daemon and store logs under DIR/<mode>-<N>/ (they hold no keys)",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if not 0.1 <= args.notify_timeout <= MAX_NOTIFY_TIMEOUT:
        parser.error(f"--notify-timeout must be 0.1..{MAX_NOTIFY_TIMEOUT:g} (the daemon's range)")
    if args.hthresh4 is not None and not all(0 <= b <= 32 for b in args.hthresh4):
        parser.error("--hthresh4 takes two prefix lengths 0..32")
    if not 576 <= args.max_datagram <= 65507:
        parser.error("--max-datagram must be 576..65507 (the daemon's range)")
    for n in args.n:
        if not 1 <= n <= MAX_PAIRS:
            parser.error(f"N must be 1..{MAX_PAIRS}, not {n}")
    if os.geteuid() != 0:
        print("bench/failover.py: run as root inside the lab VM (see --help)", file=sys.stderr)
        return 2
    command = shlex.join([sys.executable, *sys.argv])
    rows: list[Row] = []
    if not args.json:
        print(f"command: {command}\n{HEADER}", flush=True)
    started = time.monotonic()
    for mode in args.modes:
        for n in args.n:
            run = Run(mode, n, args)
            begun = time.monotonic()
            try:
                row = run()
            except (ApplianceError, OSError) as exc:
                row = run.row
                row.ok, row.error = False, str(exc)
            say(f"{mode} N={n}: run took {time.monotonic() - begun:.1f} s")
            rows.append(row)
            if not args.json:
                print(row_line(row), flush=True)
    wall = time.monotonic() - started
    if args.json:
        print(
            json.dumps(
                {
                    "command": command,
                    "max_datagram": args.max_datagram,
                    "hthresh4": args.hthresh4,
                    "gate": args.gate,
                    "wall_s": round(wall, 1),
                    "rows": [
                        {**asdict(r), "floor_ms": r.floor_ms, "opened_vs_floor": r.opened_vs_floor}
                        for r in rows
                    ],
                },
                indent=2,
            )
        )
    else:
        print(
            f"wall time {wall:.0f} s; times in ms from the daemon's own timeline "
            "(VRRP detection: kill -> gw2 read MASTER)"
        )
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
