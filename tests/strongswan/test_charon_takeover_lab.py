"""A charon fed from the store takes over a live strongSwan tunnel, and the client notices nothing.

Lab VM, root.  This checks, against real parts, the mechanism the daemon's
takeover in ``[ike]`` mode is built on (docs/strongswan.md, "Feeding a
charon"); the steps are driven by the test, not yet by the daemon:

1. ``ike_rig`` with a standby: the store and ``ipsec-ha daemon`` (active)
   beside the gateway's charon; a client charon; a second gateway charon in
   its own namespace, with no link.
2. The client sets up an IKE SA with two CHILD SAs; pings flow through
   ``net`` (198.51.100.0/24 <-> 203.0.113.0/24); the store holds the IKE SA
   record and the SAs' counters.
3. Crash: the gateway's charon and daemon are killed, and its veth end, with
   the gateway's address, moves to the standby (the VIP moves).
4. The standby's charon is fed the store's record over its ha socket
   (``strongswan.feed``): it holds the IKE SA passive, with the same SPIs, and
   installs the CHILD SAs itself.  Control: with charon's own counters
   (outbound 0), the gateway's replies are replay drops at the client.
5. NEWAE moves the counters from the store (outbound + a jump), SEGMENT_DROP
   activates the segment: the IKE SA is ESTABLISHED on the standby, and pings
   flow with no replay drop at the client.
6. A CHILD rekey by the client, one by the new gateway and an IKE rekey by the
   client all succeed through the new gateway, traffic flows after each, and
   the client never sends a second IKE_SA_INIT.

``IPSEC_HA_IKE_DAEMON_LAB_LOGS=DIR`` keeps the charon, store and daemon logs.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.failover.seqjump import RekeyRequired, advance_sa
from appliance.strongswan.feed import plan_feed, segment_active, segment_passive
from appliance.strongswan.ike_state import format_spis
from appliance.xfrm.socket import XfrmSocket
from tests.strongswan.charon_lab import (
    CL_ADDR,
    GW_ADDR,
    HEARTBEAT_WAIT_S,
)
from tests.strongswan.charon_probe import (
    CL_INNER,
    CONTROL_PINGS,
    GW_INNER,
    JUMP,
    PINGS,
    client_ike_sa_inits,
    counters_stored,
    ike_sas,
    kernel_spis,
    ping,
    rekey_net,
    replay_drops,
    route_inner,
    send_to_charon,
)
from tests.strongswan.ike_rig import SERVER_ID, Rig, ike_rig

# The daemons do all of this in test_ike_takeover_lab; this step-by-step version shows
# each step's effect (and the control) and runs with IPSEC_HA_LAB_EXTENDED=1.
pytestmark = [pytest.mark.lab, pytest.mark.extended]


@pytest.fixture
def rig(tmp_path: Path, require_root: None) -> Iterator[Rig]:
    with ike_rig(tmp_path, standby=True) as rig:
        yield rig


def test_charon_fed_from_the_store_takes_over_the_tunnel_unnoticed(rig: Rig) -> None:
    lab = rig.lab
    gw_ns, cl_ns, sb_ns = lab.gw_ns, lab.cl_ns, lab.sb_ns

    # -- 1. three charons; the daemon active beside the gateway's ------------------------------
    started = time.monotonic()
    gw_charon = lab.start_charon(gw_ns)
    lab.start_charon(cl_ns)
    lab.start_charon(sb_ns)
    lab.load(gw_ns, cl_ns, sb_ns)
    rig.wait_status("the relay saw charon start", lambda st: st["ike"]["complete"])
    time.sleep(max(0.0, started + HEARTBEAT_WAIT_S - time.monotonic()))
    master_at = rig.notify("MASTER")
    done = rig.wait_status(
        "MASTER done", lambda st: st["state"] == "MASTER" and (st["received"] or 0) >= master_at
    )
    assert done["ok"], f"the takeover failed: {done['error']}{rig.diagnostics()}"

    # -- 2. the tunnel, traffic, and the store holding both --------------------------------------
    route_inner(gw_ns, GW_INNER, CL_ADDR, "203.0.113.0/24")
    route_inner(cl_ns, CL_INNER, GW_ADDR, "198.51.100.0/24")
    lab.swanctl(cl_ns, "--initiate", "--child", "net")
    lab.swanctl(cl_ns, "--initiate", "--child", "net2")
    record, _inbound = rig.wait_store_matches_gateway("the IKE SA with both CHILD SAs")
    client_ike = ike_sas(lab, cl_ns)
    assert [spis for _state, spis in client_ike] == [record.spis], client_ike
    client_children = kernel_spis(cl_ns)
    assert len(client_children) == 4, client_children
    assert ping(lab) == PINGS
    drops_before = replay_drops(cl_ns)

    rig.wait(
        "the store's counters to reach the gateway kernel's",
        lambda: counters_stored(rig.reader.fetch(SERVER_ID), gw_ns),
    )

    # -- 3. crash: charon and daemon die; the gateway's address moves to the standby -----------
    for proc in (gw_charon, rig.daemon):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    lab.move_link(sb_ns)
    route_inner(sb_ns, GW_INNER, CL_ADDR, "203.0.113.0/24")

    # -- 4. the standby's charon is fed the store's IKE SA --------------------------------------
    feed = plan_feed(rig.reader.get_server(SERVER_ID).ike_sas)
    assert feed.ike_sas == (record.spis,) and feed.unreadable == ()
    assert feed.child_spis == set(record.child_spis)
    # Its charon took the segment when no heartbeat came: deactivate it first, so that the
    # activation below flips the fed IKE SA (ha_segments.c enable_disable).
    send_to_charon(sb_ns, [segment_passive(), *feed.messages])
    rig.wait("the standby's kernel to hold the fed CHILD SAs",
             lambda: feed.child_spis <= kernel_spis(sb_ns))  # fmt: skip
    assert ike_sas(lab, sb_ns) == [("PASSIVE", record.spis)], lab.swanctl(sb_ns, "--list-sas")

    # Control: charon installed the CHILD SAs counting from 0, so the client's replay window
    # drops the new gateway's replies (the daemon keeps outbound gated until NEWAE).
    assert ping(lab, CONTROL_PINGS) == 0
    assert replay_drops(cl_ns) - drops_before >= CONTROL_PINGS

    # -- 5. counters from the store, then the segment: the IKE SA is ESTABLISHED ---------------
    moved = 0
    with XfrmSocket(netns=sb_ns) as xs:
        for sa in rig.reader.fetch(SERVER_ID).sad:
            if sa.spi not in feed.child_spis:
                continue
            advanced = advance_sa(sa, JUMP)
            assert not isinstance(advanced, RekeyRequired), advanced
            state = advanced.sa.replay_esn or advanced.sa.replay
            assert state is not None
            xs.set_ae(sa.daddr, sa.spi, sa.proto, replay=state, mark=sa.mark)
            moved += 1
    assert moved == len(feed.child_spis)
    send_to_charon(sb_ns, [segment_active()])
    rig.wait("the fed IKE SA to be ESTABLISHED on the standby",
             lambda: ike_sas(lab, sb_ns) == [("ESTABLISHED", record.spis)])  # fmt: skip
    drops = replay_drops(cl_ns)
    assert ping(lab) == PINGS
    assert replay_drops(cl_ns) == drops, "the client dropped the new gateway's ESP as replays"
    assert kernel_spis(cl_ns) == client_children
    assert replay_drops(sb_ns) == 0, "the new gateway dropped the client's ESP as replays"
    assert [spis for _s, spis in ike_sas(lab, cl_ns)] == [record.spis]

    # -- 6. rekeys through the new gateway ------------------------------------------------------
    children = rekey_net(lab, cl_ns, client_children, rig.wait)
    rekey_net(lab, sb_ns, children, rig.wait)
    drops = replay_drops(cl_ns)
    assert ping(lab) == PINGS
    assert replay_drops(cl_ns) == drops
    assert [spis for _s, spis in ike_sas(lab, cl_ns)] == [record.spis]

    lab.swanctl(cl_ns, "--rekey", "--ike", "gw")
    rig.wait("the IKE SA rekeyed by the client",
             lambda: (sas := ike_sas(lab, cl_ns)) and len(sas) == 1 and sas[0][1] != record.spis
             and sas[0][0] == "ESTABLISHED")  # fmt: skip
    assert ping(lab) == PINGS
    assert client_ike_sa_inits(lab) == 1, "the client set up a new IKE SA"
    assert replay_drops(sb_ns) == 0, "the new gateway dropped the client's ESP as replays"
    print(
        f"took over IKE SA {format_spis(record.spis)} with {len(feed.child_spis)} SAs; "
        f"replay drops at the client: {replay_drops(cl_ns) - drops_before} (all in the control)"
    )
