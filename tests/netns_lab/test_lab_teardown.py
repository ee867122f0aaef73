"""Teardown always happens: normal exit, exceptions, failed builds, signals, `ipsec-ha-lab down`."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

import netns_lab
from appliance.errors import ConfigError
from netns_lab import Lab, keepalived

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]


def root_veths() -> set[str]:
    with IPRoute() as ipr:
        return {
            link.get("IFLA_IFNAME")
            for link in ipr.link("dump")
            if link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) == "veth"
        }


def assert_nothing_left(run_id: str) -> None:
    assert netns_lab.leftovers(run_id) == {"namespaces": [], "keepalived_pids": [], "run_dirs": []}


@pytest.fixture
def root_ns_unchanged(require_root: None) -> Iterator[None]:
    before = root_veths()
    yield
    assert root_veths() <= before, "a veth appeared in the root namespace"


def test_normal_exit_removes_everything(root_ns_unchanged: None) -> None:
    with Lab.create() as lab:
        run_id = lab.run_id
        assert len(netns_lab.leftovers(run_id)["namespaces"]) == 6
        assert len(netns_lab.leftovers(run_id)["keepalived_pids"]) >= 2
    assert_nothing_left(run_id)


def test_exception_inside_the_with_block_removes_everything(root_ns_unchanged: None) -> None:
    run_id = ""
    with pytest.raises(RuntimeError, match="scenario failed"), Lab.create() as lab:
        run_id = lab.run_id
        raise RuntimeError("scenario failed")
    assert run_id
    assert_nothing_left(run_id)


def test_failure_while_building_removes_what_was_built(
    root_ns_unchanged: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def refuse(config: Path, ns: str) -> None:
        seen.append(ns)
        raise ConfigError("refused for the test")

    monkeypatch.setattr(keepalived, "check_config", refuse)
    with pytest.raises(ConfigError, match="refused for the test"):
        Lab.create()
    run_id = seen[0].split("-")[1]
    assert_nothing_left(run_id)


CHILD = textwrap.dedent(
    """
    import sys, time
    from netns_lab import Lab
    where = sys.argv[1]
    if where == "create":
        # interrupted half way through Lab.create(): namespaces built, no keepalived yet
        def hang(self, *args):
            print(self.run_id, flush=True)
            time.sleep(600)
        Lab._start_gateways = hang
        Lab.create()
    else:
        with Lab.create() as lab:
            print(lab.run_id, flush=True)
            time.sleep(600)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("where", ["with", "create"])
def test_signal_in_another_process_tears_its_lab_down(
    root_ns_unchanged: None, sig: signal.Signals, where: str
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, where],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert child.stdout is not None
        run_id = child.stdout.readline().strip()
        assert run_id, child.stderr.read() if child.stderr else ""
        netns_lab.CREATED_RUN_IDS.append(run_id)
        assert netns_lab.leftovers(run_id)["namespaces"]
        child.send_signal(sig)
        _, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0
    assert f"interrupted by {sig.name}" in stderr
    assert_nothing_left(run_id)


def run_lab_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``ipsec-ha-lab ARGS``, as ``python -m netns_lab`` (no reinstall needed)."""
    return subprocess.run(
        [sys.executable, "-m", "netns_lab", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=REPO,
    )


def test_cli_up_status_down(root_ns_unchanged: None) -> None:
    up = run_lab_cli("up", "--json")
    assert up.returncode == 0, up.stderr
    run_id = json.loads(up.stdout)["run_id"]
    netns_lab.CREATED_RUN_IDS.append(run_id)
    try:
        status = run_lab_cli("status", run_id, "--json")
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["vip_holders"] == {"outside": ["gw1"], "inside": ["gw1"]}
        assert {gw: k["alive"] for gw, k in data["keepalived"].items()} == {
            "gw1": True,
            "gw2": True,
        }
        assert all(ns["present"] for ns in data["namespaces"].values())
        assert {(t["node"], t["name"], t["state"]) for t in data["transitions"]} >= {
            ("gw1", "VG_IPSEC_HA", "MASTER"),
            ("gw2", "VG_IPSEC_HA", "BACKUP"),
        }
    finally:
        down = run_lab_cli("down", run_id, "--json")
    assert down.returncode == 0, down.stderr
    assert len(json.loads(down.stdout)["removed_namespaces"]) == 6
    assert_nothing_left(run_id)
    again = run_lab_cli("status", run_id)
    assert again.returncode == 1
    assert again.stderr.strip() == (
        f"ipsec-ha-lab: error: no lab run {run_id} (no /run/ipsec-ha-lab/{run_id}/lab.json)"
    )


def test_down_finds_a_run_whose_record_is_gone(root_ns_unchanged: None) -> None:
    up = run_lab_cli("up", "--json")
    assert up.returncode == 0, up.stderr
    data = json.loads(up.stdout)
    run_id = data["run_id"]
    netns_lab.CREATED_RUN_IDS.append(run_id)
    os.unlink(Path(data["run_dir"]) / "lab.json")
    down = run_lab_cli("down", run_id, "--json")
    assert down.returncode == 0, down.stderr
    assert_nothing_left(run_id)


def test_down_rejects_bad_arguments(require_root: None) -> None:
    both = run_lab_cli("down")
    assert both.returncode == 2
    assert both.stderr.strip() == "ipsec-ha-lab: error: give either a RUNID or --all"
    bad = run_lab_cli("down", "../../etc")
    assert bad.returncode == 2
    assert "run id must be 6 hex digits" in bad.stderr
