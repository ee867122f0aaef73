"""keepalived for the lab gateways: config rendering and the processes.

The config comes from ``keepalived/ipsec-ha-gateway.conf.template``, parsed
with the keepalived-config library; the per-gateway values are set on the
parsed tree and the tree is serialised again, so the template stays a real
keepalived config that a person can read and ``keepalived -t`` can check.

The template's readiness check (``vrrp_script chk_ipsec_ha_ready``, tracked
by both instances) is rendered only for a gateway given a ``ReadyCheck``; the
lab leaves it out by default, since each run of the check starts a Python
interpreter, which the lab VM's emulated CPUs pay for.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from keepalived_config import KeepAlivedConfigBlock, KeepAlivedConfigParam, KeepAlivedConfigParser

from appliance.errors import ConfigError, LabError
from netns_lab.build import netns_path
from netns_lab.plan import PRIORITIES, SEGMENTS, SYNC_GROUP

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_ROOT / "keepalived" / "ipsec-ha-gateway.conf.template"
NOTIFY_HOOK = REPO_ROOT / "keepalived" / "notify-hook"
READY_HOOK = REPO_ROOT / "keepalived" / "ready-check"
"""The track_script wrapper: ``python -m appliance.readycheck`` where ``IPSEC_HA_PYTHON`` is set."""
READY_SCRIPT = "chk_ipsec_ha_ready"
"""The template's ``vrrp_script`` that runs ``ipsec-ha status --ready``."""


def keepalived_binary() -> str:
    found = shutil.which("keepalived") or shutil.which("keepalived", path="/usr/sbin:/sbin")
    if not found:
        raise LabError("keepalived not found (install the Debian package: scripts/setup)")
    return found


def ipsec_ha_binary() -> str:
    """The CLI the notify hook runs: the one beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "ipsec-ha"
    if beside.exists():
        return str(beside)
    found = shutil.which("ipsec-ha")
    if not found:
        raise LabError("ipsec-ha CLI not found beside the interpreter nor on PATH")
    return found


@dataclass(frozen=True)
class ReadyCheck:
    """keepalived runs ``ipsec-ha status --ready`` and lowers the priority while it fails.

    The values go into the template's ``vrrp_script`` block; keepalived counts
    a run that exceeds ``timeout_s`` as a failure.
    """

    status_file: Path
    """The daemon's status file (``[failover].status_file``)."""
    interval_s: int = 2
    timeout_s: int = 10
    weight: int = -60
    """Added to both instances' priority while the check fails (keepalived: -253..-1 here)."""
    fall: int = 2
    """Failed runs in a row before the weight applies."""
    rise: int = 2
    """Successful runs in a row before it is lifted."""
    max_lag_s: float | None = None
    """``--max-lag``: None leaves the daemon's ``ready_max_lag_s``."""
    program: tuple[str, ...] = ()
    """The command before the options (empty: ``ipsec-ha status --ready``, the CLI beside
    the interpreter); ``(str(READY_HOOK),)`` runs the check without the CLI's start-up."""

    def command(self) -> str:
        """The quoted ``script`` value."""
        words = [*(self.program or (ipsec_ha_binary(), "status", "--ready"))]
        words += ["--status", str(self.status_file)]
        if self.max_lag_s is not None:
            words += ["--max-lag", f"{self.max_lag_s:g}"]
        return _quoted(words, "ready check")

    def check(self) -> None:
        """``ConfigError`` naming the first value keepalived would refuse or misread."""
        for name, value, low, high in (
            ("interval_s", self.interval_s, 1, 3600),
            ("timeout_s", self.timeout_s, 1, 3600),
            ("weight", self.weight, -253, -1),
            ("fall", self.fall, 1, 100),
            ("rise", self.rise, 1, 100),
        ):
            if not low <= value <= high:
                raise ConfigError(f"ready check: {name} must be {low}..{high}, not {value}")
        if self.max_lag_s is not None and not self.max_lag_s > 0:
            raise ConfigError(f"ready check: max_lag_s must be positive, not {self.max_lag_s}")


@dataclass(frozen=True)
class GatewayConfig:
    """The values that differ between gateways."""

    name: str
    priority: int
    advert_int: float
    notify_log: Path
    notify_fifo: Path = Path("/run/ipsec-ha/keepalived.fifo")
    ready_check: ReadyCheck | None = None
    """Render the readiness ``vrrp_script`` and track it (None: left out)."""


