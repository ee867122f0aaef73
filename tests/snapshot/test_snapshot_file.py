"""Snapshot files: atomic, 0600 from creation, strict on reading."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from pathlib import Path

import pytest

from appliance import model as m
from appliance.snapshot import SnapshotFileError, read_snapshot_file, write_snapshot_file

pytestmark = pytest.mark.unit

SECRET = bytes(range(32))


def _snapshot() -> m.Snapshot:
    sa = m.SadEntry(
        daddr=ipaddress.ip_address("192.0.2.2"),
        saddr=ipaddress.ip_address("192.0.2.1"),
        spi=0x1234,
        crypt=m.Algorithm("cbc(aes)", 256, m.KeyMaterial(SECRET)),
    )
    return m.Snapshot("gw-a", datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC), (sa,))


def test_snapshot_file_is_0600_and_round_trips(tmp_path: Path) -> None:
    old = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        target = tmp_path / "state.snap"
        write_snapshot_file(target, _snapshot())
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert read_snapshot_file(target) == _snapshot()
    assert [p.name for p in tmp_path.iterdir()] == ["state.snap"]


def test_snapshot_file_is_created_with_0600_from_the_first_moment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modes: list[int] = []
    real_open = os.open

    def spy(path: str, flags: int, mode: int = 0o777, **kw: object) -> int:
        if flags & os.O_CREAT:
            modes.append(mode)
        return real_open(path, flags, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    write_snapshot_file(tmp_path / "s", _snapshot())
    assert modes == [0o600]


def test_overwrite_replaces_atomically_and_keeps_0600(tmp_path: Path) -> None:
    target = tmp_path / "s"
    target.write_bytes(b"old")
    target.chmod(0o644)
    inode_before = target.stat().st_ino
    write_snapshot_file(target, _snapshot())
    assert target.stat().st_ino != inode_before  # renamed over, not rewritten in place
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "s"
    target.write_bytes(b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(SnapshotFileError, match="Input/output error"):
        write_snapshot_file(target, _snapshot())
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SnapshotFileError, match="cannot create a file in"):
        write_snapshot_file(tmp_path / "nope" / "s", _snapshot())


def test_reading_a_missing_or_bad_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(SnapshotFileError, match="cannot read snapshot"):
        read_snapshot_file(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.write_bytes(b'{"format": "ipsec-ha/xfrm-snapshot", "version": 9}')
    with pytest.raises(m.UnsupportedVersionError, match=f"{bad}: .*version 9 is newer"):
        read_snapshot_file(bad)
