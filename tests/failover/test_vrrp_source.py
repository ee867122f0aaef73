"""keepalived's notify FIFO: lines parsed in order, garbage skipped and counted, and the
adapter reads a real FIFO (created 0600 when missing, refused when not a FIFO)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from appliance.errors import ConfigError
from appliance.failover.vrrp_source import FifoParser, fifo_transitions, log_transitions, open_fifo
from appliance.notify import NotifyType, Transition, VrrpState

pytestmark = pytest.mark.unit

# What keepalived 2.2.7 wrote in the lab (a sync group of one instance, start then stop).
RECORDED = (
    b'GROUP "VG" BACKUP 0\nINSTANCE "VI_A" BACKUP 100\nINSTANCE "VI_A" MASTER 100\n'
    b'GROUP "VG" MASTER 0\nINSTANCE "VI_A" STOP 100\nGROUP "VG" STOP 0\n'
)


def test_recorded_lines_come_out_in_order() -> None:
    parser = FifoParser()
    got = parser.feed(RECORDED)
    assert [(t.type, t.name, t.state, t.priority) for t in got] == [
        (NotifyType.GROUP, "VG", VrrpState.BACKUP, 0),
        (NotifyType.INSTANCE, "VI_A", VrrpState.BACKUP, 100),
        (NotifyType.INSTANCE, "VI_A", VrrpState.MASTER, 100),
        (NotifyType.GROUP, "VG", VrrpState.MASTER, 0),
        (NotifyType.INSTANCE, "VI_A", VrrpState.STOP, 100),
        (NotifyType.GROUP, "VG", VrrpState.STOP, 0),
    ]
    assert parser.malformed == 0


def test_a_line_split_across_reads_is_joined() -> None:
    parser = FifoParser()
    assert parser.feed(b'GROUP "VG" MAS') == []
    assert parser.feed(b"TER 0\n") == [Transition(NotifyType.GROUP, "VG", VrrpState.MASTER, 0)]


@pytest.mark.parametrize(
    "line",
    [
        b"GROUP VG MASTER 0",  # name not quoted
        b'GROUP "VG" ELECTED 0',  # not a state
        b'PEER "VG" MASTER 0',  # not a type
        b'GROUP "VG" MASTER 300',  # priority out of range
        b'GROUP "VG" MASTER',  # field missing
        b'GROUP "" MASTER 0',
        b"\xff\xfe",
        b"",
    ],
)
def test_garbage_is_skipped_and_counted(line: bytes) -> None:
    parser = FifoParser()
    assert parser.feed(line + b'\nGROUP "VG" BACKUP 0\n') == [
        Transition(NotifyType.GROUP, "VG", VrrpState.BACKUP, 0)
    ]
    assert parser.malformed == 1


def test_an_endless_line_is_dropped_not_buffered() -> None:
    parser = FifoParser()
    parser.feed(b"x" * 10_000)
    assert parser.malformed == 1
    assert parser.feed(b'\nGROUP "VG" FAULT 0\n')[-1].state is VrrpState.FAULT


def test_fifo_is_created_0600_and_read_in_order(tmp_path: Path) -> None:
    path = tmp_path / "run" / "keepalived.fifo"

    async def scenario() -> list[Transition]:
        got: list[Transition] = []
        reader = fifo_transitions(path)
        first = asyncio.ensure_future(reader.__anext__())
        await asyncio.sleep(0.05)  # the adapter created and opened the FIFO
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, RECORDED)
        os.close(fd)  # a writer going away is not end-of-file for the reader
        got.append((await first).transition)
        while len(got) < 6:
            got.append((await asyncio.wait_for(reader.__anext__(), 5)).transition)
        await reader.aclose()
        return got

    got = asyncio.run(scenario())
    assert [t.state for t in got][-2:] == [VrrpState.STOP, VrrpState.STOP]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_ISFIFO(path.stat().st_mode)


def test_a_regular_file_in_place_of_the_fifo_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keepalived.fifo"
    path.write_text("")
    with pytest.raises(ConfigError, match="is not a FIFO"):
        open_fifo(path)


def test_notify_log_source_reads_only_new_records(tmp_path: Path) -> None:
    path = tmp_path / "notify.jsonl"
    path.write_text('{"type": "GROUP", "name": "VG", "state": "MASTER", "priority": 0}\n')

    async def scenario() -> list[VrrpState]:
        reader = log_transitions(path, poll_s=0.01)
        nxt = asyncio.ensure_future(reader.__anext__())
        await asyncio.sleep(0.05)
        with path.open("a") as f:
            f.write("not json\n")
            f.write('{"type": "GROUP", "name": "VG", "state": "BACKUP", "priority": 0}\n')
        got = [(await asyncio.wait_for(nxt, 5)).transition.state]
        await reader.aclose()
        return got

    assert asyncio.run(scenario()) == [VrrpState.BACKUP]
