"""The hot standby's follower: one whole retrieval, then only the changes (change feed).

The store is real (SQLite behind the real ``StoreService``); the client is the
real ``StoreClient`` with its datagram exchange replaced by a direct call of
the service, so every request and answer goes through the wire codec.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from entries_factory import make_policy, make_sa
from loopback_client import LoopbackClient

from appliance.model import SadEntry, SpdEntry
from appliance.store.base import (
    FetchCancelled,
    IkeSaRecord,
    InvalidRequestError,
    SaKey,
    StoreUnavailableError,
)
from appliance.store.follow import SOURCE_PATIENCE, Follower
from appliance.store.service import StoreService
from appliance.store.sqlite import SqliteStore

pytestmark = pytest.mark.unit

SID = "198.51.100.1"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.db")
    yield s
    s.close()


@pytest.fixture
def client(store: SqliteStore) -> LoopbackClient:
    return LoopbackClient(StoreService(store, max_datagram=1400))


def write(client: LoopbackClient, sad: Sequence[SadEntry], spd: Sequence[SpdEntry] = ()) -> None:
    client.put_entries(SID, 1, sad, spd)


def as_sets(state: Any) -> tuple[set[SadEntry], set[SpdEntry]]:
    return set(state.sad), set(state.spd)


def test_first_poll_is_whole_then_an_unchanged_store_costs_one_request(
    client: LoopbackClient,
) -> None:
    write(client, [make_sa(n) for n in range(40)], [make_policy(n) for n in range(40)])
    follower = Follower([client])
    first = follower.poll(SID)
    assert (first.changed, first.full) == (True, True)
    assert as_sets(first.state) == as_sets(client.fetch(SID))
    assert len(first.state.sad) == 40 and len(first.state.spd) == 40

    client.requests.clear()
    again = follower.poll(SID)
    assert (again.changed, again.full, again.revision) == (False, False, first.revision)
    assert as_sets(again.state) == as_sets(first.state)
    assert len(client.requests) == 1  # one SA_Retr with a Revision, one empty page


def test_changes_bring_the_copy_equal_to_a_whole_retrieval(client: LoopbackClient) -> None:
    write(client, [make_sa(n) for n in range(30)], [make_policy(n) for n in range(30)])
    follower = Follower([client])
    follower.poll(SID)

    write(client, [make_sa(n) for n in range(30, 33)], [make_policy(n) for n in range(30, 33)])
    busy = dataclasses.replace(make_sa(5), replay=dataclasses.replace(make_sa(5).replay, oseq=77))
    client.update_replay(SID, 1, [busy])
    client.delete(SID, 1, [(make_sa(7).spi, 50)], [make_policy(7).index])

    client.requests.clear()
    polled = follower.poll(SID)
    requests = len(client.requests)
    assert (polled.changed, polled.full) == (True, False)
    assert as_sets(polled.state) == as_sets(client.fetch(SID))
    by_key = {SaKey.of(sa): sa for sa in polled.state.sad}
    assert by_key[SaKey.of(busy)].replay.oseq == 77
    assert SaKey.of(make_sa(7)) not in by_key
    # Only the changed entries travelled: a few pages, not the whole state's.
    assert requests <= 3 < len(client.requests) - requests


def test_forgotten_removals_bring_a_whole_retrieval(
    client: LoopbackClient, store: SqliteStore
) -> None:
    write(client, [make_sa(n) for n in range(10)])
    follower = Follower([client])
    follower.poll(SID)
    store.removal_history = 2
    for n in range(5):
        client.delete(SID, 1, [(make_sa(n).spi, 50)])
    polled = follower.poll(SID)
    assert (polled.changed, polled.full) == (True, True)
    assert as_sets(polled.state) == as_sets(client.fetch(SID))
    assert len(polled.state.sad) == 5


def test_a_store_whose_epoch_went_back_is_retrieved_whole(
    client: LoopbackClient, tmp_path: Path
) -> None:
    client.put_entries(SID, 9, [make_sa(n) for n in range(4)])
    follower = Follower([client])
    follower.poll(SID)
    # The same store address, now a store rebuilt from nothing, written further.
    rebuilt = SqliteStore(tmp_path / "rebuilt.db")
    client.service = StoreService(rebuilt)
    for n in range(6):
        client.put_entries(SID, 2, [make_sa(100 + n)])
    polled = follower.poll(SID)
    assert polled.full
    assert {sa.spi for sa in polled.state.sad} == {make_sa(100 + n).spi for n in range(6)}
    rebuilt.close()


def test_the_other_store_is_followed_from_a_whole_retrieval(
    client: LoopbackClient, tmp_path: Path
) -> None:
    second_store = SqliteStore(tmp_path / "second.db")
    second = LoopbackClient(StoreService(second_store), server="127.0.0.2")
    for c in (client, second):
        write(c, [make_sa(n) for n in range(6)])
    follower = Follower([client, second])
    assert follower.poll(SID).full
    client.down = True
    for _ in range(SOURCE_PATIENCE):  # the copy's store may only be busy: it waits for it
        with pytest.raises(StoreUnavailableError):
            follower.poll(SID)
        assert follower.state is not None and follower.state.source == "127.0.0.1"
    polled = follower.poll(SID)
    assert polled.full and polled.state.source == "127.0.0.2"
    assert not follower.poll(SID).full  # it now follows the second store's revisions
    client.down = False
    assert not follower.poll(SID).full  # and stays with it while it answers
    second_store.close()


def test_no_store_answering_is_an_error_and_the_copy_is_kept(client: LoopbackClient) -> None:
    write(client, [make_sa(1)])
    follower = Follower([client])
    held = follower.poll(SID).revision
    client.down = True
    for _ in range(SOURCE_PATIENCE + 2):
        with pytest.raises(StoreUnavailableError, match="down"):
            follower.poll(SID)
    assert follower.state is not None and follower.state.revision == held
    client.down = False
    write(client, [make_sa(2)])
    polled = follower.poll(SID)  # the store is back: still the same store's changes
    assert (polled.full, polled.changed, len(polled.state.sad)) == (False, True, 2)


def test_a_whole_retrieval_stopped_half_way_keeps_the_old_copy(
    client: LoopbackClient, store: SqliteStore
) -> None:
    write(client, [make_sa(n) for n in range(5)])
    follower = Follower([client])
    held = follower.poll(SID).revision
    store.removal_history = 1
    for n in range(3):  # removals the store forgets: the next poll must retrieve everything
        client.delete(SID, 1, [(make_sa(n).spi, 50)])
    write(client, [make_sa(n) for n in range(5, 400)])
    with pytest.raises(FetchCancelled):
        follower.poll(SID, stop=lambda: True)
    assert follower.state is not None and follower.state.revision == held
    polled = follower.poll(SID)
    assert polled.full and len(polled.state.sad) == 397


def test_a_stopped_poll_drops_the_copy(client: LoopbackClient) -> None:
    write(client, [make_sa(n) for n in range(300)])
    follower = Follower([client])
    with pytest.raises(FetchCancelled):
        follower.poll(SID, stop=lambda: True)
    assert follower.state is None
    assert follower.poll(SID).full


def test_changes_stopped_half_way_come_again(client: LoopbackClient) -> None:
    write(client, [make_sa(n) for n in range(10)])
    follower = Follower([client])
    held = follower.poll(SID).revision
    write(client, [make_sa(n) for n in range(10, 400)])
    with pytest.raises(FetchCancelled):
        follower.poll(SID, stop=lambda: True)
    assert follower.state is not None and follower.state.revision == held
    polled = follower.poll(SID)
    assert (polled.changed, polled.full) == (True, False)
    assert len(polled.state.sad) == 400


def test_the_copy_gives_the_same_tuples_until_something_changes(client: LoopbackClient) -> None:
    # The executor tells "the state its last follow installed" by identity (kernel_holds).
    write(client, [make_sa(n) for n in range(10)], [make_policy(n) for n in range(10)])
    follower = Follower([client])
    first = follower.poll(SID).state
    again = follower.poll(SID).state
    assert again.sad is first.sad and again.spd is first.spd

    busy = dataclasses.replace(make_sa(5), replay=dataclasses.replace(make_sa(5).replay, oseq=77))
    client.update_replay(SID, 1, [busy])  # a counter only: still a change of the SA
    moved = follower.poll(SID).state
    assert moved.sad is not first.sad and moved.spd == first.spd
    assert {sa.replay.oseq for sa in moved.sad if sa.spi == busy.spi} == {77}

    client.delete(SID, 1, [], [make_policy(3).index])
    removed = follower.poll(SID).state
    assert removed.spd is not moved.spd and len(removed.spd) == 9


def _ike(n: int, record: bytes = b"ike") -> IkeSaRecord:
    return IkeSaRecord((0xA0 + n, 0xB0 + n), (make_sa(n).spi,), record + b" %d" % n)


def test_ike_sas_are_followed_beside_the_kernel_state(client: LoopbackClient) -> None:
    write(client, [make_sa(n) for n in range(4)])
    assert client.put_ike_sas(SID, 1, [_ike(n) for n in range(4)]) == 1
    follower = Follower([client])
    first = follower.poll(SID).state
    assert follower.state is not None
    assert follower.state.ike_sas == {_ike(n).spis: _ike(n) for n in range(4)}
    # Unchanged, the copy hands out the same IKE SAs (a hot standby's charon is fed when
    # they change, told by identity).
    assert follower.poll(SID).state.ike_sas is first.ike_sas

    client.put_ike_sas(SID, 1, [_ike(1, b"rekeyed"), _ike(5)], removed=[_ike(2).spis])
    polled = follower.poll(SID)
    # The IKE SAs changed, the kernel state did not: nothing for the kernel to do, but
    # other IKE SAs to hand charon.
    assert (polled.changed, polled.full) == (False, False)
    assert polled.state.sad is first.sad and polled.state.ike_sas is not first.ike_sas
    assert follower.state.ike_sas == {
        i.spis: i for i in (_ike(0), _ike(1, b"rekeyed"), _ike(3), _ike(5))
    }
    whole = client.get_server(SID)
    assert whole.ike_sas == follower.state.ike_sas
    # A takeover from the copy hands charon the same IKE SAs as a whole retrieval does.
    assert follower.state.retrieved().ike_sas == whole.merged("x").ike_sas == whole.ike_sas
    answer = client.get_spi(make_sa(1).spi, str(make_sa(1).daddr))
    assert answer.ike_sa == _ike(1, b"rekeyed")
    # A removal alone is a change of the IKE SAs too.
    client.put_ike_sas(SID, 1, [], removed=[_ike(5).spis])
    removed = follower.poll(SID).state
    assert removed.ike_sas is not polled.state.ike_sas and _ike(5).spis not in removed.ike_sas


def test_ike_sas_too_large_for_a_datagram_are_refused_by_name(client: LoopbackClient) -> None:
    with pytest.raises(InvalidRequestError, match=r"an IKE SA\) takes .* raise max_datagram"):
        client.put_ike_sas(SID, 1, [_ike(1, b"x" * 1400)])
