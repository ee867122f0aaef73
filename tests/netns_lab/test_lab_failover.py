"""The lab with real keepalived on the host kernel: one VIP holder, failover, notify records."""

import signal
import time
from collections.abc import Iterator

import pytest

import netns_lab
from netns_lab import GATEWAYS, SYNC_GROUP, Lab
from netns_lab.plan import INSIDE, OUTSIDE

pytestmark = pytest.mark.netns

NAMES = {"VI_OUTSIDE", "VI_INSIDE", SYNC_GROUP}


@pytest.fixture
def lab(require_root: None) -> Iterator[Lab]:
    with Lab.create() as lab:
        yield lab


def states(lab: Lab, gateway: str, after: float = 0.0) -> dict[str, list[str]]:
    """name -> states recorded by ``gateway`` after monotonic time ``after``."""
    out: dict[str, list[str]] = {}
    for r in lab.transitions(gateway):
        if r.monotonic >= after:
            out.setdefault(r.name, []).append(r.state)
    return out


def test_exactly_one_gateway_holds_both_vips(lab: Lab) -> None:
    holders = {gw: lab.addresses(gw) for gw in GATEWAYS}
    with_vips = [gw for gw in GATEWAYS if {OUTSIDE.vip, INSIDE.vip} <= holders[gw]]
    assert with_vips == ["gw1"]
    assert not {OUTSIDE.vip, INSIDE.vip} & holders["gw2"]
    assert lab.vip_holders() == {"outside": ["gw1"], "inside": ["gw1"]}
    assert set(states(lab, "gw1")) == NAMES and all(
        s[-1] == "MASTER" for s in states(lab, "gw1").values()
    )
    assert all(s[-1] == "BACKUP" for s in states(lab, "gw2").values())


def test_sigterm_moves_both_vips_and_records_stop_and_master(lab: Lab) -> None:
    # the client reaches the server through whichever gateway holds the VIP
    lab.exec("client", ["ping", "-c", "1", "-W", "2", "-I", "192.0.2.10", "198.51.100.10"])
    before = time.monotonic()
    lab.kill_keepalived("gw1", signal.SIGTERM)
    lab.wait_vip_holder("gw2", lab.failover_deadline())

    assert not {OUTSIDE.vip, INSIDE.vip} & lab.addresses("gw1")
    lab.wait_settled("gw1", "STOP", after=before)
    lab.wait_settled("gw2", "MASTER", after=before)
    assert {n: s for n, s in states(lab, "gw1", after=before).items()} == {
        n: ["STOP"] for n in NAMES
    }
    assert {n: s for n, s in states(lab, "gw2", after=before).items()} == {
        n: ["MASTER"] for n in NAMES
    }
    instance_prio = {r.name: r.priority for r in lab.transitions("gw2") if r.monotonic >= before}
    assert instance_prio == {"VI_OUTSIDE": 100, "VI_INSIDE": 100, SYNC_GROUP: 0}
    lab.exec("client", ["ping", "-c", "1", "-W", "2", "198.51.100.10"])


def test_sigkill_is_a_crash_the_backup_takes_over_without_stop(lab: Lab) -> None:
    before = time.monotonic()
    lab.kill_keepalived("gw1", signal.SIGKILL)
    assert not lab.keepalived_alive("gw1")

    # the dead master's addresses stay configured, so wait on gw2 alone
    def gw2_holds_both() -> bool:
        holders = lab.vip_holders()
        return all("gw2" in h for h in holders.values())

    netns_lab.lab.wait_for("gw2 to hold both VIPs", gw2_holds_both, lab.failover_deadline())
    lab.wait_settled("gw2", "MASTER", after=before)
    assert states(lab, "gw1", after=before) == {}
    assert {OUTSIDE.vip, INSIDE.vip} <= lab.addresses("gw1")


def test_restarted_gateway_does_not_preempt(lab: Lab) -> None:
    lab.kill_keepalived("gw1")
    lab.wait_vip_holder("gw2", lab.failover_deadline())
    lab.wait_settled("gw1", "STOP")
    lab.wait_settled("gw2", "MASTER")
    before = time.monotonic()
    lab.start_keepalived("gw1")
    lab.wait_settled("gw1", "BACKUP", after=before)
    # nopreempt: gw1 (150) stays backup behind gw2 (100)
    assert lab.vip_holder() == "gw2"
    assert "MASTER" not in [s for v in states(lab, "gw1", after=before).values() for s in v]
