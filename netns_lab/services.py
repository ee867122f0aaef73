"""The appliance on the lab's gateways: an SA store and the failover daemon on each.

This is the embedded two-node setup of docs/operations.md: each gateway runs
``ipsec-ha store serve`` (SQLite, listening on its inside address) and
``ipsec-ha daemon``, whose ``[store].servers`` names both stores, so the
active node writes its state to both and the survivor reads its own. The
daemon reads keepalived's notify FIFO (``KeepalivedFiles.fifo``) and writes
the status file the notify hook waits on. With ``SyncSettings.metrics_port``
each daemon also serves Prometheus metrics on its outside address
(``scrape``), and ``ready`` runs ``ipsec-ha status --ready`` on its status
file.

Every process runs in its gateway's namespace, in a session of its own,
with its output in the run dir; the lab's teardown kills whatever is left
in the namespaces, so nothing here outlives the lab.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.errors import ApplianceError, LabError
from appliance.status_file import read_status
from netns_lab import build, keepalived
from netns_lab.charon import HA_LOCAL, HA_REMOTE, VICI
from netns_lab.lab import SETTLE_TIMEOUT, Lab, wait_for
from netns_lab.plan import GATEWAYS, INSIDE, OUTSIDE, SYNC_GROUP, address_of, vip_address

if TYPE_CHECKING:
    from appliance.store.client import Retrieved

STORE_PORT = 4501


@dataclass(frozen=True)
class SyncSettings:
    """The ``[sync]`` and ``[failover]`` values of the lab's daemons."""

    mode: str = "cold"
    replay_seq_thresh: int = 64
    replay_timer_ms: int = 300
    coalesce_ms: int = 20
    store_rtt_ms: int = 3000
    """From a kernel event to the store: generous, since under TCG emulation with
    other VMs on the host the daemon can be descheduled for seconds; the jump
    must cover the real lag (docs/failover.md, "The bound")."""
    max_pps_per_sa: int = 2000
    """The lab sends a few hundred packets/s per SA; the jump is computed for this."""
    notify_timeout_s: float = 60.0
    """Generous: under TCG in the lab VM a takeover of thousands of SAs takes seconds."""
    store_max_datagram: int = 1400
    """``[store] max_datagram``: the page size of a takeover's bulk SA_Retr."""
    health_interval_s: float = 2.0
    """``[failover] health_interval_s``: under TCG every probe costs the daemons and the
    stores tens of milliseconds of emulated CPU; every 2 s rather than the default 1 s."""
    gate: str = "policy"
    """``[failover] gate``: ``policy`` (a block policy per out policy) or ``nft`` (one rule)."""
    metrics_port: int | None = None
    """``[metrics]``: each daemon serves ``/metrics`` on its outside address at this port,
    reachable from the client over the outside segment (None: no endpoint)."""
    ike: bool = False
    """``[ike]`` with ``feed = true``: each daemon relays its gateway's charon
    (``netns_lab.charon``) and feeds it (at a takeover; a hot standby as it follows);
    needs the nft gate and a ``store_max_datagram`` of 16384 or more."""


@dataclass
class GatewayFiles:
    """One gateway's appliance files in the run dir."""

    store_config: Path
    store_db: Path
    store_log: Path
    daemon_config: Path
    daemon_log: Path

    @classmethod
    def in_dir(cls, run_dir: Path, gateway: str) -> GatewayFiles:
        return cls(
            store_config=run_dir / f"{gateway}-store.toml",
            store_db=run_dir / f"{gateway}-store.db",
            store_log=run_dir / f"{gateway}-store.log",
            daemon_config=run_dir / f"{gateway}-daemon.toml",
            daemon_log=run_dir / f"{gateway}-daemon.log",
        )


def read_daemon_status(path: Path) -> dict[str, Any] | None:
    """A daemon's status file (``appliance.status_file.read_status``); None while there is
    none or it cannot be read, so that lab waits keep polling."""
    with contextlib.suppress(ApplianceError):
        return read_status(path)
    return None


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


