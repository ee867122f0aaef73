"""``ipsec-ha traffic send|recv|echo|report``: sequence-numbered UDP traffic for the lab."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from appliance.cli._app import app
from appliance.cli._output import emit
from appliance.errors import UsageError
from appliance.traffic.analysis import analyse, flow_arrivals, load_result, plot_rate
from appliance.traffic.probe import HEADER_SIZE, TrafficError
from appliance.traffic.udp import RunResult, RunSpec, parse_endpoint, run

traffic_app = typer.Typer(
    help=(
        "Sequence-numbered UDP probes to measure a failover: send at a fixed rate, "
        "receive and book every probe, or echo (the server's own stream back, so one "
        "pair of processes measures both directions). Results are JSON with per-packet "
        "arrival times (CLOCK_MONOTONIC ns)."
    ),
    no_args_is_help=True,
)
app.add_typer(traffic_app, name="traffic")

_NETNS_HELP = "Run inside this network namespace (ip netns name)."
_JsonOut = Annotated[
    Path | None,
    typer.Option(
        "--json-out", metavar="FILE", help="Write the full result (every arrival) to FILE as JSON."
    ),
]


def _stop_on_signals() -> threading.Event:
    """SIGTERM/SIGINT end the run early; the result is still written."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, separators=(",", ":")) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise TrafficError(f"cannot write {path}: {exc.strerror}") from None


def _finish(result: RunResult, json_out: Path | None, as_json: bool) -> None:
    data = result.to_dict()
    if json_out is not None:
        _write(json_out, data)
    summary = {
        "mode": data["mode"],
        "sent": data["sent"],
        "received": {str(f["flow"]): f["stats"] for f in data["received"]},
        "malformed": data["malformed"],
        "duration_s": round((data["end_ns"] - data["start_ns"]) / 1e9, 3),
    }

    def render(s: dict[str, Any]) -> str:
        lines = [f"{s['mode']}: {s['duration_s']} s"]
        if s["sent"]:
            errors = s["sent"]["errors"]
            lines.append(
                f"  sent flow {s['sent']['flow']}: {s['sent']['count']} probes"
                + (f" ({sum(errors.values())} send errors: {errors})" if errors else "")
            )
        for flow, stats in s["received"].items():
            lines.append(
                f"  received flow {flow}: {stats['received']} probes, {stats['lost']} lost, "
                f"{stats['duplicates']} duplicates, {stats['reordered']} reordered"
            )
        return "\n".join(lines)

    emit(summary, as_json, render)


def _endpoint(text: str, what: str, need_port: bool = True) -> tuple[str, int]:
    try:
        return parse_endpoint(text, need_port=need_port)
    except TrafficError as exc:
        raise UsageError(f"{what}: {exc}") from None


