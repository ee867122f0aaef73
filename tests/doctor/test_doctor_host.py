"""``ipsec-ha doctor`` on the host kernel: real probes, in a namespace that is removed."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import doctor

pytestmark = pytest.mark.netns


def iha_namespaces() -> set[str]:
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[0] for line in listed.splitlines() if line.startswith("iha-")}


def host_esp_is_missing() -> bool | None:
    """The kernel's own account (config and modules), independent of the doctor."""
    config = Path("/proc/config.gz")
    if config.exists():
        with gzip.open(config, "rt") as text:
            lines = text.read().splitlines()
        if "# CONFIG_INET_ESP is not set" in lines:
            return True
        if "CONFIG_INET_ESP=y" in lines:
            return False
    probe = subprocess.run(["modprobe", "-n", "esp4"], capture_output=True, check=False)
    if probe.returncode != 0:
        return True
    return None  # a module that would load: only trying tells


def run_doctor() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_doctor_reports_missing_esp_with_the_fix_and_fails(require_root: None) -> None:
    if host_esp_is_missing() is not True:
        pytest.skip("this host kernel may have ESP; the lab tier checks the doctor's ESP probe")
    before = iha_namespaces()
    done = run_doctor()
    report = json.loads(done.stdout)
    checks = {check["name"]: check for check in report["checks"]}
    assert done.returncode == 1, done.stderr
    assert report["ok"] is False
    assert checks["esp"]["ok"] is False
    assert checks["esp"]["required"] is True
    assert checks["esp"]["fix"].startswith(
        "run the lab inside scripts/lab-vm, or use a kernel with CONFIG_INET_ESP"
    )
    # What does work on this host is reported as working.
    for name in ("root", "netns", "xfrm", "nftables"):
        assert checks[name]["ok"] is True, checks[name]
    assert iha_namespaces() - before == set()


def test_probe_esp_alone_removes_its_namespace(require_root: None) -> None:
    expected_missing = host_esp_is_missing()
    if expected_missing is None:
        pytest.skip("cannot tell from config or modprobe whether this host has ESP")
    before = iha_namespaces()
    check = doctor.probe_esp()
    assert check.ok is (not expected_missing)
    assert iha_namespaces() - before == set()


def test_xfrm_and_nftables_probes_work_in_a_temporary_namespace(require_root: None) -> None:
    with doctor.temporary_netns() as netns:
        assert netns.startswith("iha-") and netns in iha_namespaces()
        xfrm = doctor.probe_xfrm(netns)
        nft = doctor.probe_nftables(netns)
        gate = doctor.probe_nft_gate(netns)
    assert netns not in iha_namespaces()
    assert xfrm.ok, xfrm.detail
    assert "dumped 0 SAs and 0 policies" in xfrm.detail
    assert nft.ok, nft.detail
    # nft_xfrm is built into this host's kernel (the gate's table lives in the netns only)
    assert gate.ok and gate.required is False, gate.detail


def test_the_gate_probe_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.errors import KernelError
    from appliance.nft import gate as gate_module

    def refuse(self: object) -> None:
        raise KernelError("libnftables rejected the gate probe: No such file or directory")

    monkeypatch.setattr(gate_module.NftGate, "probe", refuse)
    with doctor.temporary_netns() as netns:
        check = doctor.probe_nft_gate(netns)
    assert check.ok is False and check.required is False
    assert "No such file or directory" in check.detail and "nft_xfrm" in check.fix
