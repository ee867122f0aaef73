"""A lab run's record on disk, so that another process can query or remove it.

Each run has a directory ``<base>/<run id>/`` (base: ``$IPSEC_HA_LAB_RUN_DIR``,
default ``/run/ipsec-ha-lab``, a tmpfs, so a reboot forgets stale runs) with
``lab.json`` and the gateways' keepalived configs, pid files, logs and notify
logs.  The directory is 0700: the configs will hold keys in later scenarios.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import LabError, UsageError
from netns_lab.plan import RUN_ID_RE

RUN_BASE_ENV = "IPSEC_HA_LAB_RUN_DIR"
DEFAULT_RUN_BASE = Path("/run/ipsec-ha-lab")
STATE_FILE = "lab.json"


def run_base() -> Path:
    return Path(os.environ.get(RUN_BASE_ENV) or DEFAULT_RUN_BASE)


def run_dir(run_id: str) -> Path:
    return run_base() / run_id


@dataclass
class KeepalivedRecord:
    pid: int
    config: str
    pidfile: str
    vrrp_pidfile: str
    log: str
    notify_log: str


@dataclass
class RunState:
    """What ``lab.json`` holds."""

    run_id: str
    run_dir: str
    namespaces: dict[str, str]
    """role (client, gw1, gw2, server, swout, swin) -> namespace name"""
    addresses: dict[str, dict[str, str]]
    vips: dict[str, str]
    """segment -> VIP with prefix"""
    advert_int: float
    owner_pid: int
    """The process that built the lab (it may have exited: ``ipsec-ha-lab up`` does)."""
    created_wall: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    keepalived: dict[str, KeepalivedRecord] = field(default_factory=dict)

    def save(self) -> None:
        path = Path(self.run_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=2, sort_keys=True)
        os.replace(tmp, path)

    @classmethod
    def load(cls, run_id: str) -> RunState:
        if not RUN_ID_RE.match(run_id):
            raise UsageError(
                f"run id must be 6 hex digits (see `ipsec-ha-lab status`), not {run_id!r}"
            )
        path = run_dir(run_id) / STATE_FILE
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab run {run_id} (no {path})") from None
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read {path}: {exc}") from None
        data["keepalived"] = {
            gw: KeepalivedRecord(**rec) for gw, rec in data.get("keepalived", {}).items()
        }
        return cls(**data)


def make_run_dir(run_id: str) -> Path:
    base = run_base()
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = base / run_id
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        raise LabError(f"run directory {path} already exists (run id {run_id} in use)") from None
    return path


def recorded_run_ids() -> list[str]:
    base = run_base()
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and RUN_ID_RE.match(p.name))
