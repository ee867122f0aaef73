"""``ipsec-ha snapshot`` and ``ipsec-ha restore``: a node's XFRM state to a file and back."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from appliance.cli._app import app
from appliance.cli._output import emit, show_progress
from appliance.cli.sa import JsonOption, NetnsOption
from appliance.errors import UsageError
from appliance.restore import RestoreError, RestoreReport, check_oseq_jump, restore_netns
from appliance.snapshot import read_snapshot_file, take_snapshot, write_snapshot_file


class _Counter:
    """A one-line progress counter on stderr (only used on a terminal)."""

    def __init__(self, label: str, total: int | None = None) -> None:
        self.label, self.total, self.done = label, total, 0

    def __call__(self, count: int) -> None:
        self.done += count
        of = f"/{self.total}" if self.total else ""
        sys.stderr.write(f"\r{self.label}: {self.done}{of}")
        sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write("\n")


@app.command("snapshot")
def snapshot_command(
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="File to write (created 0600, replaced atomically)."),
    ],
    netns: NetnsOption = None,
    node_id: Annotated[
        str | None, typer.Option("--node-id", help="Name recorded in the file (default: hostname).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Dump a namespace's SAs and policies (with keys) into a snapshot file.

    The file holds key material: it is created with mode 0600 and written
    atomically (temporary file, fsync, rename). Its format is in docs/model.md.
    """
    counter = _Counter("snapshot: entries") if show_progress(as_json) else None
    snapshot = take_snapshot(netns, node_id, progress=counter)
    if counter is not None:
        counter.finish()
    size = write_snapshot_file(output, snapshot)
    data = {
        "file": str(output),
        "bytes": size,
        "sa_count": len(snapshot.sad),
        "policy_count": len(snapshot.spd),
        "node_id": snapshot.node_id,
        "taken_at": snapshot.taken_at.isoformat(),
    }
    emit(
        data,
        as_json,
        lambda d: f"wrote {d['sa_count']} SAs and {d['policy_count']} policies to {d['file']}",
    )


def _render_report(report: RestoreReport) -> str:
    lines = [
        f"SAs: {report.sa_added} added, {report.sa_replaced} replaced; "
        f"policies: {report.policy_added} added, {report.policy_replaced} replaced; "
        f"outbound sequence numbers moved: {report.oseq_jumped}"
    ]
    lines += [f"failed: {f.entry}: {f.reason}" for f in report.failures]
    return "\n".join(lines)


@app.command("restore")
def restore_command(
    file: Annotated[Path, typer.Argument(help="Snapshot file written by 'ipsec-ha snapshot'.")],
    netns: NetnsOption = None,
    oseq_jump: Annotated[
        int,
        typer.Option(
            "--oseq-jump",
            help="Start every outbound SA this many sequence numbers past its snapshotted "
            "value, so the peer's anti-replay window accepts its packets: 0 to 2^31-1, the "
            "failover daemon's limits (64-bit for ESN; a non-ESN SA that would pass 2^32-1 "
            "is refused).",
        ),
    ] = 0,
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite SAs and policies that already exist.")
    ] = False,
    keep_going: Annotated[
        bool,
        typer.Option(
            "--keep-going",
            help="Install what can be installed and report every failure, instead of undoing "
            "everything at the first failure.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Install a snapshot's SAs and policies into a namespace.

    All or nothing by default: if the kernel refuses one entry, everything
    this restore added is removed again (and, with --replace, what it
    replaced is put back), and the failing entry is named. The exit status
    is non-zero if anything was not restored.
    """
    try:
        check_oseq_jump(oseq_jump)  # before the file is read or anything touched
    except RestoreError as exc:
        raise UsageError(str(exc)) from None
    snapshot = read_snapshot_file(file)
    total = len(snapshot.sad) + len(snapshot.spd)
    counter = _Counter("restore: entries", total) if show_progress(as_json) else None
    try:
        report = restore_netns(
            snapshot,
            netns,
            oseq_jump=oseq_jump,
            replace=replace,
            keep_going=keep_going,
            progress=counter,
        )
    finally:
        if counter is not None:
            counter.finish()
    data: dict[str, Any] = {"file": str(file), **report.to_dict()}
    emit(data, as_json, lambda _: _render_report(report))
    if report.failures:
        raise typer.Exit(1)
