"""local_addresses reads the addresses of the namespace it is given, not the caller's."""

import ipaddress
import subprocess
from collections.abc import Iterator

import pytest

from appliance.errors import KernelError
from appliance.netns import temporary_netns
from appliance.rtnl import local_addresses

pytestmark = pytest.mark.netns


@pytest.fixture
def netns_name(require_root: None) -> Iterator[str]:
    with temporary_netns("rtnl-test") as name:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", name, "addr", "add", "192.0.2.77/32", "dev", "lo"], check=True)
        yield name


def test_addresses_come_from_the_named_namespace(netns_name: str) -> None:
    inside = local_addresses(netns_name)
    assert ipaddress.ip_address("192.0.2.77") in inside
    assert ipaddress.ip_address("192.0.2.77") not in local_addresses(None)


def test_absent_namespace_is_a_kernel_error(require_root: None) -> None:
    with pytest.raises(KernelError, match="network namespace 'iha-0000-absent' does not exist"):
        local_addresses("iha-0000-absent")


def test_the_local_end_of_a_point_to_point_address_and_ipv6(netns_name: str) -> None:
    def ip(*args: str) -> None:
        subprocess.run(["ip", "-n", netns_name, *args], check=True)

    ip("link", "add", "p0", "type", "veth", "peer", "name", "p1")
    ip("link", "set", "p0", "up")
    ip("addr", "add", "203.0.113.1", "peer", "203.0.113.2/32", "dev", "p0")
    ip("addr", "add", "2001:db8::5/64", "dev", "p0", "nodad")
    inside = local_addresses(netns_name)
    assert ipaddress.ip_address("203.0.113.1") in inside
    assert ipaddress.ip_address("203.0.113.2") not in inside
    assert ipaddress.ip_address("2001:db8::5") in inside


def test_many_addresses_span_several_datagrams(netns_name: str) -> None:
    batch = "".join(f"addr add 198.18.{i // 250}.{i % 250 + 1}/32 dev lo\n" for i in range(600))
    subprocess.run(["ip", "-n", netns_name, "-batch", "-"], input=batch, text=True, check=True)
    inside = set(local_addresses(netns_name))
    assert {ipaddress.ip_address(f"198.18.{i // 250}.{i % 250 + 1}") for i in range(600)} <= inside
