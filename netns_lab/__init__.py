"""The network-namespace lab: client, two gateways running keepalived, a protected server.

See docs/lab.md for the topology, the addressing plan and the teardown
guarantees.
"""

from netns_lab.lab import (
    CREATED_RUN_IDS,
    DEFAULT_ADVERT_INT,
    Lab,
    LabInterrupted,
    down,
    down_all,
    leftovers,
    list_runs,
    status,
    vip,
)
from netns_lab.plan import CLIENT_PROTECTED, GATEWAYS, HOSTS, INSIDE, OUTSIDE, SYNC_GROUP

__all__ = [
    "CLIENT_PROTECTED",
    "CREATED_RUN_IDS",
    "DEFAULT_ADVERT_INT",
    "GATEWAYS",
    "HOSTS",
    "INSIDE",
    "OUTSIDE",
    "SYNC_GROUP",
    "Lab",
    "LabInterrupted",
    "down",
    "down_all",
    "leftovers",
    "list_runs",
    "status",
    "vip",
]
