"""A real store and ``ipsec-ha daemon`` with ``[ike]`` beside the gateway charon of a
:class:`~tests.strongswan.charon_lab.CharonLab` (lab VM, root).

Shared by the lab tests of the daemon's IKE side: :func:`ike_rig` starts
``ipsec-ha store serve`` on the gateway namespace's 127.0.0.1 and ``ipsec-ha
daemon`` (cold, ``[ike]`` on the ha plugin's addresses, the server ID the
gateway's IKE address) before any charon, so the relay sees charon start and
its book is complete.  :class:`Rig` drives and reads them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from appliance.store.base import IkeSaRecord, IkeSpis
from appliance.store.client import StoreClient
from appliance.strongswan.ha_message import HaAttributeType, HaNumber
from appliance.strongswan.ike_record import decode_record
from appliance.strongswan.ike_state import format_spis, kernel_spi
from netns_lab.charon import VICI
from tests.store.netns_star import in_netns
from tests.store.store_process import IPSEC_HA, StoreProcess, write_config, write_psk
from tests.strongswan.charon_lab import (
    CL_ADDR,
    GW_ADDR,
    GW_SYNC,
    HA_LOCAL,
    HA_REMOTE,
    HEARTBEAT_WAIT_S,
    CharonLab,
    charon_lab,
    run,
)
from tests.strongswan.charon_probe import CL_INNER, GW_INNER, ike_sas, route_inner

T = TypeVar("T")
SERVER_ID = GW_ADDR
"""The served gateway identity: the gateway's IKE address (its inbound SAs' destination)."""
STORE, STORE_PORT = "127.0.0.1", 4501
"""The store, on the gateway namespace's loopback (charon's plugin has 127.0.0.1:4510)."""
MAX_DATAGRAM = 65000
"""An IKE SA record with two CHILD SAs is about 2 kB: more than the default 1400."""
GROUP = "VG_IKE_LAB"
WAIT_S = 60.0
"""How long one step may take to reach the store: TCG is slow."""
POLICY_WAIT_S = 10.0
"""For the policies' deletion, checked last: the SAs deleted with them are long gone."""

_IKE_SA = re.compile(r"^\S+: #\d+, \w+, IKEv2, ([0-9a-f]{16})_i\*? ([0-9a-f]{16})_r", re.M)
_XFRM_SA = re.compile(r"^src (\S+) dst (\S+)\n\s+proto esp spi 0x([0-9a-f]+)", re.M)
_POLICY_DIR = re.compile(r"^\s+dir (?:in|out|fwd) ", re.M)


