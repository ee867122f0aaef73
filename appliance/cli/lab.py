"""``ipsec-ha lab up|status|down``: the network-namespace lab (see docs/lab.md)."""

from __future__ import annotations

import os
from typing import Any

import typer

from appliance.cli._app import app
from appliance.cli._output import emit
from appliance.errors import LabError, UsageError

lab_app = typer.Typer(
    help=(
        "The network-namespace lab: a client, two gateways (gw1, gw2) running keepalived, and a "
        "protected server, each in its own namespace named iha-<run id>-<host>. Needs root. "
        "Addresses come only from 192.0.2.0/24 (outside) and 198.51.100.0/24 (inside); "
        "the VIP is .1 on each segment. See docs/lab.md."
    ),
    no_args_is_help=True,
)
app.add_typer(lab_app, name="lab")


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, keepalived)")


def _render_up(data: dict[str, Any]) -> str:
    lines = [f"lab {data['run_id']} is up (run dir {data['run_dir']})"]
    for role, ns in data["namespaces"].items():
        lines.append(f"  {role:7} {ns}")
    for segment, vip in data["vips"].items():
        holders = ", ".join(data["vip_holders"].get(segment, [])) or "nobody"
        lines.append(f"  VIP {segment:8} {vip:18} held by {holders}")
    lines.append(f"remove it with: ipsec-ha lab down {data['run_id']}")
    return "\n".join(lines)


@lab_app.command()
def up(
    advert_int: float = typer.Option(
        0.2, "--advert-int", help="VRRPv3 advertisement interval in seconds (0.01-40.95)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Build a lab and leave it running: prints its run id, namespaces and VIPs.

    gw1 (priority 150) becomes master, gw2 (100) backup; both VIPs move
    together (one VRRP sync group). If anything fails, whatever was built is
    removed again.
    """
    _require_root()
    from netns_lab import Lab, status

    lab = Lab.create(advert_int=advert_int)
    data = status(lab.run_id)
    data["namespaces"] = lab.state.namespaces
    emit(data, as_json, _render_up)


def _render_status(data: dict[str, Any]) -> str:
    if "runs" in data:
        if not data["runs"]:
            return "no lab runs"
        return "\n\n".join(_render_status(run) for run in data["runs"])
    lines = [f"lab {data['run_id']} (run dir {data['run_dir']}, advert_int {data['advert_int']}s)"]
    for role, ns in data["namespaces"].items():
        lines.append(f"  {role:7} {ns['name']:20} {'present' if ns['present'] else 'MISSING'}")
    for segment, vip in data["vips"].items():
        holders = ", ".join(data["vip_holders"].get(segment, [])) or "nobody"
        lines.append(f"  VIP {segment:8} {vip:18} held by {holders}")
    for gw, ka in data["keepalived"].items():
        lines.append(
            f"  keepalived {gw}: pid {ka['pid']} {'alive' if ka['alive'] else 'NOT running'}"
        )
    if data["transitions"]:
        lines.append("  transitions:")
        for t in data["transitions"]:
            lines.append(
                f"    {t['time']} {t['node']:4} {t['type']:8} {t['name']:12} -> {t['state']}"
            )
    return "\n".join(lines)


@lab_app.command()
def status(
    run_id: str | None = typer.Argument(
        None, metavar="[RUNID]", help="The run to show (default: every run)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a lab run: namespaces present, who holds each VIP, keepalived pids, transitions."""
    _require_root()
    import netns_lab

    data: dict[str, Any]
    if run_id:
        data = netns_lab.status(run_id)
    else:
        data = {"runs": [netns_lab.status(r) for r in netns_lab.list_runs()]}
    emit(data, as_json, _render_status)


@lab_app.command()
def down(
    run_id: str | None = typer.Argument(None, metavar="[RUNID]", help="The run to remove."),
    all_runs: bool = typer.Option(
        False,
        "--all",
        help=(
            "Remove every lab run, and leftovers of runs that died without a record "
            "(iha-<6 hex>-<host> namespaces, keepalived started from the run directory)."
        ),
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Remove a lab run: stop its keepalived, remove its namespaces and run directory."""
    _require_root()
    import netns_lab

    if all_runs == bool(run_id):
        raise UsageError("give either a RUNID or --all")
    data = netns_lab.down_all() if all_runs else netns_lab.down(run_id or "")
    emit(
        data,
        as_json,
        lambda d: (
            f"removed {len(d['removed_namespaces'])} namespaces"
            + (f" of lab {run_id}" if run_id else "")
        ),
    )
