"""Behaviour every SA store backend must have; each backend's test module runs it.

The test modules define a ``store`` fixture (a fresh, empty backend) and
subclass :class:`BackendContract`.
"""

from __future__ import annotations

import pytest

from appliance.store.base import (
    MAX_EPOCH,
    MAX_EPOCH_STEP,
    EpochLimitError,
    InvalidRequestError,
    NotFoundError,
    PolicyRecord,
    SaKey,
    SaPut,
    SaStore,
    SpiCollisionError,
    StaleEpochError,
    Status,
)


def sa_key(n: int, dst: str = "192.0.2.1") -> SaKey:
    return SaKey.make(0x1000 + n, dst, "esp")


def sa_put(n: int, server: str = "gw1", pols: int = 1, dst: str = "192.0.2.1") -> SaPut:
    return SaPut(
        sa_key(n, dst),
        f"sa {n} of {server}".encode(),
        tuple(
            PolicyRecord(f"{server[-1]}p{n}.{i}".encode(), f"policy {n}.{i}".encode())
            for i in range(pols)
        ),
    )


def all_state(store: SaStore, server: str, limit: int = 256) -> tuple[dict, dict]:
    sas, pols = {}, {}
    for page in store.iter_server(server, limit):
        for sa in page.sas:
            assert sa.key not in sas
            sas[sa.key] = sa
        for p in page.policies:
            assert p.policy_id not in pols
            pols[p.policy_id] = p.entry
    return sas, pols


