"""The daemon's address lookup loads no pyroute2: on a slow machine its import took seconds.

In the lab VM, pyroute2's ``IPRoute`` import (6.8 s) once fell on the first
on-demand install, and the first packets of a tunnel waited for it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.import_check import ROOT

pytestmark = pytest.mark.unit

PROBE = """
import ipaddress, sys
from appliance.failover.executor import node_netns_addresses
found = node_netns_addresses(None)()
assert ipaddress.ip_address("127.0.0.1") in found, found
print(sorted(m for m in sys.modules if m.split(".")[0] == "pyroute2"))
"""


def test_the_local_address_lookup_imports_no_pyroute2() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
