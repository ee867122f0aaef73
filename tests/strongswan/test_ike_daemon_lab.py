"""``ipsec-ha daemon`` with ``[ike]`` beside a real charon: the IKE SAs reach a real store.

Root on a kernel with ESP (the lab VM).  ``charon_lab`` makes the gateway and
client namespaces; in the gateway's, before its charon starts (so the relay
sees charon start and its book is complete), run ``ipsec-ha store serve`` on
127.0.0.1 and ``ipsec-ha daemon`` (cold, ``[ike]`` on the ha plugin's
addresses, the server ID the gateway's IKE address).  keepalived's FIFO line
makes the daemon active; then the client sets up an IKE SA with two CHILD SAs,
rekeys it and terminates it, and after each step the store must hold exactly
the gateway's IKE SA, naming the kernel SPIs of its CHILD SAs, and a lookup by
one of those SPIs (SA_Retr) must return the SA together with that IKE SA.

``IPSEC_HA_IKE_DAEMON_LAB_LOGS=DIR`` (e.g. ``.cache/ike-daemon-lab``) keeps the
charon, store and daemon logs and configurations there, and the daemon's last
status as ``status-last.json``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.store.base import IkeSaRecord, NotFoundError
from appliance.strongswan.ike_state import format_spis
from tests.strongswan.charon_lab import CL_ADDR, GW_ADDR, HEARTBEAT_WAIT_S
from tests.strongswan.ike_rig import (
    POLICY_WAIT_S,
    SERVER_ID,
    Rig,
    child_kernel_spis,
    ike_rig,
)

pytestmark = pytest.mark.lab


@pytest.fixture
def rig(tmp_path: Path, require_root: None) -> Iterator[Rig]:
    with ike_rig(tmp_path) as rig:
        yield rig


def test_daemon_stores_charons_ike_sas_and_sa_retr_returns_them(rig: Rig) -> None:
    lab = rig.lab
    gw_ns, cl_ns = lab.gw_ns, lab.cl_ns

    # -- 1. charon starts after the daemon: the relay sees its start ---------------------------
    started = time.monotonic()
    lab.start_charon(gw_ns)
    lab.start_charon(cl_ns)
    lab.load()
    rig.wait_status("the relay saw charon start", lambda st: st["ike"]["complete"])
    time.sleep(max(0.0, started + HEARTBEAT_WAIT_S - time.monotonic()))

    # -- 2. MASTER: the daemon becomes active and publishes ------------------------------------
    master_at = rig.notify("MASTER")
    done = rig.wait_status(
        "MASTER done",
        lambda st: st["state"] == "MASTER" and (st["received"] or 0) >= master_at,
    )
    assert done["ok"], f"the takeover failed: {done['error']}{rig.diagnostics()}"
    assert done["role"] == "active"
    rig.wait_status("publishing", lambda st: st["publishing"])
    assert rig.stored_ike_sas() == {}

    # -- 3. the client sets up the IKE SA and two CHILD SAs: the store holds them ---------------
    lab.swanctl(cl_ns, "--initiate", "--child", "net")
    lab.swanctl(cl_ns, "--initiate", "--child", "net2")
    first, inbound = rig.wait_store_matches_gateway("the IKE SA with both CHILD SAs")
    assert child_kernel_spis(first) == set(first.child_spis)
    # (the daemon's XFRM sync stores the kernel's policies too: in, out and fwd of each)
    assert rig.gateway_policies() == 6
    rig.wait("the store to hold the gateway's 6 policies", lambda: rig.stored_policies() == 6)

    # -- 4. SA_Retr by a CHILD SA's SPI: the SA and its IKE SA ---------------------------------
    def lookup(spi: int, dst: str) -> IkeSaRecord | None:
        try:
            answer = rig.reader.get_spi(spi, dst)
        except NotFoundError:  # the daemon's XFRM sync has not stored the SA yet
            return None
        assert answer.server_id == SERVER_ID
        assert answer.sad.spi == spi, answer.sad
        return answer.ike_sa

    def lookups_answer(record: IkeSaRecord, inbound: set[int]) -> None:
        """Each of the four SAs, looked up by SPI and destination, comes with ``record``."""
        for spi in sorted(record.child_spis):
            dst = GW_ADDR if spi in inbound else CL_ADDR
            found = rig.wait(f"SA 0x{spi:08x} in the store", functools.partial(lookup, spi, dst))
            assert found == record, (format_spis(found.spis), format_spis(record.spis))

    lookups_answer(first, inbound)

    # -- 5. the client rekeys the IKE SA: the store holds the new one alone --------------------
    lab.swanctl(cl_ns, "--rekey", "--ike", "gw")
    second, inbound_after = rig.wait_store_matches_gateway("the rekeyed IKE SA alone")
    assert second.spis != first.spis
    assert set(second.child_spis) == set(first.child_spis)  # the CHILD SAs moved over
    assert inbound_after == inbound
    assert child_kernel_spis(second) == set(second.child_spis)
    lookups_answer(second, inbound)

    # -- 6. the client terminates: no IKE SA, and no SA, is left in the store ------------------
    lab.swanctl(cl_ns, "--terminate", "--ike", "gw")
    rig.wait("the gateway to hold no IKE SA", lambda: not rig.gateway_ike_sas() or None)
    rig.wait("the store to hold no IKE SA", lambda: not rig.stored_ike_sas() or None)
    rig.wait(
        "the store to hold no SA",
        lambda: not rig.reader.get_server(SERVER_ID).sad_entries or None,
    )

    # -- 7. the daemon's account of it ---------------------------------------------------------
    status = rig.wait_status(
        "the relay's book empty, nothing pending",
        lambda st: st["ike"]["ike_sas"] == 0 and st["ike"]["pending"] == 0,
    )
    ike = status["ike"]
    print(f"status ike: {ike}")
    assert ike["complete"] is True
    assert ike["dropped"] == {}, ike
    assert ike["resyncs_asked"] == 0, ike  # charon started after the daemon
    assert ike["published"] >= 3, ike  # the IKE SA, its rekeyed successor, their deletions
    assert status["role"] == "active" and not status["fenced"], status
    errors = [
        line
        for line in rig.log(tail=1_000_000).splitlines()
        if " ERROR " in line or "Traceback" in line or "raise max_datagram" in line
    ]
    assert errors == [], "\n".join(errors)

    # -- 8. and the policies charon deleted with its CHILD SAs have left the store too --------
    assert rig.gateway_policies() == 0
    deadline = time.monotonic() + POLICY_WAIT_S
    while (left := rig.stored_policies()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == 0, (
        f"the store still holds {left} policies that charon deleted from the gateway's kernel, "
        f"{POLICY_WAIT_S:.0f} s after their SAs left the store (the daemon's published policies: "
        f"{status['health']['held_policies']}). charon deletes a policy by selector, and the "
        "kernel's DELPOLICY notification then carries index 0 in xfrm_userpolicy_id (the "
        "policy, with its index, is in XFRMA_POLICY); appliance/failover/sync.py deletes "
        "PolicyDeleted.index, i.e. policy 0, instead of PolicyDeleted.entry.index"
    )
