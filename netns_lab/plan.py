"""The lab's topology and addressing plan, as data (no I/O).

::

    client --(outside: swout, 192.0.2.0/24)-- gw1, gw2 --(inside: swin, 198.51.100.0/24)-- server

Every host and each segment's bridge lives in its own network namespace,
named ``iha-<run id>-<role>``; the root namespace is never touched.  Interface
names inside a namespace are short and fixed (``out0``, ``in0``): they are
per-namespace, so concurrent runs cannot collide on them.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass

NS_PREFIX = "iha-"
HOSTS = ("client", "gw1", "gw2", "server")
GATEWAYS = ("gw1", "gw2")
SWITCHES = ("swout", "swin")
ROLES = HOSTS + SWITCHES

# A lab namespace: prefix, 6 hex digits of run id, a role.  Other test suites
# use the `iha-` prefix too, so cleanup matches this exact shape only.
LAB_NS_RE = re.compile(r"^iha-(?P<run_id>[0-9a-f]{6})-(?P<role>client|gw1|gw2|server|swout|swin)$")
RUN_ID_RE = re.compile(r"^[0-9a-f]{6}$")

CLIENT_PROTECTED = "203.0.113.10/32"
"""The client's protected address (a dummy interface), for tunnel tests."""
SECOND_PROTECTED = "203.0.113.11/32"
"""A second protected address: of the pair keyed while a standby cannot reach a store, and
of the client's second strongSwan tunnel (which adds it to the client's loopback)."""


@dataclass(frozen=True)
class Segment:
    """One layer-2 segment: a bridge in its own namespace, and its VRRP instance."""

    name: str
    """``outside`` or ``inside``."""
    bridge: str
    """Bridge interface (and switch role) name: no iproute2 keyword may start it."""
    network: str
    vip: str
    """The virtual address (with prefix) keepalived moves between the gateways."""
    ifname: str
    """The name of the hosts' interface on this segment."""
    vrid: int
    instance: str
    """The keepalived vrrp_instance name."""


OUTSIDE = Segment("outside", "swout", "192.0.2.0/24", "192.0.2.1/24", "out0", 51, "VI_OUTSIDE")
INSIDE = Segment("inside", "swin", "198.51.100.0/24", "198.51.100.1/24", "in0", 52, "VI_INSIDE")
SEGMENTS = (OUTSIDE, INSIDE)
SYNC_GROUP = "VG_IPSEC_HA"

# host -> {segment name: address with prefix}
ADDRESSES: dict[str, dict[str, str]] = {
    "client": {"outside": "192.0.2.10/24"},
    "gw1": {"outside": "192.0.2.2/24", "inside": "198.51.100.2/24"},
    "gw2": {"outside": "192.0.2.3/24", "inside": "198.51.100.3/24"},
    "server": {"inside": "198.51.100.10/24"},
}

# host -> [(destination, gateway)]
ROUTES: dict[str, list[tuple[str, str]]] = {
    "client": [("198.51.100.0/24", "192.0.2.1")],
    "server": [("0.0.0.0/0", "198.51.100.1")],
    # replies to the client's protected address leave through the outside segment
    "gw1": [("203.0.113.0/24", "192.0.2.10")],
    "gw2": [("203.0.113.0/24", "192.0.2.10")],
}

PRIORITIES = {"gw1": 150, "gw2": 100}


def new_run_id() -> str:
    """Six random hex digits: short enough for names, wide enough for concurrent runs."""
    return secrets.token_hex(3)


@dataclass(frozen=True)
class LabPlan:
    """Names and addresses of one lab run."""

    run_id: str

    def __post_init__(self) -> None:
        if not RUN_ID_RE.match(self.run_id):
            raise ValueError(f"run id must be 6 lowercase hex digits, not {self.run_id!r}")

    def ns(self, role: str) -> str:
        """The namespace of a host or switch of this run."""
        if role not in ROLES:
            raise KeyError(f"no lab host or switch named {role!r} (one of {', '.join(ROLES)})")
        return f"{NS_PREFIX}{self.run_id}-{role}"

    @property
    def namespaces(self) -> dict[str, str]:
        return {role: self.ns(role) for role in ROLES}

    def segment_hosts(self, segment: Segment) -> list[str]:
        return [h for h in HOSTS if segment.name in ADDRESSES[h]]


def address_of(host: str, segment: Segment) -> str:
    """A host's address on a segment, without the prefix length."""
    return str(ipaddress.ip_interface(ADDRESSES[host][segment.name]).ip)


def vip_address(segment: Segment) -> str:
    return str(ipaddress.ip_interface(segment.vip).ip)