@dataclass
class Services:
    """The stores and daemons of one lab; ``start``, ``kill``, ``status``, ``timeline``."""

    lab: Lab
    settings: SyncSettings = field(default_factory=SyncSettings)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.psk = self.lab.run_dir / "cluster.psk"
        if not self.psk.exists():
            _write_private(self.psk, secrets.token_hex(32) + "\n")
        for gw in GATEWAYS:
            self._write_configs(gw)

    def files(self, gw: str) -> GatewayFiles:
        return GatewayFiles.in_dir(self.lab.run_dir, gw)

    def keepalived_files(self, gw: str) -> keepalived.KeepalivedFiles:
        return keepalived.KeepalivedFiles.in_dir(self.lab.run_dir, gw)

    def _write_configs(self, gw: str) -> None:
        f, k, s = self.files(gw), self.keepalived_files(gw), self.settings
        own = address_of(gw, INSIDE)
        peers = [address_of(other, INSIDE) for other in GATEWAYS if other != gw]
        _write_private(
            f.store_config,
            f'[store]\nlisten = "{own}"\nport = {STORE_PORT}\npsk_file = "{self.psk}"\n'
            f'node_id = "store-{gw}"\nbackend = "sqlite"\n'
            # The server caps its replies at its own max_datagram (protocol.md 5.1).
            f"max_datagram = {s.store_max_datagram}\n"
            f'[store.sqlite]\npath = "{f.store_db}"\n',
        )
        servers = ", ".join(f'"{a}"' for a in [own, *peers])
        _write_private(
            f.daemon_config,
            f'[node]\nid = "{gw}"\nserver_id = "{vip_address(OUTSIDE)}"\n'
            f"node_index = {GATEWAYS.index(gw)}\n"
            f'[store]\nservers = [{servers}]\nport = {STORE_PORT}\npsk_file = "{self.psk}"\n'
            f"timeout_s = 0.2\nretries = 3\nmax_datagram = {s.store_max_datagram}\n"
            f"[sync]\nreplay_seq_thresh = {s.replay_seq_thresh}\n"
            f"replay_timer_ms = {s.replay_timer_ms}\ncoalesce_ms = {s.coalesce_ms}\n"
            f"store_rtt_ms = {s.store_rtt_ms}\nmax_pps_per_sa = {s.max_pps_per_sa}\n"
            f'[failover]\nmode = "{s.mode}"\nnotify_timeout_s = {s.notify_timeout_s}\n'
            f"health_interval_s = {s.health_interval_s}\n"
            f'gate = "{s.gate}"\n'
            f'keepalived_fifo = "{k.fifo}"\nstatus_file = "{k.status}"\n'
            f'vrrp_name = "{SYNC_GROUP}"\n'
            + (
                ""
                if s.metrics_port is None
                else f'[metrics]\nlisten = "{address_of(gw, OUTSIDE)}:{s.metrics_port}"\n'
            )
            + (
                f'[ike]\ndaemon = "strongswan"\nrelay = "{HA_REMOTE}"\ncharon = "{HA_LOCAL}"\n'
                f'feed = true\nvici = "{VICI}"\n'
                if s.ike
                else ""
            ),
        )

    # -- processes ------------------------------------------------------------
    def _spawn(self, gw: str, what: str, argv: list[str], log: Path) -> None:
        command = [
            "nsenter",
            f"--net={build.netns_path(self.lab.ns(gw))}",
            "--",
            sys.executable,
            "-m",
            "appliance",
            *argv,
        ]
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.procs[f"{gw}-{what}"] = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise LabError(f"cannot start the {what} in {gw}: {exc}") from None
        finally:
            os.close(log_fd)

    def start_store(self, gw: str) -> None:
        f = self.files(gw)
        self._spawn(gw, "store", ["store", "serve", "--config", str(f.store_config)], f.store_log)

    def start_daemon(self, gw: str) -> None:
        f = self.files(gw)
        self._spawn(
            gw, "daemon", ["daemon", "--config", str(f.daemon_config), "--verbose"], f.daemon_log
        )

    def start(self, gateways: tuple[str, ...] = GATEWAYS) -> None:
        """Start the stores, then the daemons; return once every daemon settled its role."""
        for gw in gateways:
            self.start_store(gw)
        for gw in gateways:
            self.start_daemon(gw)
        for gw in gateways:
            self.wait_role(gw, ("active", "standby"))

    def alive(self, gw: str, what: str) -> bool:
        proc = self.procs.get(f"{gw}-{what}")
        return proc is not None and proc.poll() is None

    def kill(self, gw: str, what: str, sig: int = signal.SIGKILL) -> None:
        """Signal a gateway's store or daemon and reap it."""
        proc = self.procs.pop(f"{gw}-{what}", None)
        if proc is None or proc.poll() is not None:
            raise LabError(f"the {what} is not running in {gw}")
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM every process still running, then SIGKILL what does not exit."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()

    # -- what the daemons say ---------------------------------------------------
    def status(self, gw: str) -> dict[str, Any] | None:
        return read_daemon_status(self.keepalived_files(gw).status)

    def wait_role(
        self, gw: str, roles: tuple[str, ...], after: float = 0.0, timeout: float = SETTLE_TIMEOUT
    ) -> dict[str, Any]:
        """Wait until ``gw``'s daemon reports one of ``roles`` for a transition after ``after``."""

        def settled() -> dict[str, Any] | None:
            if not self.alive(gw, "daemon"):
                raise LabError(f"the daemon in {gw} exited: {self.log_tail(gw)}")
            st = self.status(gw)
            if st and st.get("role") in roles and (st.get("received") or 0) >= after:
                if not st.get("ok"):
                    raise LabError(f"the daemon in {gw} failed: {st.get('error')}")
                return st
            return None

        try:
            return wait_for(f"{gw}'s daemon to be {' or '.join(roles)}", settled, timeout, 0.05)
        except LabError as exc:
            k = self.keepalived_files(gw)
            raise LabError(
                f"{exc}; status {self.status(gw)}; daemon log: {self.log_tail(gw)}; "
                f"keepalived log: {keepalived.tail(k.log)}"
            ) from None

    def fetch(self, gw: str) -> Retrieved:
        """What ``gw``'s store holds for the VIP's server ID, asked from ``gw``'s namespace."""
        from appliance.failover.executor import StoreAccess
        from appliance.netns import run_in_netns
        from appliance.store.client import StoreClient
        from appliance.store.config import load_psk

        psk = load_psk(self.psk)
        address = address_of(gw, INSIDE)
        # pages as large as the daemons': an IKE SA record, or an SA with an ESN window of
        # 128 words, may not fit the default 1400 bytes
        page = self.settings.store_max_datagram
        client = run_in_netns(
            self.lab.ns(gw),
            lambda: StoreClient(address, STORE_PORT, psk, "lab-observer", max_datagram=page),
        )
        try:
            return StoreAccess([client]).fetch(vip_address(OUTSIDE))
        finally:
            client.close()

    def stored_oseq(self, gw: str, spi: int) -> int | None:
        """The outbound counter ``gw``'s store holds for the SA ``spi`` (None: not stored)."""
        for sa in self.fetch(gw).sad:
            if sa.spi == spi:
                state = sa.replay_esn or sa.replay
                return None if state is None else getattr(state, "oseq64", state.oseq)
        return None

    def metrics_url(self, gw: str) -> str:
        if self.settings.metrics_port is None:
            raise LabError("the daemons serve no metrics (SyncSettings.metrics_port is None)")
        return f"http://{address_of(gw, OUTSIDE)}:{self.settings.metrics_port}/metrics"

    def scrape(self, gw: str, host: str = "client", timeout: float = 30.0) -> str:
        """``gw``'s daemon's ``/metrics``, fetched over HTTP from ``host``'s namespace."""
        from appliance.netns import run_in_netns

        url = self.metrics_url(gw)

        def fetch() -> str:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.read().decode()  # type: ignore[no-any-return]

        try:
            return run_in_netns(self.lab.ns(host), fetch)
        except OSError as exc:
            raise LabError(f"cannot scrape {url} from {host}: {exc}") from None

    def ready(
        self, gw: str, program: tuple[str, ...] = (), timeout: float = 120.0
    ) -> tuple[int, list[str]]:
        """``ipsec-ha status --ready --json`` on ``gw``'s status file: exit status, reasons.

        ``program``: the command before the options (empty: ``ipsec-ha status --ready``).
        """
        status = self.keepalived_files(gw).status
        argv = [*(program or (keepalived.ipsec_ha_binary(), "status", "--ready")), "--json"]
        argv += ["--status", str(status)]
        result = self.lab.exec(gw, argv, check=False, timeout=timeout)
        try:
            reasons = json.loads(result.stdout)["reasons"]
        except (ValueError, KeyError, TypeError):
            raise LabError(
                f"ipsec-ha status --ready in {gw} (exit {result.returncode}) printed no "
                f"verdict: {result.stderr.strip() or result.stdout.strip()}"
            ) from None
        return result.returncode, [str(r) for r in reasons]

    def keep_logs(self, dest: Path) -> None:
        """Copy every gateway's store, daemon and keepalived logs into ``dest`` (private
        files: the logs name SPIs and addresses, never keys, but stay the operator's)."""
        dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        for gw in GATEWAYS:
            f, k = self.files(gw), self.keepalived_files(gw)
            for src in (f.store_log, f.daemon_log, k.log, k.notify_log):
                with contextlib.suppress(FileNotFoundError):
                    _write_private(dest / f"{self.lab.run_id}-{src.name}", src.read_text())

    def log_tail(self, gw: str, lines: int = 8) -> str:
        return keepalived.tail(self.files(gw).daemon_log, lines)

    def timeline(self, gw: str) -> list[dict[str, Any]]:
        """The daemon's timeline records (JSON after the log prefix), oldest first."""
        out = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.files(gw).daemon_log.read_text().splitlines():
                start = line.find('{"timeline"')
                if start >= 0:
                    with contextlib.suppress(ValueError):
                        out.append(json.loads(line[start:]))
        return out
