"""What this kernel and machine support, checked for real.

Each check is a :class:`Check`: a name, whether it passed, whether the
appliance needs it (``required``), what was found and, on failure, one
sentence on how to fix it.  The kernel features are probed by using them,
not by reading config files: the XFRM dump, the ESP SA and the nftables table
are made inside a temporary network namespace (``iha-<random>-doctor``) that
is always removed, so the host's own SAD, SPD and ruleset are never touched.

ESP is required: a gateway whose kernel cannot install an ESP SA carries no
tunnel at all.  Development hosts without it (see docs/lab-vm.md) run the lab
inside ``scripts/lab-vm``; ``scripts/test`` asks :func:`probe_esp` to choose.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import os
import re
import secrets
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import appliance.netns
from appliance.errors import ApplianceError
from appliance.netns import create_unique_netns, remove_netns, run_in_netns

if TYPE_CHECKING:
    from appliance.model import SadEntry

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The source tree (editable install), where scripts/lab-kernel caches the lab kernel."""

ESP_FIX = (
    "run the lab inside scripts/lab-vm, or use a kernel with CONFIG_INET_ESP "
    "(and CONFIG_INET6_ESP) built in or as modules esp4/esp6"
)


@dataclass(frozen=True)
class Check:
    """The outcome of one check."""

    name: str
    """Short identifier: ``root``, ``netns``, ``xfrm``, ``esp``, ...."""
    ok: bool
    """Whether the feature works here."""
    required: bool
    """Whether a gateway needs it (a failed required check fails the doctor)."""
    detail: str
    """What was found, in one line."""
    fix: str = ""
    """One sentence on how to fix it; empty when ``ok``."""


