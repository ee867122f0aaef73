"""The sa/policy/snapshot/restore commands, with the kernel replaced by fakes."""

from __future__ import annotations

import datetime
import ipaddress
import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance import model as m
from appliance.cli import app
from appliance.cli import policy as policy_cli
from appliance.cli import sa as sa_cli
from appliance.cli import snapshot as snapshot_cli
from appliance.errors import UsageError
from appliance.restore import Failure, RestoreReport
from appliance.snapshot import write_snapshot_file

pytestmark = pytest.mark.unit

SECRET = bytes.fromhex("a1b2c3d4e5f60718293a4b5c6d7e8f90")
SA = m.SadEntry(
    daddr=ipaddress.ip_address("192.0.2.2"),
    saddr=ipaddress.ip_address("192.0.2.1"),
    spi=0x1001,
    mode=m.Mode.TUNNEL,
    reqid=1,
    crypt=m.Algorithm("cbc(aes)", 128, m.KeyMaterial(SECRET)),
    auth_trunc=m.AuthTruncAlgorithm("hmac(sha256)", 256, 128, m.KeyMaterial(SECRET * 2)),
    replay=m.ReplayState(oseq=7),
)
POLICY = m.SpdEntry(
    selector=m.Selector(
        daddr=ipaddress.ip_address("203.0.113.0"),
        saddr=ipaddress.ip_address("198.51.100.0"),
        prefixlen_d=24,
        prefixlen_s=24,
    ),
    dir=m.Direction.OUT,
    priority=100,
    templates=(m.Template(daddr=SA.daddr, saddr=SA.saddr, reqid=1, mode=1),),
)
runner = CliRunner()


@pytest.fixture
def fake_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sa_cli, "dump_sas", lambda netns: [SA])
    monkeypatch.setattr(policy_cli, "dump_policies", lambda netns: [POLICY])


def test_sa_list_hides_keys_by_default(fake_kernel: None) -> None:
    for args in (["sa", "list"], ["sa", "list", "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert SECRET.hex() not in result.output
    human = runner.invoke(app, ["sa", "list"]).output
    assert "spi 0x00001001" in human and "cbc(aes) <16 bytes hidden>" in human
    data = json.loads(runner.invoke(app, ["sa", "list", "--json"]).output)
    assert data[0]["crypt"]["key"] is None and data[0]["spi"] == 0x1001


def test_sa_list_show_keys_shows_them(fake_kernel: None) -> None:
    result = runner.invoke(app, ["sa", "list", "--json", "--show-keys"])
    assert json.loads(result.output)[0]["crypt"]["key"] == SECRET.hex()
    assert "0x" + SECRET.hex() in runner.invoke(app, ["sa", "list", "--show-keys"]).output


def test_policy_list(fake_kernel: None) -> None:
    human = runner.invoke(app, ["policy", "list"]).output
    assert "dir out" in human and "tmpl src 192.0.2.1 dst 192.0.2.2" in human
    data = json.loads(runner.invoke(app, ["policy", "list", "--json"]).output)
    assert m.SpdEntry.from_dict(data[0]) == POLICY


def test_snapshot_command_writes_a_0600_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = m.Snapshot("gw", datetime.datetime.now(datetime.UTC), (SA,), (POLICY,))
    monkeypatch.setattr(snapshot_cli, "take_snapshot", lambda netns, node, progress: taken)
    out = tmp_path / "s.json"
    result = runner.invoke(app, ["snapshot", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["sa_count"] == 1
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert m.Snapshot.from_bytes(out.read_bytes()) == taken


def test_restore_command_reports_and_fails_on_keep_going_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "s.json"
    write_snapshot_file(file, m.Snapshot("gw", datetime.datetime.now(datetime.UTC), (SA,)))
    seen: dict[str, object] = {}

    def fake_restore(snapshot: m.Snapshot, netns: str | None, **kw: object) -> RestoreReport:
        seen.update(kw, netns=netns, sad=snapshot.sad)
        return RestoreReport(sa_added=0, failures=[Failure(SA.label(), "nope")])

    monkeypatch.setattr(snapshot_cli, "restore_netns", fake_restore)
    result = runner.invoke(
        app, ["restore", str(file), "--netns", "x", "--oseq-jump", "5", "--keep-going", "--json"]
    )
    assert result.exit_code == 1
    assert json.loads(result.output)["failures"] == [{"entry": SA.label(), "reason": "nope"}]
    assert seen["netns"] == "x" and seen["oseq_jump"] == 5 and seen["keep_going"] is True
    assert seen["sad"] == (SA,)


def test_restore_of_a_bad_file_is_one_clear_line(tmp_path: Path) -> None:
    file = tmp_path / "bad.json"
    file.write_text('{"format": "ipsec-ha/xfrm-snapshot", "version": 3}')
    result = runner.invoke(app, ["restore", str(file)])
    assert result.exit_code != 0
    assert isinstance(result.exception, m.UnsupportedVersionError)
    assert "version 3 is newer" in str(result.exception)


@pytest.mark.parametrize("jump", ["2147483648", "4294967295", "-1"])
def test_restore_refuses_an_oseq_jump_the_daemon_refuses_before_reading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jump: str
) -> None:
    def must_not_run(*args: object, **kw: object) -> RestoreReport:
        raise AssertionError("restore_netns was called")

    monkeypatch.setattr(snapshot_cli, "restore_netns", must_not_run)
    missing = tmp_path / "absent.json"  # a refused jump is reported before the file is read
    result = runner.invoke(app, ["restore", str(missing), "--oseq-jump", jump])
    assert isinstance(result.exception, UsageError)
    assert result.exception.exit_code == 2
    assert str(result.exception).startswith("--oseq-jump must be an integer 0..2147483647")
    assert "2^31" in str(result.exception) and jump in str(result.exception)


def test_restore_accepts_the_largest_oseq_jump(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "s.json"
    write_snapshot_file(file, m.Snapshot("gw", datetime.datetime.now(datetime.UTC), (SA,)))
    seen: dict[str, object] = {}

    def fake_restore(snapshot: m.Snapshot, netns: str | None, **kw: object) -> RestoreReport:
        seen.update(kw)
        return RestoreReport(sa_added=1, oseq_jumped=1)

    monkeypatch.setattr(snapshot_cli, "restore_netns", fake_restore)
    result = runner.invoke(app, ["restore", str(file), "--oseq-jump", "2147483647", "--json"])
    assert result.exit_code == 0, result.output
    assert seen["oseq_jump"] == 2**31 - 1
