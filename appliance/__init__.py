"""ipsec-ha: IPsec gateway failover by SA storage and retrieval over Linux XFRM.

Every package and top-level module, by layer (see docs/architecture.md).  A
module imports only from its own layer or the layers below it:

6 entry points
- ``appliance.cli``         the ``ipsec-ha`` command, one module per command, thin over the rest
- ``appliance.__main__``    ``python -m appliance``: runs the CLI
- ``appliance.readycheck``  keepalived's track_script: could this node take over now?
5 state changes
- ``appliance.failover``    sequence jump, transitions, sync core, plan executor, daemon
- ``appliance.restore``     ``ipsec-ha restore``: a snapshot into the kernel, all or nothing
- ``appliance.planner``     from kernel state, wanted state and jump to typed XFRM operations
4 services
- ``appliance.store``       the SA store (SQLite, etcd), its UDP server and client
- ``appliance.strongswan``  strongSwan's ha plugin: codec, IKE SA book and records, relay
- ``appliance.ondemand``    on-demand SA retrieval for unknown SPIs (sans-IO core, service)
- ``appliance.metrics``     Prometheus collectors, the latency histogram, the HTTP endpoint
- ``appliance.snapshot``    snapshot files: dumped from the kernel, written atomically
- ``appliance.notify``      keepalived's notify hook: one VRRP transition, recorded and acted on
- ``appliance.doctor``      what this kernel and machine support, probed in a scratch namespace
3 kernel and socket adapters
- ``appliance.xfrm``        kernel XFRM over netlink: messages, socket, events, batches
- ``appliance.nft``         the appliance's nftables table through libnftables
- ``appliance.nfqueue``     nfnetlink_queue for the unknown-SPI trap
- ``appliance.rtnl``        rtnetlink's address dump: the addresses configured in a namespace
- ``appliance.traffic``     sequence-numbered UDP probes and their analysis, for the lab
2 codecs and rules, sans-IO
- ``appliance.wire``        SA_Stor / SA_Retr codec
- ``appliance.channel``     the protected channel (AEAD, anti-replay)
- ``appliance.spi``         cluster-wide SPI ranges, one per node
1 foundations
- ``appliance.model``       typed state: SAD entries, SPD entries, snapshots
- ``appliance.config_toml`` checked reading of the TOML configuration files
- ``appliance.netlink``     netlink framing shared by the XFRM, rtnetlink and nfqueue codecs
- ``appliance.netns``       named network namespaces: the naming rule, entering, making
- ``appliance.errors``      the exceptions a user can act on
- ``appliance.status_file`` the failover daemon's status file: where it is, reading it
"""

__version__ = "0.1.0"
