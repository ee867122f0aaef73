"""Reading etcd's history from a watch's answer: recorded etcd 3.4 answers and hostile ones.

The recordings (tests/data/etcd/) are a real etcd's answers to ``POST /v3/watch``
for server ``gw1`` of the contract tests: revision 4 stores SAs 0x1003/0x1004 and
two policies, revision 5 deletes SA 0x1001, revision 6 a policy; the compacted one
asks for revision 4 after a compaction at 6.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.store.etcd_history import HistoryReader, HistoryUnavailable

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent.parent / "data" / "etcd"
SERVER = b"/ipsec-ha/v1/server/gw1/"


def lines(name: str) -> list[bytes]:
    return (DATA / name).read_bytes().splitlines(keepends=True)


def read(reader: HistoryReader, answer: list[bytes]) -> bool:
    return any([reader.feed(line) for line in answer])


def test_the_history_names_each_key_once_with_whether_it_is_still_there() -> None:
    reader = HistoryReader(since=3, until=6)
    created, history = lines("watch-history-3-6.ndjson")
    assert reader.feed(created) is False and reader.created
    assert reader.feed(history) is True
    assert reader.touched == {
        SERVER + b"sa/050/192.0.2.1/00001003": True,
        SERVER + b"sa/050/192.0.2.1/00001004": True,
        SERVER + b"policy/3170332e30": True,
        SERVER + b"policy/3170342e30": True,
        SERVER + b"sa/050/192.0.2.1/00001001": False,
        SERVER + b"removed/sa/050/192.0.2.1/00001001": True,
        SERVER + b"policy/3170322e30": False,
        SERVER + b"removed/policy/3170322e30": True,
        SERVER + b"revision": True,
    }


def test_events_past_the_revision_asked_for_are_left_out() -> None:
    reader = HistoryReader(since=4, until=5)
    assert read(reader, lines("watch-history-3-6.ndjson"))
    assert set(reader.touched) == {
        SERVER + b"sa/050/192.0.2.1/00001001",
        SERVER + b"removed/sa/050/192.0.2.1/00001001",
        SERVER + b"revision",
    }


def test_a_compacted_history_is_unavailable_and_says_so() -> None:
    reader = HistoryReader(since=3, until=6)
    with pytest.raises(HistoryUnavailable, match=r"compacted .* up to revision 6, past 4"):
        read(reader, lines("watch-compacted-3.ndjson"))


def test_until_the_revision_arrives_the_history_is_not_done() -> None:
    reader = HistoryReader(since=3, until=9)
    assert not read(reader, lines("watch-history-3-6.ndjson"))
    assert reader.feed(b"\n") is False  # a keep-alive blank line


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"not json\n", "answered b'not json"),
        (b"[1, 2]\n", "other than an object"),
        (b'{"header": {}}\n', "without a result"),
        (b'{"error": {"grpc_code": 9, "message": "etcdserver: no leader"}}\n', "no leader"),
        (b'{"result": {"canceled": true, "cancel_reason": "permission denied"}}\n', "denied"),
        (b'{"result": {"events": {"kv": {}}}}\n', "not a list"),
        (b'{"result": {"events": [{"kv": {"key": "!!", "mod_revision": "4"}}]}}\n', "key or"),
        (b'{"result": {"events": [{"kv": {"key": "YQ=="}}]}}\n', "key or revision"),
        (b'{"result": {"events": ["x"]}}\n', "key or revision"),
    ],
)
def test_a_hostile_or_failed_answer_is_unavailable_never_an_exception(
    line: bytes, why: str
) -> None:
    with pytest.raises(HistoryUnavailable, match=why):
        HistoryReader(since=3, until=6).feed(line)


def test_an_event_value_never_reaches_the_message() -> None:
    secret = "c2VjcmV0LWtleS1ieXRlcw=="  # an SA record's value, keys and all
    line = f'{{"result": {{"events": [{{"kv": {{"value": "{secret}"}}}}]}}}}\n'.encode()
    with pytest.raises(HistoryUnavailable) as info:
        HistoryReader(since=3, until=6).feed(line)
    assert secret not in str(info.value)