@dataclass(frozen=True)
class Report:
    """All checks, in the order they ran."""

    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        """True when every required check passed."""
        return all(check.ok for check in self.checks if check.required)

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` document: ``{"ok": bool, "checks": [...]}``."""
        return {"ok": self.ok, "checks": [asdict(check) for check in self.checks]}

    def get(self, name: str) -> Check:
        """The check called ``name``."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)


def render(report: Report) -> str:
    """The report for people: one line per check, the fix under each failure."""
    lines = []
    width = max(len(check.name) for check in report.checks)
    for check in report.checks:
        status = "ok" if check.ok else ("FAIL" if check.required else "warn")
        lines.append(f"{status:4}  {check.name:{width}}  {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"{'':4}  {'':{width}}  fix: {check.fix}")
    if report.ok:
        lines.append("doctor: everything ipsec-ha needs is here")
    else:
        failed = ", ".join(c.name for c in report.checks if c.required and not c.ok)
        lines.append(f"doctor: missing what ipsec-ha needs: {failed}")
    return "\n".join(lines)


# --- the ESP probe SA ---------------------------------------------------------------------

PROBE_SRC = "192.0.2.1"
PROBE_DST = "192.0.2.2"
PROBE_SPI = 0x1D0C7012
PROBE_AEAD = "rfc4106(gcm(aes))"
PROBE_ICV_BITS = 128
# Without the AEAD the kernel stops before it looks for ESP itself; a second try with
# these older algorithms tells "no ESP" from "no GCM".
PROBE_CRYPT = "cbc(aes)"
PROBE_AUTH = "hmac(sha256)"


def esp_probe_sa(aead: bool = True) -> SadEntry:
    """A throwaway tunnel-mode ESP SA with random keys, no lifetime limits.

    ``aead``: AES-GCM (RFC 4106); otherwise AES-CBC with HMAC-SHA256.
    """
    from appliance.model import (
        AeadAlgorithm,
        Algorithm,
        AuthTruncAlgorithm,
        KeyMaterial,
        Mode,
        SadEntry,
    )

    probe = SadEntry(
        daddr=ipaddress.IPv4Address(PROBE_DST),
        spi=PROBE_SPI,
        proto=socket.IPPROTO_ESP,
        saddr=ipaddress.IPv4Address(PROBE_SRC),
        family=socket.AF_INET,
        mode=Mode.TUNNEL,
    )
    if aead:
        key = secrets.token_bytes(20)  # AES-128 key and the 4-byte salt of RFC 4106
        return dataclasses.replace(
            probe, aead=AeadAlgorithm(PROBE_AEAD, len(key) * 8, PROBE_ICV_BITS, KeyMaterial(key))
        )
    key, auth_key = secrets.token_bytes(16), secrets.token_bytes(32)
    return dataclasses.replace(
        probe,
        crypt=Algorithm(PROBE_CRYPT, len(key) * 8, KeyMaterial(key)),
        auth_trunc=AuthTruncAlgorithm(PROBE_AUTH, len(auth_key) * 8, 128, KeyMaterial(auth_key)),
    )


@dataclass(frozen=True)
class KernelAnswer:
    """The kernel's answer to one probe request."""

    error: int
    """The positive errno; 0 when the kernel accepted the request."""
    text: str = ""
    """The kernel's extended-ack message, if it sent one."""


def _ask(request: Callable[[], None]) -> KernelAnswer:
    """Run one XFRM request; a refusal becomes its errno and extended-ack text."""
    from appliance.xfrm import XfrmError

    try:
        request()
    except XfrmError as exc:
        return KernelAnswer(exc.errno, exc.extack or "")
    return KernelAnswer(0)


def _describe(answer: KernelAnswer) -> str:
    reason = os.strerror(answer.error) if answer.error else "no error"
    return f"{reason} ({answer.text})" if answer.text else reason


# --- the temporary namespace ------------------------------------------------------------


def create_temporary_netns() -> str:
    """Create an empty namespace ``iha-<random>-doctor`` and return its name."""
    return create_unique_netns("doctor")


def temporary_netns() -> contextlib.AbstractContextManager[str]:
    """Create ``iha-<random>-doctor``, yield its name, and always remove it."""
    return appliance.netns.temporary_netns("doctor")


def _in_netns(name: str, work: Callable[[], Check], failed: Callable[[str], Check]) -> Check:
    """``work()`` inside namespace ``name``; any error becomes ``failed(reason)``.

    The doctor diagnoses broken machines, so no probe may crash it.
    """
    try:
        return run_in_netns(name, work)
    except Exception as exc:
        return failed(_reason(exc))


# --- the probes ---------------------------------------------------------------------------


def check_root() -> Check:
    if os.geteuid() == 0:
        return Check("root", True, True, "running as root")
    return Check(
        "root",
        False,
        True,
        f"running as uid {os.geteuid()}; XFRM, netns and nftables need root",
        "run ipsec-ha as root (or with CAP_NET_ADMIN and CAP_SYS_ADMIN)",
    )


def probe_xfrm(netns: str) -> Check:
    """Open NETLINK_XFRM in ``netns`` and dump its SAD and SPD."""

    def work() -> Check:
        from appliance.xfrm import XfrmSocket

        with XfrmSocket() as xfrm:
            states = len(xfrm.dump_sad())
            policies = len(xfrm.dump_spd())
        return Check(
            "xfrm",
            True,
            True,
            f"XFRM netlink works (dumped {states} SAs and {policies} policies in a fresh netns)",
        )

    def failed(reason: str) -> Check:
        return Check(
            "xfrm",
            False,
            True,
            f"XFRM netlink unusable: {reason}",
            "use a kernel with CONFIG_XFRM_USER (module xfrm_user): modprobe xfrm_user",
        )

    return _in_netns(netns, work, failed)


def probe_esp(netns: str | None = None) -> Check:
    """Install and remove a throwaway ESP SA; ``ok`` tells whether the kernel has ESP.

    Without ``netns`` a temporary namespace is made and removed for the probe.
    """
    if netns is None:
        try:
            with temporary_netns() as name:
                return probe_esp(name)
        except Exception as exc:  # the namespace itself failed: no ESP verdict possible
            return Check(
                "esp",
                False,
                True,
                f"cannot probe ESP: no temporary network namespace ({_reason(exc)})",
                "run as root on a kernel with network namespaces (CONFIG_NET_NS)",
            )

    def work() -> Check:
        from appliance.xfrm import XfrmSocket

        with XfrmSocket() as xfrm:

            def remove_probe_sa() -> None:
                xfrm.delete_sa(ipaddress.IPv4Address(PROBE_DST), PROBE_SPI, socket.IPPROTO_ESP)

            added = _ask(lambda: xfrm.add_sa(esp_probe_sa()))
            if added.error == errno.ENOSYS:
                fallback = _ask(lambda: xfrm.add_sa(esp_probe_sa(aead=False)))
                if not fallback.error:
                    _ask(remove_probe_sa)
                return _esp_missing(added, fallback)
            if added.error:
                return _esp_missing(added, None)
            removed = _ask(remove_probe_sa)
        if removed.error:
            # The SA exists but would not go: still ESP, and the namespace dies anyway.
            return Check(
                "esp", True, True, f"ESP SA installed; removing it failed: {_describe(removed)}"
            )
        return Check(
            "esp", True, True, f"ESP works (installed and removed a {PROBE_AEAD} tunnel SA)"
        )

    def failed(reason: str) -> Check:
        return Check(
            "esp",
            False,
            True,
            f"cannot probe ESP: {reason}",
            "make XFRM netlink work first (see the xfrm check)",
        )

    return _in_netns(netns, work, failed)


def _esp_missing(added: KernelAnswer, fallback: KernelAnswer | None) -> Check:
    """The failed ESP check, from the GCM attempt and, if it lacked GCM, the CBC one."""
    if fallback is not None and not fallback.error:
        detail = (
            f"ESP works with {PROBE_CRYPT}, but the AEAD {PROBE_AEAD} is missing: "
            f"{_describe(added)}"
        )
        fix = "use a kernel with CONFIG_CRYPTO_GCM (module gcm) and CONFIG_CRYPTO_SEQIV"
        return Check("esp", False, True, detail, fix)
    final = fallback if fallback is not None else added
    if final.error in (errno.EPROTONOSUPPORT, errno.ENOPROTOOPT, errno.ESRCH, errno.ENOENT):
        detail = f"this kernel has no ESP: adding an ESP SA failed: {_describe(final)}"
    elif fallback is not None:
        detail = (
            f"no ESP algorithm available: {PROBE_AEAD}: {_describe(added)}; "
            f"{PROBE_CRYPT}: {_describe(fallback)}"
        )
    else:
        detail = f"adding a test ESP SA failed: {_describe(final)}"
    return Check("esp", False, True, detail, ESP_FIX)


def probe_nftables(netns: str) -> Check:
    """Load libnftables and create, list and delete a table in ``netns``."""
    fix = "install libnftables1 (Debian) and pip-nftables, on a kernel with CONFIG_NF_TABLES"

    def work() -> Check:
        import nftables

        nft = nftables.Nftables()
        table = "iha_doctor"
        steps = [f"add table inet {table}", "list tables", f"delete table inet {table}"]
        listed = ""
        for command in steps:
            rc, output, error = nft.cmd(command)
            if rc != 0:
                reason = " ".join(error.split()) or "no reason given"
                return Check("nftables", False, True, f"`{command}` failed: {reason}", fix)
            if command == "list tables":
                listed = output
        if f"table inet {table}" not in listed:
            return Check("nftables", False, True, "a created table was not listed", fix)
        return Check("nftables", True, True, "libnftables works (created, listed, deleted a table)")

    def failed(reason: str) -> Check:
        return Check("nftables", False, True, f"libnftables unusable: {reason}", fix)

    return _in_netns(netns, work, failed)


def probe_nft_gate(netns: str) -> Check:
    """Load the one-rule gate's rule (``ipsec out spi``) in ``netns`` without hooking it.

    Optional: only ``[failover] gate = "nft"`` needs it (``nft_xfrm``).
    """
    fix = 'a kernel with CONFIG_NFT_XFRM (module nft_xfrm), or keep [failover] gate = "policy"'

    def work() -> Check:
        from appliance.nft.gate import NftGate

        try:
            NftGate(None).probe()
        except ApplianceError as exc:
            return Check("nft_gate", False, False, str(exc), fix)
        return Check(
            "nft_gate", True, False, '`ipsec out spi` loads: [failover] gate = "nft" works'
        )

    def failed(reason: str) -> Check:
        return Check("nft_gate", False, False, f"not probed: {reason}", fix)

    return _in_netns(netns, work, failed)


def check_keepalived() -> Check:
    fix = "install keepalived (Debian: apt-get install keepalived)"
    binary = shutil.which("keepalived") or shutil.which("keepalived", path="/usr/sbin:/sbin")
    if binary is None:
        return Check("keepalived", False, True, "keepalived is not installed", fix)
    try:
        done = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("keepalived", False, True, f"{binary} --version failed: {exc}", fix)
    version = parse_keepalived_version(done.stdout + done.stderr)
    if version is None:
        return Check("keepalived", False, True, f"{binary} --version printed no version", fix)
    return Check("keepalived", True, True, f"keepalived {version} ({binary})")


def parse_keepalived_version(text: str) -> str | None:
    """``Keepalived v2.2.7 (01/16,2022)`` -> ``2.2.7``."""
    match = re.search(r"Keepalived v(\d+(?:\.\d+)+)", text)
    return match.group(1) if match else None


def check_lab_vm(root: Path = REPO_ROOT, modules: Path = Path("/lib/modules")) -> Check:
    """Whether scripts/lab-vm can boot: lab kernel, its modules, virtme-ng, qemu (no boot)."""
    cache = root / ".cache" / "lab-kernel"
    fix = "run scripts/setup (or scripts/lab-kernel), then scripts/lab-vm -- true"
    current = cache / "current"
    if not (current / "vmlinuz").is_file():
        return Check("lab_vm", False, False, f"no lab kernel at {current}/vmlinuz", fix)
    version = current.resolve().name
    if not (modules / version / "modules.dep").is_file():
        return Check(
            "lab_vm", False, False, f"lab kernel {version} has no {modules / version}", fix
        )
    vng = root / ".venv" / "bin" / "vng"
    if not vng.is_file() and shutil.which("vng") is None:
        return Check("lab_vm", False, False, "virtme-ng (vng) is not installed", fix)
    if shutil.which("qemu-system-x86_64") is None:
        return Check("lab_vm", False, False, "qemu-system-x86_64 is not installed", fix)
    notes = [f"lab kernel {version} and virtme-ng ready"]
    if os.environ.get("IPSEC_HA_IN_LAB_VM") == "1":
        notes.append("running inside the lab VM now")
    vm_ok = cache / "vm-ok"
    if vm_ok.exists():
        notes.append("booted before (.cache/lab-kernel/vm-ok)")
    else:
        notes.append("never booted yet (scripts/setup checks)")
    verdict = cache / "kvm-verdict"
    with contextlib.suppress(OSError, IndexError):
        kvm = verdict.read_text().split()[0]
        notes.append("KVM" if kvm == "1" else "TCG (no usable KVM)")
    return Check("lab_vm", True, False, "; ".join(notes))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror if exc.errno is None else f"{exc.strerror} (errno {exc.errno})"
    return str(exc) or type(exc).__name__


def run_checks() -> Report:
    """Run every check and return the report (never raises for a missing feature)."""
    checks = [check_root()]
    namespace_fix = "run as root on a kernel with network namespaces (CONFIG_NET_NS)"
    try:
        netns = create_temporary_netns()
    except Exception as exc:
        detail = f"cannot make a network namespace: {_reason(exc)}"
        checks.append(Check("netns", False, True, detail, namespace_fix))
        skipped = "not probed: no temporary network namespace"
        checks.extend(
            Check(n, False, True, skipped, namespace_fix) for n in ("xfrm", "esp", "nftables")
        )
        checks.append(Check("nft_gate", False, False, skipped, namespace_fix))
    else:
        try:
            checks.append(Check("netns", True, True, "network namespaces work (made one)"))
            checks.append(probe_xfrm(netns))
            checks.append(probe_esp(netns))
            checks.append(probe_nftables(netns))
            checks.append(probe_nft_gate(netns))
        finally:
            try:
                remove_netns(netns)
            except Exception as exc:
                detail = f"cannot remove the temporary namespace {netns}: {_reason(exc)}"
                checks.append(Check("netns_cleanup", False, True, detail, namespace_fix))
    checks.append(check_keepalived())
    checks.append(check_lab_vm())
    return Report(tuple(checks))
