"""netns_local_addresses reads the addresses of the namespace it is given, not the caller's."""

import ipaddress
import subprocess
from collections.abc import Iterator

import pytest

from appliance.errors import KernelError
from appliance.netns import temporary_netns
from appliance.restore import netns_local_addresses

pytestmark = pytest.mark.netns


@pytest.fixture
def netns_name(require_root: None) -> Iterator[str]:
    with temporary_netns("restore-test") as name:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", name, "addr", "add", "192.0.2.77/32", "dev", "lo"], check=True)
        yield name


def test_addresses_come_from_the_named_namespace(netns_name: str) -> None:
    inside = netns_local_addresses(netns_name)
    assert ipaddress.ip_address("192.0.2.77") in inside
    assert ipaddress.ip_address("192.0.2.77") not in netns_local_addresses(None)


def test_absent_namespace_is_a_kernel_error(require_root: None) -> None:
    with pytest.raises(KernelError, match="network namespace 'iha-0000-absent' does not exist"):
        netns_local_addresses("iha-0000-absent")
