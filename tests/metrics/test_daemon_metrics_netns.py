"""The real daemon's metrics, scraped over HTTP from another namespace, against the state made here.

Three namespaces on one bridge (``tests/store/netns_star``): ``store`` runs
``ipsec-ha store serve``, ``gw`` runs ``ipsec-ha daemon`` (hot standby,
``[metrics]`` on its address, the nftables guard applied) and ``scraper``
fetches ``/metrics`` and plays the gateway that was active before: it claims
the server ID's epoch at the store and writes, changes and deletes its SAs
and policies there through a ``StoreClient``. Transitions reach the daemon
through its keepalived FIFO, one ``GROUP "NAME" STATE 0`` line each, as
keepalived writes them.

The host kernel holds XFRM policies but no ESP SA: a stored SA makes the
hot standby's follow and a takeover fail. The test uses that: the store
first holds policies only (the standby follows them and is ready), then
SAs too (the standby holds none of them: not ready, and a MASTER fails),
then the SAs are deleted and a MASTER succeeds. Then the old active claims
again (the daemon is fenced) and the store is killed (unreachable).

A second test runs the daemon with ``[ondemand]`` on: one ESP packet with
an SPI nobody holds is queued, looked up at the store and dropped, and the
on-demand metrics count exactly that.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.store.client import StoreClient
from appliance.xfrm.socket import XfrmSocket
from tests.nfqueue.nfq_lab import queue_rule
from tests.store.entries_factory import make_policy, make_sa
from tests.store.netns_star import in_netns, netns_star
from tests.store.store_process import IPSEC_HA, StoreProcess, write_config, write_psk

pytestmark = pytest.mark.netns

T = TypeVar("T")

STORE, GW, SCRAPER = "192.0.2.11", "192.0.2.12", "192.0.2.13"
PORT = 4501
METRICS_PORT = 9641
SERVER_ID = "198.51.100.1"
"""The served gateway identity: the stored SAs' local address (``entries_factory.LOCAL``)."""
GROUP = "VG_METRICS"
NODE = "gw-metrics"
SETTLE_S = 30.0
"""Generous waits: every step here takes well under a second on an idle host."""

SAS = [make_sa(0), make_sa(1)]
POLICIES = [make_policy(0), make_policy(1)]