def _block(params: list[Any], type_name: str, name: str = "") -> Any:
    full = f"{type_name} {name}" if name else type_name
    for param in params:
        if isinstance(param, KeepAlivedConfigBlock) and param.name == full:
            return param
    raise ConfigError(f"keepalived template {TEMPLATE.name} has no '{full}' block")


def _set(block: Any, key: str, value: str) -> None:
    for param in block.params:
        if not isinstance(param, KeepAlivedConfigBlock) and param.name == key:
            param.value = value
            return
    raise ConfigError(f"keepalived template: '{block.name}' has no '{key}' setting")


def _format_advert_int(value: float) -> str:
    # VRRPv3 counts in centiseconds: 0.01 s to 40.95 s
    if not 0.01 <= value <= 40.95:
        raise ConfigError(f"advert_int must be 0.01-40.95 s (VRRPv3), not {value}")
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _quoted(words: list[str], what: str) -> str:
    # keepalived splits a quoted script line on blanks and knows no escapes
    for word in words:
        if '"' in word or "'" in word or any(c.isspace() for c in word):
            raise ConfigError(f"{what} argument {word!r} contains quotes or spaces")
    return '"' + " ".join(words) + '"'


def notify_command(gw: GatewayConfig) -> str:
    """The notify line: keepalived appends TYPE NAME STATE PRIORITY to these words."""
    return _quoted(
        [str(NOTIFY_HOOK), "--log", str(gw.notify_log), "--node", gw.name], "notify hook"
    )


def _without(block_params: list[Any], name: str) -> None:
    """Remove the parameter or block ``name`` (it must be there: the template has it)."""
    found = [p for p in block_params if p.name == name]
    if not found:
        raise ConfigError(f"keepalived template {TEMPLATE.name} has no '{name}'")
    for param in found:
        block_params.remove(param)


def _ready_check(params: list[Any], instances: list[Any], check: ReadyCheck | None) -> None:
    """Fill the template's readiness script, or take it and its tracking out."""
    script = _block(params, "vrrp_script", READY_SCRIPT)
    group = _block(params, "vrrp_sync_group", SYNC_GROUP)
    if check is None:
        params.remove(script)
        _without(group.params, "sync_group_tracking_weight")
        for instance in instances:
            _without(instance.params, "track_script")
        return
    check.check()
    for key, value in (
        ("script", check.command()),
        ("interval", str(check.interval_s)),
        ("timeout", str(check.timeout_s)),
        ("weight", str(check.weight)),
        ("fall", str(check.fall)),
        ("rise", str(check.rise)),
    ):
        _set(script, key, value)
    for instance in instances:
        tracked = _block(instance.params, "track_script")
        if [p.name for p in tracked.params if p.name] != [READY_SCRIPT]:
            raise ConfigError(f"keepalived template: '{instance.name}' must track {READY_SCRIPT}")


def render_config(gw: GatewayConfig, template: Path = TEMPLATE) -> str:
    """The keepalived.conf of gateway ``gw``."""
    try:
        config = KeepAlivedConfigParser().parse_string(template.read_text())
    except (OSError, ValueError, SyntaxError) as exc:
        raise ConfigError(f"cannot parse keepalived template {template}: {exc}") from None
    params = config.params
    _set(_block(params, "global_defs"), "router_id", f"ipsec-ha-{gw.name}")
    _set(_block(params, "global_defs"), "notify_fifo", str(gw.notify_fifo))
    notify = notify_command(gw)
    _set(_block(params, "vrrp_sync_group", SYNC_GROUP), "notify", notify)
    instances = [_block(params, "vrrp_instance", s.instance) for s in SEGMENTS]
    _ready_check(params, instances, gw.ready_check)
    for segment, instance in zip(SEGMENTS, instances, strict=True):
        _set(instance, "interface", segment.ifname)
        _set(instance, "virtual_router_id", str(segment.vrid))
        _set(instance, "priority", str(gw.priority))
        _set(instance, "advert_int", _format_advert_int(gw.advert_int))
        _set(instance, "notify", notify)
        vips = _block(instance.params, "virtual_ipaddress")
        vips.params.clear()
        vips.add_param(KeepAlivedConfigParam(segment.vip))
    return "\n".join(p.to_str() for p in params) + "\n"


