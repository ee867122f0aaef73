"""``ipsec-ha status``: what the failover daemon on this node says about itself.

``--ready`` judges it instead (``failover.readiness``): could this node take
over cleanly right now? Meant for a keepalived ``track_script``.
"""

import os
from pathlib import Path
from typing import Any

import typer

from appliance.cli._app import app
from appliance.cli._output import emit
from appliance.errors import ApplianceError, UsageError
from appliance.status_file import DEFAULT_STATUS, STATUS_ENV, read_status, status_path


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
    health = status.get("health")
    if isinstance(health, dict):
        lines += _render_health(health)
    ike = status.get("ike")
    if isinstance(ike, dict):
        lines.append(_render_ike(ike))
        net = ike.get("safety_net")
        if isinstance(net, dict) and net.get("checks"):
            lines.append(_render_safety_net(net))
        if ike.get("charon_restarts"):
            lines.append(
                f"charon restarted {ike['charon_restarts']} time(s) while active, its IKE SAs "
                "given back from the store"
            )
    lease = status.get("gate_lease")
    if isinstance(lease, dict):
        lines.append(_render_lease(lease))
    return "\n".join(lines)


def _render_lease(lease: dict[str, Any]) -> str:
    failed = lease.get("failures") or 0
    return (
        f"gate lease {lease.get('lease_s')} s: {'open, renewed' if lease.get('open') else 'closed'}"
        f" ({lease.get('renewals')} renewals, {failed} failed"
        + (f", last error: {lease.get('last_error')}" if failed else "")
        + ")"
    )


def _render_ike(ike: dict[str, Any]) -> str:
    silent = ike.get("silent_s")
    heard = "never heard" if silent is None else f"heard {silent:.1f} s ago"
    dropped = sum((ike.get("dropped") or {}).values())
    return (
        f"ike: {ike.get('daemon')} relay {ike.get('relay')} (charon {ike.get('charon')}, "
        f"{heard}): {ike.get('ike_sas')} IKE SAs, {ike.get('child_sas')} CHILD SAs"
        f"{'' if ike.get('complete') else ' (incomplete: charon ran before the daemon)'}; "
        f"{ike.get('published')} published, {dropped} datagrams dropped"
    )


def _render_safety_net(net: dict[str, Any]) -> str:
    last = net.get("last") or {}
    if last.get("error"):
        found = f"last check failed: {last['error']}"
    else:
        shown = ("kept", "replaced", "missing", "children_missing", "not_established", "lost")
        found = "last check: " + ", ".join(f"{last.get(k, 0)} {k.replace('_', ' ')}"
                                           for k in shown)  # fmt: skip
    return (
        f"safety net: {net.get('checks')} check(s), {net.get('initiated', 0)} initiated again, "
        f"{net.get('initiate_failed', 0)} failed, {net.get('lost', 0)} lost; {found}"
    )


def _render_health(health: dict[str, Any]) -> list[str]:
    lines = []
    for addr, probe in sorted((health.get("stores") or {}).items()):
        if probe.get("up"):
            rtt = probe.get("rtt_s")
            lines.append(
                f"store {addr}: up, epoch {probe.get('epoch')}, {probe.get('sas')} SAs, "
                f"{probe.get('policies')} policies"
                + (f", {1000 * rtt:.1f} ms" if isinstance(rtt, int | float) else "")
            )
        else:
            lines.append(f"store {addr}: DOWN ({probe.get('error') or 'no answer'})")
    lag = health.get("lag_s")
    lines.append(
        f"holds {health.get('held_sas', 0)} SAs, {health.get('held_policies', 0)} policies"
        + (f"; standby lag {lag:.1f} s" if isinstance(lag, int | float) else "")
    )
    return lines


def _ready(status_file: Path, max_lag: float | None, as_json: bool) -> None:
    from appliance import readycheck

    reasons = readycheck.check(status_file, max_lag)
    typer.echo(readycheck.render(reasons, as_json))
    if reasons:
        raise typer.Exit(1)


@app.command(
    epilog=(
        "Exit status 0 when the daemon's last transition succeeded and it is not fenced; "
        "1 when it failed, is fenced, or no daemon status exists (no daemon running). "
        "With --ready: 0 when this node could take over cleanly now, 1 when not, with "
        "one 'not ready: REASON' line per reason (no daemon or a stale status, the last "
        "transition failed, fenced, no store reachable, standby lag over the bound, a hot "
        "standby missing SAs or policies the store has, an active node not publishing). "
        "It is meant for a keepalived vrrp_script used as track_script with a negative "
        "weight: keepalived lowers the node's priority while it fails, so a standby that "
        "is not ready is not elected (docs/operations.md, Monitoring and readiness)."
    )
)
def status(
    status_file: str | None = typer.Option(
        None,
        "--status",
        metavar="FILE",
        help=(
            f"The daemon's status file. Default: ${STATUS_ENV}, "
            f"else {DEFAULT_STATUS} (\\[failover].status_file)."
        ),
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    ready: bool = typer.Option(
        False,
        "--ready",
        help="Check whether this node could take over cleanly now (exit 0) or not (exit 1, "
        "naming each reason); for a keepalived track_script.",
    ),
    max_lag: float | None = typer.Option(
        None,
        "--max-lag",
        metavar="S",
        min=0.1,
        max=86400,
        help="With --ready: the largest standby lag in seconds that is still ready. "
        "Default: the daemon's \\[failover].ready_max_lag_s (10).",
    ),
) -> None:
    """Show the failover daemon's role, last transition and whether it owns the state."""
    path = status_path(status_file, os.environ)
    if max_lag is not None and not ready:
        raise UsageError("--max-lag: only with --ready")
    if ready:
        _ready(path, max_lag, as_json)
        return
    data = read_status(path)
    if data is None:
        raise ApplianceError(f"no daemon status at {path}: is ipsec-ha daemon running?")
    emit(data, as_json, _render)
    if not data.get("ok") or data.get("fenced"):
        raise typer.Exit(1)