@traffic_app.command()
def send(
    to: str = typer.Option(..., "--to", metavar="ADDR:PORT", help="Where to send."),
    rate: float = typer.Option(200.0, "--rate", metavar="PPS", help="Probes per second."),
    duration: float = typer.Option(10.0, "--duration", metavar="S", help="Seconds of sending."),
    bind: str = typer.Option(
        "", "--bind", metavar="ADDR[:PORT]", help="Source address (and port) to send from."
    ),
    flow: int = typer.Option(1, "--flow", help="Flow id carried in every probe."),
    size: int = typer.Option(HEADER_SIZE, "--size", help="UDP payload bytes (>= 24)."),
    linger: float = typer.Option(
        0.5, "--linger", metavar="S", help="Keep receiving (the echo's stream) this long after."
    ),
    netns: str | None = typer.Option(None, "--netns", help=_NETNS_HELP),
    json_out: _JsonOut = None,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Send probes to ADDR:PORT at a fixed rate; book any probes that come back (echo)."""
    peer = _endpoint(to, "--to")
    if bind:
        source = _endpoint(bind, "--bind", need_port=False)
    else:
        source = ("::", 0) if ":" in peer[0] else ("0.0.0.0", 0)
    spec = RunSpec(
        mode="send",
        bind=source,
        duration_s=duration,
        peer=peer,
        rate=rate,
        flow=flow,
        size=size,
        linger_s=linger,
        netns=netns,
    )
    _finish(run(spec, stop=_stop_on_signals()), json_out, as_json)


@traffic_app.command()
def recv(
    bind: str = typer.Option(..., "--bind", metavar="ADDR:PORT", help="Address to listen on."),
    duration: float = typer.Option(..., "--duration", metavar="S", help="Seconds to listen."),
    netns: str | None = typer.Option(None, "--netns", help=_NETNS_HELP),
    json_out: _JsonOut = None,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Receive probes and book them (counts, losses, arrival times); SIGTERM ends early."""
    spec = RunSpec(
        mode="recv",
        bind=_endpoint(bind, "--bind"),
        duration_s=duration,
        linger_s=0,
        netns=netns,
    )
    _finish(run(spec, stop=_stop_on_signals()), json_out, as_json)


@traffic_app.command()
def echo(
    bind: str = typer.Option(..., "--bind", metavar="ADDR:PORT", help="Address to listen on."),
    duration: float = typer.Option(..., "--duration", metavar="S", help="Seconds to run."),
    rate: float = typer.Option(
        200.0, "--rate", metavar="PPS", help="Rate of the stream sent back to the sender."
    ),
    flow: int = typer.Option(2, "--flow", help="Flow id of the stream sent back."),
    size: int = typer.Option(HEADER_SIZE, "--size", help="UDP payload bytes (>= 24)."),
    netns: str | None = typer.Option(None, "--netns", help=_NETNS_HELP),
    json_out: _JsonOut = None,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Receive probes and, from the first one, send an own numbered stream back to the sender.

    The stream back is independent of what arrives, so losses in each direction
    are measured separately.
    """
    spec = RunSpec(
        mode="echo",
        bind=_endpoint(bind, "--bind"),
        duration_s=duration,
        rate=rate,
        flow=flow,
        size=size,
        linger_s=0,
        netns=netns,
    )
    _finish(run(spec, stop=_stop_on_signals()), json_out, as_json)


@traffic_app.command()
def report(
    client: Annotated[Path, typer.Option("--client", metavar="FILE", help="The `send` result.")],
    server: Annotated[Path, typer.Option("--server", metavar="FILE", help="The `echo` result.")],
    failover: float | None = typer.Option(
        None,
        "--failover-at",
        metavar="SECONDS",
        help="CLOCK_MONOTONIC seconds of the failover (the notify log's `monotonic`).",
    ),
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot", metavar="PNG", help="Also plot packets per 10 ms in each direction."
        ),
    ] = None,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Gap, losses and reordering per direction from a send/echo pair of results."""
    client_data, server_data = load_result(client), load_result(server)
    failover_ns = int(failover * 1e9) if failover is not None else None
    directions: dict[str, Any] = {}
    arrivals: dict[str, Any] = {}
    for label, sender, receiver in (
        ("client->server", client_data, server_data),
        ("server->client", server_data, client_data),
    ):
        sent = sender.get("sent") or {}
        records = flow_arrivals(receiver, sent.get("flow")) if sent else []
        arrivals[label] = records
        summary = analyse(records, failover_ns, sent.get("count"))
        directions[label] = {**summary.to_dict(), "sent": sent.get("count", 0)}
    if plot is not None:
        plot_rate(arrivals, plot, failover_ns)
        directions["plot"] = str(plot)

    def render(d: dict[str, Any]) -> str:
        lines = []
        for label in ("client->server", "server->client"):
            s = d[label]
            lines.append(
                f"{label}: sent {s['sent']}, received {s['received']}, lost {s['lost']}, "
                f"reordered {s['reordered']}, longest gap {s['max_gap_ms']:.1f} ms"
            )
        if "plot" in d:
            lines.append(f"plot: {d['plot']}")
        return "\n".join(lines)

    emit(directions, as_json, render)
