"""What a node does when keepalived reports a VRRP transition.

Theory of operation
-------------------
keepalived runs its ``notify`` script at every transition of a VRRP instance
or sync group, appending four arguments: ``TYPE NAME STATE PRIORITY``
(``INSTANCE``/``GROUP``, the instance or group name, the target state, the
priority; keepalived passes ``0`` as a group's priority).  The hook in
``keepalived/notify-hook`` hands them to ``ipsec-ha notify``, which lands here.

For now a transition is only *recorded*: one JSON line per transition in a log
(``IPSEC_HA_NOTIFY_LOG``), written with a single ``write`` on an ``O_APPEND``
descriptor so concurrent hooks (keepalived runs one per instance and one per
group, in parallel) never interleave.  The monotonic timestamp lets the lab
time a failover across processes (CLOCK_MONOTONIC is system wide).

What each state triggers is the table ``ACTIONS`` (state -> actions, in
order); a later issue fills it with the SA retrieval and restore work.  The
table is data so that it can be read against the draft's failover section.
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

from appliance.errors import ApplianceError, UsageError

DEFAULT_LOG = Path("/var/lib/ipsec-ha/notify.jsonl")
LOG_ENV = "IPSEC_HA_NOTIFY_LOG"


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


@dataclass(frozen=True)
class NotifyContext:
    """What an action gets: the transition, its record and where it was logged."""

    transition: Transition
    record: TransitionRecord
    log: Path


Action = Callable[[NotifyContext], None]


def record_transition(ctx: NotifyContext) -> None:
    """Write the transition to the notify log."""
    append_record(ctx.log, ctx.record)


# State -> what to do, in order.  Every state is recorded; the SA restore on
# MASTER and the sync stop on BACKUP/FAULT/STOP come with the failover issue.
ACTIONS: dict[VrrpState, tuple[Action, ...]] = {
    VrrpState.MASTER: (record_transition,),
    VrrpState.BACKUP: (record_transition,),
    VrrpState.FAULT: (record_transition,),
    VrrpState.STOP: (record_transition,),
    VrrpState.DELETED: (record_transition,),
}


def handle(
    transition: Transition,
    log: Path,
    node: str | None = None,
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    monotonic: Callable[[], float] = time.monotonic,
) -> TransitionRecord:
    """Run the actions for ``transition``; return the record that was logged."""
    record = TransitionRecord(
        type=transition.type.value,
        name=transition.name,
        state=transition.state.value,
        priority=transition.priority,
        node=node,
        time=wall_clock().isoformat(timespec="microseconds"),
        monotonic=monotonic(),
    )
    ctx = NotifyContext(transition, record, log)
    for action in ACTIONS[transition.state]:
        action(ctx)
    return record


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
    parser.add_argument("--json", dest="as_json", action="store_true")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse prints its own usage line
        return 2 if exc.code else 0
    try:
        transition = parse_transition(args.type_, args.name, args.state, args.priority)
        path = log_path(args.log, os.environ)
        record = handle(transition, path, node=args.node)
    except ApplianceError as exc:
        print(f"ipsec-ha: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.as_json:
        print(json.dumps(asdict(record), indent=2, sort_keys=True))
    else:
        print(f"{record.type} {record.name} -> {record.state} (recorded in {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
