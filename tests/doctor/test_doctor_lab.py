"""``ipsec-ha doctor`` on a kernel with ESP (the lab VM): everything required passes."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.lab


def iha_namespaces() -> set[str]:
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[0] for line in listed.splitlines() if line.startswith("iha-")}


def test_doctor_finds_esp_and_passes(require_root: None) -> None:
    before = iha_namespaces()
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(done.stdout)
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["esp"]["ok"] is True, checks["esp"]
    assert "installed and removed" in checks["esp"]["detail"]
    assert checks["esp"]["fix"] == ""
    assert report["ok"] is True, report
    assert done.returncode == 0, done.stderr
    assert iha_namespaces() - before == set()
