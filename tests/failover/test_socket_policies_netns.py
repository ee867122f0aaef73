"""Per-socket policies next to ipsec-ha on the host kernel (issue 12): never served, never touched.

An IKE daemon's bypass policies on its own sockets ("socket in/out" in
``ip xfrm policy``) cannot be added or deleted over netlink. With live
sockets holding them beside ordinary policies, the snapshot leaves them out,
the executor's BACKUP, hot takeover and orderly-stop plans succeed, a restore
succeeds, and the sockets keep their policies throughout.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_executor import IN_POL, OUT_POL, FakeLoops, FakeStore

from appliance import model as m
from appliance.failover.executor import ExecutorSettings, PlanExecutor
from appliance.failover.transitions import Role, StandbyMode, plan
from appliance.notify import VrrpState
from appliance.planner import is_gate
from appliance.store.client import Retrieved
from appliance.xfrm.socket import XfrmSocket

sys.path.insert(0, str(Path(__file__).parents[1] / "xfrm"))
from bypass_sockets import bypass_socket

pytestmark = pytest.mark.netns

SOCKET_DIRS = Counter({3: 2, 4: 2})
"""Two sockets (IPv4, IPv6), each with a socket-in (3) and a socket-out (4) policy."""
STALE = dataclasses.replace(OUT_POL, selector=dataclasses.replace(OUT_POL.selector, prefixlen_d=25))
"""An ordinary policy the store does not hold: a hot takeover removes it."""


@pytest.fixture
def netns(require_root: None) -> Iterator[str]:
    name = f"iha-{secrets.token_hex(3)}-sock"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def charon_sockets(netns: str) -> Iterator[list[socket.socket]]:
    """Open IKE-like sockets with bypass policies, as charon holds them while it runs."""
    sockets = [bypass_socket(netns, socket.AF_INET), bypass_socket(netns, socket.AF_INET6)]
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def socket_policy_dirs(netns: str) -> Counter[int]:
    """Directions of the per-socket policies, from the raw dump that includes them."""
    with XfrmSocket(netns) as xs:
        return Counter(int(p.dir) for p in xs.dump_spd(per_socket=True) if p.dir >= 3)


def ip_xfrm_policy(netns: str) -> str:
    return subprocess.run(
        ["ip", "-n", netns, "xfrm", "policy"], check=True, capture_output=True, text=True
    ).stdout


def assert_socket_policies_kept(netns: str) -> None:
    assert socket_policy_dirs(netns) == SOCKET_DIRS
    text = ip_xfrm_policy(netns)
    assert text.count("socket in") == 2 and text.count("socket out") == 2


def ipsec_ha(*args: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", "appliance", *args, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def test_snapshot_and_restore_leave_socket_policies_alone(
    netns: str, charon_sockets: list[socket.socket], tmp_path: Path
) -> None:
    with XfrmSocket(netns) as xs:
        xs.add_policy(OUT_POL)
        xs.add_policy(IN_POL)
    assert_socket_policies_kept(netns)

    file = tmp_path / "gw.snap"
    assert ipsec_ha("snapshot", "--netns", netns, "-o", str(file))["policy_count"] == 2
    report = ipsec_ha("restore", str(file), "--netns", netns, "--replace")
    assert report["policy_replaced"] == 2 and report["failures"] == []
    with XfrmSocket(netns) as xs:
        assert {(p.dir, p.selector) for p in xs.dump_spd()} == {
            (OUT_POL.dir, OUT_POL.selector),
            (IN_POL.dir, IN_POL.selector),
        }
    assert_socket_policies_kept(netns)


def test_executor_plans_succeed_beside_socket_policies(
    netns: str, charon_sockets: list[socket.socket]
) -> None:
    state = Retrieved((), (OUT_POL, IN_POL), "198.51.100.10")
    with XfrmSocket(netns) as xs:
        xs.add_policy(OUT_POL)
        xs.add_policy(IN_POL)
        executor = PlanExecutor(
            xs, FakeStore(state), FakeLoops(), ExecutorSettings("192.0.2.1", 1000, 10.0, 1000, 125)
        )

        # A cold node's first BACKUP plan, charon started first: gate, remove-state.
        report = executor.run(plan(Role.INIT, VrrpState.BACKUP, StandbyMode.COLD))
        assert report.gated == 1 and report.removed == 1
        assert [is_gate(p) for p in xs.dump_spd()] == [True]
        assert_socket_policies_kept(netns)

        # A hot standby's takeover: reconcile removes the stale policy, then opens outbound.
        xs.add_policy(STALE)
        report = executor.run(plan(Role.STANDBY, VrrpState.MASTER, StandbyMode.HOT))
        assert "reconcile-state" in report.actions and report.removed == 1
        assert report.installed_policies == 1 and report.opened == 1  # in; out was gated
        assert sorted(p.dir for p in xs.dump_spd()) == [m.Direction.IN, m.Direction.OUT]
        assert_socket_policies_kept(netns)

        # An orderly stop of the active node: close outbound, remove-state.
        report = executor.run(plan(Role.ACTIVE, VrrpState.STOP, StandbyMode.HOT))
        assert report.gated == 1 and report.removed == 1
        assert [is_gate(p) for p in xs.dump_spd()] == [True]
    assert_socket_policies_kept(netns)
