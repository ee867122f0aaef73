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
import errno
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

NAMESPACE_PREFIX = "iha-"
"""Every lab namespace starts with this, so tests can see what was left behind."""

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


# --- netlink XFRM, just enough to probe ---------------------------------------------------
# Constants and layouts from include/uapi/linux/xfrm.h and linux/netlink.h (x86_64).
# appliance.xfrm is the full codec; the doctor keeps its own few bytes so that it
# can diagnose a machine even when the rest of the package cannot run there.

NETLINK_XFRM = 6
SOL_NETLINK = 270  # not exported by Python's socket module
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04
NLM_F_DUMP = 0x300
NLM_F_ACK_TLVS = 0x200
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLMSGERR_ATTR_MSG = 1
XFRM_MSG_NEWSA = 0x10
XFRM_MSG_DELSA = 0x11
XFRM_MSG_GETSA = 0x12
XFRM_MSG_GETPOLICY = 0x15
XFRMA_ALG_CRYPT = 2
XFRMA_ALG_AEAD = 18
XFRMA_ALG_AUTH_TRUNC = 20
XFRM_MODE_TUNNEL = 1
XFRM_INF = 0xFFFF_FFFF_FFFF_FFFF
SIZEOF_USERSA_INFO = 224
SIZEOF_USERPOLICY_INFO = 168

_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
# struct xfrm_selector: daddr, saddr, dport, dport_mask, sport, sport_mask (__be16),
# family, prefixlen_d, prefixlen_s, proto, 3 pad, ifindex, user.
_SELECTOR = struct.Struct("=16s16s4HHBBB3xiI")
# struct xfrm_usersa_info: sel, id {daddr, spi (be32), proto, 3 pad}, saddr,
# lft (8 x u64), curlft (4 x u64), stats (3 x u32), seq, reqid, family, mode,
# replay_window, flags, 7 pad.
_USERSA_INFO = struct.Struct("=56s16s4sB3x16s8Q4Q3IIIHBBB7x")
# struct xfrm_usersa_id: daddr, spi (be32), family, proto, 1 pad.
_USERSA_ID = struct.Struct("=16s4sHB1x")
# struct xfrm_algo_aead header: alg_name[64], alg_key_len (bits), alg_icv_len (bits).
_ALGO_AEAD = struct.Struct("=64sII")
# struct xfrm_algo header: alg_name[64], alg_key_len (bits).
_ALGO = struct.Struct("=64sI")
# struct xfrm_algo_auth header: alg_name[64], alg_key_len (bits), alg_trunc_len (bits).
_ALGO_AUTH = struct.Struct("=64sII")

PROBE_SRC = "192.0.2.1"
PROBE_DST = "192.0.2.2"
PROBE_SPI = 0x1D0C7012
PROBE_AEAD = "rfc4106(gcm(aes))"
PROBE_ICV_BITS = 128
# Without the AEAD the kernel stops before it looks for ESP itself; a second try with
# these older algorithms tells "no ESP" from "no GCM".
PROBE_CRYPT = "cbc(aes)"
PROBE_AUTH = "hmac(sha256)"


def _align4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _nlmsg(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), msg_type, flags, seq, 0) + payload


def _nlattr(attr_type: int, payload: bytes) -> bytes:
    return _align4(_NLATTR.pack(_NLATTR.size + len(payload), attr_type) + payload)


def _ipv4_xfrm_address(address: str) -> bytes:
    return socket.inet_aton(address).ljust(16, b"\0")


