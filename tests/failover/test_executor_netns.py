"""The executor's outbound gate against the host kernel's SPD (policies need no ESP)."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator

import pytest
from test_executor import IN_POL, OUT_POL, FakeLoops, FakeStore

from appliance import model as m
from appliance.failover.executor import ExecutorSettings, PlanExecutor
from appliance.failover.transitions import Role, StandbyMode, plan
from appliance.notify import VrrpState
from appliance.planner import is_gate
from appliance.store.client import Retrieved
from appliance.xfrm.socket import XfrmSocket

pytestmark = pytest.mark.netns


@pytest.fixture
def netns(require_root: None) -> Iterator[str]:
    name = f"iha-{secrets.token_hex(3)}-gw"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def out_policies(xs: XfrmSocket) -> list[m.SpdEntry]:
    return [p for p in xs.dump_spd() if p.dir == m.Direction.OUT]


def test_policies_are_gated_then_opened_in_a_real_spd(netns: str) -> None:
    state = Retrieved((), (OUT_POL, IN_POL), "198.51.100.10")
    with XfrmSocket(netns) as xs:
        xs.add_policy(OUT_POL)
        executor = PlanExecutor(
            xs, FakeStore(state), FakeLoops(), ExecutorSettings("192.0.2.1", 1000, 10.0, 1000, 125)
        )
        executor.run(plan(Role.INIT, VrrpState.BACKUP, StandbyMode.COLD))
        (gate,) = out_policies(xs)
        assert is_gate(gate) and gate.selector == OUT_POL.selector
        executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.COLD))
        (opened,) = out_policies(xs)
        assert not is_gate(opened) and opened.templates == OUT_POL.templates
        assert opened.index == gate.index  # UPDPOLICY kept the kernel index
        before = xs.dump_spd()
        report = executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.COLD))
        assert report.installed_policies == report.opened == 0
        assert xs.dump_spd() == before
