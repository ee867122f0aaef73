"""Two ``ipsec-ha daemon``s with ``[ike] feed`` move a strongSwan tunnel, IKE SA included.

Lab VM, root.  ``ike_rig(standby=True, standby_daemon=True, feed=True)``: the
store on the gateways' sync link; on each gateway a cold daemon with the
nftables gate, started before its charon; a strongSwan client.  keepalived's
part is played by the test: it writes the daemons' FIFO lines and moves the
gateway's veth end, with the gateway address, from one gateway to the other
(the VIP moving).

1. gw is MASTER, sb BACKUP.  The client sets up an IKE SA with two CHILD SAs;
   pings flow; the store holds the IKE SA and the counters.
2. gw crashes (its charon and daemon killed); the address moves to sb; sb's
   daemon gets MASTER.  Its plan feeds its charon from the store, moves the
   counters of the SAs charon installed, activates charon and opens the gate.
   The client's IKE and CHILD SPIs are unchanged, pings flow with no replay
   drop at either end.
3. Rekeys through the new active: the client's CHILD rekey, sb's CHILD rekey,
   the client's IKE rekey.  sb publishes each to the store.
4. Failback: gw comes back (charon and daemon restarted, BACKUP); sb gets
   BACKUP (its charon deletes the IKE SA it held) and the address moves back;
   gw gets MASTER and its charon is fed what sb published.  The tunnel keeps
   its (rekeyed) SPIs and flows with no replay drop.
5. Throughout, the client never sends a second IKE_SA_INIT.

``IPSEC_HA_IKE_DAEMON_LAB_LOGS=DIR`` keeps the charon, store and daemon logs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.store.base import IkeSaRecord
from appliance.strongswan.ike_state import IkeSpis, format_spis
from tests.strongswan.charon_probe import (
    PINGS,
    client_ike_sa_inits,
    counters_stored,
    ike_sas,
    kernel_spis,
    ping,
    rekey_net,
    replay_drops,
)
from tests.strongswan.ike_rig import (
    SERVER_ID,
    Rig,
    crash_gateway,
    gateway_back,
    ike_rig,
    move_back,
    rekey_ike,
    set_up_tunnel,
    start_charons,
    steps_of,
    transition,
)

pytestmark = pytest.mark.lab


@pytest.fixture
def rig(tmp_path: Path, require_root: None) -> Iterator[Rig]:
    with ike_rig(tmp_path, standby=True, standby_daemon=True, feed=True) as rig:
        yield rig


def stored_ike(rig: Rig) -> dict[IkeSpis, IkeSaRecord]:
    return rig.reader.get_server(SERVER_ID).ike_sas


def test_daemons_move_a_strongswan_tunnel_and_its_ike_sa_and_back(rig: Rig, tmp_path: Path) -> None:
    lab, sb = rig.lab, rig.standby
    assert sb is not None
    gw_ns, cl_ns, sb_ns = lab.gw_ns, lab.cl_ns, lab.sb_ns

    # -- 1. gw active, sb standby; the tunnel --------------------------------------------------
    gw_charon = start_charons(rig)
    transition(sb, "BACKUP")
    assert "feed-charon" in steps_of(transition(rig, "MASTER"))  # (the store holds none yet)
    record = set_up_tunnel(rig)
    client_spis = kernel_spis(cl_ns)
    assert [spis for _s, spis in ike_sas(lab, cl_ns)] == [record.spis]
    assert ping(lab) == PINGS
    rig.wait(
        "the store's counters to reach gw's kernel's",
        lambda: counters_stored(rig.reader.fetch(SERVER_ID), gw_ns),
    )
    drops = replay_drops(cl_ns)

    # -- 2. gw crashes; sb takes over, IKE SA included ------------------------------------------
    crash_gateway(rig, gw_charon)
    done = transition(sb, "MASTER")
    steps = steps_of(done)
    for step in ("feed-charon", "restore-inbound-replay", "activate-charon", "open-outbound"):
        assert step in steps, steps
    sb.wait("the IKE SA ESTABLISHED on sb",
            lambda: ike_sas(lab, sb_ns) == [("ESTABLISHED", record.spis)])  # fmt: skip
    assert ping(lab) == PINGS
    assert replay_drops(cl_ns) == drops, "the client dropped the new active's ESP as replays"
    assert replay_drops(sb_ns) == 0, "the new active dropped the client's ESP as replays"
    assert kernel_spis(cl_ns) == client_spis
    assert [spis for _s, spis in ike_sas(lab, cl_ns)] == [record.spis]

    # -- 3. rekeys through the new active, published by it ------------------------------------
    client_spis = rekey_net(lab, cl_ns, client_spis, sb.wait)
    client_spis = rekey_net(lab, sb_ns, client_spis, sb.wait)
    new_ike = rekey_ike(sb, record.spis)
    sb.wait(
        "sb to publish the rekeyed IKE SA with the CHILD SAs the client holds",
        lambda: (s := stored_ike(sb)) and list(s) == [new_ike]
        and set(s[new_ike].child_spis) == kernel_spis(cl_ns),
    )  # fmt: skip
    assert ping(lab) == PINGS
    assert replay_drops(cl_ns) == drops and replay_drops(sb_ns) == 0
    client_spis = kernel_spis(cl_ns)
    sb.wait(
        "the store's counters to reach sb's kernel's",
        lambda: counters_stored(sb.reader.fetch(SERVER_ID), sb_ns),
    )

    # -- 4. failback: gw returns as standby, then takes the tunnel back -------------------------
    back = gateway_back(rig, tmp_path)
    transition(back, "BACKUP")
    left = steps_of(transition(sb, "BACKUP"))
    assert left[:3] == ["close-outbound", "stop-publishing", "retire-charon"], left
    sb.wait("sb's charon to hold no IKE SA", lambda: ike_sas(lab, sb_ns) == [] or None)
    assert kernel_spis(sb_ns) == set(), "sb's charon did not remove its CHILD SAs"
    move_back(lab)
    steps = steps_of(transition(back, "MASTER"))
    assert "feed-charon" in steps and "activate-charon" in steps, steps
    back.wait("the IKE SA ESTABLISHED on gw again",
              lambda: ike_sas(lab, gw_ns) == [("ESTABLISHED", new_ike)])  # fmt: skip
    drops = replay_drops(cl_ns)
    assert ping(lab) == PINGS
    assert replay_drops(cl_ns) == drops, "the client dropped gw's ESP as replays after failback"
    assert replay_drops(gw_ns) == 0
    assert kernel_spis(cl_ns) == client_spis
    assert [spis for _s, spis in ike_sas(lab, cl_ns)] == [new_ike]

    # -- 5. the client never set up another IKE SA ----------------------------------------------
    assert client_ike_sa_inits(lab) == 1, "the client set up a new IKE SA"
    print(f"IKE SA {format_spis(record.spis)} -> {format_spis(new_ike)}: crash, rekeys, failback")
