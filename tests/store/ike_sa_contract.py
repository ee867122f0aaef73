"""IKE SA records, as every SA store backend must keep them (``Batch.ike_sas``).

The backend's test module subclasses :class:`IkeSaContract` beside
``BackendContract`` and ``ChangeFeedContract``, with the same ``store`` fixture.
"""

from __future__ import annotations

import pytest
from store_contract import sa_key, sa_put

from appliance.store.base import (
    Batch,
    IkeSaRecord,
    IkeSpis,
    InvalidRequestError,
    PolicyRecord,
    SaStore,
    StaleEpochError,
    Status,
)


def ike(n: int, *children: int, record: bytes | None = None) -> IkeSaRecord:
    """IKE SA ``n``; its CHILD SA SPIs are those of ``sa_key(c)`` for each ``c``."""
    return IkeSaRecord(
        (0xA000_0000_0000_0000 + n, 0xB000_0000_0000_0000 + n),
        tuple(sa_key(c).spi for c in children),
        record if record is not None else b"ike record %d" % n,
    )


def all_ike(store: SaStore, server: str, limit: int = 256) -> dict[IkeSpis, IkeSaRecord]:
    """Every IKE SA of a page walk; each once, and only after every SA and policy."""
    out: dict[IkeSpis, IkeSaRecord] = {}
    for page in store.iter_server(server, limit):
        if out:
            assert page.sas == () and page.policies == ()
        for rec in page.ike_sas:
            assert rec.spis not in out
            out[rec.spis] = rec
    return out


def ike_changes(store: SaStore, server: str, since: int, limit: int = 256) -> tuple[dict, set]:
    changed: dict[IkeSpis, IkeSaRecord] = {}
    removed: set[IkeSpis] = set()
    for page in store.iter_changes(server, since, limit):
        for rec in page.ike_sas:
            assert rec.spis not in changed
            changed[rec.spis] = rec
        assert not removed & set(page.removed_ike_sas)
        removed |= set(page.removed_ike_sas)
    return changed, removed


def store_ike(store: SaStore, server: str, epoch: int, *records: IkeSaRecord) -> None:
    store.apply(server, epoch, Batch(ike_sas=records))


def delete_ike(store: SaStore, server: str, epoch: int, *spis: IkeSpis) -> None:
    store.apply(server, epoch, Batch(delete_ike_sas=spis))


