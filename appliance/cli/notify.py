"""``ipsec-ha notify TYPE NAME STATE PRIORITY``: keepalived's notify hook."""

import os
from dataclasses import asdict

import typer

from appliance import notify as notify_lib
from appliance.cli._app import app
from appliance.cli._output import emit


@app.command(
    epilog=(
        "keepalived appends TYPE NAME STATE PRIORITY to its notify line, so the hook "
        'keepalived/notify-hook just runs: ipsec-ha notify [--log FILE] [--node NAME] "$@".'
    )
)
def notify(
    type_: str = typer.Argument(
        ..., metavar="TYPE", help="INSTANCE or GROUP (keepalived's first notify argument)."
    ),
    name: str = typer.Argument(
        ..., metavar="NAME", help="The vrrp_instance or vrrp_sync_group name."
    ),
    state: str = typer.Argument(
        ..., metavar="STATE", help="MASTER, BACKUP, FAULT, STOP or DELETED."
    ),
    priority: str = typer.Argument(
        ..., metavar="PRIORITY", help="The instance priority (keepalived sends 0 for a group)."
    ),
    log: str | None = typer.Option(
        None,
        "--log",
        metavar="FILE",
        help=(
            f"Append the transition to FILE (JSON lines, mode 0600). Default: "
            f"${notify_lib.LOG_ENV}, else {notify_lib.DEFAULT_LOG}."
        ),
    ),
    node: str | None = typer.Option(
        None, "--node", help="Name of this node, recorded with the transition."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the recorded transition as JSON."),
) -> None:
    """Handle a VRRP transition reported by keepalived (for now: record it).

    Exit status 2 on bad arguments, 1 if the log cannot be written.
    """
    transition = notify_lib.parse_transition(type_, name, state, priority)
    path = notify_lib.log_path(log, os.environ)
    record = notify_lib.handle(transition, path, node=node)
    emit(
        asdict(record),
        as_json,
        lambda r: f"{r['type']} {r['name']} -> {r['state']} (recorded in {path})",
    )
