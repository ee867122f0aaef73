"""What a node does when keepalived reports a VRRP transition.

Theory of operation
-------------------
keepalived runs its ``notify`` script at every transition of a VRRP instance
or sync group, appending four arguments: ``TYPE NAME STATE PRIORITY``
(``INSTANCE``/``GROUP``, the instance or group name, the target state, the
priority; keepalived passes ``0`` as a group's priority).  The hook in
``keepalived/notify-hook`` hands them to ``ipsec-ha notify``, which lands here.

Each transition is first *recorded*: one JSON line in a log
(``IPSEC_HA_NOTIFY_LOG``), written with a single ``write`` on an ``O_APPEND``
descriptor so concurrent hooks (keepalived runs one per instance and one per
group, in parallel) never interleave.  The monotonic timestamp lets the lab
time a failover across processes (CLOCK_MONOTONIC is system wide).

The work a transition calls for (at MASTER: claim the epoch, fetch the
state, install it with the sequence jump, open outbound; otherwise: gate
outbound, keep syncing) is done by the failover daemon, which owns the sync
loops a plan starts and stops (``appliance.failover``). The daemon takes
transitions from keepalived's ordered notify FIFO or, without one, from this
log. The hook then *waits*, bounded by ``--wait``, until the daemon's status
file (``IPSEC_HA_STATUS``) shows the state done, and fails naming the
problem if the daemon failed or did not finish in time, as ``conntrackd -c``
does in conntrackd's primary-backup script. Without a status file (no
daemon on this node) the hook only records.

What each state triggers is the table ``ACTIONS`` (state -> actions, in
order), data so that it can be read against the draft's failover section.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError, UsageError
from appliance.status_file import read_status, status_path

DEFAULT_LOG = Path("/var/lib/ipsec-ha/notify.jsonl")
LOG_ENV = "IPSEC_HA_NOTIFY_LOG"
DEFAULT_WAIT_S = 10.0


class NotifyType(enum.StrEnum):
    """What the transition is about: one VRRP instance or a sync group."""

    INSTANCE = "INSTANCE"
    GROUP = "GROUP"


class VrrpState(enum.StrEnum):
    """The states keepalived reports to notify scripts."""

    MASTER = "MASTER"
    BACKUP = "BACKUP"
    FAULT = "FAULT"
    STOP = "STOP"
    DELETED = "DELETED"


@dataclass(frozen=True)
class Transition:
    """One VRRP transition as keepalived reported it."""

    type: NotifyType
    """Instance or sync group."""
    name: str
    """The vrrp_instance or vrrp_sync_group name from keepalived.conf."""
    state: VrrpState
    """The state entered."""
    priority: int
    """The instance's priority (0 for a group)."""


@dataclass(frozen=True)
class TransitionRecord:
    """A transition as written to the notify log."""

    type: str
    name: str
    state: str
    priority: int
    node: str | None
    """Which node saw it (``--node``; the lab sets the gateway's name)."""
    time: str
    """Wall clock, ISO 8601 UTC, for people."""
    monotonic: float
    """CLOCK_MONOTONIC seconds, for measuring failover across processes."""


def _choice(value: str, enum_type: type[enum.StrEnum], what: str) -> str:
    allowed = [m.value for m in enum_type]
    if value not in allowed:
        raise UsageError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def parse_transition(type_: str, name: str, state: str, priority: str) -> Transition:
    """Validate keepalived's four notify arguments; raise ``UsageError`` naming the bad one."""
    notify_type = NotifyType(_choice(type_, NotifyType, "TYPE"))
    vrrp_state = VrrpState(_choice(state, VrrpState, "STATE"))
    if not name or any(c.isspace() for c in name) or len(name) > 255:
        raise UsageError(f"NAME must be a non-empty VRRP instance or group name, not {name!r}")
    try:
        prio = int(priority, 10)
    except ValueError:
        raise UsageError(f"PRIORITY must be an integer 0-255, not {priority!r}") from None
    if not 0 <= prio <= 255:
        raise UsageError(f"PRIORITY must be an integer 0-255, not {priority!r}")
    return Transition(notify_type, name, vrrp_state, prio)


