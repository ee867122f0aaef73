"""Failover: what a node does at each VRRP transition, and how far sequence numbers jump.

- ``seqjump``: the outbound sequence jump (pure arithmetic, docs/failover.md).
- ``transitions``: the transition table per standby mode (hot/cold).
- ``config``: the daemon's TOML configuration.
- ``readiness``: keepalived's readiness verdict, read from the status file.

The package imports nothing itself: ``python -m appliance.readycheck`` (keepalived's
track_script, started every interval) imports ``readiness`` alone.
"""
