"""``LiveReader``: one named thread and one libnftables context for every scrape's live reads.

The unit tests hand the reader a stand-in libnftables context answering
with what libnftables 1.0.6 printed for the guard's table (captured in a
namespace); the netns tests read a real guard's table in a namespace.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from appliance.errors import KernelError
from appliance.metrics.live_reads import GuardCounters, LiveReader
from appliance.netns import create_netns, remove_netns, run_in_netns, temporary_netns
from appliance.nft import add_spis, apply_guard, libnft, parse_nft_section, remove_guard

METAINFO = (
    '{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", '
    '"json_schema_version": 1}}'
)
COUNTERS_JSON = (
    '{"nftables": [' + METAINFO + ", "
    '{"counter": {"family": "inet", "name": "ike_accepted", "table": "ipsec_ha", "handle": 7, '
    '"packets": 4, "bytes": 400}}, '
    '{"counter": {"family": "inet", "name": "esp_dropped", "table": "ipsec_ha", "handle": 10, '
    '"packets": 1, "bytes": 60}}]}'
)
"""``list counters table inet ipsec_ha`` (two of its counters, values made up)."""
HELD_JSON = (
    '{"nftables": [' + METAINFO + ", "
    '{"set": {"family": "inet", "name": "held_spis", "table": "ipsec_ha", "type": "integer", '
    '"handle": 6, "elem": [4097, 4098]}}]}'
)
"""``list set inet ipsec_ha held_spis`` holding 0x1001 and 0x1002."""
NO_TABLE = (
    "Error: No such file or directory\n"
    "list counters table inet ipsec_ha\n"
    "                         ^^^^^^^^\n"
)
"""What libnftables answers when the table does not exist."""


class FakeContext:
    """Answers listings as libnftables does; records the commands and the threads they ran in."""

    def __init__(self, answers: dict[str, tuple[int, str, str]]) -> None:
        self.answers = answers
        self.commands: list[str] = []
        self.threads: set[int] = set()

    def set_json_output(self, on: bool) -> None:
        assert on

    def cmd(self, command: str) -> tuple[int, str, str]:
        self.commands.append(command)
        self.threads.add(threading.get_native_id())
        return self.answers[command]


COUNTERS_CMD = "list counters table inet ipsec_ha"
HELD_CMD = "list set inet ipsec_ha held_spis"
PRESENT = {COUNTERS_CMD: (0, COUNTERS_JSON, ""), HELD_CMD: (0, HELD_JSON, "")}


@pytest.fixture
def contexts(monkeypatch: pytest.MonkeyPatch) -> list[FakeContext]:
    """Every context the reader makes (libnft.new_context replaced), answering ``PRESENT``."""
    made: list[FakeContext] = []

    def new_context() -> FakeContext:
        made.append(FakeContext(dict(PRESENT)))
        return made[-1]

    monkeypatch.setattr(libnft, "new_context", new_context)
    return made


@pytest.fixture
def reader() -> Iterator[LiveReader]:
    live = LiveReader(None)
    yield live
    live.close()


def comm_of(native_id: int) -> str:
    with open(f"/proc/self/task/{native_id}/comm") as f:
        return f.read().strip()


def tasks_soon(expected: set[str], timeout: float = 2.0) -> set[str]:
    """This process's tasks once they are ``expected`` (a joined thread leaves /proc a moment
    after ``join`` returns)."""
    deadline = time.monotonic() + timeout
    while (tasks := set(os.listdir("/proc/self/task"))) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return tasks


@pytest.mark.unit
def test_one_listing_gives_the_counters_and_one_more_the_held_set(
    contexts: list[FakeContext], reader: LiveReader
) -> None:
    assert reader.guard_counters(False) == GuardCounters(
        {"ike_accepted": (4, 400), "esp_dropped": (1, 60)}, None
    )
    assert contexts[0].commands == [COUNTERS_CMD]
    assert reader.guard_counters(True).held_spis == 2
    assert contexts[0].commands == [COUNTERS_CMD, COUNTERS_CMD, HELD_CMD]


@pytest.mark.unit
def test_every_read_uses_the_one_context_in_the_one_named_thread(
    contexts: list[FakeContext], reader: LiveReader
) -> None:
    for _ in range(3):
        reader.guard_counters(True)
        reader.xfrm_stat()
    assert len(contexts) == 1
    (thread,) = contexts[0].threads
    assert thread != threading.get_native_id()
    assert comm_of(thread) == "ipsec-ha-metric"  # as the bench finds the metrics' threads


@pytest.mark.unit
def test_an_absent_table_is_no_counters_not_an_error(
    contexts: list[FakeContext], reader: LiveReader
) -> None:
    reader.guard_counters(False)
    contexts[0].answers[COUNTERS_CMD] = (1, "", NO_TABLE)
    assert reader.guard_counters(True) == GuardCounters()
    assert contexts[0].commands[-1] == COUNTERS_CMD  # the held set is not listed then


@pytest.mark.unit
def test_a_table_gone_between_the_two_listings_is_no_counters(
    contexts: list[FakeContext], reader: LiveReader
) -> None:
    reader.guard_counters(False)
    contexts[0].answers[HELD_CMD] = (1, "", NO_TABLE.replace(COUNTERS_CMD, HELD_CMD))
    assert reader.guard_counters(True) == GuardCounters()


@pytest.mark.unit
def test_another_libnftables_failure_is_raised_and_the_next_read_works(
    contexts: list[FakeContext], reader: LiveReader
) -> None:
    reader.guard_counters(False)
    contexts[0].answers[COUNTERS_CMD] = (1, "", "netlink: Error: Operation not permitted\n")
    with pytest.raises(KernelError, match="`list counters table inet ipsec_ha` failed: "
                       "Operation not permitted"):  # fmt: skip
        reader.guard_counters(False)
    contexts[0].answers[COUNTERS_CMD] = PRESENT[COUNTERS_CMD]
    assert reader.guard_counters(False).counters["ike_accepted"] == (4, 400)


@pytest.mark.unit
def test_close_ends_the_thread_and_later_reads_fail(contexts: list[FakeContext]) -> None:
    before = set(os.listdir("/proc/self/task"))
    live = LiveReader(None)
    assert set(os.listdir("/proc/self/task")) == before  # no thread before the first read
    live.guard_counters(False)
    assert len(os.listdir("/proc/self/task")) == len(before) + 1
    live.close()
    live.close()  # idempotent
    assert tasks_soon(before) == before
    with pytest.raises(ValueError, match="closed"):
        live.xfrm_stat()


@pytest.mark.unit
def test_a_namespace_that_cannot_be_entered_is_tried_again_at_the_next_read() -> None:
    live = LiveReader("iha-0000-absent")
    for _ in range(2):
        with pytest.raises(KernelError, match="'iha-0000-absent' does not exist"):
            live.xfrm_stat()
    live.close()


# --- a real guard in a namespace (root) ----------------------------------------------------


@pytest.fixture
def two_hosts(require_root: None) -> Iterator[tuple[str, str]]:
    """``gw`` (192.0.2.1, the guard's VIP) and ``peer`` (192.0.2.2) on one veth pair."""
    with temporary_netns("live-gw") as gw, temporary_netns("live-peer") as peer:
        for cmd in (
            ["ip", "-n", gw, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
             "netns", peer],
            ["ip", "-n", gw, "addr", "add", "192.0.2.1/24", "dev", "v0"],
            ["ip", "-n", peer, "addr", "add", "192.0.2.2/24", "dev", "v1"],
            ["ip", "-n", gw, "link", "set", "v0", "up"],
            ["ip", "-n", peer, "link", "set", "v1", "up"],
        ):  # fmt: skip
            subprocess.run(cmd, check=True)
        yield gw, peer


def send_ike(peer: str, count: int) -> None:
    """``count`` UDP datagrams to the VIP's IKE port: the guard counts them as ike_accepted."""
    with run_in_netns(peer, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as s:
        for _ in range(count):
            s.sendto(b"\0" * 8, ("192.0.2.1", 500))


def ike_accepted_soon(reader: LiveReader, packets: int) -> tuple[int, int]:
    deadline = time.monotonic() + 5
    while (value := reader.guard_counters(False).counters["ike_accepted"])[0] != packets:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return value


@pytest.mark.netns
def test_the_guards_counters_are_read_from_the_served_namespace(
    two_hosts: tuple[str, str],
) -> None:
    gw, peer = two_hosts
    reader = LiveReader(gw)
    try:
        assert reader.guard_counters(True) == GuardCounters()  # no table: no samples
        # No trap_queue: the host kernel may lack nft_queue; the held set exists all the same.
        apply_guard(gw, parse_nft_section({"vips": ["192.0.2.1"], "peers": ["198.51.100.3"]}))
        add_spis(gw, [0x1001, 0x1002])
        read = reader.guard_counters(True)
        assert read.held_spis == 2
        assert read.counters["esp_dropped"] == (0, 0) and read.counters["ike_accepted"] == (0, 0)
        assert reader.guard_counters(False).held_spis is None
        # The one context sees the counters move (no cache of values between listings).
        send_ike(peer, 3)
        packets, octets = ike_accepted_soon(reader, 3)
        assert packets == 3 and octets == 3 * (20 + 8 + 8)
        remove_guard(gw)
        assert reader.guard_counters(True) == GuardCounters()
    finally:
        reader.close()


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return count


@pytest.mark.netns
def test_close_frees_the_libnftables_context(two_hosts: tuple[str, str]) -> None:
    gw, _ = two_hosts
    apply_guard(gw, parse_nft_section({"vips": ["192.0.2.1"]}))
    before = open_sockets()
    reader = LiveReader(gw)
    reader.guard_counters(False)
    assert open_sockets() == before + 1  # the context's netlink socket
    reader.close()
    deadline = time.monotonic() + 2
    while open_sockets() != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert open_sockets() == before


@pytest.mark.netns
def test_each_read_is_of_the_namespace_the_name_stands_for_then(require_root: None) -> None:
    name = f"iha-{os.getpid()}-live-again"
    guard = parse_nft_section({"vips": ["192.0.2.1"]})
    create_netns(name)
    reader = LiveReader(name)
    try:
        apply_guard(name, guard)
        add_spis(name, [0x1001])
        assert reader.guard_counters(True).held_spis == 1
        remove_netns(name)
        with pytest.raises(KernelError, match=f"network namespace '{name}' does not exist"):
            reader.guard_counters(True)
        create_netns(name)
        assert reader.guard_counters(True) == GuardCounters()  # the new one has no table
        apply_guard(name, guard)
        assert reader.guard_counters(True).held_spis == 0
    finally:
        reader.close()
        if os.path.exists(f"/run/netns/{name}"):
            remove_netns(name)


@pytest.mark.netns
def test_xfrm_stat_is_read_from_the_served_namespace(two_hosts: tuple[str, str]) -> None:
    if not os.path.exists("/proc/net/xfrm_stat"):
        pytest.skip("this kernel keeps no xfrm statistics")
    gw, _ = two_hosts
    block = ["src", "192.0.2.1/32", "dst", "192.0.2.2/32", "dir", "out", "action", "block"]
    subprocess.run(["ip", "-n", gw, "xfrm", "policy", "add", *block], check=True)
    reader = LiveReader(gw)
    try:
        before = reader.xfrm_stat()["XfrmOutPolBlock"]
        with run_in_netns(gw, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as s:
            for _ in range(2):
                with pytest.raises(PermissionError):  # refused by the block policy, and counted
                    s.sendto(b"x", ("192.0.2.2", 9))
        assert reader.xfrm_stat()["XfrmOutPolBlock"] == before + 2
    finally:
        reader.close()
