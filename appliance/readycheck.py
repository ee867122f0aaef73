"""keepalived's readiness check: could this node take over cleanly right now?

``ipsec-ha status --ready`` and ``python3 -m appliance.readycheck`` run
``check`` and print ``render``: the same arguments, output and exit status.
The module form exists for keepalived's ``track_script``, which starts the
check every interval: importing every CLI command costs about a second on a
busy host and minutes in the TCG lab VM (``keepalived/ready-check`` picks
the form, as ``keepalived/notify-hook`` does for ``ipsec-ha notify``).

The judgement itself is ``failover.readiness`` (pure); this module adds what
it needs from the machine: the status file, whether its pid runs, the time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from appliance.failover.readiness import not_ready_reasons
from appliance.status_file import DEFAULT_STATUS, STATUS_ENV, read_status, status_path


def pid_alive(pid: Any) -> bool:
    """Whether ``pid`` (as read from a status file) names a running process."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs, as another user
    return True


def check(status_file: Path, max_lag_s: float | None) -> list[str]:
    """Why this node could not take over cleanly now, read from ``status_file`` (empty: ready)."""
    status = read_status(status_file)
    alive = status is not None and pid_alive(status.get("pid"))
    return not_ready_reasons(status, time.time(), alive, max_lag_s)


def render(reasons: list[str], as_json: bool) -> str:
    """The verdict as printed: ``ready``, or one ``not ready: REASON`` line per reason."""
    if as_json:
        return json.dumps({"ready": not reasons, "reasons": reasons}, sort_keys=True)
    return "\n".join(f"not ready: {r}" for r in reasons) if reasons else "ready"


def _max_lag(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.1 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"must be seconds 0.1..86400, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """``python -m appliance.readycheck``: ``ipsec-ha status --ready`` without the whole CLI."""
    parser = argparse.ArgumentParser(
        prog="ipsec-ha status --ready",
        description="Exit 0 when this node could take over cleanly now, 1 naming each reason "
        "when not (docs/operations.md, Monitoring and readiness).",
    )
    parser.add_argument(
        "--status",
        metavar="FILE",
        help=f"the daemon's status file (default: ${STATUS_ENV}, else {DEFAULT_STATUS})",
    )
    parser.add_argument(
        "--max-lag", metavar="S", type=_max_lag, help="the largest standby lag still ready"
    )
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    args = parser.parse_args(argv)
    reasons = check(status_path(args.status, os.environ), args.max_lag)
    print(render(reasons, args.json))
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main())
