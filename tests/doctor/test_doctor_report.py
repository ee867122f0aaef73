"""The doctor's logic without root: messages, replies, verdicts, rendering, exit status."""

import errno
import json
import socket
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance import doctor
from appliance.cli import app
from appliance.doctor import Check, KernelAnswer, Report
from appliance.xfrm import XfrmError, encode_sa
from appliance.xfrm import constants as xc

pytestmark = pytest.mark.unit

SIZEOF_USERSA_INFO = 224
"""``struct xfrm_usersa_info`` on x86_64."""

OK_REPORT = Report(
    (
        Check("root", True, True, "running as root"),
        Check("esp", True, True, "ESP works"),
        Check("lab_vm", False, False, "no lab kernel", "run scripts/setup"),
    )
)
NO_ESP_REPORT = Report(
    (
        Check("root", True, True, "running as root"),
        Check("esp", False, True, "this kernel has no ESP", doctor.ESP_FIX),
    )
)


def test_report_is_ok_when_only_optional_checks_fail() -> None:
    assert OK_REPORT.ok is True


def test_report_fails_when_a_required_check_fails() -> None:
    assert NO_ESP_REPORT.ok is False


def test_render_shows_each_failure_with_its_fix_and_names_what_is_missing() -> None:
    text = doctor.render(NO_ESP_REPORT)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["ok", "root"]
    assert lines[1].split()[:2] == ["FAIL", "esp"]
    assert lines[2].strip() == f"fix: {doctor.ESP_FIX}"
    assert lines[-1] == "doctor: missing what ipsec-ha needs: esp"


def test_render_marks_optional_failures_as_warnings() -> None:
    text = doctor.render(OK_REPORT)
    assert "warn  lab_vm" in text
    assert "fix: run scripts/setup" in text
    assert text.splitlines()[-1] == "doctor: everything ipsec-ha needs is here"


def test_cli_json_and_exit_status_follow_the_report(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.setattr("appliance.cli.doctor.run_checks", lambda: NO_ESP_REPORT)
    failed = runner.invoke(app, ["doctor", "--json"])
    assert failed.exit_code == 1
    document = json.loads(failed.stdout)
    assert document["ok"] is False
    assert document["checks"][1] == {
        "name": "esp",
        "ok": False,
        "required": True,
        "detail": "this kernel has no ESP",
        "fix": doctor.ESP_FIX,
    }

    monkeypatch.setattr("appliance.cli.doctor.run_checks", lambda: OK_REPORT)
    passed = runner.invoke(app, ["doctor"])
    assert passed.exit_code == 0
    assert "everything ipsec-ha needs is here" in passed.stdout


def _probe_newsa(seq: int, aead: bool = True) -> bytes:
    """The NEWSA request ``XfrmSocket.add_sa`` sends for the doctor's probe SA."""
    return encode_sa(
        doctor.esp_probe_sa(aead), xc.XFRM_MSG_NEWSA, xc.NLM_F_REQUEST | xc.NLM_F_ACK, seq, 0
    )


def test_newsa_message_matches_the_kernel_layout() -> None:
    message = _probe_newsa(seq=7)
    length, msg_type, flags, seq, _pid = struct.unpack_from("=IHHII", message)
    assert (length, msg_type, seq) == (len(message), xc.XFRM_MSG_NEWSA, 7)
    assert flags == xc.NLM_F_REQUEST | xc.NLM_F_ACK
    info = message[16 : 16 + SIZEOF_USERSA_INFO]
    # struct xfrm_usersa_info: id.daddr at 56, id.spi at 72, id.proto at 76, saddr at 80,
    # family at 212, mode at 214.
    assert info[56:60] == socket.inet_aton(doctor.PROBE_DST)
    assert struct.unpack_from("!I", info, 72)[0] == doctor.PROBE_SPI
    assert info[76] == socket.IPPROTO_ESP
    assert info[80:84] == socket.inet_aton(doctor.PROBE_SRC)
    assert struct.unpack_from("=HB", info, 212) == (socket.AF_INET, xc.XFRM_MODE_TUNNEL)
    attr_len, attr_type = struct.unpack_from("=HH", message, 16 + SIZEOF_USERSA_INFO)
    assert attr_type == xc.XFRMA_ALG_AEAD
    assert attr_len == 4 + 64 + 8 + 20
    name = message[16 + SIZEOF_USERSA_INFO + 4 :][:64].rstrip(b"\0")
    assert name == doctor.PROBE_AEAD.encode()


def test_newsa_message_keys_are_random() -> None:
    assert _probe_newsa(1)[-20:] != _probe_newsa(1)[-20:]


def test_fallback_newsa_message_carries_cipher_and_integrity() -> None:
    message = _probe_newsa(seq=1, aead=False)
    offset = 16 + SIZEOF_USERSA_INFO
    kinds = []
    while offset < len(message):
        attr_len, attr_type = struct.unpack_from("=HH", message, offset)
        kinds.append(attr_type)
        offset += (attr_len + 3) & ~3
    # The kernel reads attributes by type, so their order does not matter.
    assert sorted(kinds) == sorted([xc.XFRMA_ALG_CRYPT, xc.XFRMA_ALG_AUTH_TRUNC])
    assert offset == len(message)


def test_a_refused_request_keeps_errno_and_extended_ack_text() -> None:
    def refuse() -> None:
        raise XfrmError("ESP SA refused", errno.EPROTONOSUPPORT, "Requested type not found")

    answer = doctor._ask(refuse)
    assert answer == KernelAnswer(errno.EPROTONOSUPPORT, "Requested type not found")
    assert doctor._describe(answer) == "Protocol not supported (Requested type not found)"
    assert doctor._ask(lambda: None) == KernelAnswer(0, "")


def test_missing_esp_type_is_reported_with_the_lab_vm_fix() -> None:
    no_gcm = KernelAnswer(errno.ENOSYS, "Requested AEAD algorithm not found")
    no_esp = KernelAnswer(errno.EPROTONOSUPPORT, "Requested type not found")
    check = doctor._esp_missing(no_gcm, no_esp)
    assert check.ok is False and check.required is True
    assert "this kernel has no ESP" in check.detail
    assert "Requested type not found" in check.detail
    assert check.fix.startswith("run the lab inside scripts/lab-vm, or use a kernel with")


def test_esp_without_gcm_says_so() -> None:
    no_gcm = KernelAnswer(errno.ENOSYS, "Requested AEAD algorithm not found")
    cbc_ok = KernelAnswer(0, "")
    check = doctor._esp_missing(no_gcm, cbc_ok)
    assert check.ok is False
    assert "AEAD rfc4106(gcm(aes)) is missing" in check.detail
    assert "CONFIG_CRYPTO_GCM" in check.fix


@pytest.mark.parametrize(
    ("output", "version"),
    [
        ("Keepalived v2.2.7 (01/16,2022)\n\nCopyright(C) 2001-2022", "2.2.7"),
        ("Keepalived v2.3.1 (05/24,2024), git commit v2.3.1-12", "2.3.1"),
        ("keepalived: command not understood", None),
    ],
)
def test_parse_keepalived_version(output: str, version: str | None) -> None:
    assert doctor.parse_keepalived_version(output) == version


def test_lab_vm_check_reports_a_missing_kernel(tmp_path: Path) -> None:
    check = doctor.check_lab_vm(root=tmp_path, modules=tmp_path / "modules")
    assert check.ok is False and check.required is False
    assert "no lab kernel" in check.detail
    assert "scripts/setup" in check.fix


def test_lab_vm_check_reports_missing_modules_then_readiness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doctor.shutil, "which", lambda name, path=None: f"/usr/bin/{name}")
    kernel_dir = tmp_path / ".cache" / "lab-kernel" / "6.1.0-99-amd64"
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / ".cache" / "lab-kernel" / "current").symlink_to("6.1.0-99-amd64")
    modules = tmp_path / "modules"
    missing = doctor.check_lab_vm(root=tmp_path, modules=modules)
    assert missing.ok is False
    assert "6.1.0-99-amd64 has no" in missing.detail

    (modules / "6.1.0-99-amd64").mkdir(parents=True)
    (modules / "6.1.0-99-amd64" / "modules.dep").write_text("")
    vng = tmp_path / ".venv" / "bin" / "vng"
    vng.parent.mkdir(parents=True)
    vng.write_text("#!/bin/sh\n")
    (tmp_path / ".cache" / "lab-kernel" / "vm-ok").touch()
    (tmp_path / ".cache" / "lab-kernel" / "kvm-verdict").write_text("0 6.18.0\n")
    ready = doctor.check_lab_vm(root=tmp_path, modules=modules)
    assert ready.ok is True
    assert "6.1.0-99-amd64" in ready.detail
    assert ".cache/lab-kernel/vm-ok" in ready.detail
    assert "TCG" in ready.detail


