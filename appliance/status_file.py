"""The failover daemon's status file: where it is, and reading it.

The daemon rewrites it after every step (``failover.daemon``); the notify hook
waits on it, ``ipsec-ha status`` shows it and keepalived's readiness check
(``readycheck``) judges it. This module imports only the standard library:
the readiness check starts a Python every interval.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError

DEFAULT_STATUS = Path("/run/ipsec-ha/status.json")
STATUS_ENV = "IPSEC_HA_STATUS"


def status_path(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    """The daemon's status file: ``--status``, else ``$IPSEC_HA_STATUS``, else the default."""
    if explicit:
        return Path(explicit)
    if env.get(STATUS_ENV):
        return Path(env[STATUS_ENV])
    return DEFAULT_STATUS


def read_status(path: Path) -> dict[str, Any] | None:
    """The daemon's status, or None when there is none (no daemon on this node)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ApplianceError(f"daemon status {path} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise ApplianceError(f"daemon status {path} is not a JSON object")
    return data


__all__ = ["DEFAULT_STATUS", "STATUS_ENV", "read_status", "status_path"]
