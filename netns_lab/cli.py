"""``ipsec-ha-lab up|status|down``: the network-namespace lab's own command (see docs/lab.md).

A development and test tool, not part of the product: it lives in the lab
package, which imports the product, and never the other way round (the
``ipsec-ha`` command does not know the lab). Errors (``ApplianceError``)
become one line on stderr and the error's exit status, as in ``ipsec-ha``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import typer

from appliance.errors import ApplianceError, LabError, UsageError
from netns_lab import lab

PROG = "ipsec-ha-lab"
"""The console script's name (pyproject.toml), used in error lines and hints."""

app = typer.Typer(
    name=PROG,
    help=(
        "The ipsec-ha network-namespace lab, a development and test tool (not part of the "
        "product): a client, two gateways (gw1, gw2) running keepalived, and a protected "
        "server, each in its own namespace named iha-<run id>-<host>. Needs root. "
        "Addresses come only from 192.0.2.0/24 (outside) and 198.51.100.0/24 (inside); "
        "the VIP is .1 on each segment. See docs/lab.md."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

__all__ = ["PROG", "app", "main"]


def _emit(data: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], str]) -> None:
    """Print ``data`` as JSON (stable key order) or through ``render``."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    else:
        typer.echo(render(data))


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
    lines.append(f"remove it with: {PROG} down {data['run_id']}")
    return "\n".join(lines)


@app.command()
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
    built = lab.Lab.create(advert_int=advert_int)
    data = lab.status(built.run_id)
    data["namespaces"] = built.state.namespaces
    _emit(data, as_json, _render_up)


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


@app.command()
def status(
    run_id: str | None = typer.Argument(
        None, metavar="[RUNID]", help="The run to show (default: every run)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a lab run: namespaces present, who holds each VIP, keepalived pids, transitions."""
    _require_root()
    data = lab.status(run_id) if run_id else {"runs": [lab.status(r) for r in lab.list_runs()]}
    _emit(data, as_json, _render_status)


@app.command()
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
    if all_runs == bool(run_id):
        raise UsageError("give either a RUNID or --all")
    data = lab.down_all() if all_runs else lab.down(run_id or "")
    _emit(
        data,
        as_json,
        lambda d: (
            f"removed {len(d['removed_namespaces'])} namespaces"
            + (f" of lab {run_id}" if run_id else "")
        ),
    )


def main() -> None:
    """Console-script entry point (``ipsec-ha-lab``)."""
    try:
        app()
    except ApplianceError as exc:
        typer.echo(f"{PROG}: error: {exc}", err=True)
        sys.exit(exc.exit_code)
