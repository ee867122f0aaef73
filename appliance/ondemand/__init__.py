"""On-demand SA retrieval (draft section 4.4): fetch the SA of an unknown inbound SPI.

``packet`` reads the SPI of a queued packet, ``core`` decides (sans-IO),
``service`` wires an NFQUEUE and a caller-given retrieve function to it.
"""

from appliance.ondemand.core import (
    Command,
    Hold,
    OnDemandCore,
    OnDemandCounters,
    OnDemandLimits,
    Retrieve,
    Verdict,
    hold_fallback,
)
from appliance.ondemand.packet import EspPacket, MalformedPacket, NotEsp, parse_outer
from appliance.ondemand.service import OnDemandService, RetrieveFn

__all__ = [
    "Command",
    "EspPacket",
    "Hold",
    "MalformedPacket",
    "NotEsp",
    "OnDemandCore",
    "OnDemandCounters",
    "OnDemandLimits",
    "OnDemandService",
    "Retrieve",
    "RetrieveFn",
    "Verdict",
    "hold_fallback",
    "parse_outer",
]
