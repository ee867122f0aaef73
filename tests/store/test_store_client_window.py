"""The client's window against a store that commits one request after another (unit).

The store answers a window of SA_Stor requests in order, each after its own
commit. The last request of a window therefore waits for all the others'
commits: its timer restarts at each answer before it (RFC 6298 5.3), so a
store that is only slow is waited for, and one request that was lost is
still retransmitted and, unanswered, given up on.
"""

from __future__ import annotations

from typing import Any

import pytest

from appliance.store import client as client_module
from appliance.store.client import StoreClient, StoreTimeoutError
from appliance.wire.constants import ExchangeType

pytestmark = pytest.mark.unit


class SerialStore:
    """A fake clock and a store that answers each request ``service_s`` after the previous."""

    def __init__(
        self, service_s: float, lose: frozenset[int] = frozenset(), in_progress: bool = False
    ) -> None:
        self.in_progress = in_progress
        """Answer a retransmission of a request still being carried out with IN_PROGRESS."""
        self.progressed: set[int] = set()
        """Where such answers go: the client's own set (``run_exchange`` links them)."""
        self.notices = 0
        self.now = 1000.0
        self.service_s = service_s
        self.lose = lose
        self.queue: list[int] = []
        """Message IDs in the order the store works on them (one at a time)."""
        self.busy_until = self.now
        self.due: dict[int, float] = {}
        self.sent: list[int] = []

    def monotonic(self) -> float:
        return self.now

    def receive(self, message_id: int) -> None:
        self.sent.append(message_id)
        if message_id in self.due and self.in_progress and self.now < self.due[message_id]:
            self.progressed.add(message_id)
            self.notices += 1
            return
        if message_id in self.lose or message_id in self.due:
            return  # lost, or a retransmission of one already queued (ignored by the store)
        self.busy_until = max(self.busy_until, self.now) + self.service_s
        self.due[message_id] = self.busy_until

    def pump(self, until: float, waiting: dict[int, Any]) -> None:
        pending = [t for mid, t in self.due.items() if mid in waiting and waiting[mid] is None]
        self.now = max(self.now, min([until, *pending]))
        for mid, t in self.due.items():
            if mid in waiting and waiting[mid] is None and t <= self.now:
                waiting[mid] = ("answer", mid)


def run_exchange(store: SerialStore, requests: int, monkeypatch: pytest.MonkeyPatch) -> Any:
    client = StoreClient("127.0.0.1", 9, b"k" * 32, "test", timeout=0.2, retries=3, window=4)
    monkeypatch.setattr(client_module, "time", store)
    monkeypatch.setattr(client, "connect", lambda: None)
    monkeypatch.setattr(client, "_flush", lambda: None)
    monkeypatch.setattr(client, "_pump", store.pump)
    ids = iter(range(1, 10**6))
    monkeypatch.setattr(client, "_new_id", lambda: next(ids))

    class Channel:
        def send(self, data: bytes, now: float) -> None:
            store.receive(int.from_bytes(data[4:8], "big"))

        def disconnect(self) -> None:
            pass

    monkeypatch.setattr(client, "_channel", Channel())
    store.progressed = client._in_progress
    try:
        return client.exchange([(ExchangeType.HEARTBEAT, ())] * requests)
    finally:
        client.close()


def test_the_header_carries_the_message_id_where_the_fake_reads_it() -> None:
    from appliance.wire.messages import Message, encode_message

    data = encode_message(Message(ExchangeType.HEARTBEAT, 0xA1B2C3D4, ()))
    assert int.from_bytes(data[4:8], "big") == 0xA1B2C3D4


def test_a_window_behind_slow_commits_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1 s per commit: the 4th of a window is answered 4 s after it was sent, later than the
    # 0.2 + 0.4 + 0.8 + 1.6 s a fixed backoff would have waited.
    store = SerialStore(service_s=1.0)
    answers = run_exchange(store, 12, monkeypatch)
    assert answers == [("answer", mid) for mid in range(1, 13)]


def test_a_lost_request_is_still_retransmitted_and_given_up_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = SerialStore(service_s=0.05, lose=frozenset({2}))
    with pytest.raises(StoreTimeoutError, match="after 4 attempts"):
        run_exchange(store, 6, monkeypatch)
    assert store.sent.count(2) == 4  # the first transmission and three retransmissions


def test_a_store_that_says_it_is_still_working_is_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 4 s per commit (65 kB SA_Stor datagrams on the lab VM): the first request alone
    # outlasts 0.2 + 0.4 + 0.8 + 1.6 s of silence.
    with pytest.raises(StoreTimeoutError, match="after 4 attempts"):
        run_exchange(SerialStore(service_s=4.0), 2, monkeypatch)
    store = SerialStore(service_s=4.0, in_progress=True)
    answers = run_exchange(store, 6, monkeypatch)
    assert answers == [("answer", mid) for mid in range(1, 7)]
    assert store.notices > 0


def test_in_progress_is_believed_only_so_long(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "IN_PROGRESS_LIMIT_S", 30.0)
    store = SerialStore(service_s=1000.0, in_progress=True)
    with pytest.raises(StoreTimeoutError, match="after 4 attempts"):
        run_exchange(store, 1, monkeypatch)
    assert 1030.0 <= store.now < 1000.0 + 30.0 + 20.0  # then the usual retries