class IkeSaContract:
    def test_ike_sas_round_trip_after_the_sas_and_policies(self, store: SaStore) -> None:
        store.apply(
            "gw1",
            1,
            Batch(
                puts=(sa_put(1), sa_put(2)),
                policies=(PolicyRecord(b"bulk", b"x"),),
                ike_sas=(ike(1, 1, 2), ike(2)),
            ),
        )
        assert all_ike(store, "gw1") == {ike(1).spis: ike(1, 1, 2), ike(2).spis: ike(2)}
        assert all_ike(store, "gw2") == {}

    def test_a_stored_ike_sa_is_replaced_whole(self, store: SaStore) -> None:
        store_ike(store, "gw1", 1, ike(1, 1, 2))
        store_ike(store, "gw1", 1, ike(1, 3, record=b"rekeyed"))
        assert all_ike(store, "gw1") == {ike(1).spis: ike(1, 3, record=b"rekeyed")}

    def test_delete_and_absent_delete(self, store: SaStore) -> None:
        store_ike(store, "gw1", 1, ike(1), ike(2))
        delete_ike(store, "gw1", 1, ike(1).spis, ike(9).spis)
        assert set(all_ike(store, "gw1")) == {ike(2).spis}

    def test_ike_sas_are_per_server(self, store: SaStore) -> None:
        store_ike(store, "gw1", 1, ike(1))
        store_ike(store, "gw2", 1, ike(1, record=b"gw2's"))
        delete_ike(store, "gw2", 1, ike(1).spis)
        assert all_ike(store, "gw1") == {ike(1).spis: ike(1)}
        assert all_ike(store, "gw2") == {}

    @pytest.mark.parametrize("limit", [1, 2, 5, 1000])
    def test_pages_cover_everything_once(self, store: SaStore, limit: int) -> None:
        store.apply(
            "gw1",
            2,
            Batch(
                puts=tuple(sa_put(n, pols=1) for n in range(6)),
                ike_sas=tuple(ike(n, n) for n in range(7)),
            ),
        )
        pages = list(store.iter_server("gw1", limit))
        assert sum(len(p.sas) for p in pages) == 6 and sum(len(p.policies) for p in pages) == 6
        assert set(all_ike(store, "gw1", limit)) == {ike(n).spis for n in range(7)}
        assert all(p.epoch == 2 for p in pages)

    def test_lookup_by_spi_gives_the_ike_sa_of_that_child(self, store: SaStore) -> None:
        store.apply(
            "gw1", 1, Batch(puts=(sa_put(1), sa_put(2), sa_put(3)), ike_sas=(ike(1, 1, 2),))
        )
        store.apply("gw2", 1, Batch(puts=(sa_put(4, "gw2"),), ike_sas=(ike(2, 3, 4),)))
        for n in (1, 2):
            found = store.get_by_spi(sa_key(n))
            assert found is not None and found.ike_sa == ike(1, 1, 2)
        # SA 3 is gw1's; gw2's IKE SA naming its SPI is not gw1's.
        found = store.get_by_spi(sa_key(3))
        assert found is not None and found.ike_sa is None
        found = store.get_by_spi(sa_key(4))
        assert found is not None and found.ike_sa == ike(2, 3, 4)
        store_ike(store, "gw1", 1, ike(1, 2))  # CHILD SA 1 rekeyed away
        found = store.get_by_spi(sa_key(1))
        assert found is not None and found.ike_sa is None
        delete_ike(store, "gw1", 1, ike(1).spis)
        found = store.get_by_spi(sa_key(2))
        assert found is not None and found.ike_sa is None

    def test_stale_epoch_refuses_ike_writes(self, store: SaStore) -> None:
        store_ike(store, "gw1", 5, ike(1))
        with pytest.raises(StaleEpochError):
            store_ike(store, "gw1", 4, ike(2))
        with pytest.raises(StaleEpochError):
            delete_ike(store, "gw1", 4, ike(1).spis)
        assert set(all_ike(store, "gw1")) == {ike(1).spis}

    @pytest.mark.parametrize(
        ("batch", "match"),
        [
            (Batch(ike_sas=(ike(1), ike(1))), "appears twice in one batch"),
            (Batch(ike_sas=(ike(1),), delete_ike_sas=(ike(1).spis,)), "stored and deleted"),
            (Batch(ike_sas=(IkeSaRecord((0, 0), (), b"x"),)), "two 64-bit integers"),
            (Batch(ike_sas=(IkeSaRecord((1, 1 << 64), (), b"x"),)), "two 64-bit integers"),
            (Batch(delete_ike_sas=((1,),)), "two 64-bit integers"),  # type: ignore[arg-type]
            (Batch(ike_sas=(IkeSaRecord((1, 2), (0,), b"x"),)), "1..2\\*\\*32-1"),
            (Batch(ike_sas=(IkeSaRecord((1, 2), (5, 5), b"x"),)), "appears twice"),
            (Batch(ike_sas=(IkeSaRecord((1, 2), (), b""),)), "record is empty"),
            (Batch(ike_sas=(IkeSaRecord((1, 2), (), b"x" * 70000),)), "at most 65536 bytes"),
            (
                Batch(ike_sas=(IkeSaRecord((1, 2), tuple(range(1, 1026)), b"x"),)),
                "at most 1024 CHILD SA SPIs",
            ),
            (Batch(puts=(sa_put(1),), ike_sas=(ike(1), ike(1))), "appears twice in one batch"),
        ],
    )
    def test_invalid_ike_sas_change_nothing(self, store: SaStore, batch: Batch, match: str) -> None:
        with pytest.raises(InvalidRequestError, match=match) as err:
            store.apply("gw1", 1, batch)
        assert err.value.status == Status.INVALID
        assert store.stats().servers == ()

    def test_stats_count_ike_sas(self, store: SaStore) -> None:
        store.apply("gw1", 1, Batch(puts=(sa_put(1),), ike_sas=(ike(1, 1), ike(2))))
        (gw1,) = store.stats().servers
        assert (gw1.sas, gw1.ike_sas) == (1, 2)

    # -- the change feed --------------------------------------------------------

    def test_ike_writes_raise_the_revision(self, store: SaStore) -> None:
        store_ike(store, "gw1", 1, ike(1))
        first = store.revision("gw1")
        assert first > 0
        store_ike(store, "gw1", 1, ike(1, record=b"mid update"))
        second = store.revision("gw1")
        assert second > first
        delete_ike(store, "gw1", 1, ike(1).spis)
        assert store.revision("gw1") > second
        third = store.revision("gw1")
        delete_ike(store, "gw1", 1, ike(1).spis)  # absent: no change
        assert store.revision("gw1") == third

    def test_changes_name_the_ike_sas_changed_and_removed(self, store: SaStore) -> None:
        store_ike(store, "gw1", 1, ike(1), ike(2), ike(3))
        since = store.revision("gw1")
        store_ike(store, "gw1", 1, ike(2, record=b"new"), ike(4))
        delete_ike(store, "gw1", 1, ike(3).spis)
        store_ike(store, "gw2", 1, ike(5))
        changed, removed = ike_changes(store, "gw1", since)
        assert changed == {ike(2).spis: ike(2, record=b"new"), ike(4).spis: ike(4)}
        assert removed == {ike(3).spis}
        whole, gone = ike_changes(store, "gw1", 0)
        assert set(whole) == {ike(n).spis for n in (1, 2, 4)} and gone == set()

    def test_removed_then_stored_again_is_a_change(self, store: SaStore) -> None:
        store_ike(store, "gw1", 1, ike(1), ike(2))
        since = store.revision("gw1")
        delete_ike(store, "gw1", 1, ike(1).spis, ike(2).spis)
        store_ike(store, "gw1", 1, ike(1))
        changed, removed = ike_changes(store, "gw1", since)
        assert set(changed) == {ike(1).spis} and removed == {ike(2).spis}

    @pytest.mark.parametrize("limit", [1, 2, 3, 100])
    def test_change_pages_cover_everything_once(self, store: SaStore, limit: int) -> None:
        store.apply("gw1", 1, Batch(puts=(sa_put(1), sa_put(2)), ike_sas=(ike(1), ike(2))))
        since = store.revision("gw1")
        store.apply(
            "gw1",
            1,
            Batch(
                puts=(sa_put(3),),
                delete_sas=(sa_key(1),),
                ike_sas=(ike(3), ike(4), ike(5)),
                delete_ike_sas=(ike(1).spis, ike(2).spis),
            ),
        )
        changed, removed = ike_changes(store, "gw1", since, limit)
        assert set(changed) == {ike(n).spis for n in (3, 4, 5)}
        assert removed == {ike(1).spis, ike(2).spis}
        pages = list(store.iter_changes("gw1", since, limit))
        assert {k for p in pages for k in p.removed_sas} == {sa_key(1)}
        assert {s.key for p in pages for s in p.sas} == {sa_key(3)}
