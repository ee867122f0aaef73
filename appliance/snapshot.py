"""Snapshot files: one node's XFRM state, dumped from the kernel and written safely.

A snapshot file holds ``Snapshot.to_bytes()`` (docs/model.md). It contains
SA keys, so it is created with mode 0600 (never world-readable, not even
for a moment) and written atomically: a temporary file in the same
directory, fsync, rename, fsync of the directory. A crash leaves either the
old file or the new one, never half of one.
"""

from __future__ import annotations

import datetime
import os
import secrets
import socket
from collections.abc import Callable
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.model import ModelError, SadEntry, Snapshot, SpdEntry

SNAPSHOT_FILE_MODE = 0o600


class SnapshotFileError(ApplianceError):
    """A snapshot file cannot be written, read or parsed."""


def build_snapshot(
    sad: tuple[SadEntry, ...],
    spd: tuple[SpdEntry, ...],
    node_id: str | None = None,
    taken_at: datetime.datetime | None = None,
) -> Snapshot:
    """A ``Snapshot`` of the given entries, stamped with the node and time (UTC)."""
    return Snapshot(
        node_id=node_id if node_id is not None else socket.gethostname(),
        taken_at=taken_at if taken_at is not None else datetime.datetime.now(datetime.UTC),
        sad=sad,
        spd=spd,
    )


def take_snapshot(
    netns: str | None = None,
    node_id: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Snapshot:
    """Dump the SAD and SPD of ``netns`` (None: the current namespace) into a Snapshot.

    The SPD is the served one: per-socket policies (an IKE daemon's bypass
    for its own sockets) are not in it (``XfrmSocket.dump_spd``).

    ``progress`` is called with the number of entries dumped so far, per table.
    """
    from appliance.xfrm.socket import XfrmSocket

    with XfrmSocket(netns) as xfrm:
        sad = tuple(xfrm.dump_sad())
        if progress is not None:
            progress(len(sad))
        spd = tuple(xfrm.dump_spd())
        if progress is not None:
            progress(len(spd))
    return build_snapshot(sad, spd, node_id)


def write_snapshot_file(path: str | os.PathLike[str], snapshot: Snapshot) -> int:
    """Write ``snapshot`` to ``path`` atomically with mode 0600; return the byte count."""
    target = Path(path)
    data = snapshot.to_bytes()
    directory = target.parent if str(target.parent) else Path(".")
    tmp = directory / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        # O_EXCL: never write through a file (or link) someone else prepared.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, SNAPSHOT_FILE_MODE)
    except OSError as exc:
        raise SnapshotFileError(f"cannot create a file in {directory}: {exc.strerror}") from None
    try:
        try:
            # The umask can only remove bits; make sure no one else gains any.
            os.fchmod(fd, SNAPSHOT_FILE_MODE)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SnapshotFileError(f"cannot write snapshot {target}: {exc.strerror}") from None
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return len(data)
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is done anyway
    finally:
        os.close(dir_fd)
    return len(data)


def read_snapshot_file(path: str | os.PathLike[str]) -> Snapshot:
    """Read and check a snapshot file; any problem is a ``SnapshotFileError``/``ModelError``."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SnapshotFileError(f"cannot read snapshot {path}: {exc.strerror}") from None
    try:
        return Snapshot.from_bytes(data)
    except ModelError as exc:
        raise type(exc)(f"{path}: {exc}") from None
