"""The ``[metrics]`` table, read the same way from daemon.toml and store.toml.

The table absent: no endpoint. Present without ``listen``: loopback on the
file's default port (the daemon 9641, the store server 9642). Any IP literal
is accepted, since an operator may scrape from another host; the docs say to
guard such a port with nftables.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config_toml import TomlTable

DAEMON_PORT = 9641
STORE_PORT = 9642


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint."""

    listen: tuple[str, int]
    """(IP address, port) to serve ``/metrics`` on."""


def parse_listen(value: object) -> tuple[str, int] | None:
    """``"127.0.0.1:9641"`` or ``"[::1]:9641"`` as (address, port); None if it is neither.

    The address must be an IP literal (no name to resolve at start-up) and
    the port 1..65535.
    """
    if not isinstance(value, str) or ":" not in value:
        return None
    host, _, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            return None
    elif ":" in host:
        return None  # an IPv6 address must be bracketed
    try:
        address = ipaddress.ip_address(host)
        port = int(port_text, 10)
    except ValueError:
        return None
    if not 1 <= port <= 65535 or not port_text.isdigit():
        return None
    return str(address), port


def load_metrics_config(
    path: Path, data: dict[str, Any], default_port: int
) -> MetricsConfig | None:
    """``[metrics]`` of a parsed file ``data`` (read from ``path``); None when absent."""
    if "metrics" not in data:
        return None
    t = TomlTable(path, "metrics", data["metrics"])
    listen = t.get(
        "listen",
        parse_listen,
        'an "ADDRESS:PORT" with an IP literal (IPv6 in brackets) and a port 1..65535',
        ("127.0.0.1", default_port),
    )
    t.finish()
    return MetricsConfig(listen)


__all__ = ["DAEMON_PORT", "STORE_PORT", "MetricsConfig", "load_metrics_config", "parse_listen"]
