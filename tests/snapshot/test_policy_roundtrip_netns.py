"""Policy-only snapshot/restore on the host kernel (XFRM policies need no ESP)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

MakeNetns = Callable[[str], str]

POLICIES = [
    "src 198.51.100.0/24 dst 203.0.113.0/24 dir out priority 100"
    " tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 1 mode tunnel"
    " tmpl src 192.0.2.1 dst 192.0.2.3 proto esp reqid 4 mode tunnel",
    "src 203.0.113.0/24 dst 198.51.100.0/24 dir in priority 100"
    " tmpl src 192.0.2.2 dst 192.0.2.1 proto esp reqid 1 mode tunnel level use",
    "src 203.0.113.0/24 dst 198.51.100.0/24 dir fwd priority 100"
    " tmpl src 192.0.2.2 dst 192.0.2.1 proto esp reqid 1 mode tunnel",
    "src 198.51.100.128/25 dst 203.0.113.128/25 dir out priority 50 action block",
    "src 2001:db8:1::/48 dst 2001:db8:2::/48 dir out mark 0x5 mask 0xf if_id 0x9"
    " tmpl src 2001:db8::1 dst 2001:db8::2 proto esp reqid 2 mode transport",
    "src 0.0.0.0/0 dst 192.0.2.9/32 proto udp dport 53 dir out priority 5"
    " tmpl proto esp reqid 1 mode transport level use",
]


def run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
    return result.stdout


def ipsec_ha(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], capture_output=True, text=True, check=False
    )


@pytest.fixture
def netns(require_root: None) -> Iterator[MakeNetns]:
    prefix = f"iha-{secrets.token_hex(3)}-"
    made: list[str] = []

    def make(name: str) -> str:
        run("ip", "netns", "add", prefix + name)
        made.append(prefix + name)
        return prefix + name

    yield make
    for ns in made:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def blocks(ns: str) -> list[str]:
    """Policies of `ip -s -d xfrm policy`, add/use times blanked, sorted."""
    out: list[list[str]] = []
    for line in run("ip", "-n", ns, "-s", "-d", "xfrm", "policy").splitlines():
        if not line.startswith((" ", "\t")):
            out.append([])
        out[-1].append("\t  <times>" if line.strip().startswith("add 20") else line)
    return sorted("\n".join(b) for b in out)


def populated(make: MakeNetns, tmp_path: Path) -> tuple[str, Path]:
    source = make("src")
    for policy in POLICIES:
        run("ip", "-n", source, "xfrm", "policy", "add", *policy.split())
    file = tmp_path / "p.snap"
    result = ipsec_ha("snapshot", "--netns", source, "-o", str(file))
    assert result.returncode == 0, result.stderr
    return source, file


def test_policies_round_trip_into_an_empty_namespace(netns: MakeNetns, tmp_path: Path) -> None:
    source, file = populated(netns, tmp_path)
    target = netns("dst")
    result = ipsec_ha("restore", str(file), "--netns", target, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["policy_added"] == len(POLICIES)
    assert blocks(target) == blocks(source)
    assert len(blocks(target)) == len(POLICIES)


def test_a_rejected_policy_leaves_the_namespace_exactly_as_it_was(
    netns: MakeNetns, tmp_path: Path
) -> None:
    _, file = populated(netns, tmp_path)
    document = json.loads(file.read_bytes())
    document["spd"][-1]["dir"] = 5  # the kernel accepts only 0..2 (EINVAL)
    file.write_text(json.dumps(document))
    target = netns("dst")
    run("ip", "-n", target, "xfrm", "policy", "add", *POLICIES[3].replace("/25", "/26").split())
    before = run("ip", "-n", target, "-s", "-d", "xfrm", "policy")
    time.sleep(1.1)  # a re-created policy would show a new add time
    result = ipsec_ha("restore", str(file), "--netns", target)
    assert result.returncode != 0
    assert "policy 5 src" in result.stderr and "undone" in result.stderr
    assert "Traceback" not in result.stderr
    assert run("ip", "-n", target, "-s", "-d", "xfrm", "policy") == before


def test_replace_updates_existing_policies_and_keep_going_reports(
    netns: MakeNetns, tmp_path: Path
) -> None:
    source, file = populated(netns, tmp_path)
    result = ipsec_ha("restore", str(file), "--netns", source, "--keep-going", "--json")
    assert result.returncode == 1
    assert len(json.loads(result.stdout)["failures"]) == len(POLICIES)
    result = ipsec_ha("restore", str(file), "--netns", source, "--replace", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["policy_replaced"] == len(POLICIES)
