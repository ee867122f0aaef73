"""netns_lab.plan: names fit the kernel's limits and addresses stay in documentation ranges."""

import ipaddress

import pytest

from netns_lab import keepalived
from netns_lab.plan import (
    ADDRESSES,
    CLIENT_PROTECTED,
    LAB_NS_RE,
    ROLES,
    ROUTES,
    SEGMENTS,
    LabPlan,
    new_run_id,
)

pytestmark = pytest.mark.unit

DOC_RANGES = [
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15")
]


def in_doc_range(address: str) -> bool:
    net = ipaddress.ip_interface(address).network
    return any(net.subnet_of(r) for r in DOC_RANGES)  # type: ignore[arg-type]


def test_every_lab_address_is_from_a_documentation_range() -> None:
    addresses = [a for per_host in ADDRESSES.values() for a in per_host.values()]
    addresses += [s.vip for s in SEGMENTS] + [s.network for s in SEGMENTS] + [CLIENT_PROTECTED]
    for routes in ROUTES.values():
        for dst, gateway in routes:
            addresses.append(gateway)
            if dst != "0.0.0.0/0":
                addresses.append(dst)
    assert all(in_doc_range(a) for a in addresses), [a for a in addresses if not in_doc_range(a)]


def test_namespace_names_are_unique_per_run_and_match_the_cleanup_pattern() -> None:
    plan = LabPlan(new_run_id())
    names = list(plan.namespaces.values())
    assert len(set(names)) == len(ROLES)
    for name in names:
        match = LAB_NS_RE.match(name)
        assert match and match["run_id"] == plan.run_id
    # bridge and interface names must fit IFNAMSIZ (15 chars + NUL)
    assert all(len(s.bridge) <= 15 and len(s.ifname) <= 15 for s in SEGMENTS)


def test_bridge_names_are_not_iproute2_keyword_prefixes() -> None:
    # `ip link add bro type bridge` reads "bro" as "broadcast"
    keywords = ("broadcast", "address", "type", "name", "mtu", "dev", "link", "master")
    for segment in SEGMENTS:
        assert not any(k.startswith(segment.bridge) for k in keywords)


@pytest.mark.parametrize("run_id", ["", "12345", "1234567", "ABCDEF", "12345g", "../etc"])
def test_bad_run_ids_are_refused(run_id: str) -> None:
    with pytest.raises(ValueError, match="run id"):
        LabPlan(run_id)


def test_unknown_host_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="no lab host or switch named 'gw3'"):
        LabPlan("abcdef").ns("gw3")


def test_dead_interval_follows_rfc5798() -> None:
    # 3 * 1 s + (256 - 100) * 1 s / 256
    assert keepalived.dead_interval(1.0, 100) == pytest.approx(3.609375)
    assert keepalived.dead_interval(0.2, 100) == pytest.approx(0.721875)