def esp_newsa_message(seq: int, aead: bool = True) -> bytes:
    """XFRM_MSG_NEWSA for a throwaway tunnel-mode ESP SA with random keys.

    ``aead``: AES-GCM (RFC 4106); otherwise AES-CBC with HMAC-SHA256.
    """
    src, dst = _ipv4_xfrm_address(PROBE_SRC), _ipv4_xfrm_address(PROBE_DST)
    selector = _SELECTOR.pack(bytes(16), bytes(16), 0, 0, 0, 0, socket.AF_INET, 0, 0, 0, 0, 0)
    lifetime = (XFRM_INF,) * 4 + (0,) * 4  # no byte/packet limits, no time limits
    info = _USERSA_INFO.pack(
        selector,
        dst,
        struct.pack("!I", PROBE_SPI),
        socket.IPPROTO_ESP,
        src,
        *lifetime,
        *(0,) * 4,  # curlft
        *(0,) * 3,  # stats
        0,  # seq
        0,  # reqid
        socket.AF_INET,
        XFRM_MODE_TUNNEL,
        0,  # replay_window
        0,  # flags
    )
    assert len(info) == SIZEOF_USERSA_INFO
    if aead:
        key = secrets.token_bytes(20)  # AES-128 key and the 4-byte salt of RFC 4106
        algo = _ALGO_AEAD.pack(PROBE_AEAD.encode(), len(key) * 8, PROBE_ICV_BITS) + key
        attrs = _nlattr(XFRMA_ALG_AEAD, algo)
    else:
        key, auth_key = secrets.token_bytes(16), secrets.token_bytes(32)
        crypt = _ALGO.pack(PROBE_CRYPT.encode(), len(key) * 8) + key
        auth = _ALGO_AUTH.pack(PROBE_AUTH.encode(), len(auth_key) * 8, 128) + auth_key
        attrs = _nlattr(XFRMA_ALG_CRYPT, crypt) + _nlattr(XFRMA_ALG_AUTH_TRUNC, auth)
    payload = info + attrs
    return _nlmsg(XFRM_MSG_NEWSA, NLM_F_REQUEST | NLM_F_ACK, seq, payload)


def esp_delsa_message(seq: int) -> bytes:
    """XFRM_MSG_DELSA for the SA that :func:`esp_newsa_message` installs."""
    payload = _USERSA_ID.pack(
        _ipv4_xfrm_address(PROBE_DST),
        struct.pack("!I", PROBE_SPI),
        socket.AF_INET,
        socket.IPPROTO_ESP,
    )
    return _nlmsg(XFRM_MSG_DELSA, NLM_F_REQUEST | NLM_F_ACK, seq, payload)


def dump_message(msg_type: int, seq: int) -> bytes:
    """A dump request (GETSA or GETPOLICY) with a zeroed filter structure."""
    size = SIZEOF_USERSA_INFO if msg_type == XFRM_MSG_GETSA else SIZEOF_USERPOLICY_INFO
    return _nlmsg(msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, bytes(size))


@dataclass(frozen=True)
class NetlinkReply:
    """One message of a netlink answer, as far as the doctor cares."""

    msg_type: int
    error: int
    """For NLMSG_ERROR: the positive errno (0 is an ACK)."""
    text: str
    """The kernel's extended-ack message, if it sent one."""


