"""The etcd backend against a real etcd started by the test: the backend, change and IKE SA
contracts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from change_feed_contract import ChangeFeedContract, changes
from etcd_process import EtcdMember, start_single
from ike_sa_contract import IkeSaContract, ike, ike_changes
from store_contract import BackendContract, all_state, sa_key, sa_put

from appliance.store import etcd as etcd_backend
from appliance.store.base import (
    Batch,
    InvalidRequestError,
    PolicyRecord,
    RevisionGoneError,
    SaPut,
    SchemaVersionError,
    StoreUnavailableError,
)
from appliance.store.etcd import PREFIX, SCHEMA_KEY, EtcdClient, EtcdStore

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdMember]:
    member = start_single(tmp_path_factory.mktemp("etcd"))
    yield member
    member.stop()


@pytest.fixture
def store(etcd: EtcdMember) -> Iterator[EtcdStore]:
    # Each test starts from an empty keyspace.
    raw = EtcdClient([etcd.endpoint])
    raw.call("/v3/kv/deleterange", {"key": "AA==", "range_end": "AA=="})
    raw.close()
    s = EtcdStore([etcd.endpoint])
    yield s
    s.close()


class TestEtcdContract(BackendContract, ChangeFeedContract, IkeSaContract):
    pass


class TestEtcdRangeWalkContract(ChangeFeedContract, IkeSaContract):
    """The change feed without etcd's history: what a compacted etcd falls back to.

    The whole IKE SA contract runs here for its change-feed tests (the rest is cheap).
    """

    @pytest.fixture
    def store(self, store: EtcdStore) -> EtcdStore:
        store.watch_history = False
        return store


class HistorySpy:
    """Counts the change walks of each kind."""

    def __init__(self, store: EtcdStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.watches = self.ranges = 0
        history, changed_after = store._etcd.history, store._changed_after

        def counted_history(*args: Any) -> dict[str, bool]:
            self.watches += 1
            return history(*args)

        def counted_ranges(*args: Any) -> Any:
            self.ranges += 1
            return changed_after(*args)

        monkeypatch.setattr(store._etcd, "history", counted_history)
        monkeypatch.setattr(store, "_changed_after", counted_ranges)


def test_changes_come_from_etcds_history_once_per_walk(
    store: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("gw1", 1, [sa_put(n) for n in range(40)])
    since = store.revision("gw1")
    store.put("gw1", 1, [sa_put(n) for n in range(40, 50)])
    store.update_replay("gw1", 1, [(sa_key(3), b"counters")])
    store.delete("gw1", 1, [sa_key(7)], [b"1p8.0"])
    spy = HistorySpy(store, monkeypatch)
    got = changes(store, "gw1", since, limit=4)  # many pages, one watch
    assert (spy.watches, spy.ranges) == (1, 0)
    assert set(got["sas"]) == {sa_key(n) for n in [*range(40, 50), 3]}
    assert got["sas"][sa_key(3)] == b"counters"  # type: ignore[index]
    assert got["removed_sas"] == {sa_key(7)}
    assert got["removed_policies"] == {b"1p8.0"}
    store.watch_history = False
    assert changes(store, "gw1", since, limit=4) == got  # the same as walking the ranges
    assert spy.ranges > 0


def test_a_compacted_history_falls_back_to_the_ranges(
    store: EtcdStore, etcd: EtcdMember, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("gw1", 1, [sa_put(n) for n in range(5)])
    since = store.revision("gw1")
    store.put("gw1", 1, [sa_put(5)])
    store.delete("gw1", 1, [sa_key(1)])
    raw = EtcdClient([etcd.endpoint])
    raw.call("/v3/kv/compaction", {"revision": str(store.revision("gw1"))})
    raw.close()
    spy = HistorySpy(store, monkeypatch)
    got = changes(store, "gw1", since)
    assert spy.watches == 1 and spy.ranges > 0
    assert (set(got["sas"]), got["removed_sas"]) == ({sa_key(5)}, {sa_key(1)})


def _keys_under(store: EtcdStore, prefix: str) -> list[str]:
    resp = store._etcd.range(prefix, etcd_backend._prefix_end(prefix), keys_only=True)
    return [k for k, _ in etcd_backend._kvs(resp)]


def test_change_feed_keys_are_invisible_to_state_reads(store: EtcdStore) -> None:
    store.removal_history = 1  # also write a horizon
    store.put("gw1", 1, [sa_put(n) for n in range(3)], [PolicyRecord(b"bulk", b"x")])
    store.delete("gw1", 1, [sa_key(0)])
    store.delete("gw1", 1, [], [b"bulk"])
    server = f"{PREFIX}server/gw1/"
    assert {f"{server}revision", f"{server}horizon", f"{server}removed/policy/{b'bulk'.hex()}"} <= (
        set(_keys_under(store, server))
    )
    sas, pols = all_state(store, "gw1")
    assert set(sas) == {sa_key(1), sa_key(2)}
    assert set(pols) == {b"1p1.0", b"1p2.0", b"1p0.0"}  # a deleted SA's policy stays
    (stats,) = store.stats().servers
    assert (stats.sas, stats.policies) == (2, 3)
    assert store.server_stats(0, 10) == (stats,)
    assert store.keys_for_spi("gw1", sa_key(0).spi, sa_key(0).proto) == []
    assert store.get_by_spi(sa_key(0)) is None


def test_removals_beyond_the_history_are_forgotten_into_the_horizon(store: EtcdStore) -> None:
    store.removal_history = 5
    store.put("gw1", 1, [sa_put(n) for n in range(300)])
    before = store.revision("gw1")
    # One write removes more than a forgetting transaction deletes.
    store.delete("gw1", 1, [sa_key(n) for n in range(200)])
    after = store.revision("gw1")
    markers = _keys_under(store, f"{PREFIX}server/gw1/removed/")
    assert len(markers) == 5
    with pytest.raises(RevisionGoneError, match=rf"gw1: .* revision {before}\b.* {after}\b"):
        store.get_changes("gw1", before)
    assert changes(store, "gw1", after)["removed_sas"] == set()


def test_the_horizon_survives_a_new_store(store: EtcdStore, etcd: EtcdMember) -> None:
    store.removal_history = 1
    store.put("gw1", 1, [sa_put(n) for n in range(3)])
    oldest = store.revision("gw1")
    for n in range(3):
        store.delete("gw1", 1, [sa_key(n)])
    again = EtcdStore([etcd.endpoint])
    try:
        with pytest.raises(RevisionGoneError, match="gw1"):
            again.get_changes("gw1", oldest)
        recent = again.revision("gw1")
        assert recent == store.revision("gw1")
        assert changes(again, "gw1", recent)["removed_sas"] == set()
    finally:
        again.close()


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 100])
def test_sparse_changes_of_records_and_replay_states_page_together(
    store: EtcdStore, limit: int
) -> None:
    # Pages end where the SA records' or the replay states' range ends, whichever is first.
    store.put("gw1", 1, [sa_put(n, pols=2) for n in range(40)])
    store.update_replay("gw1", 1, [(sa_key(n), b"old") for n in range(0, 40, 2)])
    since = store.revision("gw1")
    store.update_replay("gw1", 1, [(sa_key(n), b"new") for n in (4, 22, 38)])
    store.put("gw1", 1, [sa_put(n, pols=2) for n in (9, 17)])
    # Stored again: without a replay state (it is cleared), and with one.
    store.put("gw1", 1, [sa_put(10), SaPut(sa_key(12), b"again", replay=b"with-put")])
    store.delete("gw1", 1, [sa_key(n) for n in (1, 20, 39)], [b"1p30.1", b"1p3.0"])
    store.delete("gw1", 1, [], [b"1p0.0"])
    store.put("gw1", 1, [], [PolicyRecord(b"1p0.0", b"again")])
    got = changes(store, "gw1", since, limit)
    assert got["sas"] == {
        **{sa_key(n): b"new" for n in (4, 22, 38)},
        **{sa_key(n): None for n in (9, 10, 17)},
        sa_key(12): b"with-put",
    }
    assert set(got["policies"]) == {  # type: ignore[call-overload]
        b"1p9.0",
        b"1p9.1",
        b"1p17.0",
        b"1p17.1",
        b"1p10.0",
        b"1p0.0",
    }
    assert got["removed_sas"] == {sa_key(1), sa_key(20), sa_key(39)}
    assert got["removed_policies"] == {b"1p30.1", b"1p3.0"}


def test_a_change_walk_resumes_from_an_entry_cursor(store: EtcdStore) -> None:
    # The store service cuts a page after any entry that fits its datagram.
    store.put("gw1", 1, [sa_put(n) for n in range(3)])
    since = store.revision("gw1")
    store.put("gw1", 1, [sa_put(n) for n in range(3, 8)])
    first = store.get_changes("gw1", since, None, 3)
    assert [sa.key for sa in first.sas] == [sa_key(n) for n in (3, 4, 5)]
    rest = store.get_changes("gw1", since, store.sa_cursor(sa_key(3)), 3)
    assert [sa.key for sa in rest.sas] == [sa_key(n) for n in (4, 5, 6)]
    policies = store.get_changes("gw1", since, store.policy_cursor(b"1p4.0"), 100)
    assert [p.policy_id for p in policies.policies] == [b"1p5.0", b"1p6.0", b"1p7.0"]
    assert policies.cursor is None
    store.delete("gw1", 1, [sa_key(n) for n in range(4)], [b"1p1.0", b"1p2.0"])
    removed = store.get_changes("gw1", since, store.removed_sa_cursor(sa_key(1)), 100)
    assert (removed.sas, removed.removed_sas) == ((), (sa_key(2), sa_key(3)))
    assert removed.removed_policies == (b"1p1.0", b"1p2.0")
    removed = store.get_changes("gw1", since, store.removed_policy_cursor(b"1p1.0"), 100)
    assert (removed.removed_sas, removed.removed_policies) == ((), (b"1p2.0",))


def test_ike_sas_keep_an_index_of_their_child_spis(store: EtcdStore) -> None:
    server = f"{PREFIX}server/gw1/"

    def index() -> set[str]:
        return {k[len(server) :] for k in _keys_under(store, f"{server}ike_child/")}

    def entry(n: int, *children: int) -> set[str]:
        spis = ike(n).spis
        return {f"ike_child/{sa_key(c).spi:08x}/{spis[0]:016x}{spis[1]:016x}" for c in children}

    store.apply("gw1", 1, Batch(puts=(sa_put(1), sa_put(2)), ike_sas=(ike(1, 1, 2), ike(2, 3))))
    assert index() == entry(1, 1, 2) | entry(2, 3)
    store.apply("gw1", 1, Batch(ike_sas=(ike(1, 2, 4),)))  # rekeyed: CHILD SA 1 went, 4 came
    assert index() == entry(1, 2, 4) | entry(2, 3)
    store.apply("gw1", 1, Batch(delete_ike_sas=(ike(1).spis,)))
    assert index() == entry(2, 3)
    assert set(_keys_under(store, f"{server}removed/ike/")) == {
        f"{server}removed/ike/{ike(1).spis[0]:016x}{ike(1).spis[1]:016x}"
    }
    # Neither the index nor the markers are entries.
    pages = list(store.iter_server("gw1"))
    assert [r.spis for p in pages for r in p.ike_sas] == [ike(2).spis]
    (stats,) = store.stats().servers
    assert (stats.sas, stats.policies, stats.ike_sas) == (2, 2, 1)
    assert store.server_stats(0, 10) == (stats,)


def test_two_ike_sas_naming_one_child_spi_keep_their_own_index(store: EtcdStore) -> None:
    store.apply("gw1", 1, Batch(puts=(sa_put(1),), ike_sas=(ike(1, 1), ike(2, 1))))
    found = store.get_by_spi(sa_key(1))
    assert found is not None and found.ike_sa in (ike(1, 1), ike(2, 1))
    store.apply("gw1", 1, Batch(delete_ike_sas=(ike(1).spis,)))
    found = store.get_by_spi(sa_key(1))
    assert found is not None and found.ike_sa == ike(2, 1)


def test_sa_values_no_longer_hold_an_ike_sa_slot_and_old_ones_are_read(store: EtcdStore) -> None:
    import json

    store.put("gw1", 1, [sa_put(1), sa_put(2)])
    key = f"{PREFIX}server/gw1/sa/{etcd_backend._sa_path(sa_key(1))}"
    raw = store._etcd.get_many([key])[key]
    assert set(json.loads(raw)) == {"entry", "policies"}
    # What an older ipsec-ha wrote: a reserved IKE SA slot in the SA's value.
    old = json.dumps({**json.loads(raw), "ike_sa": _b64("old slot")})
    store._etcd.call("/v3/kv/put", {"key": _b64(key), "value": _b64(old)})
    found = store.get_by_spi(sa_key(1))
    assert found is not None and found.sa.entry == sa_put(1).entry and found.ike_sa is None
    sas, _ = all_state(store, "gw1")
    assert sas[sa_key(1)].entry == sa_put(1).entry


def test_ike_changes_come_from_etcds_history_as_from_the_ranges(
    store: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.apply("gw1", 1, Batch(puts=(sa_put(1),), ike_sas=tuple(ike(n, 1) for n in range(8))))
    since = store.revision("gw1")
    store.apply("gw1", 1, Batch(ike_sas=(ike(2, record=b"rekeyed"), ike(8, 1), ike(9))))
    store.apply("gw1", 1, Batch(delete_ike_sas=(ike(3).spis, ike(5).spis, ike(9).spis)))
    store.apply("gw1", 1, Batch(ike_sas=(ike(5, record=b"back"),)))
    spy = HistorySpy(store, monkeypatch)
    got = ike_changes(store, "gw1", since, limit=2)
    assert (spy.watches, spy.ranges) == (1, 0)
    assert got == (
        {
            ike(2).spis: ike(2, record=b"rekeyed"),
            ike(8).spis: ike(8, 1),
            ike(5).spis: ike(5, record=b"back"),
        },
        {ike(3).spis, ike(9).spis},
    )
    store.watch_history = False
    assert ike_changes(store, "gw1", since, limit=2) == got
    assert spy.ranges > 0


@pytest.mark.parametrize("history", [True, False])
def test_a_walk_resumes_from_an_ike_sa_cursor(store: EtcdStore, history: bool) -> None:
    store.watch_history = history
    store.apply("gw1", 1, Batch(puts=(sa_put(1),), ike_sas=(ike(1), ike(2))))
    since = store.revision("gw1")
    store.apply("gw1", 1, Batch(ike_sas=tuple(ike(n) for n in range(3, 7))))
    page = store.get_page("gw1", store.ike_sa_cursor(ike(3).spis), 2)
    assert [r.spis for r in page.ike_sas] == [ike(4).spis, ike(5).spis]
    assert (page.sas, page.policies) == ((), ())
    assert page.cursor == store.ike_sa_cursor(ike(5).spis)
    page = store.get_page("gw1", page.cursor, 2)
    assert [r.spis for r in page.ike_sas] == [ike(6).spis] and page.cursor is None
    changed = store.get_changes("gw1", since, store.ike_sa_cursor(ike(4).spis), 100)
    assert [r.spis for r in changed.ike_sas] == [ike(5).spis, ike(6).spis]
    store.apply("gw1", 1, Batch(delete_ike_sas=(ike(1).spis, ike(2).spis, ike(3).spis)))
    removed = store.get_changes("gw1", since, store.removed_ike_sa_cursor(ike(1).spis), 100)
    assert removed.ike_sas == () and removed.removed_ike_sas == (ike(2).spis, ike(3).spis)
    assert removed.cursor is None
    # A page ends on the IKE SAs' phase: the next page starts at the removals.
    first = store.get_changes("gw1", since, store.ike_sa_cursor(ike(4).spis), 2)
    assert [r.spis for r in first.ike_sas] == [ike(5).spis, ike(6).spis]
    rest = store.get_changes("gw1", since, first.cursor, 100)
    assert rest.removed_ike_sas == (ike(1).spis, ike(2).spis, ike(3).spis)


@pytest.mark.parametrize(
    ("call", "cursor"),
    [
        ("get_page", b"I" + bytes(15)),
        ("get_page", b"I" + bytes(17)),
        ("get_page", b"RI" + bytes(16)),  # a state walk has no removals
        ("get_changes", b"RI" + bytes(3)),
        ("get_changes", b"RI" + bytes(17)),
        ("get_changes", b"I" + bytes(1)),
    ],
)
def test_malformed_ike_sa_cursor_is_refused(store: EtcdStore, call: str, cursor: bytes) -> None:
    store.apply("gw1", 1, Batch(ike_sas=(ike(1),)))
    args = ("gw1", cursor) if call == "get_page" else ("gw1", 0, cursor)
    with pytest.raises(InvalidRequestError, match="malformed page cursor"):
        getattr(store, call)(*args)


def test_a_keyspace_older_than_the_change_feed(store: EtcdStore) -> None:
    # Written before the revision key existed: revision 0, and everything is a change.
    store.put("gw1", 1, [sa_put(n) for n in range(3)])
    store._etcd.call("/v3/kv/deleterange", {"key": _b64(f"{PREFIX}server/gw1/revision")})
    assert store.revision("gw1") == 0
    got = changes(store, "gw1", 0)
    assert set(got["sas"]) == {sa_key(n) for n in range(3)}  # type: ignore[arg-type]
    assert got["revision"] == 0
    store.delete("gw1", 1, [sa_key(0)])
    assert store.revision("gw1") > 0


def test_future_layout_version_is_refused(store: EtcdStore, etcd: EtcdMember) -> None:
    store._etcd.call("/v3/kv/put", {"key": _b64(SCHEMA_KEY), "value": _b64("2")})
    with pytest.raises(SchemaVersionError, match="newer than this ipsec-ha knows"):
        EtcdStore([etcd.endpoint])


def test_unreachable_etcd_is_a_clear_error(tmp_path: Path) -> None:
    from etcd_process import free_port

    with pytest.raises(StoreUnavailableError, match="etcd unavailable"):
        EtcdStore([f"http://127.0.0.1:{free_port()}"], timeout=0.5, retry_for=1.0)


def test_second_endpoint_is_used_when_first_is_dead(etcd: EtcdMember, store: EtcdStore) -> None:
    from etcd_process import free_port

    s = EtcdStore([f"http://127.0.0.1:{free_port()}", etcd.endpoint], timeout=0.5)
    s.put("gw1", 1, [sa_put(1)])
    assert s.get_by_spi(sa_key(1)) is not None
    s.close()


def _b64(s: str) -> str:
    import base64

    return base64.b64encode(s.encode()).decode()


@pytest.fixture(scope="module")
def etcd_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdMember]:
    """An etcd on 127.0.0.1 with authentication enabled: user ``ipsecha`` may use /ipsec-ha/."""
    member = start_single(tmp_path_factory.mktemp("etcd-auth"))
    try:
        raw = EtcdClient([member.endpoint])
        for path, body in [
            ("/v3/auth/user/add", {"name": "root", "password": "root-pw"}),
            ("/v3/auth/role/add", {"name": "root"}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/user/add", {"name": "ipsecha", "password": "good-pw"}),
            ("/v3/auth/role/add", {"name": "ipsecha"}),
            (
                "/v3/auth/role/grant",
                {
                    "name": "ipsecha",
                    "perm": {
                        "permType": "READWRITE",
                        "key": _b64("/ipsec-ha/"),
                        "range_end": _b64("/ipsec-ha0"),
                    },
                },
            ),
            ("/v3/auth/user/grant", {"user": "ipsecha", "role": "ipsecha"}),
            ("/v3/auth/enable", {}),
        ]:
            raw.call(path, body)
        raw.close()
        yield member
    finally:
        member.stop()


def test_user_authentication_and_a_stale_token_is_renewed(etcd_auth: EtcdMember) -> None:
    s = EtcdStore([etcd_auth.endpoint], user="ipsecha", password="good-pw")
    s.put("gw1", 1, [sa_put(1)])
    s._etcd._token = "stale.token"  # what etcd answers after a restart or the token's TTL
    found = s.get_by_spi(sa_key(1))
    assert found is not None and found.sa.entry == sa_put(1).entry
    s.close()


def test_wrong_password_or_no_user_is_a_clear_error(etcd_auth: EtcdMember) -> None:
    with pytest.raises(
        StoreUnavailableError, match=r"refused user ipsecha: .*authentication failed"
    ):
        EtcdStore([etcd_auth.endpoint], user="ipsecha", password="wrong-pw", retry_for=1.0)
    with pytest.raises(StoreUnavailableError, match="requires authentication"):
        EtcdStore([etcd_auth.endpoint], retry_for=1.0)
