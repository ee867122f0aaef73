"""Snapshot/restore round trip against iproute2, with real ESP (lab VM).

iproute2 is the independent reference: SAs and policies are created with
``ip xfrm``, snapshotted and restored with ``ipsec-ha``, and ``ip -s -d xfrm
state/policy`` of both namespaces must match except current counters and
timestamps.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from appliance.cli import app
from appliance.restore import RestoreError, RestoreReport, restore_netns
from appliance.snapshot import read_snapshot_file, take_snapshot, write_snapshot_file

pytestmark = pytest.mark.lab

MakeNetns = Callable[[str], str]

K16 = "0x00112233445566778899aabbccddeeff"
K20 = "0x00112233445566778899aabbccddeeff01020304"
K32 = "0x00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
K36 = K32 + "01020304"
K20B = "0x0102030405060708090a0b0c0d0e0f1011121314"

# Every line is one `ip xfrm ...` command; together they cover the list.
STATE_COMMANDS = [
    # AES-GCM-128, tunnel, IPv4, ESN window 128, outbound oseq hi:lo = 2:1000
    f"state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x1001 reqid 1 mode tunnel"
    f" aead rfc4106(gcm(aes)) {K20} 128 flag esn replay-window 128"
    f" replay-oseq 1000 replay-oseq-hi 2 sel src 198.51.100.0/24 dst 203.0.113.0/24",
    # its inbound partner: ESN window 2048
    f"state add src 192.0.2.2 dst 192.0.2.1 proto esp spi 0x2001 reqid 1 mode tunnel"
    f" aead rfc4106(gcm(aes)) {K20} 128 flag esn replay-window 2048 replay-seq 400"
    f" sel src 203.0.113.0/24 dst 198.51.100.0/24",
    # AES-GCM-256, transport, IPv6, legacy replay window 32 and oseq 5000
    f"state add src 2001:db8::1 dst 2001:db8::2 proto esp spi 0x1002 reqid 2 mode transport"
    f" aead rfc4106(gcm(aes)) {K36} 128 replay-window 32 replay-oseq 5000",
    # ChaCha20-Poly1305, IPv6 outer with an IPv4 selector (inter-family tunnel)
    f"state add src 2001:db8::1 dst 2001:db8::3 proto esp spi 0x1003 reqid 3 mode tunnel"
    f" aead rfc7539esp(chacha20,poly1305) {K36} 128"
    f" sel src 192.0.2.64/26 dst 198.51.100.64/26",
    # cbc(aes) + hmac(sha256)/128, ESP-in-UDP, marks, output mark, if_id, lifetimes, flags
    f"state add src 192.0.2.1 dst 192.0.2.3 proto esp spi 0x1004 reqid 4 mode tunnel"
    f" enc cbc(aes) {K16} auth-trunc hmac(sha256) {K32} 128"
    f" encap espinudp 4500 4500 0.0.0.0 mark 0x10 mask 0xff output-mark 0x20 mask 0xff"
    f" if_id 0x7 limit time-soft 3000 limit time-hard 3600 limit time-use-soft 1000"
    f" limit time-use-hard 2000 limit byte-soft 1000000 limit byte-hard 2000000"
    f" limit packet-soft 1000 limit packet-hard 2000"
    f" flag noecn decap-dscp wildrecv align4 nopmtudisc icmp af-unspec"
    f" extra-flag dont-encap-dscp oseq-may-wrap replay-window 64 replay-oseq 77",
    # cbc(aes)-256 + hmac(sha1)/96, ESN window 2048 near the 32-bit boundary, TFC padding
    f"state add src 192.0.2.1 dst 192.0.2.4 proto esp spi 0x1005 reqid 5 mode tunnel"
    f" enc cbc(aes) {K32} auth-trunc hmac(sha1) {K20B} 96 flag esn replay-window 2048"
    f" replay-oseq 0xfffffff0 tfcpad 100",
    # IPv6 tunnel with IPv6 selector, cbc(aes) + hmac(sha256)
    f"state add src 2001:db8::2 dst 2001:db8::1 proto esp spi 0x2002 reqid 2 mode tunnel"
    f" enc cbc(aes) {K16} auth-trunc hmac(sha256) {K32} 128 replay-window 128"
    f" sel src 2001:db8:2::/48 dst 2001:db8:1::/48",
]
POLICY_COMMANDS = [
    "policy add src 198.51.100.0/24 dst 203.0.113.0/24 dir out priority 100"
    " tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 1 mode tunnel"
    " tmpl src 192.0.2.1 dst 192.0.2.3 proto esp reqid 4 mode tunnel",
    "policy add src 203.0.113.0/24 dst 198.51.100.0/24 dir in priority 100"
    " tmpl src 192.0.2.2 dst 192.0.2.1 proto esp reqid 1 mode tunnel"
    " tmpl src 192.0.2.4 dst 192.0.2.1 proto esp reqid 9 mode tunnel level use",
    "policy add src 203.0.113.0/24 dst 198.51.100.0/24 dir fwd priority 100"
    " tmpl src 192.0.2.2 dst 192.0.2.1 proto esp reqid 1 mode tunnel",
    "policy add src 198.51.100.128/25 dst 203.0.113.128/25 dir out priority 50 action block",
    "policy add src 203.0.113.128/25 dst 198.51.100.128/25 dir in priority 51 action block",
    "policy add src 203.0.113.128/25 dst 198.51.100.128/25 dir fwd priority 52 action block",
    "policy add src 2001:db8:1::/48 dst 2001:db8:2::/48 dir out priority 10"
    " mark 0x5 mask 0xf if_id 0x9"
    " tmpl src 2001:db8::1 dst 2001:db8::2 proto esp reqid 2 mode transport",
    "policy add src 192.0.2.64/26 dst 198.51.100.64/26 dir out"
    " tmpl src 2001:db8::1 dst 2001:db8::3 proto esp reqid 3 mode tunnel",
    "policy add src 198.51.100.0/24 dst 192.0.2.4/32 dir out priority 7"
    " tmpl src 192.0.2.1 dst 192.0.2.4 proto esp reqid 5 mode tunnel",
    "policy add src 0.0.0.0/0 dst 192.0.2.9/32 proto udp dport 53 dir out priority 5"
    " tmpl proto esp reqid 1 mode transport level use",
]
# SPIs of the SAs this node sends with (found through the out policies' templates).
OUTBOUND = {0x1001, 0x1002, 0x1003, 0x1004, 0x1005}


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result


def ipsec_ha(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], capture_output=True, text=True, check=False
    )


@pytest.fixture
def netns() -> Iterator[MakeNetns]:
    """Make unique namespaces on demand; remove them all afterwards."""
    prefix = f"iha-{secrets.token_hex(3)}-"
    made: list[str] = []

    def make(name: str) -> str:
        full = prefix + name
        run("ip", "netns", "add", full)
        run("ip", "-n", full, "link", "set", "lo", "up")
        made.append(full)
        return full

    yield make
    for ns in made:
        run("ip", "netns", "del", ns, check=False)


def populate(ns: str) -> None:
    for command in STATE_COMMANDS + POLICY_COMMANDS:
        run("ip", "-n", ns, "xfrm", *command.split())


def xfrm_text(ns: str, what: str) -> str:
    return run("ip", "-n", ns, "-s", "-d", "xfrm", what).stdout


_CURRENT = re.compile(r"^\s+\d+\(bytes\), \d+\(packets\)$")
_TIMES = re.compile(
    r"^\s+add \d{4}-\d\d-\d\d \d\d:\d\d:\d\d use (-|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)$"
)


def normalised_blocks(text: str) -> list[str]:
    """Entries of `ip -s -d xfrm ...` output, counters and timestamps blanked, sorted."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if not line.startswith((" ", "\t")):
            blocks.append([])
        if _CURRENT.match(line):
            line = "\t  <counters>"
        elif _TIMES.match(line):
            line = "\t  <timestamps>"
        blocks[-1].append(line)
    return sorted("\n".join(b) for b in blocks)


