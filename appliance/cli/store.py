"""``ipsec-ha store ...``: run the SA store server, and store/retrieve state as a client."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from appliance.cli._app import app
from appliance.cli._output import emit
from appliance.errors import ApplianceError, UsageError
from appliance.store.config import DEFAULT_CONFIG

store_app = typer.Typer(
    help=(
        "The SA store: `serve` runs the store server (SQLite or etcd behind an "
        "authenticated, encrypted UDP channel); `put`, `get`, `claim` and `stats` talk to it "
        "as a client using the \\[client] table of --config; `reseal` opens the backend of "
        "its \\[store] table directly, with the store server stopped."
    ),
    no_args_is_help=True,
)
app.add_typer(store_app, name="store")

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        help="TOML config file: its store table for serve, its client table for the others.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _client(config: Path) -> Any:
    from appliance.store.client import StoreClient
    from appliance.store.config import load_client_config

    return StoreClient.from_config(load_client_config(config))


def _parse_spi(text: str) -> int:
    try:
        spi = int(text, 0)
    except ValueError:
        raise UsageError(f"--spi {text!r} is not a number (decimal or 0x...)") from None
    if not 0 <= spi < 2**32:
        raise UsageError(f"--spi {text} is outside 0..0xffffffff")
    return spi


def _current_epoch(client: Any, server_id: str) -> int:
    """The server ID's current epoch (from the first page of its state)."""
    from appliance.store.client import check_response
    from appliance.wire.constants import ExchangeType
    from appliance.wire.payloads import EpochPayload, PagePayload, ServerIdPayload

    (response,) = client.exchange(
        [(ExchangeType.SA_RETR, [ServerIdPayload.parse(server_id), PagePayload(576, b"")])]
    )
    check_response(response)
    ep = response.first(EpochPayload)
    return ep.epoch if ep is not None else 0


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 (the snapshot holds key material)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ApplianceError(f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


@store_app.command()
def serve(
    config: ConfigOption = DEFAULT_CONFIG,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log debug details (never key material).")
    ] = False,
) -> None:
    """Run the store server until SIGTERM/SIGINT (logs to stderr).

    With a \\[metrics] table in --config it also serves Prometheus metrics at
    http://LISTEN/metrics (default 127.0.0.1:9642); a port it cannot bind is an
    error before it serves.
    """
    from appliance.store.config import load_server_config
    from appliance.store.server import serve as run_server

    cfg = load_server_config(config)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    asyncio.run(run_server(cfg))


