"""The daemon's TOML configuration (``ipsec-ha daemon --config FILE``).

Every value is checked and an error names the file and the key
(``config FILE: [sync].max_pps_per_sa: must be ...``); unknown tables and
keys are errors, so a typo never falls back to a default silently. The
cluster key stays in its own file, which must be mode 0600 (no group or
other bits); it is checked here and read by the channel when it connects.
See ``docs/examples/daemon.toml``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config_toml import (
    TomlTable,
    abs_path,
    check_tables,
    float_in,
    int_in,
    read_toml,
    server_id,
)
from appliance.errors import ConfigError
from appliance.failover.seqjump import MAX_JUMP, SeqJumpError, compute_jump
from appliance.failover.transitions import StandbyMode
from appliance.metrics.config import DAEMON_PORT, MetricsConfig, load_metrics_config
from appliance.nft.config import NftConfig, parse_nft_section
from appliance.nft.gate import MAX_LEASE_S
from appliance.ondemand.core import OnDemandLimits
from appliance.spi import SpiRange, load_spi_config
from appliance.store.config import load_psk
from appliance.strongswan.config import IkeConfig, load_ike_config

DEFAULT_CONFIG = Path("/etc/ipsec-ha/daemon.toml")
DEFAULT_STORE_PORT = 4501
DEFAULT_STATUS = Path("/run/ipsec-ha/status.json")
MIN_IKE_DATAGRAM = 16384
"""``[ike]`` needs datagrams this large: an IKE SA record is about 0.5 kB plus 0.4 kB per
CHILD SA (more while an IKE rekey keeps a generation), and one record is never split."""
DEFAULT_GATE_LEASE_S = 2.0
"""Below keepalived's dead interval at its default advert_int (1 s: 3 s and more), so a
gateway whose daemon died is silent before the new active node sends."""
ETIMER_UNIT_MS = 100
"""The kernel counts the async-event timer (``XFRMA_ETIMER_THRESH``) in 100 ms units."""


@dataclass(frozen=True)
class NodeConfig:
    """``[node]``: who this gateway is and whose state it serves."""

    id: str
    """This node's name in the channel handshake and the logs."""
    server_id: str
    """The server ID (draft: the gateway identity the peers see) whose state is stored."""
    node_index: int
    """This node's index in the cluster (0..15): orders epoch claims between nodes."""


@dataclass(frozen=True)
class StoreConfig:
    """``[store]``: how to reach the SA store."""

    servers: tuple[str, ...]
    """Store addresses, tried in order."""
    port: int
    psk_file: Path
    timeout_s: float
    retries: int
    max_datagram: int = 1400
    """Largest datagram the store's replies may use (bulk SA_Retr pages, SA_Stor batches).

    1400 never fragments on an Ethernet path; a takeover fetches its state in
    pages of this size, one round trip each, so thousands of SAs fetch much
    faster with a larger value where IP fragments pass between node and store.
    """


@dataclass(frozen=True)
class SyncConfig:
    """``[sync]``: when the active node's kernel reports counters, and what bounds traffic."""

    replay_seq_thresh: int
    """``XFRMA_REPLAY_THRESH``: report after this many packets (0: timer only)."""
    replay_timer_ms: int
    """``XFRMA_ETIMER_THRESH`` in ms (a multiple of 100; 0: threshold only)."""
    coalesce_ms: int
    """The daemon batches counter updates for this long before one SA_Stor."""
    store_rtt_ms: int
    """Worst round trip to the store (with retransmissions) that the jump must cover."""
    max_pps_per_sa: int
    """The highest packet rate one SA may carry."""
    safety_factor: float

    @property
    def pipeline_latency_s(self) -> float:
        """From a kernel event to the store holding it: coalescing + store round trip."""
        return (self.coalesce_ms + self.store_rtt_ms) / 1000


@dataclass(frozen=True)
class FailoverConfig:
    """``[failover]``: standby mode and the takeover's limits."""

    mode: StandbyMode
    notify_timeout_s: float
    """How long ``ipsec-ha notify`` waits for the daemon to finish a transition."""
    oseq_jump_override: int | None
    """A fixed jump; must not be below what ``[sync]`` needs."""
    keepalived_fifo: Path | None = None
    """keepalived's ``notify_fifo``: the ordered source of transitions (None: the notify log)."""
    vrrp_name: str | None = None
    """Act only on transitions of this sync group or instance (None: all)."""
    status_file: Path = DEFAULT_STATUS
    """Where the daemon publishes its role and last transition (``ipsec-ha notify`` waits on it)."""
    fence_check_ms: int = 500
    """How often an active node probes the stores for a newer owner (split brain)."""
    reclaim_interval_s: float = 3.0
    """How often a fenced node that keepalived still calls MASTER tries to take over again."""
    health_interval_s: float = 1.0
    """How often the daemon probes every store and rewrites the ``health`` of its status file."""
    ready_max_lag_s: float = 10.0
    """``ipsec-ha status --ready``: the largest standby lag that still counts as ready."""
    gate: str = "policy"
    """How outbound is held back while not active: ``policy`` (a block policy in place of
    each ``out`` policy) or ``nft`` (one nftables rule over the served SAs' SPIs)."""
    gate_lease_s: float | None = None
    """``nft`` gate only: an open gate closes itself this long after the daemon last renewed
    it, so a gateway whose daemon died stops sending ESP (None: no lease, policy gate)."""


