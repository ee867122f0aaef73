"""``xfrm_stat``: the kernel's text parsed (a recorded file), a missing file, a namespace's own."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from appliance.metrics import xfrm_stat
from appliance.metrics.xfrm_stat import parse_xfrm_stat, read_xfrm_stat
from appliance.netns import NetnsWorker

RECORDED = Path(__file__).parents[1] / "data" / "xfrm_stat.txt"
"""``cat /proc/net/xfrm_stat`` of a namespace (kernel 6.18) after one ping hit a block policy."""


@pytest.mark.unit
def test_the_recorded_file_parses_to_every_counter() -> None:
    counters = parse_xfrm_stat(RECORDED.read_text())
    assert len(counters) == len(RECORDED.read_text().splitlines()) == 32
    assert counters["XfrmOutPolBlock"] == 1
    assert counters["XfrmInStateSeqError"] == 0
    assert sum(counters.values()) == 1


@pytest.mark.unit
@pytest.mark.parametrize(
    "text", ["XfrmInError 0\nXfrmInNoStates\n", "XfrmInError 0\nXfrmInNoStates -1\n",
             "XfrmInError 0\nXfrmInNoStates 1 2\n"],
)  # fmt: skip
def test_a_malformed_line_is_named(text: str) -> None:
    with pytest.raises(ValueError, match="xfrm_stat line 2 is not 'Name value'"):
        parse_xfrm_stat(text)


@pytest.mark.unit
def test_a_kernel_without_statistics_gives_no_counters_and_one_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(xfrm_stat, "XFRM_STAT_PATH", str(tmp_path / "absent"))
    monkeypatch.setattr(xfrm_stat, "_absent_logged", set())
    with (
        caplog.at_level(logging.WARNING, logger="ipsec_ha.metrics"),
        NetnsWorker(None, "ipsec-ha-test") as worker,
    ):
        assert read_xfrm_stat(worker) == {}
        assert read_xfrm_stat(worker) == {}
    assert len(caplog.records) == 1 and "CONFIG_XFRM_STATISTICS" in caplog.text


@pytest.mark.unit
def test_this_namespace_is_read() -> None:
    if not os.path.exists("/proc/net/xfrm_stat"):
        pytest.skip("this kernel keeps no xfrm statistics")
    with NetnsWorker(None, "ipsec-ha-test") as worker:
        assert "XfrmInStateSeqError" in read_xfrm_stat(worker)


@pytest.mark.netns
def test_the_served_namespace_is_read_not_the_callers(require_root: None) -> None:
    ns = f"ha-xstat-{os.getpid()}"
    ip = ["ip", "-n", ns]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (
            [*ip, "link", "set", "lo", "up"],
            [*ip, "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
            [*ip, "link", "set", "v0", "up"],
            [*ip, "link", "set", "v1", "up"],
            [*ip, "addr", "add", "198.51.100.1/24", "dev", "v0"],
            [*ip, "xfrm", "policy", "add", "src", "198.51.100.1/32", "dst", "198.51.100.2/32",
             "dir", "out", "action", "block"],
        ):  # fmt: skip
            subprocess.run(cmd, check=True)
        with NetnsWorker(ns, "ipsec-ha-test") as worker:
            before = read_xfrm_stat(worker)["XfrmOutPolBlock"]
            for _ in range(3):  # each send is refused by the block policy and counted
                subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "0.2",
                                "198.51.100.2"], capture_output=True)  # fmt: skip
            assert read_xfrm_stat(worker)["XfrmOutPolBlock"] == before + 3
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
