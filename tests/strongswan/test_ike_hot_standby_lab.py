"""A hot standby's charon follows a strongSwan tunnel's IKE SA as it changes, and takes it over.

Lab VM, root.  ``ike_rig(standby=True, standby_daemon=True, feed=True, mode="hot")``:
the store on the gateways' sync link; on each gateway a hot daemon with the nftables
gate, started before its charon; a strongSwan client.  The test writes the daemons'
FIFO lines and moves the gateway's veth end (the VIP moving), as keepalived would.

1. gw is MASTER, sb BACKUP (following the store).  The client sets up an IKE SA with two
   CHILD SAs; sb's charon is fed it as the store gets it: it holds the IKE SA PASSIVE, and
   sb's kernel holds its CHILD SAs, installed by charon.
2. The client rekeys a CHILD SA, then the IKE SA, through gw: sb's charon follows each,
   the CHILD rekey as a CHILD_ADD and a CHILD_DELETE, the IKE rekey as the old IKE SA
   deleted and the new one fed whole.  sb's kernel holds exactly gw's CHILD SAs.
3. gw crashes; the address moves to sb; sb gets MASTER.  Its takeover feeds nothing new,
   moves the counters, activates charon and opens the gate: the client's IKE and CHILD
   SPIs are unchanged, pings flow with no replay drop at either end.
4. A CHILD rekey by the client through the new active succeeds.
5. Failback: gw comes back as a hot standby (charon and daemon restarted, BACKUP); its
   charon is fed the IKE SA as sb published it.  sb gets BACKUP (its charon's IKE SA is
   retired, then fed again passive as it follows), the address moves back, and gw's
   takeover finds its charon current.  The tunnel keeps its SPIs, with no replay drop.
6. Throughout, the client never sends a second IKE_SA_INIT.

``IPSEC_HA_IKE_DAEMON_LAB_LOGS=DIR`` keeps the charon, store and daemon logs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
    step_detail,
    steps_of,
    transition,
)

pytestmark = pytest.mark.lab


@pytest.fixture
def rig(tmp_path: Path, require_root: None) -> Iterator[Rig]:
    with ike_rig(tmp_path, standby=True, standby_daemon=True, feed=True, mode="hot") as rig:
        yield rig


def test_a_hot_standbys_charon_follows_the_ike_sa_and_takes_it_over_unnoticed(
    rig: Rig, tmp_path: Path
) -> None:
    lab, sb = rig.lab, rig.standby
    assert sb is not None
    gw_ns, cl_ns, sb_ns = lab.gw_ns, lab.cl_ns, lab.sb_ns

    # -- 1. gw active, sb a hot standby; the tunnel, followed by sb's charon ------------------
    gw_charon = start_charons(rig)
    assert steps_of(transition(sb, "BACKUP")) == [
        "close-outbound", "retire-charon", "start-following",
    ]  # fmt: skip
    transition(rig, "MASTER")
    record = set_up_tunnel(rig)
    assert ping(lab) == PINGS

    def follows(ns: str, active: str, ike: IkeSpis) -> bool | None:
        """``ns``'s charon holds ``ike`` passive, its kernel exactly ``active``'s SAs."""
        held = ike_sas(lab, ns) == [("PASSIVE", ike)]
        return (held and kernel_spis(ns) == kernel_spis(active)) or None

    sb.wait("sb's charon to hold the IKE SA passive, with gw's CHILD SAs",
            lambda: follows(sb_ns, gw_ns, record.spis))  # fmt: skip
    assert ike_sas(lab, gw_ns) == [("ESTABLISHED", record.spis)]

    # -- 2. rekeys through gw, followed by sb's charon -----------------------------------------
    rekey_net(lab, cl_ns, kernel_spis(cl_ns), rig.wait)
    sb.wait("sb to follow the CHILD rekey", lambda: follows(sb_ns, gw_ns, record.spis))
    new_ike = rekey_ike(rig, record.spis)
    sb.wait("sb to follow the IKE rekey", lambda: follows(sb_ns, gw_ns, new_ike))
    assert ping(lab) == PINGS
    client_spis = kernel_spis(cl_ns)
    drops = replay_drops(cl_ns)
    rig.wait(
        "the store's counters to reach gw's kernel's",
        lambda: counters_stored(rig.reader.fetch(SERVER_ID), gw_ns),
    )

    # -- 3. gw crashes; sb takes over what its charon already holds ----------------------------
    crash_gateway(rig, gw_charon)
    done = transition(sb, "MASTER")
    steps = steps_of(done)
    assert steps[:2] == ["stop-following", "claim-ownership"], steps
    for step in ("feed-charon", "reconcile-state", "activate-charon", "open-outbound"):
        assert step in steps, steps
    fed = step_detail(done, "feed-charon")
    assert fed["installed"] == 0 and fed["cleared"] == 0, f"the takeover fed charon: {fed}"
    sb.wait("the IKE SA ESTABLISHED on sb",
            lambda: ike_sas(lab, sb_ns) == [("ESTABLISHED", new_ike)])  # fmt: skip
    assert ping(lab) == PINGS
    assert replay_drops(cl_ns) == drops, "the client dropped the new active's ESP as replays"
    assert replay_drops(sb_ns) == 0, "the new active dropped the client's ESP as replays"
    assert kernel_spis(cl_ns) == client_spis
    assert [spis for _s, spis in ike_sas(lab, cl_ns)] == [new_ike]

    # -- 4. a CHILD rekey through the new active ------------------------------------------------
    client_spis = rekey_net(lab, cl_ns, client_spis, sb.wait)
    assert ping(lab) == PINGS
    assert replay_drops(cl_ns) == drops and replay_drops(sb_ns) == 0
    sb.wait(
        "the store's counters to reach sb's kernel's",
        lambda: counters_stored(sb.reader.fetch(SERVER_ID), sb_ns),
    )

    # -- 5. failback to gw, a hot standby again --------------------------------------------------
    back = gateway_back(rig, tmp_path, mode="hot")
    transition(back, "BACKUP")
    back.wait("gw's charon to hold the IKE SA passive, with sb's CHILD SAs",
              lambda: follows(gw_ns, sb_ns, new_ike))  # fmt: skip
    left = steps_of(transition(sb, "BACKUP"))
    assert left == ["close-outbound", "stop-publishing", "retire-charon", "start-following"]
    move_back(lab)
    done = transition(back, "MASTER")
    assert step_detail(done, "feed-charon")["installed"] == 0
    back.wait("the IKE SA ESTABLISHED on gw again",
              lambda: ike_sas(lab, gw_ns) == [("ESTABLISHED", new_ike)])  # fmt: skip
    drops = replay_drops(cl_ns)
    assert ping(lab) == PINGS
    assert replay_drops(cl_ns) == drops, "the client dropped gw's ESP as replays after failback"
    assert replay_drops(gw_ns) == 0
    assert kernel_spis(cl_ns) == client_spis
    # sb follows again: its charon holds the IKE SA passive once more.
    sb.wait("sb's charon to follow gw's IKE SA", lambda: follows(sb_ns, gw_ns, new_ike))

    # -- 6. the client never set up another IKE SA -----------------------------------------------
    assert client_ike_sa_inits(lab) == 1, "the client set up a new IKE SA"
    print(f"IKE SA {format_spis(record.spis)} -> {format_spis(new_ike)}: followed hot, taken over")
