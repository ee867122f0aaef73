"""The change feed every SA store backend must give (``revision``, ``get_changes``).

The backend's test module subclasses :class:`ChangeFeedContract` beside
``BackendContract``, with the same ``store`` fixture.
"""

from __future__ import annotations

import pytest
from store_contract import all_state, sa_key, sa_put

from appliance.store.base import (
    PolicyRecord,
    RevisionGoneError,
    SaKey,
    SaStore,
    StaleEpochError,
    Status,
)


def changes(store: SaStore, server: str, since: int, limit: int = 256) -> dict[str, object]:
    """Every page of the changes after ``since``, gathered; each entry at most once."""
    sas: dict[SaKey, bytes | None] = {}
    pols: dict[bytes, bytes] = {}
    removed_sas: set[SaKey] = set()
    removed_pols: set[bytes] = set()
    revisions = []
    for page in store.iter_changes(server, since, limit):
        revisions.append(page.revision)
        for sa in page.sas:
            assert sa.key not in sas
            sas[sa.key] = sa.replay
        for p in page.policies:
            assert p.policy_id not in pols
            pols[p.policy_id] = p.entry
        assert not removed_sas & set(page.removed_sas)
        removed_sas |= set(page.removed_sas)
        assert not removed_pols & set(page.removed_policies)
        removed_pols |= set(page.removed_policies)
    return {
        "sas": sas,
        "policies": pols,
        "removed_sas": removed_sas,
        "removed_policies": removed_pols,
        "revision": revisions[0],
    }