@dataclass(frozen=True)
class DaemonConfig:
    """The whole file."""

    path: Path
    node: NodeConfig
    store: StoreConfig
    sync: SyncConfig
    failover: FailoverConfig
    netns: str | None
    """``[xfrm].netns``: the network namespace whose XFRM state is served (None: own)."""
    oseq_jump: int
    """The jump to use: the override, or the one computed from ``[sync]``."""
    computed_jump: int
    """The jump ``[sync]`` needs (``seqjump.compute_jump``)."""
    spi_range: SpiRange | None = None
    """``[spi]``: this node's share of the cluster's SPI space (None: not configured)."""
    nft: NftConfig | None = None
    """``[nft]``: the guard (VIPs, trap queue) as ``ipsec-ha nft apply`` reads it."""
    ondemand: OnDemandConfig | None = None
    """``[ondemand]``: on-demand SA retrieval (None: the table is absent, i.e. disabled)."""
    metrics: MetricsConfig | None = None
    """``[metrics]``: the Prometheus endpoint (None: the table is absent, no endpoint)."""
    ike: IkeConfig | None = None
    """``[ike]``: the IKE daemon whose state is relayed (None: kernel SAs only)."""


def _netns_name(v: Any) -> str | None:
    if not isinstance(v, str) or not v or len(v) > 255 or v in (".", ".."):
        return None
    return v if not any(c in v for c in "/\0") and not v.isspace() else None


def _servers(v: Any) -> tuple[str, ...] | None:
    if not isinstance(v, list) or not v or len(v) > 16:
        return None
    result = []
    for item in v:
        try:
            result.append(str(ipaddress.ip_address(item)))
        except (ValueError, TypeError):
            return None
    return tuple(result) if len(set(result)) == len(result) else None


def _timer_ms(v: Any) -> int | None:
    value = int_in(0, 3_600_000)(v)
    return value if value is not None and value % ETIMER_UNIT_MS == 0 else None


def _vrrp_name(v: Any) -> str | None:
    if isinstance(v, str) and 0 < len(v) <= 255 and not any(c.isspace() or c == '"' for c in v):
        return v
    return None


def _mode(v: Any) -> StandbyMode | None:
    return StandbyMode(v) if v in ("hot", "cold") else None


GATES = ("policy", "nft")


def _gate(v: Any) -> str | None:
    return v if v in GATES else None


_TABLES = (
    "node",
    "store",
    "sync",
    "failover",
    "xfrm",
    "spi",
    "nft",
    "ondemand",
    "metrics",
    "ike",
)