def parse_config(text: str) -> Any:
    """Parse a rendered config back (used by tests and ``ipsec-ha-lab status``)."""
    return KeepAlivedConfigParser().parse_string(text)


def dead_interval(advert_int: float, backup_priority: int) -> float:
    """VRRPv3 Master_Down_Interval: 3 adverts plus the backup's skew (RFC 5798 6.1)."""
    return 3 * advert_int + ((256 - backup_priority) * advert_int) / 256


@dataclass
class KeepalivedFiles:
    """Where one gateway's keepalived keeps its files, all in the run dir."""

    config: Path
    pidfile: Path
    vrrp_pidfile: Path
    checkers_pidfile: Path
    log: Path
    notify_log: Path
    hook_stderr: Path
    """keepalived discards hook output; the hook appends its stderr here."""
    fifo: Path
    """keepalived's notify FIFO (the daemon's ordered source of transitions)."""
    status: Path
    """The daemon's status file, which the hook waits on (absent: no daemon)."""
    ready_check: Path
    """The gateway's ``ReadyCheck`` as JSON (absent: none); see ``enable_ready_check``."""

    @classmethod
    def in_dir(cls, run_dir: Path, gateway: str) -> KeepalivedFiles:
        return cls(
            config=run_dir / f"{gateway}-keepalived.conf",
            pidfile=run_dir / f"{gateway}-keepalived.pid",
            vrrp_pidfile=run_dir / f"{gateway}-vrrp.pid",
            checkers_pidfile=run_dir / f"{gateway}-checkers.pid",
            log=run_dir / f"{gateway}-keepalived.log",
            notify_log=run_dir / f"{gateway}-notify.jsonl",
            hook_stderr=run_dir / f"{gateway}-hook-stderr.log",
            fifo=run_dir / f"{gateway}-keepalived.fifo",
            status=run_dir / f"{gateway}-status.json",
            ready_check=run_dir / f"{gateway}-ready-check.json",
        )


