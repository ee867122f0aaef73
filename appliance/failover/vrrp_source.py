"""Where the daemon learns VRRP transitions: keepalived's notify FIFO, or the notify log.

Theory of operation
-------------------
keepalived runs a ``notify`` script per transition, in a process of its
own, concurrently with the others: two transitions close together (BACKUP
then MASTER at start, MASTER then BACKUP after a short split) can reach
the hooks, and so the notify log, in the wrong order. Acting on a late
BACKUP after MASTER would gate a live node's outbound traffic. keepalived
also writes every transition, **in order**, to its ``notify_fifo`` (one
line each: ``INSTANCE "VI_OUTSIDE" MASTER 150``, ``GROUP "VG" MASTER 0``).
So the daemon reads that FIFO when ``[failover].keepalived_fifo`` is set,
and the notify log (written by ``ipsec-ha notify``) only when it is not.

``FifoParser`` is the sans-IO part: bytes in, ``Transition`` values out,
unreadable lines counted and skipped (a FIFO is a local, root-only file, but
a bad line must not stop the daemon). ``fifo_transitions`` and
``log_transitions`` are the adapters.

The FIFO is opened read-write and non-blocking: a reader that also holds a
write end never sees end-of-file when keepalived restarts, and keepalived
never blocks on it while the daemon is down (lines wait in the pipe buffer
and are read, in order, when the daemon starts).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError, ConfigError
from appliance.notify import Transition, parse_transition

log = logging.getLogger("ipsec_ha.daemon")

MAX_LINE = 4096
"""A keepalived FIFO line is far shorter; a longer one is garbage and is dropped."""


@dataclass(frozen=True)
class Received:
    """A transition and when the daemon learned of it (CLOCK_MONOTONIC)."""

    transition: Transition
    monotonic: float


class FifoParser:
    """keepalived ``notify_fifo`` lines -> ``Transition`` (sans-IO)."""

    def __init__(self) -> None:
        self._pending = b""
        self.malformed = 0

    def feed(self, data: bytes) -> list[Transition]:
        """Take bytes read from the FIFO; return the complete transitions in them."""
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        if len(self._pending) > MAX_LINE:
            self._pending = b""
            self.malformed += 1
        out = []
        for line in lines:
            transition = self.parse_line(line)
            if transition is None:
                self.malformed += 1
            else:
                out.append(transition)
        return out

    @staticmethod
    def parse_line(line: bytes) -> Transition | None:
        """``TYPE "NAME" STATE PRIORITY`` -> Transition; None if it is not one."""
        try:
            text = line.decode("ascii").strip()
        except UnicodeDecodeError:
            return None
        parts = text.split()
        if len(parts) != 4 or len(parts[1]) < 3:
            return None
        type_, quoted, state, priority = parts
        if not (quoted.startswith('"') and quoted.endswith('"')):
            return None
        try:
            return parse_transition(type_, quoted[1:-1], state, priority)
        except ApplianceError:
            return None


def open_fifo(path: Path) -> int:
    """Create ``path`` (mode 0600) if missing and open it read-write, non-blocking."""
    try:
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.mkfifo(path, 0o600)
        if not stat.S_ISFIFO(path.stat().st_mode):
            raise ConfigError(f"keepalived_fifo {path} exists and is not a FIFO")
        return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot open keepalived_fifo {path}: {exc.strerror}") from None


async def fifo_transitions(path: Path) -> AsyncIterator[Received]:
    """Every transition keepalived writes to its notify FIFO, in order."""
    fd = open_fifo(path)
    parser = FifoParser()
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(fd, readable.set)
    try:
        while True:
            await readable.wait()
            readable.clear()
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            now = time.monotonic()
            before = parser.malformed
            for transition in parser.feed(data):
                yield Received(transition, now)
            if parser.malformed != before:
                log.warning("keepalived_fifo %s: unreadable line skipped", path)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def log_transitions(path: Path, poll_s: float = 0.05) -> AsyncIterator[Received]:
    """Every record appended to the notify log after the daemon started."""
    offset = path.stat().st_size if path.exists() else 0
    pending = b""
    while True:
        await asyncio.sleep(poll_s)
        try:
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            continue
        offset += len(data)
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            try:
                record = json.loads(line)
                transition = parse_transition(
                    record["type"], record["name"], record["state"], str(record["priority"])
                )
                at = float(record.get("monotonic", time.monotonic()))
            except (ValueError, KeyError, TypeError, ApplianceError):
                log.warning("notify log %s: unreadable line skipped", path)
                continue
            yield Received(transition, at)