def load_daemon_config(path: str | os.PathLike[str]) -> DaemonConfig:
    """Parse and check ``path``; raise ``ConfigError`` naming the first bad key."""
    path = Path(path)
    data = read_toml(path)
    check_tables(path, data, _TABLES, ("node", "store"))

    node_t = TomlTable(path, "node", data["node"])
    node = NodeConfig(
        id=node_t.get("id", server_id, "a name of letters, digits and .-_:"),
        server_id=node_t.get("server_id", server_id, "the served gateway's server ID (IP or FQDN)"),
        node_index=node_t.get("node_index", int_in(0, 15), "an integer 0..15"),
    )
    node_t.finish()

    store_t = TomlTable(path, "store", data["store"])
    store = StoreConfig(
        servers=store_t.get("servers", _servers, "a non-empty list of distinct IP addresses"),
        port=store_t.get("port", int_in(1, 65535), "an integer 1..65535", DEFAULT_STORE_PORT),
        psk_file=store_t.get("psk_file", abs_path, "an absolute path"),
        timeout_s=store_t.get("timeout_s", float_in(0.01, 60), "seconds 0.01..60", 0.5),
        retries=store_t.get("retries", int_in(0, 20), "an integer 0..20", 5),
        max_datagram=store_t.get(
            "max_datagram", int_in(576, 65507), "an integer 576..65507 (bytes)", 1400
        ),
    )
    store_t.finish()
    try:
        load_psk(store.psk_file)
    except ConfigError as exc:
        raise store_t.fail("psk_file", str(exc)) from None

    sync_t = TomlTable(path, "sync", data.get("sync", {}))
    sync = SyncConfig(
        replay_seq_thresh=sync_t.get(
            "replay_seq_thresh", int_in(0, 0xFFFF_FFFF), "an integer 0..4294967295", 1000
        ),
        replay_timer_ms=sync_t.get(
            "replay_timer_ms", _timer_ms, "milliseconds 0..3600000, a multiple of 100", 500
        ),
        coalesce_ms=sync_t.get("coalesce_ms", int_in(0, 10_000), "milliseconds 0..10000", 20),
        store_rtt_ms=sync_t.get("store_rtt_ms", int_in(0, 60_000), "milliseconds 0..60000", 100),
        max_pps_per_sa=sync_t.get(
            "max_pps_per_sa", int_in(1, 100_000_000), "packets/s 1..100000000", 200_000
        ),
        safety_factor=sync_t.get("safety_factor", float_in(1, 1000), "a number 1..1000", 2.0),
    )
    if sync.replay_seq_thresh == 0 and sync.replay_timer_ms == 0:
        raise sync_t.fail(
            "replay_timer_ms", "must not be 0 when replay_seq_thresh is 0 (nothing would sync)"
        )
    sync_t.finish()

    failover_t = TomlTable(path, "failover", data.get("failover", {}))
    failover = FailoverConfig(
        mode=failover_t.get("mode", _mode, '"hot" or "cold"', StandbyMode.COLD),
        notify_timeout_s=failover_t.get(
            "notify_timeout_s", float_in(0.1, 300), "seconds 0.1..300", 10.0
        ),
        oseq_jump_override=failover_t.get(
            "oseq_jump", int_in(1, MAX_JUMP - 1), f"an integer 1..{MAX_JUMP - 1}", None
        ),
        keepalived_fifo=failover_t.get("keepalived_fifo", abs_path, "an absolute path", None),
        vrrp_name=failover_t.get(
            "vrrp_name", _vrrp_name, "a vrrp_sync_group or vrrp_instance name", None
        ),
        status_file=failover_t.get("status_file", abs_path, "an absolute path", DEFAULT_STATUS),
        fence_check_ms=failover_t.get(
            "fence_check_ms", int_in(50, 60_000), "milliseconds 50..60000", 500
        ),
        reclaim_interval_s=failover_t.get(
            "reclaim_interval_s", float_in(0.1, 3600), "seconds 0.1..3600", 3.0
        ),
        health_interval_s=failover_t.get(
            "health_interval_s", float_in(0.1, 60), "seconds 0.1..60", 1.0
        ),
        ready_max_lag_s=failover_t.get(
            "ready_max_lag_s", float_in(0.1, 3600), "seconds 0.1..3600", 10.0
        ),
        gate=failover_t.get("gate", _gate, '"policy" or "nft"', "policy"),
    )
    lease_given = "gate_lease_s" in (data.get("failover") or {})
    lease = failover_t.get(
        "gate_lease_s",
        float_in(0, MAX_LEASE_S),
        f"seconds 0..{MAX_LEASE_S:g} (0: no lease)",
        DEFAULT_GATE_LEASE_S,
    )
    if lease_given and failover.gate != "nft":
        raise failover_t.fail(
            "gate_lease_s",
            'applies to gate = "nft" only: the policy gate cannot close itself when the '
            'daemon dies (remove the key, or set gate = "nft")',
        )
    if failover.gate == "nft" and lease > 0:
        failover = dataclasses.replace(failover, gate_lease_s=lease)
    failover_t.finish()

    xfrm_t = TomlTable(path, "xfrm", data.get("xfrm", {}))
    netns = xfrm_t.get("netns", _netns_name, "a network namespace name", None)
    xfrm_t.finish()

    try:
        computed = compute_jump(
            max_pps=sync.max_pps_per_sa,
            replay_seq_thresh=sync.replay_seq_thresh,
            replay_timer_s=sync.replay_timer_ms / 1000,
            safety_factor=sync.safety_factor,
            # A gateway whose daemon died sends for up to the lease more (gate_lease).
            pipeline_latency_s=sync.pipeline_latency_s + (failover.gate_lease_s or 0.0),
        )
    except SeqJumpError as exc:
        raise sync_t.fail("max_pps_per_sa", str(exc)) from None
    jump = computed
    if failover.oseq_jump_override is not None:
        if failover.oseq_jump_override < computed:
            raise failover_t.fail(
                "oseq_jump",
                f"{failover.oseq_jump_override} is below {computed}, the jump the [sync] "
                "settings need; raise it or remove it",
            )
        jump = failover.oseq_jump_override
    # [spi] has its own loader, shared with ``ipsec-ha spi-range``.
    spi_range = load_spi_config(path) if "spi" in data else None
    nft = _load_nft(path, data)
    ondemand = _load_ondemand(path, data, nft)
    metrics = load_metrics_config(path, data, DAEMON_PORT)
    ike = load_ike_config(path, data)
    if ike is not None and nft is not None and not nft.ha_relay:
        raise ConfigError(
            f"config {path}: [nft].ha_relay: must be true with [ike], so that the guard drops "
            "charon's ha plugin port (4510) from anywhere but loopback"
        )
    if ike is not None and ike.feed and failover.gate != "nft":
        raise ConfigError(
            f'config {path}: [failover].gate: [ike] feed = true needs gate = "nft": charon '
            "installs the CHILD SAs it is fed with open out policies, which only the nftables "
            "gate holds back until their counters have moved (set [ike] feed = false to store "
            "the IKE SAs only)"
        )
    if ike is not None and store.max_datagram < MIN_IKE_DATAGRAM:
        raise ConfigError(
            f"config {path}: [store].max_datagram: {store.max_datagram} is too small for [ike]: "
            f"an IKE SA record with its CHILD SAs takes several kB; set at least "
            f"{MIN_IKE_DATAGRAM} here and in every store's store.toml (IP fragments must pass "
            "between the gateways and the stores)"
        )
    return DaemonConfig(
        path,
        node,
        store,
        sync,
        failover,
        netns,
        jump,
        computed,
        spi_range,
        nft,
        ondemand,
        metrics,
        ike,
    )