@dataclass
class Rig:
    """The lab, the store and daemon beside the gateway's charon, and a store reader."""

    lab: CharonLab
    fifo: Path
    status_file: Path
    daemon_log: Path
    store: StoreProcess
    daemon: subprocess.Popen[bytes]
    reader: StoreClient
    """A client of the store whose socket lives in the gateway's namespace."""
    standby: Rig | None = None
    """The standby gateway's daemon (``ike_rig(standby_daemon=True)``), with the same lab,
    store and reader."""

    # -- the daemon -------------------------------------------------------------------------

    def status(self) -> dict[str, Any] | None:
        if self.daemon.poll() is not None:
            raise AssertionError(f"the daemon exited ({self.daemon.returncode}):\n{self.log()}")
        try:
            text = self.status_file.read_text()
            status: dict[str, Any] = json.loads(text)
        except (FileNotFoundError, ValueError):
            return None
        (self.lab.work / "status-last.json").write_text(text)  # kept with the logs
        return status

    def log(self, tail: int = 4000) -> str:
        return self.daemon_log.read_text(errors="replace")[-tail:]

    def notify(self, state: str) -> float:
        """keepalived's FIFO line for the group entering ``state``; the moment before it."""
        before = time.monotonic()
        line = f'GROUP "{GROUP}" {state} 0\n'.encode()
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:  # ENXIO: the daemon has not opened its end yet
                if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            return before

    # -- what the test compares --------------------------------------------------------------

    def gateway_ike_sas(self) -> list[IkeSpis]:
        """The IKE SAs ``swanctl --list-sas`` shows on the gateway."""
        text = self.lab.swanctl(self.lab.gw_ns, "--list-sas")
        return [(int(i, 16), int(r, 16)) for i, r in _IKE_SA.findall(text)]

    def gateway_esp_spis(self) -> tuple[set[int], set[int]]:
        """The SPIs of the gateway kernel's ESP SAs: (inbound, outbound)."""
        inbound: set[int] = set()
        outbound: set[int] = set()
        for _src, dst, spi in _XFRM_SA.findall(run(["ip", "-n", self.lab.gw_ns, "xfrm", "state"])):
            (inbound if dst == GW_ADDR else outbound).add(int(spi, 16))
        return inbound, outbound

    def gateway_policies(self) -> int:
        """How many policies (in, out, fwd; not charon's per-socket ones) the gateway holds."""
        return len(_POLICY_DIR.findall(run(["ip", "-n", self.lab.gw_ns, "xfrm", "policy"])))

    def stored_policies(self) -> int:
        return len(self.reader.get_server(SERVER_ID).spd_entries)

    def stored_ike_sas(self) -> dict[IkeSpis, IkeSaRecord]:
        return self.reader.get_server(SERVER_ID).ike_sas

    def diagnostics(self) -> str:
        try:
            stored = {
                format_spis(s): sorted(f"{c:08x}" for c in r.child_spis)
                for s, r in self.stored_ike_sas().items()
            }
        except Exception as exc:  # what the failure says must not fail itself
            stored = {"unreadable": repr(exc)}  # type: ignore[dict-item]
        gateway = self.lab.gateway_state()
        status = None
        if self.status_file.exists():
            status = self.status_file.read_text(errors="replace")
        return (
            f"\nstore IKE SAs: {stored}\ngateway swanctl --list-sas:\n{gateway['list_sas']}"
            f"\ngateway ip xfrm state:\n{gateway['xfrm_state']}\nstatus: {status}"
            f"\ndaemon log (tail):\n{self.log()}"
        )

    def wait(self, what: str, probe: Callable[[], T | None], timeout: float = WAIT_S) -> T:
        """Until ``probe()`` is truthy; otherwise fail, saying what every side holds."""
        deadline = time.monotonic() + timeout
        while True:
            found = probe()
            if found:
                return found
            if time.monotonic() > deadline:
                pytest.fail(f"timed out ({timeout:.0f} s) waiting for {what}{self.diagnostics()}")
            time.sleep(0.5)

    def wait_status(self, what: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            st = self.status()
            return st if st is not None and check(st) else None

        return self.wait(f"the daemon's status: {what}", probe)

    def wait_store_matches_gateway(self, what: str) -> tuple[IkeSaRecord, set[int]]:
        """Until the store holds exactly the gateway's one IKE SA, named by every kernel SPI
        of its two CHILD SAs; that record and the gateway's inbound SPIs."""

        def probe() -> tuple[IkeSaRecord, set[int]] | None:
            gateway = self.gateway_ike_sas()
            inbound, outbound = self.gateway_esp_spis()
            if len(gateway) != 1 or len(inbound) != 2 or len(outbound) != 2:
                return None  # the gateway is not there yet either
            stored = self.stored_ike_sas()
            if list(stored) != gateway:
                return None
            (record,) = stored.values()
            if set(record.child_spis) != inbound | outbound:
                return None
            return record, inbound

        return self.wait(f"the store to hold {what}", probe)


def child_kernel_spis(record: IkeSaRecord) -> set[int]:
    """The kernel SPIs of the CHILD SAs the stored record rebuilds, both directions."""
    state = decode_record(record.record)
    assert state.spis == record.spis, (format_spis(state.spis), format_spis(record.spis))
    spis: set[int] = set()
    for child in state.all_children:
        for attr in (HaAttributeType.INBOUND_SPI, HaAttributeType.OUTBOUND_SPI):
            number = child.add.get(attr)
            assert isinstance(number, HaNumber), f"a stored CHILD_ADD without {attr.name}"
            spis.add(kernel_spi(number))
    return spis


def write_daemon_config(
    path: Path,
    psk: Path,
    fifo: Path,
    status_file: Path,
    *,
    store: str = STORE,
    node: tuple[str, int] = ("gw-ike-lab", 1),
    feed: bool = False,
    mode: str = "cold",
) -> Path:
    """A daemon (``mode``: cold or hot standby) serving ``SERVER_ID`` with ``[ike]``; with
    ``feed``, it feeds charon (and so has the nftables gate)."""
    path.write_text(
        f'[node]\nid = "{node[0]}"\n'
        f'server_id = "{SERVER_ID}"\nnode_index = {node[1]}\n'
        f'[store]\nservers = ["{store}"]\nport = {STORE_PORT}\npsk_file = "{psk}"\n'
        f"timeout_s = 0.5\nretries = 5\nmax_datagram = {MAX_DATAGRAM}\n"
        f'[failover]\nmode = "{mode}"\nkeepalived_fifo = "{fifo}"\n'
        f'status_file = "{status_file}"\nvrrp_name = "{GROUP}"\n'
        "notify_timeout_s = 60\nhealth_interval_s = 1.0\n"
        + ('gate = "nft"\n' if feed else "")
        + f'[ike]\ndaemon = "strongswan"\nrelay = "{HA_REMOTE}"\ncharon = "{HA_LOCAL}"\n'
        + f"feed = {'true' if feed else 'false'}\n"
        + f'vici = "{VICI}"\n'
    )
    return path


def start_daemon(
    lab: CharonLab,
    ns: str,
    psk_file: Path,
    tmp_path: Path,
    *,
    name: str,
    node_index: int,
    store: str,
    feed: bool,
    mode: str = "cold",
) -> tuple[Path, Path, Path, subprocess.Popen[bytes]]:
    """``ipsec-ha daemon`` in ``ns``: its keepalived FIFO, status file, log and process."""
    fifo, status_file = tmp_path / f"{name}-keepalived.fifo", tmp_path / f"{name}-status.json"
    os.mkfifo(fifo, 0o600)
    config = write_daemon_config(
        lab.work / f"{name}-daemon.toml", psk_file, fifo, status_file,
        store=store, node=(f"{name}-ike-lab", node_index), feed=feed, mode=mode,
    )  # fmt: skip
    daemon_log = lab.work / ("daemon.log" if name == "gw" else f"{name}-daemon.log")
    cmd = [IPSEC_HA, "daemon", "--config", str(config), "--verbose"]
    with daemon_log.open("ab") as log:
        daemon = subprocess.Popen(
            ["ip", "netns", "exec", ns, *cmd], stdout=log, stderr=log, start_new_session=True
        )
    lab.procs.append(daemon)
    return fifo, status_file, daemon_log, daemon


@contextlib.contextmanager
def ike_rig(
    tmp_path: Path,
    standby: bool = False,
    standby_daemon: bool = False,
    feed: bool = False,
    mode: str = "cold",
) -> Iterator[Rig]:
    """Store and daemon in the gateway's namespace (nothing of charon started yet);
    with ``standby``, the lab's standby gateway namespace too (``CharonLab.build``), the
    store then on the sync link; with ``standby_daemon`` a daemon there too
    (``Rig.standby``); with ``feed``, the daemons feed charon (``[ike] feed``); ``mode``
    is both daemons' standby mode.

    Everything started goes into ``lab.procs``: ``charon_lab`` stops it all, then removes
    the namespaces, whatever happens.  Logs and configurations live in ``lab.work`` (kept
    with ``IPSEC_HA_IKE_DAEMON_LAB_LOGS``); the key, database and FIFO in ``tmp_path``.
    """
    with charon_lab(logs=os.environ.get("IPSEC_HA_IKE_DAEMON_LAB_LOGS")) as lab:
        lab.build(standby=standby)
        gw_ns, work = lab.gw_ns, lab.work
        psk_file = tmp_path / "cluster.psk"
        psk = write_psk(psk_file)
        store_address = GW_SYNC if standby else STORE
        store_config = write_config(
            work / "store.toml",
            psk_file,
            store_address,
            STORE_PORT,
            "sqlite",
            db_path=tmp_path / "store.db",
            server_max_datagram=MAX_DATAGRAM,
        )
        store = StoreProcess(store_config, gw_ns, work / "store.log")
        store.start()
        assert store.proc is not None
        lab.procs.append(store.proc)

        fifo, status_file, daemon_log, daemon = start_daemon(
            lab, gw_ns, psk_file, tmp_path, name="gw", node_index=1, store=store_address,
            feed=feed, mode=mode,
        )  # fmt: skip
        standby_rig = None

        def reader() -> StoreClient:
            return StoreClient(
                store_address, STORE_PORT, psk, "ike-lab-reader", max_datagram=MAX_DATAGRAM
            )

        client = in_netns(gw_ns, reader)  # its socket stays in the gateway's namespace
        try:
            if standby_daemon:
                sb = start_daemon(
                    lab, lab.sb_ns, psk_file, tmp_path, name="sb", node_index=2,
                    store=store_address, feed=feed, mode=mode,
                )  # fmt: skip
                standby_rig = Rig(lab, *sb[:3], store, sb[3], client)
            rig = Rig(lab, fifo, status_file, daemon_log, store, daemon, client, standby_rig)
            # Its first status comes after the relay has bound the plugin's remote address.
            for each in (rig, standby_rig):
                if each is not None:
                    each.wait_status("written", lambda st: "ike" in st)
            yield rig
        finally:
            client.close()


# -- the steps the daemon-driven tests share (two daemons, keepalived played by the test) ------


def transition(rig: Rig, state: str) -> dict[str, Any]:
    """keepalived's line for ``state`` to the daemon of ``rig``; its status once done (ok)."""
    at = rig.notify(state)
    done = rig.wait_status(
        f"{state} done", lambda st: st["state"] == state and (st["received"] or 0) >= at
    )
    assert done["ok"], f"{state} failed: {done['error']}{rig.diagnostics()}"
    return done


def steps_of(status: dict[str, Any]) -> list[str]:
    """The steps of the plan a status file reports."""
    return list((status.get("report") or {}).get("actions", []))


def step_detail(status: dict[str, Any], step: str) -> dict[str, Any]:
    """What one step of that plan reported (its timeline entry's detail)."""
    for entry in (status.get("report") or {}).get("timeline", []):
        if entry["step"] == step:
            detail: dict[str, Any] = entry["detail"]
            return detail
    raise AssertionError(f"no {step} in the plan: {steps_of(status)}")


def start_charons(rig: Rig) -> subprocess.Popen[bytes]:
    """The gateway's, the client's and the standby's charon, their connections loaded, once
    each daemon's relay saw its charon start and the plugins took their segment; the
    gateway's charon process."""
    lab = rig.lab
    started = time.monotonic()
    gw_charon = lab.start_charon(lab.gw_ns)
    lab.start_charon(lab.cl_ns)
    lab.start_charon(lab.sb_ns)
    lab.load(lab.gw_ns, lab.cl_ns, lab.sb_ns)
    for each in (rig, rig.standby):
        if each is not None:
            each.wait_status("the relay saw charon start", lambda st: st["ike"]["complete"])
    time.sleep(max(0.0, started + HEARTBEAT_WAIT_S - time.monotonic()))
    return gw_charon


def crash_gateway(rig: Rig, gw_charon: subprocess.Popen[bytes]) -> None:
    """The gateway's charon and daemon killed; its address moves to the standby."""
    lab = rig.lab
    for proc in (gw_charon, rig.daemon):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    lab.move_link(lab.sb_ns)
    route_inner(lab.sb_ns, GW_INNER, CL_ADDR, "203.0.113.0/24")


def gateway_back(rig: Rig, tmp_path: Path, mode: str = "cold") -> Rig:
    """The crashed gateway restarted: a daemon (``mode``, feeding charon) started before its
    charon, then charon with its connections; the new daemon's rig, its relay having seen
    charon start and the plugin having taken its segment."""
    lab = rig.lab
    fifo, status_file, log, daemon = start_daemon(
        lab, lab.gw_ns, tmp_path / "cluster.psk", tmp_path, name="gw-back", node_index=1,
        store=GW_SYNC, feed=True, mode=mode,
    )  # fmt: skip
    back = Rig(lab, fifo, status_file, log, rig.store, daemon, rig.reader)
    back.wait_status("written", lambda st: "ike" in st)
    started = time.monotonic()
    lab.start_charon(lab.gw_ns)
    lab.load(lab.gw_ns)
    back.wait_status("the relay saw charon start", lambda st: st["ike"]["complete"])
    time.sleep(max(0.0, started + HEARTBEAT_WAIT_S - time.monotonic()))
    return back


def move_back(lab: CharonLab) -> None:
    """The gateway's address back on the gateway (the failback's VIP move)."""
    lab.move_link(lab.gw_ns)
    run(["ip", "-n", lab.gw_ns, "route", "add", "203.0.113.0/24", "via", CL_ADDR,
         "src", GW_INNER])  # fmt: skip


def set_up_tunnel(rig: Rig) -> IkeSaRecord:
    """The client's IKE SA with CHILD SAs ``net`` and ``net2`` to the gateway, routed; its
    record, once the store holds the gateway's."""
    lab = rig.lab
    route_inner(lab.gw_ns, GW_INNER, CL_ADDR, "203.0.113.0/24")
    route_inner(lab.cl_ns, CL_INNER, GW_ADDR, "198.51.100.0/24")
    lab.swanctl(lab.cl_ns, "--initiate", "--child", "net")
    lab.swanctl(lab.cl_ns, "--initiate", "--child", "net2")
    record, _inbound = rig.wait_store_matches_gateway("the IKE SA with both CHILD SAs")
    return record


def rekey_ike(rig: Rig, old: IkeSpis) -> IkeSpis:
    """The client rekeys its IKE SA ``old``; the new one's SPIs, once the client holds it
    alone."""
    lab = rig.lab
    lab.swanctl(lab.cl_ns, "--rekey", "--ike", "gw")

    def rekeyed() -> IkeSpis | None:
        sas = ike_sas(lab, lab.cl_ns)
        return sas[0][1] if len(sas) == 1 and sas[0][1] != old else None

    return rig.wait("the IKE SA rekeyed by the client", rekeyed)
