"""Benchmark: what scraping costs a daemon that follows N SAs, on this machine's own CPU.

``bench/metrics.py`` measures issue 17's point (one scrape per second while
10,000 SAs are followed, under 5% of one core) where it must run, in the
lab VM: a hot standby needs a kernel that holds ESP SAs. That VM emulates
its CPU (TCG), and Python runs there 20 to 40 times slower than on the host
(its CPU probe), so its percentages are those of an emulated core.

This one runs on the host, whose kernel holds no ESP SA, with a **cold**
standby instead: it follows the store's change feed with the same
``Follower`` and keeps the state in memory (its takeover installs from that
copy), so the daemon follows all N SAs, only not into its kernel. Three
namespaces on one bridge (the netns tier's ``netns_star``):

- ``store``: ``ipsec-ha store serve`` (SQLite);
- ``gw``: ``ipsec-ha daemon``, cold, BACKUP (its keepalived FIFO), with the
  nftables guard applied (so that the scrape's live reads read real
  counters) and ``[metrics]`` on its address;
- ``scraper``: plays the gateway that was active (claims the server ID and
  stores N SAs and N policies through a ``StoreClient``), then scrapes.

Then the windows of ``bench/metrics.py`` (``measure``): reference windows
without scrapes and scraped windows of one GET per second, alternating; the
metrics threads' CPU and the whole daemon's, per thread group, and the
follower's polls per window. Only percentages of one core and ratios; no
time is asserted. Needs root (namespaces)::

    sudo .venv/bin/python bench/metrics_cold.py --sas 10000 --seconds 120 --rounds 3
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.errors import ApplianceError, LabError
from bench.metrics import (
    DAEMON_PORT,
    Result,
    Scraper,
    daemon_pid,
    measure,
    report,
    status_follow_polls,
)
from netns_lab.lab import wait_for

T = TypeVar("T")

STORE, GW, SCRAPER = "192.0.2.21", "192.0.2.22", "192.0.2.23"
"""On the lab's bridge inside the namespaces only (TEST-NET-1)."""
STORE_PORT = 4501
SERVER_ID = "198.51.100.1"
"""The served gateway identity: the stored SAs' local address (``entries_factory.LOCAL``)."""
GROUP = "VG_BENCH"
BATCH = 500
"""SAs (and policies) per ``put_entries`` call of the old active."""
MAX_SAS = 60000
"""``entries_factory``'s policies are /32s of 198.18.0.0/16 and 198.19.0.0/16."""


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class ColdRig:
    """The three namespaces, the store, the daemon; ``run`` measures (see the docstring)."""

    def __init__(self, args: argparse.Namespace, tmp: Path, ns: dict[str, str]) -> None:
        from tests.store.store_process import write_psk

        self.args, self.tmp, self.ns = args, tmp, ns
        self.psk = tmp / "cluster.psk"
        write_psk(self.psk)
        self.status_file = tmp / "status.json"
        self.fifo = tmp / "keepalived.fifo"
        os.mkfifo(self.fifo, 0o600)
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_log = tmp / "daemon.log"

    # -- the parts ---------------------------------------------------------------------

    def start_store(self) -> Any:
        from tests.store.store_process import StoreProcess, wait_ready, write_config

        config = write_config(
            self.tmp / "store.toml", self.psk, STORE, STORE_PORT, "sqlite",
            db_path=self.tmp / "store.db",
        )  # fmt: skip
        store = StoreProcess(config, self.ns["store"], self.tmp / "store.log")
        store.start()
        try:
            self.old_active(lambda client: wait_ready(client, store, timeout=30))
        except RuntimeError as exc:  # wait_ready's: the store exited
            store.kill()
            raise LabError(str(exc)) from None
        except BaseException:
            store.kill()
            raise
        return store

    def old_active(self, work: Callable[[Any], T]) -> T:
        """``work(client)`` with a store client in the scraper's namespace."""
        from appliance.store.client import StoreClient
        from tests.store.netns_star import in_netns

        key = self.psk.read_bytes().rstrip(b"\n")

        def run() -> T:
            with StoreClient(STORE, STORE_PORT, key, "old-active", timeout=1.0, retries=6) as c:
                return work(c)

        return in_netns(self.ns["scraper"], run)

    def apply_guard(self) -> None:
        from tests.store.store_process import IPSEC_HA

        argv = [IPSEC_HA, "nft", "apply", "--netns", self.ns["gw"], "--vip", SERVER_ID,
                "--store", STORE]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise LabError(f"nft apply failed: {done.stderr.strip()}")

    def start_daemon(self) -> int:
        """``ipsec-ha daemon``, cold, in gw's namespace; its pid."""
        config = self.tmp / "daemon.toml"
        config.write_text(
            f'[node]\nid = "gw-bench"\nserver_id = "{SERVER_ID}"\nnode_index = 1\n'
            f'[store]\nservers = ["{STORE}"]\nport = {STORE_PORT}\npsk_file = "{self.psk}"\n'
            "timeout_s = 1.0\nretries = 3\n"
            f'[failover]\nmode = "cold"\nkeepalived_fifo = "{self.fifo}"\n'
            f'status_file = "{self.status_file}"\nvrrp_name = "{GROUP}"\n'
            "notify_timeout_s = 60\n"
            f'[metrics]\nlisten = "{GW}:{DAEMON_PORT}"\n'
        )
        argv = [sys.executable, "-m", "appliance", "daemon", "--config", str(config)]
        with self.daemon_log.open("ab") as log:
            self.daemon = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.ns['gw']}", "--", *argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        wait_for("the daemon's first status", lambda: self.status() is not None, 60)
        self._notify("BACKUP")
        wait_for("the daemon as a standby", lambda: self._role() == "standby", 60)
        return daemon_pid(self.daemon.pid)

    def _notify(self, state: str) -> None:
        """keepalived's FIFO line, once the daemon reads the FIFO (it may open it only
        after its first status: ENXIO until then)."""

        def opened() -> int | None:
            try:
                return os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                return None

        fd = wait_for("the daemon to read its keepalived FIFO", opened, 30)
        try:
            os.write(fd, f'GROUP "{GROUP}" {state} 0\n'.encode())
        finally:
            os.close(fd)

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(15)

    def status(self) -> dict[str, Any] | None:
        if self.daemon is not None and self.daemon.poll() is not None:
            raise LabError(f"the daemon exited: {self.daemon_log.read_text()[-3000:]}")
        try:
            return json.loads(self.status_file.read_text())  # type: ignore[no-any-return]
        except (FileNotFoundError, ValueError):
            return None

    def _role(self) -> str | None:
        st = self.status() or {}
        return st.get("role") if st.get("ok") else None

    # -- the run -----------------------------------------------------------------------

    def store_state(self) -> float:
        """The old active claims the server ID and stores N SAs and policies; seconds taken."""
        from tests.store.entries_factory import make_policy, make_sa

        n = self.args.sas
        started = time.monotonic()

        def store_all(client: Any) -> None:
            epoch = client.claim(SERVER_ID)
            for first in range(0, n, BATCH):
                last = min(n, first + BATCH)
                sas = [make_sa(i) for i in range(first, last)]
                policies = [make_policy(i) for i in range(first, last)]
                client.put_entries(SERVER_ID, epoch, sas, policies)

        self.old_active(store_all)
        return time.monotonic() - started

    def wait_followed(self, polls_before: dict[str, int]) -> float:
        """Until the follower's copy is the store's: the store's probe counts every SA, a
        poll since ``polls_before`` (taken before the SAs were stored) brought them, and
        three polls after the probe's count brought nothing. Seconds taken."""
        started = time.monotonic()

        def store_holds_all() -> bool:
            stores = ((self.status() or {}).get("health") or {}).get("stores") or {}
            return bool((stores.get(STORE) or {}).get("sas") == self.args.sas)

        wait_for(f"the store probe to count {self.args.sas} SAs", store_holds_all,
                 self.args.sync_timeout)  # fmt: skip
        base = status_follow_polls(self.status())

        def caught_up() -> bool:
            now = status_follow_polls(self.status())
            brought = any(now.get(k, 0) > polls_before.get(k, 0) for k in ("whole", "changes"))
            quiet = now.get("unchanged", 0) - base.get("unchanged", 0) >= 3
            return brought and quiet

        wait_for("the follower's copy to be current", caught_up, self.args.sync_timeout)
        return time.monotonic() - started

    def measure(self, pid: int, result: Result) -> None:
        scraper = Scraper(self.ns["scraper"], {"daemon": (GW, DAEMON_PORT)}, self.args.interval)
        measure(
            result, pid, scraper, lambda: status_follow_polls(self.status()),
            self.args.seconds, self.args.rounds, say=say,
        )  # fmt: skip