class BackendContract:
    def test_sa_round_trips_by_spi_with_its_policies(self, store: SaStore) -> None:
        sa = sa_put(1, pols=2)
        store.put("gw1", 1, [sa], [PolicyRecord(b"standalone", b"bulk policy")])
        found = store.get_by_spi(sa.key)
        assert found is not None
        assert (found.server_id, found.epoch) == ("gw1", 1)
        assert found.sa.entry == sa.entry
        assert found.sa.replay is None and found.ike_sa is None
        assert set(found.policies) == set(sa.policies)
        assert set(found.sa.policy_ids) == {p.policy_id for p in sa.policies}
        assert store.get_by_spi(sa_key(2)) is None

    def test_rewritten_sa_gets_its_new_policies_only(self, store: SaStore) -> None:
        old, new = PolicyRecord(b"old", b"old policy"), PolicyRecord(b"new", b"new policy")
        store.put("gw1", 1, [SaPut(sa_key(1), b"v1", (old,))])
        store.put("gw1", 1, [SaPut(sa_key(1), b"v2", (new,))])
        found = store.get_by_spi(sa_key(1))
        assert found is not None
        assert (found.sa.entry, found.policies, found.sa.policy_ids) == (b"v2", (new,), (b"new",))

    def test_ipv6_cursors_fit_the_wire(self, store: SaStore) -> None:
        longest = "2001:db8:ffff:ffff:ffff:ffff:ffff:fff"
        keys = [SaKey.make(0xFFFFFFF0 + i, f"{longest}{i:x}", 51) for i in range(5)]
        pols = [PolicyRecord(bytes([i]) * 32, b"p") for i in range(3)]
        store.put("gw1", 1, [SaPut(k, b"e") for k in keys], pols)
        pages = list(store.iter_server("gw1", 1))
        assert all(p.cursor is None or len(p.cursor) <= 64 for p in pages)
        assert sum(len(p.sas) for p in pages) == 5 and sum(len(p.policies) for p in pages) == 3

    def test_key_is_normalised_ipv6(self, store: SaStore) -> None:
        key = SaKey.make(7, "2001:DB8:0::1", 50)
        store.put("gw1", 1, [SaPut(key, b"v6")])
        found = store.get_by_spi(SaKey.make(7, "2001:db8::1", "esp"))
        assert found is not None and found.sa.entry == b"v6"

    def test_policy_shared_by_two_sas(self, store: SaStore) -> None:
        shared = PolicyRecord(b"shared", b"out policy")
        store.put("gw1", 1, [SaPut(sa_key(1), b"a", (shared,)), SaPut(sa_key(2), b"b", (shared,))])
        for n in (1, 2):
            found = store.get_by_spi(sa_key(n))
            assert found is not None and found.policies == (shared,)
        _, pols = all_state(store, "gw1")
        assert pols == {b"shared": b"out policy"}

    @pytest.mark.parametrize("limit", [1, 7, 1000])
    def test_pages_cover_everything_once(self, store: SaStore, limit: int) -> None:
        sas = [sa_put(n, pols=2) for n in range(40)]
        store.put("gw1", 3, sas, [PolicyRecord(b"bulk-%d" % i, b"x") for i in range(5)])
        store.put("gw2", 1, [sa_put(100, "gw2")])
        got_sas, got_pols = all_state(store, "gw1", limit)
        assert {k: v.entry for k, v in got_sas.items()} == {s.key: s.entry for s in sas}
        assert len(got_pols) == 40 * 2 + 5
        for s in sas:
            assert set(got_sas[s.key].policy_ids) == {p.policy_id for p in s.policies}
        assert all(p.epoch == 3 for p in store.iter_server("gw1", limit))

    def test_empty_server_has_one_empty_page(self, store: SaStore) -> None:
        (page,) = list(store.iter_server("nobody"))
        assert (page.sas, page.policies, page.cursor, page.epoch) == ((), (), None, 0)

    def test_malformed_cursor_is_refused(self, store: SaStore) -> None:
        with pytest.raises(InvalidRequestError):
            store.get_page("gw1", b"\xff garbage")

    def test_spi_collision_is_refused_and_batch_not_written(self, store: SaStore) -> None:
        store.put("gw1", 1, [sa_put(1)])
        batch = [sa_put(n, "gw2") for n in (5, 6, 1, 7)]
        with pytest.raises(SpiCollisionError) as err:
            store.put("gw2", 1, batch)
        assert err.value.status == Status.SPI_COLLISION
        assert "gw1" in str(err.value)
        for n in (5, 6, 7):
            assert store.get_by_spi(sa_key(n)) is None
        found = store.get_by_spi(sa_key(1))
        assert found is not None and found.server_id == "gw1"
        assert all_state(store, "gw2") == ({}, {})

    def test_same_spi_other_destination_is_no_collision(self, store: SaStore) -> None:
        store.put("gw1", 1, [sa_put(1)])
        store.put("gw2", 1, [sa_put(1, "gw2", dst="198.51.100.1")])
        assert store.get_by_spi(sa_key(1, "198.51.100.1")).server_id == "gw2"  # type: ignore[union-attr]

    def test_stale_epoch_is_refused(self, store: SaStore) -> None:
        store.put("gw1", 4, [sa_put(1)])
        with pytest.raises(StaleEpochError) as err:
            store.put("gw1", 3, [SaPut(sa_key(1), b"old master")])
        assert err.value.status == Status.STALE_EPOCH and err.value.current_epoch == 4
        assert store.get_by_spi(sa_key(1)).sa.entry == sa_put(1).entry  # type: ignore[union-attr]
        for op in (
            lambda: store.delete("gw1", 3, [sa_key(1)]),
            lambda: store.update_replay("gw1", 3, [(sa_key(1), b"r")]),
        ):
            with pytest.raises(StaleEpochError):
                op()
        assert store.get_by_spi(sa_key(1)) is not None

    def test_newer_epoch_write_raises_epoch(self, store: SaStore) -> None:
        store.put("gw1", 1, [sa_put(1)])
        store.put("gw1", 5, [sa_put(2)])
        assert store.epoch("gw1") == 5
        with pytest.raises(StaleEpochError):
            store.put("gw1", 1, [sa_put(3)])

    def test_claim_raises_epoch_and_deposes_old_master(self, store: SaStore) -> None:
        store.put("gw1", 1, [sa_put(1)])
        assert store.claim("gw1") == 2
        assert store.claim("gw1", 10) == 10
        with pytest.raises(StaleEpochError):
            store.claim("gw1", 10)
        with pytest.raises(StaleEpochError):
            store.put("gw1", 2, [sa_put(1)])
        store.put("gw1", 10, [sa_put(2)])
        assert store.epoch("gw1") == 10
        assert store.claim("fresh") == 1

    def test_claim_that_could_overflow_the_epoch_is_refused(self, store: SaStore) -> None:
        with pytest.raises(EpochLimitError, match="more than 2\\*\\*32 above") as err:
            store.claim("gw1", MAX_EPOCH)
        assert err.value.status == Status.EPOCH_LIMIT and err.value.current_epoch == 0
        with pytest.raises(EpochLimitError, match="largest epoch is 2\\*\\*63-1"):
            store.claim("gw1", MAX_EPOCH + 1)
        assert store.stats().servers == ()  # nothing changed
        assert store.claim("gw1") == 1
        with pytest.raises(EpochLimitError, match="more than 2\\*\\*32 above") as err:
            store.claim("gw1", 2 + MAX_EPOCH_STEP)
        assert err.value.current_epoch == 1 and store.epoch("gw1") == 1
        assert store.claim("gw1", 1 + MAX_EPOCH_STEP) == 1 + MAX_EPOCH_STEP  # the largest step
        assert store.claim("gw1") == 2 + MAX_EPOCH_STEP  # ordinary claims go on

    def test_write_that_could_overflow_the_epoch_is_refused(self, store: SaStore) -> None:
        store.put("gw1", 3, [sa_put(1)])
        for epoch in (MAX_EPOCH, 4 + MAX_EPOCH_STEP):
            with pytest.raises(EpochLimitError) as err:
                store.put("gw1", epoch, [sa_put(2)])
            assert err.value.current_epoch == 3
        with pytest.raises(EpochLimitError):
            store.put("gw2", MAX_EPOCH, [sa_put(3, "gw2")])
        assert store.get_by_spi(sa_key(2)) is None and store.get_by_spi(sa_key(3)) is None
        assert [(s.server_id, s.epoch) for s in store.stats().servers] == [("gw1", 3)]
        store.put("gw1", 3 + MAX_EPOCH_STEP, [sa_put(2)])
        assert store.epoch("gw1") == 3 + MAX_EPOCH_STEP

    def test_server_stats_pages_through_the_servers_in_order(self, store: SaStore) -> None:
        for n in range(40):
            store.put(f"gw{n:02d}", 1, [sa_put(n, f"gw{n:02d}", pols=n % 3)])
        every = store.stats().servers
        pages = [store.server_stats(start, 7) for start in range(0, 45, 7)]
        assert tuple(s for page in pages for s in page) == every
        assert [s.server_id for s in every] == [f"gw{n:02d}" for n in range(40)]
        assert store.server_stats(40, 7) == ()

    def test_delete_sas_and_policies(self, store: SaStore) -> None:
        store.put("gw1", 1, [sa_put(1), sa_put(2)], [PolicyRecord(b"bulk", b"x")])
        store.delete("gw1", 1, [sa_key(1), sa_key(99)], [b"bulk", b"absent"])
        assert store.get_by_spi(sa_key(1)) is None
        assert store.get_by_spi(sa_key(2)) is not None
        sas, pols = all_state(store, "gw1")
        assert set(sas) == {sa_key(2)} and b"bulk" not in pols
        # The SA's key is free again, for any server.
        store.put("gw2", 1, [SaPut(sa_key(1), b"reused")])

    def test_delete_of_another_servers_sa_is_refused(self, store: SaStore) -> None:
        store.put("gw1", 1, [sa_put(1)])
        with pytest.raises(SpiCollisionError):
            store.delete("gw2", 1, [sa_key(1)])
        assert store.get_by_spi(sa_key(1)) is not None

    def test_replay_update_is_kept_and_cleared_by_full_write(self, store: SaStore) -> None:
        store.put("gw1", 1, [sa_put(1), sa_put(2)])
        store.update_replay("gw1", 1, [(sa_key(1), b"replay-1"), (sa_key(2), b"replay-2")])
        assert store.get_by_spi(sa_key(1)).sa.replay == b"replay-1"  # type: ignore[union-attr]
        sas, _ = all_state(store, "gw1", 1)
        assert sas[sa_key(2)].replay == b"replay-2"
        store.put("gw1", 1, [sa_put(1)])
        assert store.get_by_spi(sa_key(1)).sa.replay is None  # type: ignore[union-attr]

    def test_replay_update_of_unknown_sa_changes_nothing(self, store: SaStore) -> None:
        store.put("gw1", 1, [sa_put(1)])
        store.put("gw2", 1, [sa_put(2, "gw2")])
        for bad in (sa_key(3), sa_key(2)):
            with pytest.raises(NotFoundError) as err:
                store.update_replay("gw1", 1, [(sa_key(1), b"new"), (bad, b"x")])
            assert err.value.status == Status.NOT_FOUND
        assert store.get_by_spi(sa_key(1)).sa.replay is None  # type: ignore[union-attr]

    @pytest.mark.parametrize(
        "call",
        [
            lambda s: s.put("bad id!", 1, [sa_put(1)]),
            lambda s: s.put("gw1", -1, [sa_put(1)]),
            lambda s: s.put("gw1", 1, [sa_put(1), sa_put(1)]),
            lambda s: s.put("gw1", 1, [SaPut(sa_key(1), b"")]),
            lambda s: s.put("gw1", 1, [SaPut(sa_key(1), b"x" * 70000)]),
            lambda s: s.put("gw1", 1, [], [PolicyRecord(b"", b"x")]),
        ],
    )
    def test_invalid_request_changes_nothing(self, store: SaStore, call) -> None:  # type: ignore[no-untyped-def]
        with pytest.raises(InvalidRequestError) as err:
            call(store)
        assert err.value.status == Status.INVALID
        assert store.stats().servers == ()

    def test_stats_count_per_server(self, store: SaStore) -> None:
        store.put("gw1", 2, [sa_put(1, pols=2), sa_put(2, pols=2)])
        store.put("gw2", 7, [sa_put(3, "gw2")], [PolicyRecord(b"b", b"x")])
        stats = store.stats()
        assert stats.backend == store.backend_name
        by_id = {s.server_id: (s.epoch, s.sas, s.policies) for s in stats.servers}
        assert by_id == {"gw1": (2, 2, 4), "gw2": (7, 1, 2)}
        assert stats.size_bytes > 0

    def test_summary_counts_the_servers_without_listing_them(self, store: SaStore) -> None:
        store.put("gw1", 2, [sa_put(1)])
        store.claim("gw2")
        summary = store.summary()
        assert summary.backend == store.backend_name
        assert summary.server_count == 2 and summary.size_bytes > 0


@pytest.mark.parametrize(
    "bad",
    [("x", "192.0.2.1", 50), (1, "nope", 50), (2**32, "192.0.2.1", 50), (1, "192.0.2.1", "gre")],
)
def test_sa_key_validation(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidRequestError):
        SaKey.make(*bad)