def log_path(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    """The notify log: ``--log``, else ``$IPSEC_HA_NOTIFY_LOG``, else the default."""
    if explicit:
        return Path(explicit)
    if env.get(LOG_ENV):
        return Path(env[LOG_ENV])
    return DEFAULT_LOG


def append_record(path: Path, record: TransitionRecord) -> None:
    """Append ``record`` as one JSON line, in one write, to a 0600 file (dir 0700)."""
    line = (json.dumps(asdict(record), sort_keys=True) + "\n").encode()
    try:
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ApplianceError(f"cannot open notify log {path}: {exc.strerror}") from None
    try:
        # A file someone else created with looser permissions is tightened, never widened.
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
        written = os.write(fd, line)
        if written != len(line):
            raise ApplianceError(f"short write to notify log {path} ({written} of {len(line)})")
    except OSError as exc:
        raise ApplianceError(f"cannot write notify log {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def read_records(path: Path) -> list[TransitionRecord]:
    """All records of a notify log, oldest first; a missing log has none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(TransitionRecord(**json.loads(line)))
        except (ValueError, TypeError) as exc:
            raise ApplianceError(f"{path}:{number}: not a notify record ({exc})") from None
    return records


@dataclass
class NotifyContext:
    """What a handler gets: the transition, its record, where it was logged, what it waits on."""

    transition: Transition
    record: TransitionRecord
    log: Path
    status: Path | None = None
    """The daemon's status file (None: do not wait)."""
    wait_s: float = DEFAULT_WAIT_S
    daemon: dict[str, Any] | None = None
    """The daemon's status once it finished the transition (set by ``await_daemon``)."""
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic


NotifyHandler = Callable[[NotifyContext], None]


def record_transition(ctx: NotifyContext) -> None:
    """Write the transition to the notify log."""
    append_record(ctx.log, ctx.record)


def await_daemon(ctx: NotifyContext) -> None:
    """Wait until the daemon's status shows this state done; fail loudly if it does not."""
    if ctx.status is None or ctx.wait_s <= 0:
        return
    state = ctx.transition.state.value
    deadline = ctx.monotonic() + ctx.wait_s
    while True:
        status = read_status(ctx.status)
        if status is None:
            return  # no daemon on this node: recorded only
        if status.get("state") == state:
            if not status.get("ok"):
                raise ApplianceError(f"the daemon failed {state}: {status.get('error')}")
            ctx.daemon = status
            return
        if ctx.monotonic() >= deadline:
            raise ApplianceError(
                f"the daemon (pid {status.get('pid')}) did not finish {state} within "
                f"{ctx.wait_s:g} s; it reports role {status.get('role')}, "
                f"last state {status.get('state')}"
            )
        ctx.sleep(0.02)


# State -> what to do, in order.  The daemon does the kernel and store work
# (appliance.failover.transitions has the plan per state); the hook records
# the transition and waits for the daemon to have carried it out.
ACTIONS: dict[VrrpState, tuple[NotifyHandler, ...]] = {
    VrrpState.MASTER: (record_transition, await_daemon),
    VrrpState.BACKUP: (record_transition, await_daemon),
    VrrpState.FAULT: (record_transition, await_daemon),
    VrrpState.STOP: (record_transition, await_daemon),
    VrrpState.DELETED: (record_transition, await_daemon),
}


def handle(
    transition: Transition,
    log: Path,
    node: str | None = None,
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    monotonic: Callable[[], float] = time.monotonic,
    status: Path | None = None,
    wait_s: float = DEFAULT_WAIT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> NotifyContext:
    """Run the actions for ``transition``; return the context (record, daemon status)."""
    record = TransitionRecord(
        type=transition.type.value,
        name=transition.name,
        state=transition.state.value,
        priority=transition.priority,
        node=node,
        time=wall_clock().isoformat(timespec="microseconds"),
        monotonic=monotonic(),
    )
    ctx = NotifyContext(transition, record, log, status, wait_s, sleep=sleep, monotonic=monotonic)
    for action in ACTIONS[transition.state]:
        action(ctx)
    return ctx


def summary(ctx: NotifyContext) -> dict[str, Any]:
    """What the command prints: the record, and the daemon's outcome if it waited."""
    out: dict[str, Any] = asdict(ctx.record)
    daemon = ctx.daemon
    if daemon is not None:
        report = daemon.get("report") or {}
        out["daemon"] = {
            "role": daemon.get("role"),
            "pid": daemon.get("pid"),
            "installed_sas": report.get("installed_sas", 0),
            "advanced": len(report.get("advanced", [])),
            # Stored entries that did not decode and were left out (docs/failover.md).
            "skipped_entries": report.get("skipped_entries", 0),
            "timeline": [
                {"step": t["step"], "monotonic": t["monotonic"]} for t in report.get("timeline", [])
            ],
        }
    return out


def summary_line(out: Mapping[str, Any], log: Path) -> str:
    line = f"{out['type']} {out['name']} -> {out['state']} (recorded in {log})"
    daemon = out.get("daemon")
    if daemon:
        line += (
            f"; daemon pid {daemon['pid']}: role {daemon['role']}, "
            f"{daemon['installed_sas']} SAs installed, {daemon['advanced']} counters advanced"
        )
        if daemon.get("skipped_entries"):
            line += f", {daemon['skipped_entries']} stored entries skipped (undecodable; see log)"
    return line


def main(argv: list[str] | None = None) -> int:
    """``python -m appliance.notify``: ``ipsec-ha notify`` without loading the whole CLI.

    The hook uses it when ``IPSEC_HA_PYTHON`` is set: importing every CLI
    command costs about a second on a busy host and two minutes in the TCG
    lab VM, while keepalived waits for its hooks.  Same arguments, output,
    log and exit codes as ``ipsec-ha notify``.
    """
    parser = argparse.ArgumentParser(
        prog="ipsec-ha notify", description="Handle a VRRP transition reported by keepalived."
    )
    parser.add_argument("type_", metavar="TYPE")
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("state", metavar="STATE")
    parser.add_argument("priority", metavar="PRIORITY")
    parser.add_argument("--log", metavar="FILE")
    parser.add_argument("--node")
    parser.add_argument("--status", metavar="FILE")
    parser.add_argument("--wait", type=float, default=DEFAULT_WAIT_S, metavar="S")
    parser.add_argument("--json", dest="as_json", action="store_true")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse prints its own usage line
        return 2 if exc.code else 0
    try:
        transition = parse_transition(args.type_, args.name, args.state, args.priority)
        if not 0 <= args.wait <= 300:
            raise UsageError(f"--wait must be 0..300 seconds, not {args.wait:g}")
        path = log_path(args.log, os.environ)
        status = status_path(args.status, os.environ)
        ctx = handle(transition, path, node=args.node, status=status, wait_s=args.wait)
    except ApplianceError as exc:
        print(f"ipsec-ha: error: {exc}", file=sys.stderr)
        return exc.exit_code
    out = summary(ctx)
    if args.as_json:
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(summary_line(out, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
