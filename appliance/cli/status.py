"""``ipsec-ha status``: what the failover daemon on this node says about itself."""

import os
from typing import Any

import typer

from appliance import notify as notify_lib
from appliance.cli._app import app
from appliance.cli._output import emit
from appliance.errors import ApplianceError


def _render(status: dict[str, Any]) -> str:
    report = status.get("report") or {}
    steps = report.get("timeline") or []
    lines = [
        f"node {status.get('node')} (pid {status.get('pid')}), {status.get('mode')} standby, "
        f"serving {status.get('server_id')}",
        f"role {status.get('role')}; last VRRP state {status.get('state') or '-'} "
        f"({'ok' if status.get('ok') else 'FAILED: ' + str(status.get('error'))})",
        f"publishing {'yes' if status.get('publishing') else 'no'}, "
        f"following {'yes' if status.get('following') else 'no'}, "
        f"fenced {'YES' if status.get('fenced') else 'no'}",
    ]
    if steps:
        start = steps[0]["monotonic"]
        lines.append(
            f"last plan: {report.get('installed_sas', 0)} SAs installed, "
            f"{len(report.get('advanced', []))} counters advanced, "
            f"{len(report.get('rekey', []))} need a rekey, "
            f"{1000 * (steps[-1]['monotonic'] - start):.0f} ms"
        )
    return "\n".join(lines)


@app.command(
    epilog=(
        "Exit status 0 when the daemon's last transition succeeded and it is not fenced; "
        "1 when it failed, is fenced, or no daemon status exists (no daemon running)."
    )
)
def status(
    status_file: str | None = typer.Option(
        None,
        "--status",
        metavar="FILE",
        help=(
            f"The daemon's status file. Default: ${notify_lib.STATUS_ENV}, "
            f"else {notify_lib.DEFAULT_STATUS} (\\[failover].status_file)."
        ),
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Show the failover daemon's role, last transition and whether it owns the state."""
    path = notify_lib.status_path(status_file, os.environ)
    data = notify_lib.read_status(path)
    if data is None:
        raise ApplianceError(f"no daemon status at {path}: is ipsec-ha daemon running?")
    emit(data, as_json, _render)
    if not data.get("ok") or data.get("fenced"):
        raise typer.Exit(1)
