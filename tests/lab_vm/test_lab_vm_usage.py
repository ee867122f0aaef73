"""scripts/lab-vm's argument handling: refused before any VM boots."""

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

LAB_VM = Path(__file__).resolve().parents[2] / "scripts" / "lab-vm"


def lab_vm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LAB_VM), *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_help_explains_options_exit_codes_and_kvm_override() -> None:
    done = lab_vm("--help")
    assert done.returncode == 0
    for text in ("--timeout", "--memory", "124", "125", "IPSEC_HA_LAB_KVM", "kvm-verdict"):
        assert text in done.stdout


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ((), "no command given"),
        (("--",), "no command given"),
        (("--timeout", "soon", "--", "true"), "--timeout must be a positive number"),
        (("--timeout", "0", "--", "true"), "--timeout must be a positive number"),
        (("--memory", "lots", "--", "true"), "--memory must look like"),
        (("--env", "1BAD", "--", "true"), "--env needs NAME"),
        (("--frobnicate", "--", "true"), "unknown option '--frobnicate'"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args: tuple[str, ...], complaint: str) -> None:
    done = lab_vm(*args)
    assert done.returncode == 2
    assert complaint in done.stderr
    assert done.stdout == ""