def parse_replies(data: bytes) -> list[NetlinkReply]:
    """Split a netlink datagram into its messages (the doctor needs type, errno, text)."""
    replies = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type, flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        error, text = 0, ""
        if msg_type == NLMSG_ERROR and length >= _NLMSGHDR.size + 4:
            (code,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
            error = -code
            text = _ext_ack_text(data, offset, length, flags)
        replies.append(NetlinkReply(msg_type, error, text))
        offset += (length + 3) & ~3
    return replies


def _ext_ack_text(data: bytes, offset: int, length: int, flags: int) -> str:
    if not flags & NLM_F_ACK_TLVS:
        return ""
    # With NETLINK_CAP_ACK the echoed request is only its header.
    pos = offset + _NLMSGHDR.size + 4 + _NLMSGHDR.size
    end = offset + length
    while pos + _NLATTR.size <= end:
        attr_len, attr_type = _NLATTR.unpack_from(data, pos)
        if attr_len < _NLATTR.size:
            break
        if attr_type & 0x3FFF == NLMSGERR_ATTR_MSG:
            raw = data[pos + _NLATTR.size : pos + attr_len]
            return raw.split(b"\0", 1)[0].decode(errors="replace")
        pos += (attr_len + 3) & ~3
    return ""


class XfrmSocket:
    """A NETLINK_XFRM socket of the calling thread's network namespace."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
        self.sock.settimeout(5.0)
        self.seq = 0
        for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            # Older kernels lack these; the probe then reports errno without text.
            with contextlib.suppress(OSError):
                self.sock.setsockopt(SOL_NETLINK, option, 1)
        self.sock.bind((0, 0))

    def close(self) -> None:
        self.sock.close()

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def request(self, message: bytes) -> NetlinkReply:
        """Send a request with NLM_F_ACK and return its ACK or error."""
        self.sock.send(message)
        while True:
            for reply in parse_replies(self.sock.recv(65536)):
                if reply.msg_type == NLMSG_ERROR:
                    return reply

    def dump_count(self, msg_type: int) -> int:
        """Run a dump and return how many entries it listed."""
        self.sock.send(dump_message(msg_type, self.next_seq()))
        count = 0
        while True:
            for reply in parse_replies(self.sock.recv(65536)):
                if reply.msg_type == NLMSG_DONE:
                    return count
                if reply.msg_type == NLMSG_ERROR:
                    raise OSError(reply.error, _describe(reply))
                count += 1


def _describe(reply: NetlinkReply) -> str:
    reason = os.strerror(reply.error) if reply.error else "no error"
    return f"{reason} ({reply.text})" if reply.text else reason


# --- the temporary namespace ------------------------------------------------------------


def create_temporary_netns() -> str:
    """Create an empty namespace ``iha-<random>-doctor`` and return its name."""
    from pyroute2 import netns as pyroute2_netns

    name = f"{NAMESPACE_PREFIX}{secrets.token_hex(4)}-doctor"
    pyroute2_netns.create(name)
    return name


def remove_netns(name: str) -> None:
    from pyroute2 import netns as pyroute2_netns

    pyroute2_netns.remove(name)


@contextlib.contextmanager
def temporary_netns() -> Iterator[str]:
    """Create ``iha-<random>-doctor``, yield its name, and always remove it."""
    name = create_temporary_netns()
    try:
        yield name
    finally:
        remove_netns(name)


def _in_netns(name: str, work: Callable[[], Check], failed: Callable[[str], Check]) -> Check:
    """``work()`` inside namespace ``name``; any error becomes ``failed(reason)``.

    The doctor diagnoses broken machines, so no probe may crash it.
    """
    # Reused from the nftables adapter: setns(2) in a worker thread only.
    from appliance.nft.netns import run_in_netns

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
        xfrm = XfrmSocket()
        try:
            states = xfrm.dump_count(XFRM_MSG_GETSA)
            policies = xfrm.dump_count(XFRM_MSG_GETPOLICY)
        finally:
            xfrm.close()
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
        xfrm = XfrmSocket()
        try:
            added = xfrm.request(esp_newsa_message(xfrm.next_seq()))
            if added.error == errno.ENOSYS:
                fallback = xfrm.request(esp_newsa_message(xfrm.next_seq(), aead=False))
                if not fallback.error:
                    xfrm.request(esp_delsa_message(xfrm.next_seq()))
                return _esp_missing(added, fallback)
            if added.error:
                return _esp_missing(added, None)
            removed = xfrm.request(esp_delsa_message(xfrm.next_seq()))
        finally:
            xfrm.close()
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


def _esp_missing(added: NetlinkReply, fallback: NetlinkReply | None) -> Check:
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
    else:
        try:
            checks.append(Check("netns", True, True, "network namespaces work (made one)"))
            checks.append(probe_xfrm(netns))
            checks.append(probe_esp(netns))
            checks.append(probe_nftables(netns))
        finally:
            try:
                remove_netns(netns)
            except Exception as exc:
                detail = f"cannot remove the temporary namespace {netns}: {_reason(exc)}"
                checks.append(Check("netns_cleanup", False, True, detail, namespace_fix))
    checks.append(check_keepalived())
    checks.append(check_lab_vm())
    return Report(tuple(checks))