@dataclass(frozen=True)
class OnDemandConfig:
    """``[ondemand]``: fetch the SA of an unknown inbound SPI from the store (docs/ondemand.md)."""

    enabled: bool
    queue_num: int
    """The NFQUEUE the guard's trap feeds (``[nft].trap_queue``)."""
    limits: OnDemandLimits
    workers: int
    """Threads running retrievals."""


def _load_nft(path: Path, data: dict[str, Any]) -> NftConfig | None:
    if "nft" not in data:
        return None
    # The guard's own loader, so that `ipsec-ha nft apply --config` reads the same table.
    return parse_nft_section(data["nft"], where=f"config {path}: [nft]")


def _bool(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


def _load_ondemand(
    path: Path, data: dict[str, Any], nft: NftConfig | None
) -> OnDemandConfig | None:
    if "ondemand" not in data:
        return None
    t = TomlTable(path, "ondemand", data["ondemand"])
    d = OnDemandLimits()
    enabled = t.get("enabled", _bool, "true or false", False)
    queue_num = t.get("queue_num", int_in(0, 65535), "a queue number 0..65535", None)
    limits = OnDemandLimits(
        rate=t.get("rate", float_in(0.01, 100_000), "retrievals/s 0.01..100000", d.rate),
        burst=t.get("burst", int_in(1, 100_000), "an integer 1..100000", d.burst),
        timeout=t.get("timeout_s", float_in(0.01, 60), "seconds 0.01..60", d.timeout),
        max_held_per_spi=t.get(
            "max_held_per_spi", int_in(1, 4096), "an integer 1..4096", d.max_held_per_spi
        ),
        max_in_flight=t.get(
            "max_in_flight", int_in(1, 65536), "an integer 1..65536", d.max_in_flight
        ),
        negative_ttl=t.get(
            "negative_ttl_s", float_in(0.01, 3600), "seconds 0.01..3600", d.negative_ttl
        ),
        positive_ttl=t.get(
            "positive_ttl_s", float_in(0.01, 600), "seconds 0.01..600", d.positive_ttl
        ),
    )
    workers = t.get("workers", int_in(1, 64), "an integer 1..64", 4)
    t.finish()
    if not enabled:
        return OnDemandConfig(False, queue_num or 0, limits, workers)
    # The trap must feed the queue we bind, and the held set needs the VIPs.
    if nft is None:
        raise t.fail("enabled", "needs an [nft] table (vips, trap_queue): the guard's trap "
                     "feeds the queue")  # fmt: skip
    if nft.trap_queue is None:
        raise ConfigError(
            f"config {path}: [nft].trap_queue: is required when [ondemand].enabled is true"
        )
    if queue_num is not None and queue_num != nft.trap_queue:
        raise t.fail("queue_num", f"{queue_num} differs from [nft].trap_queue ({nft.trap_queue})")
    return OnDemandConfig(True, nft.trap_queue, limits, workers)