@contextmanager
def rig(args: argparse.Namespace) -> Iterator[ColdRig]:
    from tests.store.netns_star import netns_star

    with tempfile.TemporaryDirectory(prefix="bench-metrics-cold-") as tmp:
        os.chmod(tmp, 0o700)  # the PSK is in it
        with netns_star({"store": STORE, "gw": GW, "scraper": SCRAPER}) as ns:
            yield ColdRig(args, Path(tmp), ns)


def new_result(args: argparse.Namespace) -> Result:
    result = Result(args.sas, args.seconds, hz=os.sysconf("SC_CLK_TCK"))
    result.followed_label = "SAs followed (cold standby, in memory)"
    return result


def run(args: argparse.Namespace, result: Result) -> None:
    with rig(args) as r:
        store = r.start_store()
        try:
            r.apply_guard()
            pid = r.start_daemon()
            say(f"daemon {pid} is a cold standby; storing {args.sas} SAs and policies")
            polls_before = status_follow_polls(r.status())
            result.setup_s["store"] = round(r.store_state(), 1)
            result.setup_s["standby"] = round(r.wait_followed(polls_before), 1)
            say(f"the standby follows {args.sas} SAs ({result.setup_s['standby']} s)")
            r.measure(pid, result)
            result.ok = True
        finally:
            r.stop_daemon()
            store.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sas", type=int, default=10000, help="SAs (and policies) followed")
    parser.add_argument("--seconds", type=float, default=120.0, help="length of each window")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="split each window's --seconds into this many alternating parts",
    )
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    parser.add_argument(
        "--sync-timeout",
        type=float,
        default=600.0,
        help="how long the store and the standby may take, s",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)  # fmt: skip
    if not 1 <= args.sas <= MAX_SAS:
        parser.error(f"--sas must be 1..{MAX_SAS}")
    times = (args.seconds, args.interval, args.sync_timeout)
    out_of_range = args.seconds < 1 or args.interval <= 0 or args.sync_timeout <= 0
    if not all(map(math.isfinite, times)) or out_of_range or args.rounds < 1:
        parser.error(
            "--seconds must be >= 1, --interval > 0, --rounds >= 1, --sync-timeout > 0 "
            "(finite numbers)"
        )
    if os.geteuid() != 0:
        print("bench/metrics_cold.py: run as root (it makes namespaces)", file=sys.stderr)
        return 2
    command = shlex.join([sys.executable, *sys.argv])
    started = time.monotonic()
    result = new_result(args)
    try:
        run(args, result)
    except (ApplianceError, OSError, subprocess.SubprocessError, ValueError) as exc:
        result.ok, result.error = False, f"{type(exc).__name__}: {exc}"
    report(result, command, time.monotonic() - started, as_json=args.json)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