def check_config(config: Path, ns: str) -> None:
    """``keepalived -t`` inside ``ns`` (it checks that the interfaces exist)."""
    result = subprocess.run(
        ["nsenter", f"--net={netns_path(ns)}", "--", keepalived_binary(), "-t", "-f", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        detail = " ".join(result.stderr.split())[-400:]
        raise ConfigError(f"keepalived rejects {config} (exit {result.returncode}): {detail}")


def enable_ready_check(run_dir: Path, gateway: str, check: ReadyCheck | None = None) -> ReadyCheck:
    """Have ``gateway``'s keepalived track ``ipsec-ha status --ready`` from its next start.

    The setting is kept in the run dir, as the rest of a lab's state is, so
    every later ``write_config`` of that gateway (``Lab.start_keepalived``,
    from any process) renders it. Default: the check of the gateway's own
    daemon status file with ``ReadyCheck``'s defaults.
    """
    files = KeepalivedFiles.in_dir(run_dir, gateway)
    check = check or ReadyCheck(files.status)
    check.check()
    fields = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(check).items()}
    fd = os.open(files.ready_check, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(fields, f)
    return check


def ready_check_of(run_dir: Path, gateway: str) -> ReadyCheck | None:
    """The ``ReadyCheck`` enabled for ``gateway`` in this run (None: none)."""
    path = KeepalivedFiles.in_dir(run_dir, gateway).ready_check
    try:
        fields = json.loads(path.read_text())
        fields["status_file"] = Path(fields["status_file"])
        fields["program"] = tuple(fields.get("program", ()))
        return ReadyCheck(**fields)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"unreadable ready check {path}: {exc}") from None


def write_config(gateway: str, run_dir: Path, advert_int: float) -> KeepalivedFiles:
    """Render gateway's keepalived.conf into the run dir (0600); return its file set."""
    files = KeepalivedFiles.in_dir(run_dir, gateway)
    gw = GatewayConfig(
        gateway,
        PRIORITIES[gateway],
        advert_int,
        files.notify_log,
        files.fifo,
        ready_check_of(run_dir, gateway),
    )
    text = render_config(gw)
    # The FIFO exists before keepalived starts, so that its first transitions
    # wait in the pipe for a daemon started later (keepalived keeps it open).
    if not files.fifo.exists():
        os.mkfifo(files.fifo, 0o600)
    fd = os.open(files.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return files


def spawn(files: KeepalivedFiles, ns: str) -> subprocess.Popen[bytes]:
    """Start keepalived (VRRP only, in the foreground) inside namespace ``ns``."""
    argv = [
        "nsenter",
        f"--net={netns_path(ns)}",
        "--",
        keepalived_binary(),
        "--dont-fork",
        "--vrrp",
        "--log-console",
        "--log-detail",
        "--no-syslog",
        f"--use-file={files.config}",
        f"--pid={files.pidfile}",
        f"--vrrp_pid={files.vrrp_pidfile}",
        f"--checkers_pid={files.checkers_pidfile}",
    ]
    env = dict(os.environ)
    env["IPSEC_HA_BIN"] = ipsec_ha_binary()
    env["IPSEC_HA_PYTHON"] = sys.executable
    env["IPSEC_HA_HOOK_STDERR"] = str(files.hook_stderr)
    env["IPSEC_HA_STATUS"] = str(files.status)
    log_fd = os.open(files.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        # Its own session: a Ctrl-C on the lab's terminal must not reach it
        # directly; the lab's teardown stops it (with SIGTERM, in order).
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        raise LabError(f"cannot start keepalived ({shlex.join(argv)}): {exc}") from None
    finally:
        os.close(log_fd)


_PRIORITY_CHANGE = re.compile(
    r"\((?P<instance>[^()\s]+)\) Changing effective priority from \d+ to (?P<priority>\d+)"
)


def effective_priorities(log_text: str, configured: int) -> dict[str, int]:
    """Each lab instance's effective priority, as keepalived's log last reported it.

    keepalived logs ``(VI_OUTSIDE) Changing effective priority from 100 to
    40`` whenever a tracked script's weight applies or is lifted; an instance
    that never logged one has its ``configured`` priority. (A BACKUP sends
    no adverts, so the wire does not show a standby's priority; the log is
    ordered and per process, unlike the SIGUSR1 dump, which every keepalived
    on the host writes to the same file.)
    """
    priorities = {segment.instance: configured for segment in SEGMENTS}
    for match in _PRIORITY_CHANGE.finditer(log_text):
        if match["instance"] in priorities:
            priorities[match["instance"]] = int(match["priority"])
    return priorities


def tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log, for error messages."""
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(none)"


def is_lab_keepalived(pid: int, marker: str) -> bool:
    """Is ``pid`` a keepalived whose command line mentions ``marker`` (its run dir)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not cmdline or not cmdline[0].endswith(b"keepalived"):
        return False
    return any(marker.encode() in arg for arg in cmdline)


def lab_keepalived_pids(marker: str) -> list[int]:
    """Every keepalived process (parent and children) started by the lab under ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and is_lab_keepalived(int(entry.name), marker):
            pids.append(int(entry.name))
    return sorted(pids)


def send_signal(pid: int, marker: str, sig: int) -> bool:
    """Signal a lab keepalived (SIGKILL: its whole process group); False if not running."""
    if not is_lab_keepalived(pid, marker):
        return False
    try:
        if sig == signal.SIGKILL:
            # the VRRP child would otherwise go on advertising
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_exit(pid: int, marker: str, timeout: float = 10.0) -> None:
    """Wait for a keepalived and its children to exit; SIGKILL the group after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not [p for p in lab_keepalived_pids(marker) if _pgid(p) == pid]:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _reap(pid)


def stop(pid: int, marker: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Send ``sig`` to a lab keepalived and wait for it and its children to exit.

    SIGTERM lets keepalived run its STOP notifications and drop its VIPs;
    after ``timeout`` (or with SIGKILL) the whole process group is killed.
    Returns whether the process was running.
    """
    if not send_signal(pid, marker, sig):
        return False
    wait_exit(pid, marker, timeout)
    return True


def is_group_leader(pid: int) -> bool:
    """The lab starts each keepalived parent in a session of its own."""
    return _pgid(pid) == pid


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return -1


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