def snapshot_cli(ns: str, path: Path) -> dict[str, object]:
    result = ipsec_ha("snapshot", "--netns", ns, "-o", str(path), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def snapshot(ns: str, path: Path) -> None:
    """The library path of `ipsec-ha snapshot` (in-process: Python starts slowly in the VM)."""
    write_snapshot_file(path, take_snapshot(ns, "lab"))


def restore(path: Path, ns: str, **options: Any) -> RestoreReport:
    """The library path of `ipsec-ha restore`."""
    return restore_netns(read_snapshot_file(path), ns, **options)


def test_restore_into_an_empty_namespace_matches_iproute2(netns: MakeNetns, tmp_path: Path) -> None:
    source, target = netns("src"), netns("dst")
    populate(source)
    file = tmp_path / "state.snap"
    summary = snapshot_cli(source, file)
    assert summary["sa_count"] == len(STATE_COMMANDS)
    assert summary["policy_count"] == len(POLICY_COMMANDS)
    assert file.stat().st_mode & 0o777 == 0o600

    result = ipsec_ha("restore", str(file), "--netns", target, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["sa_added"] == len(STATE_COMMANDS)
    assert report["policy_added"] == len(POLICY_COMMANDS)

    for what in ("state", "policy"):
        before, after = xfrm_text(source, what), xfrm_text(target, what)
        assert normalised_blocks(after) == normalised_blocks(before), what
    # The comparison is not vacuous: the entries really are there.
    assert "rfc7539esp(chacha20,poly1305)" in xfrm_text(target, "state")
    assert "oseq-hi 0x2, oseq 0x3e8" in xfrm_text(target, "state")


_OSEQ_ESN = re.compile(r"oseq-hi 0x([0-9a-f]+), oseq 0x([0-9a-f]+)")
_OSEQ = re.compile(r"anti-replay context: seq 0x[0-9a-f]+, oseq 0x([0-9a-f]+)")
_SPI = re.compile(r"spi 0x([0-9a-f]{8})")


def oseqs(ns: str) -> dict[int, int]:
    """SPI -> outbound sequence number (64-bit for ESN) from `ip xfrm state`."""
    found = {}
    for block in normalised_blocks(xfrm_text(ns, "state")):
        spi = int(_SPI.search(block).group(1), 16)  # type: ignore[union-attr]
        if m := _OSEQ_ESN.search(block):
            found[spi] = int(m.group(1), 16) << 32 | int(m.group(2), 16)
        elif m := _OSEQ.search(block):
            found[spi] = int(m.group(1), 16)
    return found


def test_oseq_jump_advances_outbound_sas_only(netns: MakeNetns, tmp_path: Path) -> None:
    source, target = netns("src"), netns("dst")
    populate(source)
    file = tmp_path / "state.snap"
    snapshot(source, file)
    jump = 0x100  # carries the ESN SA at 0xfffffff0 into oseq_hi
    assert restore(file, target, oseq_jump=jump).oseq_jumped == len(OUTBOUND)
    before, after = oseqs(source), oseqs(target)
    assert set(before) == set(after) and set(before) >= OUTBOUND
    for spi, old in before.items():
        assert after[spi] == old + (jump if spi in OUTBOUND else 0), hex(spi)
    assert after[0x1005] == 0x1_0000_00F0
    assert after[0x1001] == (2 << 32) + 1000 + jump


def _with_outbound_sequence(file: Path, spi: int, oseq: int) -> None:
    document = json.loads(file.read_bytes())
    for sa in document["sad"]:
        if sa["spi"] == spi:
            sa["replay_esn" if sa["replay_esn"] is not None else "replay"]["oseq"] = oseq
    file.write_text(json.dumps(document))


def test_refused_jumps_change_nothing(netns: MakeNetns, tmp_path: Path) -> None:
    source, target = netns("src"), netns("dst")
    populate(source)
    file = tmp_path / "state.snap"
    snapshot(source, file)
    # Past the daemon's limit (seqjump.MAX_JUMP), though every SA here could take it.
    with pytest.raises(RestoreError, match=r"--oseq-jump .*2\^31"):
        restore(file, target, oseq_jump=2**31)
    # A non-ESN SA that would wrap.
    _with_outbound_sequence(file, 0x1002, 0xFFFF_FF00)
    with pytest.raises(RestoreError, match=r"SA spi 0x00001002 .*32-bit \(no ESN\) limit"):
        restore(file, target, oseq_jump=0x100)
    assert xfrm_text(target, "state") == "" and xfrm_text(target, "policy") == ""


def _with_bad_algorithm(file: Path, spi: int) -> None:
    document = json.loads(file.read_bytes())
    for sa in document["sad"]:
        if sa["spi"] == spi:
            sa["aead"]["name"] = "foo"
    file.write_text(json.dumps(document))


def test_rejected_entry_leaves_the_namespace_exactly_as_it_was(
    netns: MakeNetns, tmp_path: Path
) -> None:
    source, target = netns("src"), netns("dst")
    populate(source)
    file = tmp_path / "state.snap"
    snapshot(source, file)
    _with_bad_algorithm(file, 0x1003)
    # The target already holds something of its own, which must survive untouched.
    run("ip", "-n", target, "xfrm", *STATE_COMMANDS[2].replace("0x1002", "0x7777").split())
    run("ip", "-n", target, "xfrm", *POLICY_COMMANDS[3].split())
    before = (xfrm_text(target, "state"), xfrm_text(target, "policy"))
    time.sleep(1.1)  # a re-created entry would show a new add time

    result = ipsec_ha("restore", str(file), "--netns", target)
    assert result.returncode != 0
    assert "SA spi 0x00001003 dst 2001:db8::3" in result.stderr
    assert "kernel does not support algorithm 'foo'" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert (xfrm_text(target, "state"), xfrm_text(target, "policy")) == before


def test_duplicate_is_rejected_and_replace_overwrites(netns: MakeNetns, tmp_path: Path) -> None:
    source = netns("src")
    populate(source)
    file = tmp_path / "state.snap"
    snapshot(source, file)
    before = (xfrm_text(source, "state"), xfrm_text(source, "policy"))
    time.sleep(1.1)
    with pytest.raises(RestoreError, match="already exists"):
        restore(file, source)
    assert (xfrm_text(source, "state"), xfrm_text(source, "policy")) == before

    report = restore(file, source, replace=True)
    assert report.sa_replaced == len(STATE_COMMANDS)
    assert report.policy_replaced == len(POLICY_COMMANDS)
    for what, old in zip(("state", "policy"), before, strict=True):
        assert normalised_blocks(xfrm_text(source, what)) == normalised_blocks(old)


def test_keep_going_installs_the_rest_and_reports_the_failure(
    netns: MakeNetns, tmp_path: Path
) -> None:
    source, target = netns("src"), netns("dst")
    populate(source)
    file = tmp_path / "state.snap"
    snapshot(source, file)
    _with_bad_algorithm(file, 0x1003)
    report = restore(file, target, keep_going=True)
    assert [f.entry for f in report.failures] == ["SA spi 0x00001003 dst 2001:db8::3 proto 50"]
    assert report.sa_added == len(STATE_COMMANDS) - 1
    assert "spi 0x00001001" in xfrm_text(target, "state")


def test_sa_list_hides_keys_unless_asked(netns: MakeNetns) -> None:
    ns = netns("src")
    populate(ns)
    runner = CliRunner()  # in-process: Python starts slowly in the VM
    hidden = runner.invoke(app, ["sa", "list", "--netns", ns])
    assert hidden.exit_code == 0, hidden.output
    assert "spi 0x00001004" in hidden.stdout and K32[2:] not in hidden.stdout
    assert K32[2:] not in runner.invoke(app, ["sa", "list", "--netns", ns, "--json"]).stdout
    shown = runner.invoke(app, ["sa", "list", "--netns", ns, "--json", "--show-keys"])
    assert K32[2:] in shown.stdout
    assert len(json.loads(shown.stdout)) == len(STATE_COMMANDS)
    policies = runner.invoke(app, ["policy", "list", "--netns", ns, "--json"])
    assert policies.exit_code == 0, policies.output
    dirs = {" dir in ": 0, " dir out ": 1, " dir fwd ": 2}
    expected = sorted(n for c in POLICY_COMMANDS for d, n in dirs.items() if d in c + " ")
    assert sorted(p["dir"] for p in json.loads(policies.stdout)) == expected


# --- a tunnel that carries traffic ------------------------------------------------

TUNNEL_KEY_OUT = "0x" + "11" * 20
TUNNEL_KEY_IN = "0x" + "22" * 20


def _tunnel_end(
    ns: str,
    me: str,
    peer: str,
    my_net: str,
    peer_net: str,
    out_spi: str,
    in_spi: str,
    out_key: str,
    in_key: str,
) -> None:
    x = ["ip", "-n", ns, "xfrm"]
    run(
        *x,
        "state",
        "add",
        "src",
        me,
        "dst",
        peer,
        "proto",
        "esp",
        "spi",
        out_spi,
        "reqid",
        "1",
        "mode",
        "tunnel",
        "aead",
        "rfc4106(gcm(aes))",
        out_key,
        "128",
        "flag",
        "esn",
        "replay-window",
        "128",
    )
    run(
        *x,
        "state",
        "add",
        "src",
        peer,
        "dst",
        me,
        "proto",
        "esp",
        "spi",
        in_spi,
        "reqid",
        "1",
        "mode",
        "tunnel",
        "aead",
        "rfc4106(gcm(aes))",
        in_key,
        "128",
        "flag",
        "esn",
        "replay-window",
        "128",
    )
    for direction, src, dst, tsrc, tdst in (
        ("out", my_net, peer_net, me, peer),
        ("in", peer_net, my_net, peer, me),
        ("fwd", peer_net, my_net, peer, me),
    ):
        run(
            *x,
            "policy",
            "add",
            "src",
            src,
            "dst",
            dst,
            "dir",
            direction,
            "tmpl",
            "src",
            tsrc,
            "dst",
            tdst,
            "proto",
            "esp",
            "reqid",
            "1",
            "mode",
            "tunnel",
        )


def _esp_packets(ns: str, spi: str) -> int:
    for block in xfrm_text(ns, "state").split("\nsrc "):
        if f"spi {spi}" in block:
            match = re.search(r"(\d+)\(bytes\), (\d+)\(packets\)", block)
            assert match is not None
            return int(match.group(2))
    raise AssertionError(f"no SA with spi {spi}")


def _ping(ns: str, source: str, target: str, count: int = 3) -> subprocess.CompletedProcess[str]:
    return run(
        "ip",
        "netns",
        "exec",
        ns,
        "ping",
        "-c",
        str(count),
        "-i",
        "0.2",
        "-W",
        "2",
        "-I",
        source,
        target,
        check=False,
    )


def test_restored_tunnel_carries_traffic(netns: MakeNetns, tmp_path: Path) -> None:
    left, right = netns("l"), netns("r")
    veth_l, veth_r = f"v{secrets.token_hex(3)}l", f"v{secrets.token_hex(3)}r"
    run(
        "ip",
        "link",
        "add",
        veth_l,
        "netns",
        left,
        "type",
        "veth",
        "peer",
        "name",
        veth_r,
        "netns",
        right,
    )
    for ns, dev, addr, inner, route in (
        (left, veth_l, "192.0.2.1/24", "198.51.100.1/32", "203.0.113.0/24"),
        (right, veth_r, "192.0.2.2/24", "203.0.113.1/32", "198.51.100.0/24"),
    ):
        run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
        run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "-n", ns, "addr", "add", inner, "dev", "lo")
        gateway = "192.0.2.2" if ns == left else "192.0.2.1"
        run("ip", "-n", ns, "route", "add", route, "via", gateway)
    _tunnel_end(
        left,
        "192.0.2.1",
        "192.0.2.2",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "0x3001",
        "0x3002",
        TUNNEL_KEY_OUT,
        TUNNEL_KEY_IN,
    )
    _tunnel_end(
        right,
        "192.0.2.2",
        "192.0.2.1",
        "203.0.113.0/24",
        "198.51.100.0/24",
        "0x3002",
        "0x3001",
        TUNNEL_KEY_IN,
        TUNNEL_KEY_OUT,
    )
    first = _ping(left, "198.51.100.1", "203.0.113.1", count=5)
    assert first.returncode == 0, first.stdout + first.stderr
    received_before = _esp_packets(right, "0x00003001")
    assert received_before >= 5

    file = tmp_path / "left.snap"
    snapshot_cli(left, file)
    run("ip", "-n", left, "xfrm", "state", "flush")
    run("ip", "-n", left, "xfrm", "policy", "flush")
    assert xfrm_text(left, "state") == ""
    result = ipsec_ha("restore", str(file), "--netns", left, "--oseq-jump", "1000", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["oseq_jumped"] == 1

    again = _ping(left, "198.51.100.1", "203.0.113.1", count=3)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _esp_packets(right, "0x00003001") >= received_before + 3
    assert _esp_packets(left, "0x00003002") >= 3  # replies decrypted by the restored SA
