"""The safety net against a real charon's vici (root, a kernel with ESP: the lab VM).

The gateway's charon syncs an IKE SA with two CHILD SAs to the relay's book
(as in ``test_ha_relay_lab``); the check through vici finds it kept.  Then the
gateway's charon loses it (``swanctl --terminate`` on the gateway), the check
finds it missing, and its initiates, through vici, set the tunnel up again
from the gateway (the lab's connection names the client's address); a
second check then finds it replaced, with nothing left to do.
"""

from __future__ import annotations

import time

import pytest

from appliance.strongswan.safety_net import Initiate, check, expected_from
from appliance.strongswan.vici_client import CharonVici, ViciAddress
from netns_lab.charon import VICI
from tests.strongswan.charon_lab import CL_ADDR, HEARTBEAT_WAIT_S, CharonLab
from tests.strongswan.test_ha_relay_lab import (  # noqa: F401 - the fixtures
    RelayThread,
    lab,
    only,
    relay,
    wait_gateway_ike_sas,
)

pytestmark = pytest.mark.lab


def test_the_safety_net_finds_a_lost_ike_sa_and_initiates_it_again(
    lab: CharonLab,  # noqa: F811 - the fixture
    relay: RelayThread,  # noqa: F811 - the fixture
) -> None:
    started = time.monotonic()
    lab.start_charon(lab.gw_ns)
    lab.start_charon(lab.cl_ns)
    lab.load()
    time.sleep(max(0.0, started + HEARTBEAT_WAIT_S - time.monotonic()))
    lab.swanctl(lab.cl_ns, "--initiate", "--child", "net")
    lab.swanctl(lab.cl_ns, "--initiate", "--child", "net2")
    relay.wait(
        "one IKE SA with two CHILD SAs",
        lambda sas: (s := only(sas)) is not None and s.update is not None
        and len(s.all_children) == 2,
    )  # fmt: skip
    state = only(relay.sas())
    assert state is not None
    expected = [expected_from(state)]
    vici = CharonVici(ViciAddress.parse(VICI), lab.gw_ns)

    # charon holds what the book holds: real vici answers parse, and match
    held, conns = vici.list_sas(), vici.list_conns()
    print(f"held: {held}\nconnections: {conns}")
    first = check(expected, held, conns)
    assert first.kept == (state.spis,) and first.clean and not first.initiate, first

    # charon loses the IKE SA (deleted on the gateway): the check finds it missing
    lab.swanctl(lab.gw_ns, "--terminate", "--ike", "gw")
    wait_gateway_ike_sas(lab, 0)
    lost = check(expected, vici.list_sas(), vici.list_conns())
    assert lost.missing == (state.spis,), lost
    assert lost.initiate == (Initiate("gw", "net", state.spis), Initiate("gw", "net2", state.spis))
    for item in lost.initiate:
        vici.initiate(item.connection, item.child, 30_000)

    # the gateway set the tunnel up again, to the client's address, with both CHILD SAs
    (again,) = wait_gateway_ike_sas(lab, 1)
    assert again != state.spis
    after = check(expected, vici.list_sas(), vici.list_conns())
    assert after.replaced == (state.spis,) and after.clean and not after.initiate, after
    (sa,) = [h for h in vici.list_sas() if h.spis == again]
    assert (sa.state, sa.remote, len(sa.inbound_spis)) == ("ESTABLISHED", CL_ADDR, 2), sa
