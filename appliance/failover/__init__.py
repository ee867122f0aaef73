"""Failover: what a node does at each VRRP transition, and how far sequence numbers jump.

- ``seqjump``: the outbound sequence jump (pure arithmetic, docs/failover.md).
- ``transitions``: the transition table per standby mode (hot/cold).
- ``config``: the daemon's TOML configuration.
"""

from appliance.failover.seqjump import (
    Advanced,
    AdvancedSa,
    RekeyRequired,
    SeqJumpError,
    advance_oseq,
    advance_sa,
    compute_jump,
    unsynced_packets_bound,
)
from appliance.failover.transitions import Role, StandbyMode, Step, plan, role_for

__all__ = [
    "Advanced",
    "AdvancedSa",
    "RekeyRequired",
    "Role",
    "SeqJumpError",
    "StandbyMode",
    "Step",
    "advance_oseq",
    "advance_sa",
    "compute_jump",
    "plan",
    "role_for",
    "unsynced_packets_bound",
]
