"""ipsec-ha: IPsec gateway failover by SA storage and retrieval over Linux XFRM.

The package is laid out by concern (see docs/architecture.md):

- ``appliance.model``   typed state: SAD entries, SPD entries, snapshots
- ``appliance.xfrm``    kernel XFRM over netlink (pyroute2 nlmsg/nla classes)
- ``appliance.wire``    SA_Stor / SA_Retr codec, sans-IO
- ``appliance.channel`` the protected channel (AEAD, anti-replay), sans-IO
- ``appliance.store``   the SA store (SQLite, etcd)
- ``appliance.nft``     the appliance's nftables table through libnftables
- ``appliance.nfqueue`` nfnetlink_queue for the unknown-SPI trap
- ``appliance.ondemand`` on-demand SA retrieval (sans-IO core, service)
- ``appliance.failover`` sequence jump, transitions, sync core, executor, daemon
- ``appliance.metrics`` Prometheus collectors and their HTTP endpoint
- ``appliance.strongswan`` strongSwan ha plugin codec, sans-IO
- ``appliance.traffic`` sequence-numbered UDP probes for the lab
- ``appliance.cli``     the ``ipsec-ha`` command, thin over the above
"""

__version__ = "0.1.0"
