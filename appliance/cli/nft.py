"""``ipsec-ha nft show|apply|remove|spis``: the appliance's nftables guard."""

from pathlib import Path
from typing import Annotated, Any

import typer

from appliance import nft as guard
from appliance.cli._app import app
from appliance.cli._output import emit
from appliance.errors import UsageError
from appliance.nft.config import (
    DEFAULT_SYNC_PORT,
    DEFAULT_TRAP_BURST,
    DEFAULT_TRAP_RATE,
    read_nft_section,
)
from appliance.nft.render import CATEGORIES

nft_app = typer.Typer(
    help=(
        "The appliance's nftables guard: its own table inet ipsec_ha, which lets IKE, ESP "
        "and ESP-in-UDP reach the VIPs, lets VRRP and the sync port in only from cluster "
        "peers and store addresses, and counts and drops the rest of that traffic. "
        "No other table is ever touched. See docs/nft.md."
    ),
    no_args_is_help=True,
)
app.add_typer(nft_app, name="nft")

NETNS_HELP = "Network namespace to act in (as named by `ip netns`). Default: the current one."
JSON_HELP = "Print JSON."


@nft_app.command()
def show(
    netns: Annotated[str | None, typer.Option("--netns", metavar="NS", help=NETNS_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Print the guard's rules and its counters (packets and bytes per category).

    Says so when the table is absent (exit status 0 either way).
    """
    emit(guard.guard_status(netns).to_dict(), as_json, _render_status)


@nft_app.command()
def apply(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="FILE",
            help="TOML file whose nft table gives the keys below; options override it.",
        ),
    ] = None,
    vips: Annotated[
        list[str] | None,
        typer.Option(
            "--vip", metavar="ADDR", help="A VIP (IPv4 or IPv6); repeat for more. Key: vips."
        ),
    ] = None,
    peers: Annotated[
        list[str] | None,
        typer.Option("--peer", metavar="ADDR", help="A cluster peer; repeat for more. Key: peers."),
    ] = None,
    store: Annotated[
        list[str] | None,
        typer.Option(
            "--store", metavar="ADDR", help="An SA store address; repeat for more. Key: store."
        ),
    ] = None,
    sync_port: Annotated[
        int | None,
        typer.Option(
            "--sync-port",
            metavar="PORT",
            help=f"UDP port of the SA store protocol (default {DEFAULT_SYNC_PORT}).",
        ),
    ] = None,
    trap_queue: Annotated[
        int | None,
        typer.Option(
            "--trap-queue",
            metavar="N",
            help="Send inbound ESP with an SPI not held here to NFQUEUE N (default: no trap).",
        ),
    ] = None,
    trap_rate: Annotated[
        int | None,
        typer.Option(
            "--trap-rate",
            metavar="PPS",
            help=f"Trapped packets per second (default {DEFAULT_TRAP_RATE}).",
        ),
    ] = None,
    trap_burst: Annotated[
        int | None,
        typer.Option(
            "--trap-burst",
            metavar="PKTS",
            help=f"Burst above the trap rate (default {DEFAULT_TRAP_BURST}).",
        ),
    ] = None,
    netns: Annotated[str | None, typer.Option("--netns", metavar="NS", help=NETNS_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Install or update the guard in one transaction (idempotent).

    Counters and held SPIs survive a re-apply. If libnftables rejects the
    ruleset, nothing changes and the reason is printed.
    """
    section: dict[str, Any] = dict(read_nft_section(config)) if config else {}
    overrides: dict[str, Any] = {
        "vips": vips or None,
        "peers": peers or None,
        "store": store or None,
        "sync_port": sync_port,
        "trap_queue": trap_queue,
        "trap_rate": trap_rate,
        "trap_burst": trap_burst,
    }
    given = {key: value for key, value in overrides.items() if value is not None}
    section.update(given)
    if not config and not given:
        raise UsageError("nft apply needs --config FILE or options such as --vip")
    where = f"{config}: nft" if config and not given else "nft"
    settings = guard.parse_nft_section(section, where=where)
    created = guard.apply_guard(netns, settings)
    emit(
        {"netns": netns, "table": guard.TABLE, "created": created, "applied": True},
        as_json,
        lambda d: f"table {d['table']}{_in(netns)}: {'created' if d['created'] else 'updated'}",
    )


@nft_app.command()
def remove(
    netns: Annotated[str | None, typer.Option("--netns", metavar="NS", help=NETNS_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Remove the guard's table, and nothing else. An absent table is not an error."""
    removed = guard.remove_guard(netns)
    emit(
        {"netns": netns, "table": guard.TABLE, "removed": removed},
        as_json,
        lambda d: (
            f"table {d['table']}{_in(netns)}: removed"
            if d["removed"]
            else f"table {d['table']}{_in(netns)}: already absent, nothing to remove"
        ),
    )


@nft_app.command()
def spis(
    add: Annotated[
        list[str] | None,
        typer.Option(
            "--add", metavar="SPI", help="Hold this inbound SPI (0x hex or decimal); repeatable."
        ),
    ] = None,
    remove: Annotated[
        list[str] | None,
        typer.Option("--remove", metavar="SPI", help="Stop holding this SPI; repeatable."),
    ] = None,
    netns: Annotated[str | None, typer.Option("--netns", metavar="NS", help=NETNS_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """List the inbound SPIs this node holds (set held_spis), after adding or removing some.

    The unknown-SPI trap lets through only ESP whose SPI is in this set.
    """
    if add:
        guard.add_spis(netns, [_spi(text) for text in add])
    if remove:
        guard.remove_spis(netns, [_spi(text) for text in remove])
    held = guard.list_spis(netns)
    emit(
        {"netns": netns, "held_spis": held},
        as_json,
        lambda d: "\n".join(f"{spi:#010x}" for spi in d["held_spis"]) or "no SPI held",
    )


def _spi(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise UsageError(f"SPI {text!r} is not a number (use 0x hex or decimal)") from None


def _in(netns: str | None) -> str:
    return f" in netns {netns}" if netns else ""


def _render_status(status: dict[str, Any]) -> str:
    where = _in(status["netns"])
    if not status["present"]:
        return (
            f"table {status['table']}{where}: absent (the guard is not installed; "
            "run `ipsec-ha nft apply`)"
        )
    lines = [
        f"table {status['table']}{where}: present, {status['rule_count']} rules, "
        f"{len(status['held_spis'])} held SPIs",
        "",
        f"{'category':<12} {'accepted pkts/bytes':>22} {'dropped pkts/bytes':>22}",
    ]
    counters = status["counters"]
    for category in CATEGORIES:
        accepted = counters.get(f"{category}_accepted", {"packets": 0, "bytes": 0})
        dropped = counters.get(f"{category}_dropped", {"packets": 0, "bytes": 0})
        lines.append(f"{category:<12} {_pair(accepted):>22} {_pair(dropped):>22}")
    queued = counters.get("spi_trap_queued", {"packets": 0, "bytes": 0})
    trap_dropped = counters.get("spi_trap_dropped", {"packets": 0, "bytes": 0})
    lines.append(f"{'spi_trap':<12} {'queued ' + _pair(queued):>22} {_pair(trap_dropped):>22}")
    if "ha_plugin_dropped" in counters:
        ha = counters["ha_plugin_dropped"]
        lines.append(f"{'ha_plugin':<12} {'(loopback)':>22} {_pair(ha):>22}")
    lines.extend(["", status["ruleset"].rstrip()])
    return "\n".join(lines)


def _pair(counter: dict[str, int]) -> str:
    return f"{counter['packets']}/{counter['bytes']}"
