"""The real daemon relays a (recorded) charon's IKE SAs into a real store, only while active.

The namespaces and the store of ``tests/metrics/test_daemon_metrics_netns``'s
rig: ``ipsec-ha store serve`` in ``store``, ``ipsec-ha daemon`` (cold
standby, with ``[ike]``) in ``gw``, and the store read from ``scraper``.
``[ike]`` needs datagrams of 16 kB at least (an IKE SA record is never
split), so the store is restarted with larger ones, and the daemon and the
reader here use them too.  The fake charon is a UDP socket on
127.0.0.1:4510 inside ``gw``, connected to the relay's 127.0.0.2:4510, that
sends the datagrams strongSwan's ha plugin sent in the lab
(``tests/strongswan/ha_recordings``).  What the store must then hold is
computed here with an :class:`IkeBook` fed the same datagrams.

The host kernel holds XFRM policies but no ESP SA, so the store holds no SA
and the daemon none either: a MASTER transition succeeds, and a lookup by a
CHILD SA's SPI finds nothing (the IKE SA is reached through the server's
state instead).

The steps: the book made while a standby (status ``ike``, nothing stored);
MASTER (a full resync stores it); garbage from charon's address (dropped by
reason, the store unchanged) and a datagram from another local address
(never received); the rekeys (only the new IKE SA stored); the
terminations (none stored); the daemon stopped.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from appliance.netns import run_in_netns
from appliance.store.base import IkeSaRecord, IkeSpis, NotFoundError
from appliance.store.client import StoreClient
from appliance.strongswan import HaAttributeType, HaMessageType, HaNumber, decode
from appliance.strongswan.ike_record import decode_record
from appliance.strongswan.ike_state import IkeBook, kernel_spi
from appliance.strongswan.publisher import ike_sa_record
from tests.metrics import test_daemon_metrics_netns as metrics_rig
from tests.metrics.test_daemon_metrics_netns import (
    GROUP,
    PORT,
    SERVER_ID,
    STORE,
    Rig,
    wait_for,
)
from tests.store.store_process import IPSEC_HA, wait_ready, write_config
from tests.strongswan.ha_recordings import datagrams, recording

pytestmark = pytest.mark.netns

rig = metrics_rig.rig
"""The metrics test's rig: its namespaces, store, FIFO and status file."""

RELAY, CHARON, STRAY = "127.0.0.2", "127.0.0.1", "127.0.0.3"
HA_PORT = 4510
MAX_DATAGRAM = 65000
"""The daemon's, the store's and the reader's: ``[ike]`` wants 16384 at least."""
WAIT_S = 20.0

ESTABLISH = ("start", "segment_drop", "segment_take", "initiate", "add_child")
REKEY = ("rekey_child_client", "rekey_child_gateway", "rekey_ike_client")
TERMINATE = ("terminate_child_client", "terminate_ike_client")
BAD_VERSION, BAD_TYPE = b"\x04\x01", b"\x03\xff"
"""A version-4 header (``HaVersionError``) and an unknown type (``HaMessageError``)."""


def recorded(*steps: str) -> list[bytes]:
    return [r.data for r in datagrams() if r.step in steps]


