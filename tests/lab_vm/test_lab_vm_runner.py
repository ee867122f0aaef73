"""scripts/lab-vm boots the lab kernel and passes CMD's status and output through.

Each case boots a VM (about 20 s under TCG, 40 s on a loaded host), so the
cases are few and each checks several things. Exit status 0 needs no case of
its own: the lab tier passes only through it.
"""

import os
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
LAB_VM = REPO / "scripts" / "lab-vm"
RUNS = REPO / ".cache" / "lab-vm"
BOOT_LIMIT = 900  # seconds for one whole VM run, on a busy two-core host


def lab_vm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LAB_VM), "--timeout", "600", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        timeout=BOOT_LIMIT,
        check=False,
    )


def test_status_output_and_guest_environment_come_through(require_root: None) -> None:
    script = (
        'pwd; echo "$IPSEC_HA_TEST_MARK"; echo "$IPSEC_HA_IN_LAB_VM"; '
        "command -v ipsec-ha; touch /tmp/lab-vm-probe && echo tmp-writable; "
        "echo to-stderr >&2; exit 3"
    )
    done = lab_vm("--", "sh", "-c", script, env={"IPSEC_HA_TEST_MARK": "mark 'quoted' $x"})
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == [
        str(REPO),
        "mark 'quoted' $x",
        "1",
        str(REPO / ".venv" / "bin" / "ipsec-ha"),
        "tmp-writable",
    ]
    assert "to-stderr" in done.stderr


def test_death_by_signal_is_128_plus_signo(require_root: None) -> None:
    done = lab_vm("--", "sh", "-c", "kill -TERM $$")
    assert done.returncode == 128 + 15, done.stderr


def qemu_command_lines() -> list[str]:
    lines = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu-system" in argv[0]:
            lines.append(" ".join(a.decode(errors="replace") for a in argv))
    return lines


def run_folders() -> set[str]:
    return {p.name for p in RUNS.glob("run.*")} if RUNS.exists() else set()


def test_timeout_exits_124_and_leaves_no_vm(require_root: None) -> None:
    before = run_folders()
    proc = subprocess.Popen(
        [str(LAB_VM), "--timeout", "5", "--", "sleep", "600"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The run folder names the VM (qemu -name lab-vm-<id>); note it while it exists.
    started: set[str] = set()
    while proc.poll() is None and not started:
        started = run_folders() - before
        time.sleep(0.2)
    _out, err = proc.communicate(timeout=BOOT_LIMIT)
    assert proc.returncode == 124
    assert "timed out after 5s" in err
    # Ours is among the folders that appeared and are gone again (the cleanup
    # kills the VM before it removes the folder); none of them may have a qemu.
    gone = started - run_folders()
    assert gone, "lab-vm left its run folder behind"
    leftovers = [
        line for line in qemu_command_lines() for run in gone if f"lab-vm-{run[4:]}" in line
    ]
    assert leftovers == []


def test_a_vm_that_never_boots_exits_125_and_says_so(require_root: None) -> None:
    done = lab_vm("--", "true", env={"IPSEC_HA_LAB_VNG": "/bin/false", "IPSEC_HA_LAB_KVM": "0"})
    assert done.returncode == 125
    assert "the VM did not boot" in done.stderr
    assert done.stdout == ""
