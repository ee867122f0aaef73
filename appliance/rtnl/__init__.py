"""rtnetlink, as far as the appliance needs it: the addresses configured in a namespace.

``codec`` is the sans-IO part (the RTM_GETADDR dump request to bytes,
received datagrams to :class:`~appliance.rtnl.codec.InterfaceAddress`
events); ``socket`` is the thin adapter :func:`local_addresses`.  Links and
namespaces are made with pyroute2 elsewhere (``appliance.netns``, the lab);
the address read is here because it sits on the on-demand install path,
where importing pyroute2 would cost seconds on a slow machine.
"""

from appliance.rtnl.codec import DumpDone, InterfaceAddress, decode, encode_getaddr_dump
from appliance.rtnl.socket import local_addresses

__all__ = [
    "DumpDone",
    "InterfaceAddress",
    "decode",
    "encode_getaddr_dump",
    "local_addresses",
]
