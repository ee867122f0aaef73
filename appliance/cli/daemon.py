"""``ipsec-ha daemon --config FILE``: the failover daemon (state sync and transitions)."""

import asyncio
import dataclasses
import logging
import os

import typer

from appliance import notify as notify_lib
from appliance.cli._app import app
from appliance.failover.config import DEFAULT_CONFIG, load_daemon_config

PROBE_RETRIES = 1
"""Retransmissions of a health probe (``[store].retries`` if lower)."""
PROBE_MIN_TIMEOUT_S = 1.0
"""A health probe waits at least this long before its retransmission: a loaded store (or
a short ``[store].timeout_s``) must not look down, nor be handed a new handshake per probe.
With one retransmission the probe gives up within three times this, inside the time after
which ``--ready`` calls the status stale (``readiness.STALE_FLOOR_S``)."""


@app.command(
    epilog=(
        "The daemon reads VRRP transitions from keepalived's notify FIFO "
        "(\\[failover].keepalived_fifo; without one, the notify log that ipsec-ha notify "
        "writes), runs each transition's plan (docs/failover.md), writes its status file "
        "(ipsec-ha status; the hook waits on it) and, while active, publishes the "
        "namespace's SAs, policies and counters to every configured store. "
        "With a \\[metrics] table it serves Prometheus metrics at http://LISTEN/metrics "
        "(docs/operations.md, Monitoring and readiness)."
    )
)
def daemon(
    config: str = typer.Option(
        str(DEFAULT_CONFIG), "--config", metavar="FILE", help="The daemon configuration (TOML)."
    ),
    notify_log: str | None = typer.Option(
        None,
        "--notify-log",
        metavar="FILE",
        help=(
            f"The notify log to follow when no keepalived_fifo is configured. "
            f"Default: ${notify_lib.LOG_ENV}, else {notify_lib.DEFAULT_LOG}."
        ),
    ),
    verbose: bool = typer.Option(False, "--verbose", help="Log every timeline step."),
) -> None:
    """Run the failover daemon until stopped (SIGTERM/SIGINT).

    Exit status 2 on a bad configuration, 1 if the kernel or the stores cannot be opened
    or the metrics address cannot be bound.
    """
    from appliance.failover.daemon import FailoverDaemon
    from appliance.failover.executor import OutboundGate, open_store_clients
    from appliance.failover.gate_lease import LeasedGate, lease_addresses
    from appliance.xfrm.socket import XfrmSocket

    cfg = load_daemon_config(config)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    stores = open_store_clients(cfg.store, cfg.node.id)
    follower_stores = open_store_clients(cfg.store, f"{cfg.node.id}.follower")
    # The health probe gives up on a store within about two timeouts (not after every
    # retry): a store that is down must show as down before the status file goes stale.
    probe_store = dataclasses.replace(
        cfg.store,
        retries=min(cfg.store.retries, PROBE_RETRIES),
        timeout_s=max(cfg.store.timeout_s, PROBE_MIN_TIMEOUT_S),
    )
    probe_stores = open_store_clients(probe_store, f"{cfg.node.id}.health")
    endpoint = None
    kernel = None
    gate: OutboundGate | None = None
    try:
        if cfg.failover.gate == "nft":
            from appliance.nft.gate import NftGate

            nft_gate = NftGate(
                cfg.netns, lease_s=cfg.failover.gate_lease_s, lease_addresses=lease_addresses(cfg)
            )
            nft_gate.probe()  # a kernel without nft_xfrm: one clear line, exit status 1
            gate = LeasedGate(nft_gate) if cfg.failover.gate_lease_s else nft_gate
        kernel = XfrmSocket(cfg.netns)
        runner = FailoverDaemon(
            cfg,
            kernel,
            stores,
            notify_log=notify_lib.log_path(notify_log, os.environ),
            follower_stores=follower_stores,
            probe_stores=probe_stores,
            gate=gate,
        )
        if cfg.metrics is not None:
            from appliance.metrics.daemon_collector import DaemonCollector
            from appliance.metrics.exposition import MetricsEndpoint

            endpoint = MetricsEndpoint(cfg.metrics.listen, [DaemonCollector(runner)])
            endpoint.start()  # a port in use: one clear line, exit status 1
        asyncio.run(runner.run_until_stopped())
    except KeyboardInterrupt:  # Ctrl-C before the loop's handler was in place
        pass
    finally:
        if isinstance(gate, LeasedGate):
            gate.stop()  # the lease runs out: a stopped daemon's gateway sends no ESP
        if endpoint is not None:
            endpoint.stop()
        if kernel is not None:
            kernel.close()
        for store in stores + follower_stores + probe_stores:
            store.close()