def test_lab_vm_check_reports_missing_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel_dir = tmp_path / ".cache" / "lab-kernel" / "6.1.0-99-amd64"
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / ".cache" / "lab-kernel" / "current").symlink_to("6.1.0-99-amd64")
    (tmp_path / "modules" / "6.1.0-99-amd64").mkdir(parents=True)
    (tmp_path / "modules" / "6.1.0-99-amd64" / "modules.dep").write_text("")
    monkeypatch.setattr(
        doctor.shutil, "which", lambda name, path=None: None if "qemu" in name else name
    )
    check = doctor.check_lab_vm(root=tmp_path, modules=tmp_path / "modules")
    assert check.ok is False
    assert "qemu-system-x86_64 is not installed" in check.detail


def test_without_a_namespace_the_kernel_probes_fail_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse() -> str:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(doctor, "create_temporary_netns", refuse)
    monkeypatch.setattr(doctor, "check_keepalived", lambda: Check("keepalived", True, True, "v"))
    monkeypatch.setattr(doctor, "check_lab_vm", lambda: Check("lab_vm", True, False, "ready"))
    report = doctor.run_checks()
    checks = {check.name: check for check in report.checks}
    assert report.ok is False
    assert checks["netns"].ok is False
    assert "Operation not permitted" in checks["netns"].detail
    for name in ("xfrm", "esp", "nftables"):
        assert checks[name].ok is False
        assert checks[name].detail == "not probed: no temporary network namespace"
        assert checks[name].fix


def test_a_namespace_that_cannot_be_removed_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def stuck(name: str) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(doctor, "create_temporary_netns", lambda: "iha-test-doctor")
    monkeypatch.setattr(doctor, "remove_netns", stuck)
    for probe in ("probe_xfrm", "probe_esp", "probe_nftables"):
        name = probe.removeprefix("probe_")
        monkeypatch.setattr(doctor, probe, lambda netns, n=name: Check(n, True, True, "fine"))
    monkeypatch.setattr(doctor, "check_keepalived", lambda: Check("keepalived", True, True, "v"))
    monkeypatch.setattr(doctor, "check_lab_vm", lambda: Check("lab_vm", True, False, "ready"))
    report = doctor.run_checks()
    cleanup = report.get("netns_cleanup")
    assert cleanup.ok is False and cleanup.required is True
    assert "iha-test-doctor" in cleanup.detail
    assert report.ok is False