def wait_for(what: str, predicate: Callable[[], T | None], timeout: float = SETTLE_S) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class Scrape:
    """One ``/metrics`` answer: every sample by name and labels."""

    families: set[str]
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        families, samples = set(), {}
        for family in text_string_to_metric_families(text):
            families.add(family.name)
            for s in family.samples:
                samples[(s.name, frozenset(s.labels.items()))] = s.value
        return cls(families, samples)

    def get(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels (None: absent)."""
        return self.samples.get((name, frozenset(labels.items())))

    def value(self, name: str, **labels: str) -> float:
        found = self.get(name, **labels)
        assert found is not None, f"no sample {name}{labels}; have {self.named(name)}"
        return found

    def named(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}

    def label_values(self, name: str, label: str) -> dict[str, float]:
        """``label``'s value -> sample value, over every sample of ``name``."""
        return {dict(labels)[label]: v for labels, v in self.named(name).items()}


@dataclass
class Rig:
    ns: dict[str, str]
    tmp: Path
    psk: Path
    store: StoreProcess
    status_file: Path
    fifo: Path
    daemon_log: Path
    daemon: subprocess.Popen[bytes] | None = None
    test_start_unix: float = field(default_factory=time.time)

    # -- the gateway that was active before (a store client in the scraper namespace) --

    def old_active(self, work: Callable[[StoreClient], T]) -> T:
        key = self.psk.read_bytes().rstrip(b"\n")

        def run() -> T:
            with StoreClient(STORE, PORT, key, "old-active", timeout=0.3, retries=6) as client:
                return work(client)

        return in_netns(self.ns["scraper"], run)

    # -- the daemon ------------------------------------------------------------------------

    def start_daemon(self, extra: str = "") -> None:
        """``ipsec-ha daemon`` in the gateway's namespace; ``extra``: more TOML tables."""
        config = self.tmp / "daemon.toml"
        config.write_text(
            f'[node]\nid = "{NODE}"\nserver_id = "{SERVER_ID}"\nnode_index = 1\n'
            f'[store]\nservers = ["{STORE}"]\nport = {PORT}\npsk_file = "{self.psk}"\n'
            "timeout_s = 0.2\nretries = 2\n"
            f'[failover]\nmode = "hot"\nkeepalived_fifo = "{self.fifo}"\n'
            f'status_file = "{self.status_file}"\nvrrp_name = "{GROUP}"\n'
            "notify_timeout_s = 20\nhealth_interval_s = 0.5\nfence_check_ms = 200\n"
            # fenced stays fenced: the test reads it before a reclaim could lift it
            "reclaim_interval_s = 3600\n"
            f'[metrics]\nlisten = "{GW}:{METRICS_PORT}"\n' + extra
        )
        daemon = [IPSEC_HA, "daemon", "--config", str(config), "--verbose"]
        cmd = ["ip", "netns", "exec", self.ns["gw"], *daemon]
        with self.daemon_log.open("ab") as log:
            self.daemon = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        wait_for("the daemon's first status", lambda: self.status() is not None)

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            os.killpg(self.daemon.pid, signal.SIGTERM)
            try:
                self.daemon.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.daemon.pid, signal.SIGKILL)
                self.daemon.wait(10)

    def status(self) -> dict[str, Any] | None:
        if self.daemon is not None and self.daemon.poll() is not None:
            raise AssertionError(f"the daemon exited: {self.log_tail()}")
        try:
            return json.loads(self.status_file.read_text())  # type: ignore[no-any-return]
        except (FileNotFoundError, ValueError):
            return None

    def log_tail(self) -> str:
        return self.daemon_log.read_text(errors="replace")[-3000:]

    def notify(self, state: str) -> float:
        """keepalived's FIFO line for the sync group entering ``state``; the moment before it."""
        before = time.monotonic()  # the daemon stamps the line when it reads it: after this
        fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, f'GROUP "{GROUP}" {state} 0\n'.encode())
        finally:
            os.close(fd)
        return before

    def wait_status(self, what: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            st = self.status()
            return st if st is not None and check(st) else None

        try:
            return wait_for(what, found)
        except AssertionError:
            raise AssertionError(
                f"timed out waiting for {what}; status {self.status()}; log {self.log_tail()}"
            ) from None

    def wait_transition(self, state: str, after: float, ok: bool) -> dict[str, Any]:
        return self.wait_status(
            f"{state} done ({'ok' if ok else 'failed'})",
            lambda st: (
                st.get("state") == state
                and (st.get("received") or 0) >= after
                and bool(st.get("ok")) == ok
            ),
        )

    def wait_store_probe(self, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        return self.wait_status(
            "a store probe",
            lambda st: check(((st.get("health") or {}).get("stores") or {}).get(STORE) or {}),
        )

    # -- what the test reads -----------------------------------------------------------------

    def scrape(self) -> Scrape:
        url = f"http://{GW}:{METRICS_PORT}/metrics"

        def fetch() -> str:
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 200
                return response.read().decode()  # type: ignore[no-any-return]

        return Scrape.parse(in_netns(self.ns["scraper"], fetch))

    def ready(self) -> tuple[int, list[str]]:
        """``ipsec-ha status --ready --json``: exit status and reasons."""
        result = subprocess.run(
            [IPSEC_HA, "status", "--ready", "--status", str(self.status_file), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        out = json.loads(result.stdout)
        assert out["ready"] == (result.returncode == 0), (result.returncode, out)
        return result.returncode, out["reasons"]

    def ready_text(self) -> tuple[int, str]:
        result = subprocess.run(
            [IPSEC_HA, "status", "--ready", "--status", str(self.status_file)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return result.returncode, result.stdout

    def wait_ready(self, want: int, reason: str = "") -> list[str]:
        """Until ``--ready`` exits ``want`` (with a reason containing ``reason``)."""
        seen: list[Any] = []

        def matches() -> list[str] | None:
            rc, reasons = self.ready()
            seen[:] = [rc, reasons]
            if rc == want and (not reason or any(reason in r for r in reasons)):
                return reasons or ["ready"]
            return None

        try:
            return wait_for(f"--ready to exit {want} with {reason!r}", matches)
        except AssertionError:
            raise AssertionError(f"--ready: last {seen}; status {self.status()}") from None

    def kernel_policies(self) -> int:
        with XfrmSocket(self.ns["gw"]) as xs:
            return len(xs.dump_spd())

    def xfrm_stat_names(self) -> set[str]:
        text = subprocess.run(
            ["ip", "netns", "exec", self.ns["gw"], "cat", "/proc/net/xfrm_stat"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return {line.split()[0] for line in text.splitlines() if line.strip()}

    def send_udp(self, port: int, count: int) -> None:
        """``count`` datagrams from the scraper to the gateway's ``port`` (the guard's drops)."""

        def send() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _ in range(count):
                    s.sendto(b"not from the cluster", (GW, port))

        in_netns(self.ns["scraper"], send)


@pytest.fixture
def rig(tmp_path: Path, require_root: None) -> Iterator[Rig]:
    with netns_star({"store": STORE, "gw": GW, "scraper": SCRAPER}) as ns:
        psk = tmp_path / "cluster.psk"
        write_psk(psk)
        store_config = write_config(
            tmp_path / "store.toml", psk, STORE, PORT, "sqlite", db_path=tmp_path / "store.db"
        )
        store = StoreProcess(store_config, ns["store"], tmp_path / "store.log")
        rig = Rig(
            ns,
            tmp_path,
            psk,
            store,
            tmp_path / "status.json",
            tmp_path / "keepalived.fifo",
            tmp_path / "daemon.log",
        )
        os.mkfifo(rig.fifo, 0o600)
        store.start()
        try:
            wait_for("the store to answer", lambda: _answers(rig))
            # the guard, so that its named counters exist in the gateway's namespace
            guard = ["nft", "apply", "--netns", ns["gw"], "--vip", SERVER_ID, "--store", STORE]
            subprocess.run([IPSEC_HA, *guard], check=True, capture_output=True)
            yield rig
        finally:
            rig.stop_daemon()
            store.kill()


def _answers(rig: Rig) -> bool:
    if not rig.store.alive():
        raise AssertionError(f"the store exited: {rig.store.log.read_text()[-2000:]}")
    try:
        rig.old_active(lambda c: c.heartbeat(servers=False))
    except Exception:
        return False
    return True


def test_daemon_metrics_and_readiness_follow_the_state_made_here(rig: Rig) -> None:
    sid = {"server_id": SERVER_ID}
    at_store = {"server_id": SERVER_ID, "store": STORE}

    # -- 1. the store holds two policies and no SA; the daemon becomes a hot standby ------------
    epoch_old = rig.old_active(lambda c: c.claim(SERVER_ID))
    rig.old_active(lambda c: c.put_entries(SERVER_ID, epoch_old, [], POLICIES))
    rig.start_daemon()
    backup_at = rig.notify("BACKUP")
    rig.wait_transition("BACKUP", backup_at, ok=True)
    # a follow cycle brought both policies in (gated) and recorded its sync
    rig.wait_status(
        "the hot standby to follow the store",
        lambda st: st["health"]["held_policies"] == 2 and st["health"]["last_sync"] is not None,
    )
    rig.send_udp(PORT, 3)  # the sync port, not from a cluster address: the guard drops it
    rig.send_udp(500, 2)  # IKE to an address that is not a VIP: dropped too
    assert rig.wait_ready(0) == ["ready"]

    m = rig.scrape()
    assert m.value("ipsec_ha_info", node=NODE, server_id=SERVER_ID, mode="hot") == 1
    assert m.label_values("ipsec_ha_role", "role") == {"init": 0, "active": 0, "standby": 1}
    assert m.value("ipsec_ha_fenced", **sid) == 0
    assert m.named("ipsec_ha_epoch") == {}  # only an active node holds an epoch
    assert m.value("ipsec_ha_store_up", store=STORE) == 1
    assert m.value("ipsec_ha_store_epoch", **at_store) == epoch_old
    assert m.value("ipsec_ha_store_sas", **at_store) == 0
    assert m.value("ipsec_ha_store_policies", **at_store) == 2
    assert m.value("ipsec_ha_held_sas", **sid) == 0
    assert m.value("ipsec_ha_held_policies", **sid) == 2 == rig.kernel_policies()
    assert m.value("ipsec_ha_standby_lag_seconds", **sid) >= 0
    last_sync = m.value("ipsec_ha_last_sync_timestamp_seconds", **sid)
    assert rig.test_start_unix <= last_sync <= time.time()
    assert m.value("ipsec_ha_transitions_total", state="BACKUP", result="ok", **sid) == 1
    assert m.value("ipsec_ha_takeovers_total", result="ok", **sid) == 0
    assert m.value("ipsec_ha_takeovers_total", result="failed", **sid) == 0
    assert m.value("ipsec_ha_takeover_duration_seconds_count", **sid) == 0
    assert m.named("ipsec_ha_last_takeover_step_seconds") == {}
    # the health probe and the follower's fetches are answered first time on this network
    assert m.value("ipsec_ha_store_rtt_seconds_count", store=STORE) > 0
    assert m.value("ipsec_ha_store_rtt_seconds_sum", store=STORE) > 0
    assert m.value("ipsec_ha_store_retransmissions_total", store=STORE) >= 0
    assert "ipsec_ha_channel_drops" in m.families
    # the kernel's xfrm_stat of the gateway's namespace, every counter of it
    assert set(m.label_values("ipsec_ha_kernel_xfrm_stat_total", "counter")) == (
        rig.xfrm_stat_names()
    )
    assert m.value("ipsec_ha_kernel_xfrm_stat_total", counter="XfrmInStateSeqError") == 0
    # the guard's named counters in that namespace: exactly what was sent here
    packets = m.label_values("ipsec_ha_guard_packets_total", "counter")
    assert (packets["sync_dropped"], packets["ike_dropped"]) == (3, 2)
    assert packets["esp_accepted"] == 0
    assert m.value("ipsec_ha_guard_bytes_total", counter="sync_dropped") > 0
    assert "ipsec_ha_ondemand_held_spis" not in m.families  # [ondemand] is not enabled

    # -- 2. the old active stores two SAs: the hot standby cannot hold them (no ESP here) -------
    rig.old_active(lambda c: c.put_entries(SERVER_ID, epoch_old, SAS, POLICIES))
    rig.wait_store_probe(lambda probe: probe.get("sas") == 2)
    reasons = rig.wait_ready(1, "hot standby holds 0 of 2 SAs")
    assert reasons == ["hot standby holds 0 of 2 SAs and 2 of 2 policies the store has"], reasons
    m = rig.scrape()
    assert m.value("ipsec_ha_store_sas", **at_store) == 2
    assert m.value("ipsec_ha_store_policies", **at_store) == 2
    assert m.value("ipsec_ha_held_sas", **sid) == 0
    # the failing follow records no sync: the timestamp stays where the last good one put it
    assert m.value("ipsec_ha_last_sync_timestamp_seconds", **sid) >= last_sync

    # -- 3. MASTER: the takeover fails installing the SAs ------------------------------------
    master_at = rig.notify("MASTER")
    failed = rig.wait_transition("MASTER", master_at, ok=False)
    assert failed["role"] == "standby"
    m = rig.scrape()
    assert m.value("ipsec_ha_transitions_total", state="MASTER", result="failed", **sid) == 1
    assert m.value("ipsec_ha_takeovers_total", result="failed", **sid) == 1
    assert m.value("ipsec_ha_takeovers_total", result="ok", **sid) == 0
    assert m.value("ipsec_ha_role", role="standby", **sid) == 1
    assert m.value("ipsec_ha_takeover_duration_seconds_count", **sid) == 0
    rc, reasons = rig.ready()
    assert rc == 1 and any(r.startswith("last transition failed: ") for r in reasons), reasons

    # -- 4. the old active claims again and deletes its SAs; MASTER now succeeds ---------------
    def drop_sas(client: StoreClient) -> int:
        epoch = client.claim(SERVER_ID)  # the failed takeover's claim made ours stale
        client.delete(SERVER_ID, epoch, [(sa.spi, sa.proto) for sa in SAS])
        return epoch

    epoch_again = rig.old_active(drop_sas)
    rig.wait_store_probe(lambda probe: probe.get("sas") == 0)
    master_at = rig.notify("MASTER")
    done = rig.wait_transition("MASTER", master_at, ok=True)
    assert done["role"] == "active"
    # publishing started with a full resync; the owner watch has checked the epoch since
    rig.wait_status("a resync and an ownership check", lambda st: st["publishing"])
    wait_for(
        "the publisher's messages to be counted",
        lambda: rig.scrape().get(
            "ipsec_ha_sync_messages_total", store=STORE, op="ownership", result="ok"
        ),
    )
    m = rig.scrape()
    assert m.label_values("ipsec_ha_role", "role") == {"init": 0, "active": 1, "standby": 0}
    epoch_now = m.value("ipsec_ha_epoch", **at_store)
    assert epoch_now > epoch_again
    rig.wait_store_probe(lambda probe: probe.get("epoch") == epoch_now)
    assert rig.scrape().value("ipsec_ha_store_epoch", **at_store) == epoch_now
    assert m.value("ipsec_ha_transitions_total", state="MASTER", result="ok", **sid) == 1
    assert m.value("ipsec_ha_transitions_total", state="MASTER", result="failed", **sid) == 1
    assert m.value("ipsec_ha_transitions_total", state="BACKUP", result="ok", **sid) == 1
    assert m.value("ipsec_ha_takeovers_total", result="ok", **sid) == 1
    assert m.value("ipsec_ha_takeovers_total", result="failed", **sid) == 1
    assert m.value("ipsec_ha_takeover_duration_seconds_count", **sid) == 1
    assert m.value("ipsec_ha_takeover_duration_seconds_sum", **sid) > 0
    # one sample per step of the plan, as the status file's report lists them
    timeline = [t["step"] for t in done["report"]["timeline"]]
    steps = m.label_values("ipsec_ha_last_takeover_step_seconds", "step")
    assert set(steps) == set(timeline[1:]), (steps, timeline)
    assert {"claim-ownership", "fetch-state", "open-outbound", "done"} <= set(steps)
    assert all(s >= 0 for s in steps.values())
    taken = m.value("ipsec_ha_last_takeover_timestamp_seconds", **sid)
    assert rig.test_start_unix <= taken <= time.time()
    assert m.value("ipsec_ha_sync_messages_total", store=STORE, op="resync", result="ok") >= 1
    # the active node holds (and published) the two policies and no SA
    assert m.value("ipsec_ha_held_sas", **sid) == 0
    assert m.value("ipsec_ha_held_policies", **sid) == 2
    assert m.named("ipsec_ha_standby_lag_seconds") == {}  # only a standby lags
    rig.wait_store_probe(lambda probe: (probe.get("sas"), probe.get("policies")) == (0, 2))
    assert rig.wait_ready(0) == ["ready"]

    # -- 5. the old active claims the server ID again: split brain, the daemon is fenced -------
    rig.old_active(lambda c: c.claim(SERVER_ID))
    rig.wait_status("the daemon to be fenced", lambda st: st["fenced"])
    m = rig.scrape()
    assert m.value("ipsec_ha_fenced", **sid) == 1
    assert (
        m.value("ipsec_ha_sync_messages_total", store=STORE, op="ownership", result="stale_epoch")
        >= 1
    )
    assert m.value("ipsec_ha_transitions_total", state="FENCED", result="ok", **sid) == 1
    assert "fenced" in rig.wait_ready(1, "fenced")

    # -- 6. the store goes away ----------------------------------------------------------------
    retransmitted = m.value("ipsec_ha_store_retransmissions_total", store=STORE)
    rig.store.kill()
    wait_for("store_up to drop", lambda: rig.scrape().get("ipsec_ha_store_up", store=STORE) == 0)
    reasons = rig.wait_ready(1, f"store unreachable: {STORE}: ")
    assert "fenced" in reasons
    rc, text = rig.ready_text()
    assert rc == 1 and f"not ready: store unreachable: {STORE}: " in text, text
    m = rig.scrape()
    # what the store held is no longer reported once it does not answer
    assert m.get("ipsec_ha_store_sas", **at_store) is None
    # the probe retransmits once before it gives up on the store
    assert m.value("ipsec_ha_store_retransmissions_total", store=STORE) > retransmitted


def test_ondemand_metrics_count_a_trapped_packet_and_its_retrieval(rig: Rig) -> None:
    """[ondemand] on: ESP to the VIP with an SPI nobody holds is trapped, looked up, dropped."""
    queue = 7
    gw_ns, scraper_ns = rig.ns["gw"], rig.ns["scraper"]
    # the VIP on the gateway, reachable from the scraper
    subprocess.run(["ip", "-n", gw_ns, "addr", "add", f"{SERVER_ID}/32", "dev", "lo"], check=True)
    subprocess.run(
        ["ip", "-n", scraper_ns, "route", "add", f"{SERVER_ID}/32", "via", GW], check=True
    )
    # The guard's trap needs nft_queue, which the host kernel may lack: the nfqueue tests'
    # rule queues the same packets (natively or through xt_NFQUEUE).
    queue_rule(gw_ns, queue, "meta l4proto esp")
    rig.start_daemon(
        f'[nft]\nvips = ["{SERVER_ID}"]\nstore = ["{STORE}"]\ntrap_queue = {queue}\n'
        "[ondemand]\nenabled = true\n"
    )
    rig.wait_status("on-demand retrieval to run", lambda st: st["ondemand"]["running"])
    m = rig.scrape()
    assert m.value("ipsec_ha_ondemand_held_spis") == 0
    assert m.value("ipsec_ha_ondemand_events_total", event="queued") == 0

    def send_esp() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ESP) as s:
            # SPI, sequence number, then bytes no SA could decrypt
            esp = (0x0BADC0DE).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes(32)
            s.sendto(esp, (SERVER_ID, 0))

    in_netns(scraper_ns, send_esp)
    rig.wait_status(
        "the trapped packet to be dropped as unknown",
        lambda st: st["ondemand"]["dropped_unknown"] == 1,
    )
    m = rig.scrape()
    events = m.label_values("ipsec_ha_ondemand_events_total", "event")
    assert (events["queued"], events["retrievals"], events["dropped_unknown"]) == (1, 1, 1)
    assert events["accepted"] == 0
    assert m.value("ipsec_ha_ondemand_held_spis") == 0