class ChangeFeedContract:
    def test_revision_grows_with_writes_not_with_claims(self, store: SaStore) -> None:
        assert store.revision("gw1") == 0
        store.put("gw1", 1, [sa_put(1)])
        first = store.revision("gw1")
        assert first > 0
        store.claim("gw1")
        assert store.revision("gw1") == first
        store.update_replay("gw1", 2, [(sa_key(1), b"replay")])
        second = store.revision("gw1")
        assert second > first
        store.delete("gw1", 2, [sa_key(1)])
        assert store.revision("gw1") > second

    def test_refused_write_leaves_the_revision(self, store: SaStore) -> None:
        store.put("gw1", 5, [sa_put(1)])
        before = store.revision("gw1")
        with pytest.raises(StaleEpochError):
            store.put("gw1", 4, [sa_put(2)])
        assert store.revision("gw1") == before

    def test_an_epoch_probe_leaves_the_revision(self, store: SaStore) -> None:
        store.put("gw1", 1, [sa_put(1)])
        before = store.revision("gw1")
        store.delete("gw1", 1)  # what an active node's fencing probe sends, often
        assert store.revision("gw1") == before

    def test_full_walk_says_its_revision(self, store: SaStore) -> None:
        store.put("gw1", 1, [sa_put(1), sa_put(2)])
        pages = list(store.iter_server("gw1", 1))
        assert pages[0].revision == store.revision("gw1")

    def test_changes_since_zero_are_the_whole_state(self, store: SaStore) -> None:
        store.put("gw1", 1, [sa_put(1, pols=2), sa_put(2)], [PolicyRecord(b"bulk", b"x")])
        store.put("gw2", 1, [sa_put(3, "gw2")])
        got = changes(store, "gw1", 0)
        sas, pols = all_state(store, "gw1")
        assert set(got["sas"]) == set(sas)  # type: ignore[arg-type]
        assert got["policies"] == pols
        assert got["removed_sas"] == set() and got["removed_policies"] == set()
        assert got["revision"] == store.revision("gw1")

    def test_changes_name_only_what_changed_since(self, store: SaStore) -> None:
        store.put("gw1", 1, [sa_put(n) for n in range(1, 5)], [PolicyRecord(b"bulk", b"x")])
        since = store.revision("gw1")
        store.put("gw1", 1, [sa_put(5)])
        store.update_replay("gw1", 1, [(sa_key(2), b"replay-2")])
        store.delete("gw1", 1, [sa_key(1)], [b"bulk"])
        store.put("gw2", 1, [sa_put(9, "gw2")])  # another server's change
        got = changes(store, "gw1", since)
        assert got["sas"] == {sa_key(5): None, sa_key(2): b"replay-2"}
        assert set(got["policies"]) == {b"1p5.0"}  # type: ignore[arg-type]
        assert got["removed_sas"] == {sa_key(1)}
        assert got["removed_policies"] == {b"bulk"}
        assert got["revision"] == store.revision("gw1")

    def test_nothing_changed_is_one_empty_page(self, store: SaStore) -> None:
        store.put("gw1", 1, [sa_put(1)])
        now = store.revision("gw1")
        pages = list(store.iter_changes("gw1", now))
        assert len(pages) == 1
        page = pages[0]
        assert (page.sas, page.policies, page.removed_sas, page.removed_policies) == ((),) * 4
        assert (page.revision, page.epoch, page.cursor) == (now, 1, None)

    def test_removed_then_stored_again_is_a_change_not_a_removal(self, store: SaStore) -> None:
        store.put("gw1", 1, [sa_put(1), sa_put(2)])
        since = store.revision("gw1")
        store.delete("gw1", 1, [sa_key(1), sa_key(2)])
        store.put("gw1", 1, [sa_put(1)])
        got = changes(store, "gw1", since)
        assert set(got["sas"]) == {sa_key(1)}  # type: ignore[arg-type]
        assert got["removed_sas"] == {sa_key(2)}

    def test_deleting_an_absent_entry_is_no_removal(self, store: SaStore) -> None:
        store.put("gw1", 1, [sa_put(1)])
        since = store.revision("gw1")
        store.delete("gw1", 1, [sa_key(7)], [b"absent"])
        got = changes(store, "gw1", since)
        assert got["removed_sas"] == set() and got["removed_policies"] == set()

    @pytest.mark.parametrize("limit", [1, 2, 3, 100])
    def test_change_pages_cover_everything_once(self, store: SaStore, limit: int) -> None:
        store.put("gw1", 1, [sa_put(n, pols=2) for n in range(8)])
        since = store.revision("gw1")
        store.put("gw1", 1, [sa_put(n, pols=1) for n in range(8, 12)])
        store.delete("gw1", 1, [sa_key(n) for n in range(3)], [b"1p5.1", b"1p6.1"])
        got = changes(store, "gw1", since, limit)
        assert set(got["sas"]) == {sa_key(n) for n in range(8, 12)}  # type: ignore[arg-type]
        assert got["removed_sas"] == {sa_key(n) for n in range(3)}
        # The deleted SAs' own policies stay stored (a policy is deleted by its ID).
        assert got["removed_policies"] == {b"1p5.1", b"1p6.1"}

    def test_revision_beyond_the_stores_is_gone(self, store: SaStore) -> None:
        store.put("gw1", 1, [sa_put(1)])
        with pytest.raises(RevisionGoneError) as err:
            store.get_changes("gw1", store.revision("gw1") + 1)
        assert err.value.status == Status.REVISION_GONE
        with pytest.raises(RevisionGoneError):
            store.get_changes("never-wrote", 3)

    def test_forgotten_removals_make_an_old_revision_gone(self, store: SaStore) -> None:
        store.removal_history = 3
        store.put("gw1", 1, [sa_put(n) for n in range(10)])
        oldest = store.revision("gw1")
        for n in range(6):
            store.delete("gw1", 1, [sa_key(n)])
        with pytest.raises(RevisionGoneError, match="gw1"):
            list(store.iter_changes("gw1", oldest))
        recent = store.revision("gw1")
        store.delete("gw1", 1, [sa_key(6)])
        assert changes(store, "gw1", recent)["removed_sas"] == {sa_key(6)}