@store_app.command()
def put(
    snapshot: Annotated[Path, typer.Argument(help="Snapshot file (from `ipsec-ha snapshot`).")],
    server_id: Annotated[
        str | None,
        typer.Option(
            "--server-id", help="Store under this server ID (default: the snapshot's node ID)."
        ),
    ] = None,
    epoch: Annotated[
        int | None,
        typer.Option(
            "--epoch", help="Owner epoch to write with (default: the server ID's current one)."
        ),
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Store every SA and policy of a snapshot file (SA_Stor)."""
    from appliance.model import ModelError, Snapshot

    try:
        snap = Snapshot.from_bytes(snapshot.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read snapshot {snapshot}: {exc.strerror}") from None
    except ModelError as exc:
        raise UsageError(f"snapshot {snapshot}: {exc}") from None
    sid = server_id or snap.node_id
    with _client(config) as client:
        ep = _current_epoch(client, sid) if epoch is None else epoch
        messages = client.put_snapshot(snap, ep, sid)
    result = {
        "server_id": sid,
        "epoch": ep,
        "sas": len(snap.sad),
        "policies": len(snap.spd),
        "messages": messages,
    }
    emit(
        result,
        as_json,
        lambda d: (
            f"stored {d['sas']} SAs and {d['policies']} policies for {d['server_id']} "
            f"(epoch {d['epoch']}, {d['messages']} messages)"
        ),
    )


@store_app.command()
def get(
    server_id: Annotated[
        str | None, typer.Option("--server-id", help="Retrieve all state of this server ID.")
    ] = None,
    spi: Annotated[
        str | None, typer.Option("--spi", help="Retrieve one SA by SPI (decimal or 0x...).")
    ] = None,
    dst: Annotated[
        str | None, typer.Option("--dst", help="The SA's destination address (with --spi).")
    ] = None,
    proto: Annotated[str, typer.Option("--proto", help="esp, ah or comp (with --spi).")] = "esp",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write what was retrieved as a snapshot file (mode 0600)."
        ),
    ] = None,
    show_keys: Annotated[
        bool,
        typer.Option(
            "--show-keys", help="Include key material in --json output (never by default)."
        ),
    ] = False,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Retrieve state (SA_Retr): a server's whole state, or one SA with its policies."""
    from appliance.model import Snapshot

    if (server_id is None) == (spi is None):
        raise UsageError("give either --server-id ID or --spi SPI --dst ADDR")
    if spi is not None and dst is None:
        raise UsageError("--spi needs --dst ADDR")
    with _client(config) as client:
        if server_id is not None:
            found = client.fetch(server_id)
            extra: dict[str, Any] = {"pages": found.pages}
        else:
            assert spi is not None and dst is not None
            found = client.fetch_sa(_parse_spi(spi), dst, proto)
            extra = {}
    sid, ep, sad, spd = found.server_id, found.epoch, found.sad, found.spd
    if output is not None:
        snap = Snapshot(sid, datetime.datetime.now(datetime.UTC), tuple(sad), tuple(spd))
        _write_private(output, snap.to_bytes())
    result = {
        "server_id": sid,
        "epoch": ep,
        "sad": [sa.to_dict(redact_keys=not show_keys) for sa in sad],
        "spd": [p.to_dict() for p in spd],
        **extra,
    }
    if output is not None:
        result["output"] = str(output)

    def render(d: dict[str, Any]) -> str:
        lines = [f"server {d['server_id']} epoch {d['epoch']}: {len(sad)} SAs, {len(spd)} policies"]
        lines += [f"  {sa.label()}" for sa in sad[:50]]
        lines += [f"  {p.label()}" for p in spd[:50]]
        if len(sad) > 50 or len(spd) > 50:
            lines.append("  ... (use --json or -o FILE for everything)")
        if output is not None:
            lines.append(f"wrote {output}")
        return "\n".join(lines)

    emit(result, as_json, render)


@store_app.command()
def claim(
    server_id: Annotated[str, typer.Option("--server-id", help="The server ID to take over.")],
    epoch: Annotated[
        int, typer.Option("--epoch", help="The new epoch (default: current + 1).")
    ] = 0,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Raise a server ID's owner epoch: writes with an older epoch are refused from now on.

    The store refuses an epoch above 2**63-1 or more than 2**32 above the
    current one (EPOCH_LIMIT), so that no claim can lock the server ID.
    """
    from appliance.store.base import MAX_EPOCH

    if not 0 <= epoch <= MAX_EPOCH:
        raise UsageError(f"--epoch {epoch} is outside 0..2**63-1 (0: current + 1)")
    with _client(config) as client:
        new = client.claim(server_id, epoch)
    emit({"server_id": server_id, "epoch": new}, as_json, lambda d: f"{server_id}: epoch {new}")


@store_app.command()
def stats(
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Show the store's counts per server, epochs, size, requests served and drops."""
    with _client(config) as client:
        data = client.stats()

    def render(d: dict[str, Any]) -> str:
        lines = [
            f"backend {d.get('backend')}, {d.get('size_bytes', 0)} bytes, "
            f"{len(d.get('servers', []))} server IDs, "
            f"{d.get('requests_served', 0)} requests served, {d.get('drops_total', 0)} dropped"
        ]
        for s in d.get("servers", []):
            lines.append(
                f"  {s['server_id']}: epoch {s['epoch']}, {s['sas']} SAs, {s['policies']} policies"
            )
        return "\n".join(lines)

    emit(data, as_json, render)


@store_app.command()
def reseal(
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Seal every SA record under the current cluster key (after a key rotation or an upgrade).

    Reads the store table of --config and opens the backend directly: run it
    while no store server writes (stop them first).
    """
    from appliance.store.config import load_server_config
    from appliance.store.server import open_backend

    store = open_backend(load_server_config(config))
    try:
        report = store.reseal()
    finally:
        store.close()
    data = {"servers": report.servers, "resealed": report.resealed, "current": report.current}
    emit(
        data,
        as_json,
        lambda d: (
            f"{d['resealed']} SAs sealed under the current key, "
            f"{d['current']} already were ({d['servers']} server IDs)"
        ),
    )
