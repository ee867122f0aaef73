"""Fixtures for the guard's tests (helpers in nft_lab)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from nft_lab import ROLES, VIP4, VIP6, Lab, fresh_prefix, run


@pytest.fixture
def netns_name(require_root: None) -> Iterator[str]:
    """One empty namespace with loopback up."""
    name = fresh_prefix() + "solo"
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.fixture
def lab(require_root: None) -> Iterator[Lab]:
    prefix = fresh_prefix()
    names = {role: prefix + role for role in ("switch", *ROLES)}
    created: list[str] = []
    try:
        for name in names.values():
            run("ip", "netns", "add", name)
            created.append(name)
        switch = names["switch"]
        run("ip", "-n", switch, "link", "add", "sw0", "type", "bridge")
        run("ip", "-n", switch, "link", "set", "sw0", "up")
        for role, (addr4, addr6) in ROLES.items():
            host = names[role]
            port = f"p-{role}"
            run("ip", "-n", switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", host)  # fmt: skip
            run("ip", "-n", switch, "link", "set", port, "master", "sw0", "up")
            run("ip", "-n", host, "link", "set", "lo", "up")
            run("ip", "-n", host, "link", "set", "eth0", "up")
            run("ip", "-n", host, "addr", "add", f"{addr4}/24", "dev", "eth0")
            run("ip", "-n", host, "addr", "add", f"{addr6}/64", "dev", "eth0", "nodad")
        run("ip", "-n", names["gw"], "addr", "add", f"{VIP4}/32", "dev", "eth0")
        run("ip", "-n", names["gw"], "addr", "add", f"{VIP6}/128", "dev", "eth0", "nodad")
        yield Lab(gw=names["gw"], peer=names["peer"], stranger=names["stranger"], switch=switch)
    finally:
        for name in reversed(created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
