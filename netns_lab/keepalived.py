"""keepalived for the lab gateways: config rendering and the processes.

The config comes from ``keepalived/ipsec-ha-gateway.conf.template``, parsed
with the keepalived-config library; the per-gateway values are set on the
parsed tree and the tree is serialised again, so the template stays a real
keepalived config that a person can read and ``keepalived -t`` can check.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keepalived_config import KeepAlivedConfigBlock, KeepAlivedConfigParam, KeepAlivedConfigParser

from appliance.errors import ConfigError, LabError
from netns_lab.build import netns_path
from netns_lab.plan import PRIORITIES, SEGMENTS, SYNC_GROUP

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_ROOT / "keepalived" / "ipsec-ha-gateway.conf.template"
NOTIFY_HOOK = REPO_ROOT / "keepalived" / "notify-hook"


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
class GatewayConfig:
    """The values that differ between gateways."""

    name: str
    priority: int
    advert_int: float
    notify_log: Path
    notify_fifo: Path = Path("/run/ipsec-ha/keepalived.fifo")


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


def notify_command(gw: GatewayConfig) -> str:
    """The notify line: keepalived appends TYPE NAME STATE PRIORITY to these words."""
    words = [str(NOTIFY_HOOK), "--log", str(gw.notify_log), "--node", gw.name]
    for word in words:
        if '"' in word or "'" in word or any(c.isspace() for c in word):
            raise ConfigError(f"notify hook argument {word!r} contains quotes or spaces")
    return '"' + " ".join(words) + '"'


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
    for segment in SEGMENTS:
        instance = _block(params, "vrrp_instance", segment.instance)
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
    """Parse a rendered config back (used by tests and ``lab status``)."""
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


def write_config(gateway: str, run_dir: Path, advert_int: float) -> KeepalivedFiles:
    """Render gateway's keepalived.conf into the run dir (0600); return its file set."""
    files = KeepalivedFiles.in_dir(run_dir, gateway)
    gw = GatewayConfig(gateway, PRIORITIES[gateway], advert_int, files.notify_log, files.fifo)
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
