"""Kernel XFRM (SAD/SPD) over NETLINK_XFRM.

* ``codec`` (SAs, policies, AE), ``codec_migrate`` and the decoders of
  ``events``: the one codec, model entries <-> message bytes with
  precompiled structs quoting ``include/uapi/linux/xfrm.h``. It never
  imports pyroute2; the tests hold it to pyroute2 declarations of the same
  structs under ``tests/xfrm/oracle``. ``constants``: the header's numbers.
* ``XfrmSocket``: one socket per network namespace; dump/get/add/update/
  delete/flush of SAs and policies, GETAE/NEWAE, ALLOCSPI, MIGRATE, and
  ``install_batch`` for thousands of entries.
* ``events``: ``parse_events`` (sans-IO) and ``xfrm_events`` (asyncio).

The names below load their module on first use, so that importing one
submodule (``appliance.xfrm.socket`` for a restore) does not import asyncio
with the rest. See docs/xfrm.md.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.xfrm.codec import encode_policy, encode_sa, sad_from_bytes, spd_from_bytes
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

_MODULE_OF = {
    "Acquire": "events",
    "AeChanged": "events",
    "AeState": "types",
    "BatchFailure": "types",
    "Event": "events",
    "EventsOverrun": "events",
    "KmAddress": "types",
    "MappingChanged": "events",
    "Migrated": "events",
    "Migration": "types",
    "PolicyAdded": "events",
    "PolicyDeleted": "events",
    "PolicyExpired": "events",
    "PolicyFlushed": "events",
    "SaAdded": "events",
    "SaDeleted": "events",
    "SaExpired": "events",
    "SaFlushed": "events",
    "UnknownEvent": "events",
    "XfrmError": "types",
    "XfrmSocket": "socket",
    "dump_sad": "socket",
    "dump_spd": "socket",
    "encode_policy": "codec",
    "encode_sa": "codec",
    "open_xfrm_socket": "socket",
    "parse_events": "events",
    "sad_from_bytes": "codec",
    "spd_from_bytes": "codec",
    "xfrm_events": "events",
}
"""Public name -> the submodule defining it."""

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
    "sad_from_bytes",
    "spd_from_bytes",
    "xfrm_events",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
