"""charon crashes on the active gateway and comes back: the daemon gives it its IKE SAs back
from the store, and the client's tunnel, IKE SA included, carries on.

Lab VM, root.  ``ike_rig(feed=True)``: the store and a cold daemon with the nftables
gate in the gateway's namespace, charon there and on the client.

1. The gateway is MASTER; the client sets up an IKE SA with two CHILD SAs; pings flow;
   the store holds the IKE SA and the counters.
2. The gateway's charon is killed (SIGKILL: it deletes nothing, its CHILD SAs stay in
   the kernel) and started again, and its connections loaded.  Its ha plugin asks for a
   resync.  The daemon keeps the IKE SA in the store, gates outbound, deletes the dead
   charon's SAs, feeds the new charon the stored IKE SA, moves the counters of the SAs
   it installs, activates it and opens the gate (``CHARON_RESTARTED``).
3. The gateway's charon holds the IKE SA ESTABLISHED with the same SPIs; pings flow with
   no replay drop at either end; the client's CHILD SPIs are unchanged; a CHILD rekey by
   the client succeeds through the new charon; the client sent one IKE_SA_INIT in all;
   the daemon's safety net found the IKE SA kept.
4. A clean stop of the gateway's charon (SIGTERM) deletes the IKE SA, at the client
   too, and the store loses it; started again, charon gets nothing back.

``IPSEC_HA_IKE_DAEMON_LAB_LOGS=DIR`` keeps the charon, store and daemon logs.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.strongswan.charon_lab import CL_ADDR, GW_ADDR, HEARTBEAT_WAIT_S
from tests.strongswan.charon_probe import (
    CL_INNER,
    GW_INNER,
    PINGS,
    client_ike_sa_inits,
    counters_stored,
    ike_sas,
    kernel_spis,
    ping,
    rekey_net,
    replay_drops,
    route_inner,
)
from tests.strongswan.ike_rig import SERVER_ID, Rig, ike_rig
from tests.strongswan.test_ike_takeover_lab import transition

pytestmark = pytest.mark.lab


@pytest.fixture
def rig(tmp_path: Path, require_root: None) -> Iterator[Rig]:
    with ike_rig(tmp_path, feed=True) as rig:
        yield rig


def test_a_crashed_charon_gets_its_ike_sas_back_and_the_tunnel_carries_on(rig: Rig) -> None:
    lab = rig.lab
    gw_ns, cl_ns = lab.gw_ns, lab.cl_ns

    # -- 1. the tunnel through the active gateway ---------------------------------------------
    started = time.monotonic()
    gw_charon = lab.start_charon(gw_ns)
    lab.start_charon(cl_ns)
    lab.load(gw_ns, cl_ns)
    rig.wait_status("the relay saw charon start", lambda st: st["ike"]["complete"])
    time.sleep(max(0.0, started + HEARTBEAT_WAIT_S - time.monotonic()))
    transition(rig, "MASTER")
    route_inner(gw_ns, GW_INNER, CL_ADDR, "203.0.113.0/24")
    route_inner(cl_ns, CL_INNER, GW_ADDR, "198.51.100.0/24")
    lab.swanctl(cl_ns, "--initiate", "--child", "net")
    lab.swanctl(cl_ns, "--initiate", "--child", "net2")
    record, _inbound = rig.wait_store_matches_gateway("the IKE SA with both CHILD SAs")
    client_spis = kernel_spis(cl_ns)
    assert ping(lab) == PINGS
    rig.wait(
        "the store's counters to reach the gateway kernel's",
        lambda: counters_stored(rig.reader.fetch(SERVER_ID), gw_ns),
    )
    drops = replay_drops(cl_ns)

    # -- 2. charon crashes and comes back -------------------------------------------------------
    os.killpg(gw_charon.pid, signal.SIGKILL)
    gw_charon.wait(timeout=10)
    assert kernel_spis(gw_ns) == client_spis, "the dead charon's CHILD SAs are in the kernel"
    gw_charon = lab.start_charon(gw_ns)
    lab.load(gw_ns)
    answered = rig.wait_status(
        "the daemon to give the restarted charon its IKE SA back",
        lambda st: st["ike"]["charon_restarts"] == 1 and st["ike"]["fed"] >= 1
        and st["ike"]["ike_sas"] == 1,
    )  # fmt: skip
    print(f"after the restart: {answered['ike']}")
    rig.wait("the IKE SA ESTABLISHED on the gateway again",
             lambda: ike_sas(lab, gw_ns) == [("ESTABLISHED", record.spis)])  # fmt: skip
    assert rig.stored_ike_sas().keys() == {record.spis}, "the store kept the IKE SA"

    # -- 3. the tunnel carries on, IKE SA included ---------------------------------------------
    assert ping(lab) == PINGS
    assert replay_drops(cl_ns) == drops, "the client dropped the gateway's ESP as replays"
    assert replay_drops(gw_ns) == 0, "the gateway dropped the client's ESP as replays"
    assert kernel_spis(cl_ns) == client_spis == kernel_spis(gw_ns)
    assert [spis for _s, spis in ike_sas(lab, cl_ns)] == [record.spis]
    rekey_net(lab, cl_ns, client_spis, rig.wait)
    assert ping(lab) == PINGS
    assert client_ike_sa_inits(lab) == 1, "the client set up a new IKE SA"
    # the safety net's check after the answer (its first came after the MASTER transition)
    net = rig.wait_status(
        "the safety net's check after the answer",
        lambda st: st["ike"]["safety_net"]["checks"] >= 2,
    )["ike"]["safety_net"]
    assert net["last"]["kept"] == 1 and net["last"]["missing"] == 0, net
    assert net["errors"] == 0 and net["initiated"] == 0, net

    # -- 4. a clean stop: charon deletes its IKE SAs, at the client too; nothing to give back --
    os.killpg(gw_charon.pid, signal.SIGTERM)
    gw_charon.wait(timeout=30)
    rig.wait("the store to lose the IKE SA charon deleted", lambda: not rig.stored_ike_sas())
    rig.wait("the client to lose its IKE SA", lambda: ike_sas(lab, cl_ns) == [] or None)
    lab.start_charon(gw_ns)
    lab.load(gw_ns)
    time.sleep(HEARTBEAT_WAIT_S)  # its RESYNC came at start, before the connections loaded
    after = rig.status()
    assert after is not None
    assert after["ike"]["charon_restarts"] == 1 and after["ike"]["ike_sas"] == 0, after["ike"]