def _udp(local: str, remote: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((local, HA_PORT))
    sock.connect((remote, HA_PORT))
    return sock


class Charon:
    """The fake charon: its socket in the gateway's namespace, and the book it makes."""

    def __init__(self, netns: str) -> None:
        self.sock = run_in_netns(netns, lambda: _udp(CHARON, RELAY))
        self.book = IkeBook()
        self.sent = 0

    def send(self, items: list[bytes], *, to_book: bool = True) -> None:
        for data in items:
            self.sock.send(data)
            self.sent += 1
            if to_book:
                self.book.handle(decode(data))

    def expected(self) -> dict[IkeSpis, IkeSaRecord]:
        return {spis: ike_sa_record(state) for spis, state in self.book.sas.items()}


@dataclass
class Lab:
    rig: Rig
    charon: Charon
    reader: StoreClient
    """A store client in the scraper's namespace."""

    def start_daemon(self) -> None:
        """``ipsec-ha daemon`` in ``gw``: a cold standby with ``[ike]``."""
        rig = self.rig
        config = rig.tmp / "ike-daemon.toml"
        config.write_text(
            f'[node]\nid = "gw-ike"\nserver_id = "{SERVER_ID}"\nnode_index = 1\n'
            f'[store]\nservers = ["{STORE}"]\nport = {PORT}\npsk_file = "{rig.psk}"\n'
            f"timeout_s = 0.2\nretries = 2\nmax_datagram = {MAX_DATAGRAM}\n"
            f'[failover]\nmode = "cold"\nkeepalived_fifo = "{rig.fifo}"\n'
            f'status_file = "{rig.status_file}"\nvrrp_name = "{GROUP}"\n'
            "notify_timeout_s = 20\nhealth_interval_s = 0.5\n"
            f'[ike]\ndaemon = "strongswan"\nrelay = "{RELAY}"\ncharon = "{CHARON}"\nfeed = false\n'
        )
        cmd = [IPSEC_HA, "daemon", "--config", str(config), "--verbose"]
        with rig.daemon_log.open("ab") as log:  # the rig's teardown stops it
            rig.daemon = subprocess.Popen(
                ["ip", "netns", "exec", rig.ns["gw"], *cmd],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        wait_for("the daemon's first status", lambda: rig.status() is not None)

    def ike(self) -> dict[str, Any]:
        """The status file's ``ike``."""
        status = self.rig.status()
        assert status is not None and "ike" in status, status
        return status["ike"]  # type: ignore[no-any-return]

    def wait_ike(self, what: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Until the status file's ``ike`` (rewritten with the health) passes ``check``."""
        seen: list[Any] = [None]

        def found() -> dict[str, Any] | None:
            seen[0] = self.ike()
            return seen[0] if check(seen[0]) else None

        try:
            return wait_for(what, found, WAIT_S)
        except AssertionError:
            raise AssertionError(
                f"timed out waiting for the status file's ike: {what}; it says {seen[0]}"
            ) from None

    def stored(self) -> dict[IkeSpis, IkeSaRecord]:
        """The IKE SAs the store holds for the server ID (none: it knows no such server)."""
        try:
            return self.reader.get_server(SERVER_ID).ike_sas
        except NotFoundError:
            return {}

    def wait_stored(self, what: str, want: dict[IkeSpis, IkeSaRecord]) -> None:
        seen: list[Any] = [None]

        def equal() -> bool:
            seen[0] = self.stored()
            return bool(seen[0] == want)

        try:
            wait_for(what, equal, WAIT_S)
        except AssertionError:
            log = self.rig.daemon_log.read_text(errors="replace").splitlines()
            failures = sorted({line.split(" WARNING ", 1)[1] for line in log if _failed(line)})
            raise AssertionError(
                f"timed out waiting for the store to hold {what}: it holds {sorted(seen[0])}, "
                f"expected {sorted(want)} (records of "
                f"{[len(r.record) for r in want.values()]} bytes); the daemon's store "
                f"failures: {failures}; status {self.rig.status()}"
            ) from None


def _failed(line: str) -> bool:
    return " WARNING " in line and "store" in line and "failed" in line


@pytest.fixture
def lab(rig: Rig) -> Iterator[Lab]:
    # The rig's store answers within 1400 bytes: again, with room for an IKE SA.
    rig.store.kill()
    db = rig.tmp / "store.db"
    write_config(
        rig.store.config, rig.psk, STORE, PORT, "sqlite", db, server_max_datagram=MAX_DATAGRAM
    )
    rig.store.start()
    key = rig.psk.read_bytes().rstrip(b"\n")

    def client() -> StoreClient:
        return StoreClient(
            STORE, PORT, key, "ike-reader", timeout=0.3, retries=6, max_datagram=MAX_DATAGRAM
        )

    reader = run_in_netns(rig.ns["scraper"], client)  # its socket lives there
    charon = Charon(rig.ns["gw"])
    try:
        wait_ready(reader, rig.store)
        yield Lab(rig, charon, reader)
    finally:
        charon.sock.close()
        reader.close()


def inbound_child(charon: Charon) -> tuple[int, str]:
    """A CHILD SA's inbound SPI as the kernel holds it, and its destination (the gateway)."""
    (state,) = charon.book.sas.values()
    spi = state.all_children[0].add.get(HaAttributeType.INBOUND_SPI)
    assert isinstance(spi, HaNumber)
    return kernel_spi(spi), recording()["gateway"]["address"]


def test_the_active_daemon_stores_charons_ike_sas(lab: Lab) -> None:
    rig, charon = lab.rig, lab.charon
    lab.start_daemon()
    first = lab.ike()
    assert (first["relay"], first["charon"], first["received"]) == (RELAY, CHARON, 0)
    rig.wait_transition("BACKUP", rig.notify("BACKUP"), ok=True)

    # -- 1. a standby: the relay keeps the book, nothing reaches the store -------------------
    charon.send(recorded(*ESTABLISH))
    ike = lab.wait_ike("every datagram received", lambda s: s["received"] == charon.sent)
    assert (ike["ike_sas"], ike["child_sas"], ike["complete"]) == (1, 2, True), ike
    assert (ike["dropped"], ike["published"], ike["pending"]) == ({}, 0, 0), ike
    assert ike["resyncs_asked"] == 0  # the book saw charon start: nothing to ask
    assert lab.stored() == {}

    # -- 2. MASTER: publishing starts with a full resync, the book goes to the store ---------
    master_at = rig.notify("MASTER")
    done = rig.wait_transition("MASTER", master_at, ok=True)
    assert done["role"] == "active"
    expected = charon.expected()
    assert len(expected) == 1
    lab.wait_stored("the IKE SA after add_child", expected)
    (record,) = lab.stored().values()
    (want,) = expected.values()
    assert record.child_spis == want.child_spis and len(record.child_spis) == 4
    assert decode_record(record.record) == charon.book.sas[record.spis]
    spi, dst = inbound_child(charon)
    assert spi in record.child_spis
    with pytest.raises(NotFoundError):  # no ESP SA on this host: the store holds none
        lab.reader.get_spi(spi, dst)
    ike = lab.ike()
    assert (ike["ike_sas"], ike["received"], ike["resyncs_asked"]) == (1, charon.sent, 0), ike

    # -- 3. garbage from charon's address is dropped by reason; another source never arrives --
    stored_before = lab.stored()
    charon.send([BAD_VERSION, BAD_TYPE], to_book=False)
    ike = lab.wait_ike("the garbage received", lambda s: s["received"] == charon.sent)
    assert ike["dropped"] == {"HaVersionError": 1, "HaMessageError": 1}, ike
    assert ike["ike_sas"] == 1, ike
    status = recorded("start")[0]
    assert decode(status).type is HaMessageType.STATUS  # valid, and no IKE state
    stray = run_in_netns(rig.ns["gw"], lambda: _udp(STRAY, RELAY))
    with stray:
        stray.send(status)
    # then a third bad datagram from charon: once it is counted, the stray one was not
    charon.send([BAD_VERSION], to_book=False)
    ike = lab.wait_ike("the last garbage", lambda s: s["dropped"].get("HaVersionError") == 2)
    assert ike["received"] == charon.sent, ike
    assert ike["dropped"] == {"HaVersionError": 2, "HaMessageError": 1}, ike
    assert lab.stored() == stored_before

    # -- 4. both CHILD SAs and the IKE SA rekeyed: only the new IKE SA is stored -------------
    # (the record grows past 1.4 kB here: three CHILD SAs while one is rekeyed, then the
    # generation an IKE rekey keeps)
    old_spis = record.spis
    charon.send(recorded(*REKEY))
    expected = charon.expected()
    assert len(expected) == 1 and old_spis not in expected
    lab.wait_stored("the rekeyed IKE SA only", expected)
    (record,) = lab.stored().values()
    assert decode_record(record.record) == charon.book.sas[record.spis]
    ike = lab.wait_ike("the rekeys received", lambda s: s["received"] == charon.sent)
    assert (ike["ike_sas"], ike["complete"], ike["pending"]) == (1, True, 0), ike
    assert ike["published"] >= 2, ike  # at least the new IKE SA and the old one's deletion
    assert ike["ignored"] == dict(charon.book.ignored), ike

    # -- 5. the CHILD SA and then the IKE SA terminated: the store holds no IKE SA -----------
    charon.send(recorded(*TERMINATE))
    assert charon.book.sas == {}
    lab.wait_stored("no IKE SA", {})
    ike = lab.wait_ike("the ends received", lambda s: s["received"] == charon.sent)
    assert (ike["ike_sas"], ike["child_sas"], ike["pending"]) == (0, 0, 0), ike

    # -- 6. the daemon stops (as systemd stops it): it ran until then, then stopped cleanly:
    # exit status 0, no status file left to read as alive, its relay gone --
    rig.stop_daemon()
    assert rig.daemon is not None and rig.daemon.returncode == 0, rig.log_tail()
    assert "stopped by a signal" in rig.log_tail(), rig.log_tail()
    assert not rig.status_file.exists()
    run_in_netns(rig.ns["gw"], lambda: _udp(RELAY, CHARON)).close()  # the address is free
