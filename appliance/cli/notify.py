"""``ipsec-ha notify TYPE NAME STATE PRIORITY``: keepalived's notify hook."""

import os

import typer

from appliance import notify as notify_lib
from appliance.cli._app import app
from appliance.cli._output import emit
from appliance.status_file import DEFAULT_STATUS, STATUS_ENV, status_path


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
    status: str | None = typer.Option(
        None,
        "--status",
        metavar="FILE",
        help=(
            f"The failover daemon's status file to wait on. Default: "
            f"${STATUS_ENV}, else {DEFAULT_STATUS}. "
            "If it does not exist (no daemon), the transition is only recorded."
        ),
    ),
    wait: float = typer.Option(
        notify_lib.DEFAULT_WAIT_S,
        "--wait",
        metavar="S",
        min=0,
        max=300,
        help="How long to wait for the daemon to carry the transition out (0: do not wait).",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the record and the daemon's outcome as JSON."
    ),
) -> None:
    """Handle a VRRP transition reported by keepalived.

    Records the transition in the notify log, then waits until the failover
    daemon (ipsec-ha daemon) has carried it out: at MASTER, claim the store
    epoch, fetch and install the state with the outbound sequence jump, open
    outbound; at BACKUP, FAULT, STOP, gate outbound. Exit status 2 on bad
    arguments, 1 if the log cannot be written or the daemon failed or did not
    finish within --wait.
    """
    transition = notify_lib.parse_transition(type_, name, state, priority)
    path = notify_lib.log_path(log, os.environ)
    ctx = notify_lib.handle(
        transition, path, node=node, status=status_path(status, os.environ),
        wait_s=wait,
    )  # fmt: skip
    emit(notify_lib.summary(ctx), as_json, lambda r: notify_lib.summary_line(r, path))
