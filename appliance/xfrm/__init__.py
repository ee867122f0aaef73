"""Kernel XFRM (SAD/SPD) over NETLINK_XFRM.

* ``structs``: the netlink messages, one pyroute2 class per struct of
  ``include/uapi/linux/xfrm.h``; ``constants``: its numbers.
* ``convert``: lossless message <-> ``appliance.model`` conversion, with a
  fast ``struct`` encoder proven byte-identical to the declarative classes.
* ``XfrmSocket``: one socket per network namespace; dump/get/add/update/
  delete/flush of SAs and policies, GETAE/NEWAE, ALLOCSPI, MIGRATE, and
  ``install_batch`` for thousands of entries.
* ``events``: ``parse_events`` (sans-IO) and ``xfrm_events`` (asyncio).

See docs/xfrm.md.
"""

from appliance.xfrm.convert import (
    encode_policy,
    encode_sa,
    sad_from_msg,
    sad_to_msg,
    spd_from_msg,
    spd_to_msg,
)
from appliance.xfrm.events import (
    Acquire,
    AeChanged,
    Event,
    EventsOverrun,
    MappingChanged,
    Migrated,
    PolicyAdded,
    PolicyDeleted,
    PolicyExpired,
    PolicyFlushed,
    SaAdded,
    SaDeleted,
    SaExpired,
    SaFlushed,
    UnknownEvent,
    parse_events,
    xfrm_events,
)
from appliance.xfrm.socket import XfrmSocket, dump_sad, dump_spd, open_xfrm_socket
from appliance.xfrm.types import AeState, BatchFailure, KmAddress, Migration, XfrmError

__all__ = [
    "Acquire",
    "AeChanged",
    "AeState",
    "BatchFailure",
    "Event",
    "EventsOverrun",
    "KmAddress",
    "MappingChanged",
    "Migrated",
    "Migration",
    "PolicyAdded",
    "PolicyDeleted",
    "PolicyExpired",
    "PolicyFlushed",
    "SaAdded",
    "SaDeleted",
    "SaExpired",
    "SaFlushed",
    "UnknownEvent",
    "XfrmError",
    "XfrmSocket",
    "dump_sad",
    "dump_spd",
    "encode_policy",
    "encode_sa",
    "open_xfrm_socket",
    "parse_events",
    "sad_from_msg",
    "sad_to_msg",
    "spd_from_msg",
    "spd_to_msg",
    "xfrm_events",
]
