"""``ipsec-ha spi-range``: this node's share of the SPI space, and strongSwan's settings for it."""

from pathlib import Path
from typing import Annotated, Any

import typer

from appliance import spi
from appliance.cli._app import app
from appliance.cli._output import emit
from appliance.errors import UsageError


@app.command("spi-range")
def spi_range(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="FILE",
            help=(
                "Daemon TOML file: reads node.node_index and the spi table (nodes, or "
                "spi_min and spi_max). Without an spi table, give --nodes."
            ),
        ),
    ] = None,
    node_index: Annotated[
        int | None,
        typer.Option("--node-index", metavar="I", help="This node's index, 0..N-1."),
    ] = None,
    nodes: Annotated[
        int | None,
        typer.Option(
            "--nodes",
            metavar="N",
            help=f"The cluster size, 1..{spi.MAX_NODES} (with --node-index).",
        ),
    ] = None,
    spi_min: Annotated[
        str | None,
        typer.Option(
            "--spi-min", metavar="SPI", help="Explicit lowest SPI (0x... or decimal, >= 0x100)."
        ),
    ] = None,
    spi_max: Annotated[
        str | None,
        typer.Option("--spi-max", metavar="SPI", help="Explicit highest SPI (0x... or decimal)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the SPI range this node allocates from, and the matching strongswan.conf settings.

    Every node of a cluster must allocate inbound SPIs from its own disjoint
    range, so that SAs restored from a peer never collide with local ones.
    With --node-index I --nodes N the space 0x100..0xffffffff is split into N
    equal ranges and node I gets the I-th; --spi-min/--spi-max give a range
    explicitly. Run strongSwan's charon with the printed spi_min/spi_max
    (e.g. in /etc/strongswan.d/) so it allocates from the same range. See docs/spi.md.
    """
    emit(_resolve(config, node_index, nodes, spi_min, spi_max).to_dict(), as_json, _render)


def _resolve(
    config: Path | None,
    node_index: int | None,
    nodes: int | None,
    spi_min: str | None,
    spi_max: str | None,
) -> spi.SpiRange:
    explicit = spi_min is not None or spi_max is not None
    if config is not None:
        if node_index is not None or explicit:
            raise UsageError(
                "--config takes the node index and range from the file; drop "
                "--node-index/--spi-min/--spi-max"
            )
        return spi.load_spi_config(config, nodes)
    if explicit:
        if spi_min is None or spi_max is None:
            raise UsageError("--spi-min and --spi-max go together")
        if nodes is not None:
            raise UsageError("give either --nodes or --spi-min/--spi-max, not both")
        low = spi.parse_spi(spi_min, "--spi-min")
        high = spi.parse_spi(spi_max, "--spi-max")
        if node_index is not None and not 0 <= node_index < spi.MAX_NODES:
            raise UsageError(f"--node-index must be 0..{spi.MAX_NODES - 1}, got {node_index}")
        return spi.explicit(low, high, node_index)
    if node_index is None or nodes is None:
        raise UsageError(
            "give --config FILE, --node-index I with --nodes N, or --spi-min and --spi-max"
        )
    return spi.partition(node_index, nodes)


def _render(data: dict[str, Any]) -> str:
    who = "" if data["node_index"] is None else f"node {data['node_index']}: "
    how = "explicit" if data["nodes"] is None else f"1/{data['nodes']} of 0x100..0xffffffff"
    head = f"{who}SPIs {data['spi_min_hex']}..{data['spi_max_hex']} ({data['size']} SPIs, {how})"
    return f"{head}\n\n{data['strongswan_conf'].rstrip()}"
