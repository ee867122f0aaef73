"""The SQLite backend: the backend contract plus file mode, schema and transactions."""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from change_feed_contract import ChangeFeedContract
from ike_sa_contract import IkeSaContract, ike
from store_contract import BackendContract, sa_key, sa_put, test_sa_key_validation

from appliance.store import sqlite as sqlite_backend
from appliance.store.base import (
    Batch,
    IkeSaRecord,
    InvalidRequestError,
    PolicyRecord,
    SchemaVersionError,
    StoreUnavailableError,
)
from appliance.store.sqlite import SCHEMA_VERSION, SqliteStore

pytestmark = pytest.mark.unit

__all__ = ["test_sa_key_validation"]

_T = TypeVar("_T")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.db")
    yield s
    s.close()


class TestSqliteContract(BackendContract, ChangeFeedContract, IkeSaContract):
    pass


def test_files_are_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        s = SqliteStore(tmp_path / "s.db")
        s.put("gw1", 1, [sa_put(1)])
    finally:
        os.umask(old)
    for name in ("s.db", "s.db-wal", "s.db-shm"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    s.close()


def test_world_readable_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    path.chmod(0o644)
    with pytest.raises(StoreUnavailableError, match="chmod 600"):
        SqliteStore(path)


def test_wal_and_full_sync(store: SqliteStore) -> None:
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_schema_version_is_recorded_and_reopen_keeps_data(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "s.db")
    s.put("gw1", 1, [sa_put(1)])
    s.close()
    s = SqliteStore(tmp_path / "s.db")
    assert s.schema_version == SCHEMA_VERSION == 3
    assert s.get_by_spi(sa_key(1)) is not None
    s.close()


def test_version_1_store_migrates_with_its_entries_at_revision_1(tmp_path: Path) -> None:
    """A store written before the change feed: its entries are the changes since 0."""
    path = tmp_path / "v1.db"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    db = sqlite3.connect(path)
    for statement in sqlite_backend._SCHEMA_V1.split(";"):
        db.execute(statement)
    db.execute("INSERT INTO server VALUES ('gw1', 3)")
    db.execute("INSERT INTO sa VALUES (50, '192.0.2.1', 4097, 'gw1', x'01', NULL, NULL)")
    db.execute("INSERT INTO policy VALUES ('gw1', x'50', x'02')")
    db.execute("INSERT INTO sa_policy VALUES ('gw1', 50, '192.0.2.1', 4097, x'50')")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    s = SqliteStore(path)
    assert s.schema_version == SCHEMA_VERSION
    assert (s.revision("gw1"), s.epoch("gw1")) == (1, 3)
    (page,) = s.iter_changes("gw1", 0)
    assert [sa.key for sa in page.sas] == [sa_key(1)]
    assert page.sas[0].policy_ids == (b"P",)
    assert [p.policy_id for p in page.policies] == [b"P"]
    assert s.get_changes("gw1", 1).sas == ()
    s.put("gw1", 3, [sa_put(2)])
    assert [sa.key for sa in s.get_changes("gw1", 1).sas] == [sa_key(2)]
    s.close()


def test_version_2_store_migrates_keeping_its_entries_and_revisions(tmp_path: Path) -> None:
    """A store written before IKE SA records: the SAs, policies, markers and revision stay."""
    path = tmp_path / "v2.db"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    db = sqlite3.connect(path)
    for script in (sqlite_backend._SCHEMA_V1, sqlite_backend._SCHEMA_V2):
        for statement in script.split(";"):
            db.execute(statement)
    db.execute("INSERT INTO server VALUES ('gw1', 3, 7, 2)")
    # The per-SA IKE slot of version 1 held a value: it is no longer read.
    db.execute("INSERT INTO sa VALUES (50, '192.0.2.1', 4097, 'gw1', x'01', x'0a', x'1e', 6)")
    db.execute("INSERT INTO policy VALUES ('gw1', x'50', x'02', 5)")
    db.execute("INSERT INTO sa_policy VALUES ('gw1', 50, '192.0.2.1', 4097, x'50')")
    db.execute("INSERT INTO sa_removed VALUES ('gw1', 50, '192.0.2.1', 4098, 7)")
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    s = SqliteStore(path)
    assert s.schema_version == SCHEMA_VERSION == 3
    assert (s.revision("gw1"), s.epoch("gw1")) == (7, 3)
    found = s.get_by_spi(sa_key(1))
    assert found is not None and found.ike_sa is None
    assert (found.sa.entry, found.sa.replay, found.sa.policy_ids) == (b"\x01", b"\x0a", (b"P",))
    changes = s.get_changes("gw1", 5)
    assert [sa.key for sa in changes.sas] == [sa_key(1)] and changes.policies == ()
    assert changes.removed_sas == (sa_key(2),) and changes.ike_sas == ()
    (gw1,) = s.stats().servers
    assert (gw1.sas, gw1.policies, gw1.ike_sas) == (1, 1, 0)
    # The new tables work on the migrated file; a rewrite of the SA clears its old slot.
    s.apply("gw1", 3, Batch(puts=(sa_put(1),), ike_sas=(ike(1, 1),)))
    found = s.get_by_spi(sa_key(1))
    assert found is not None and found.ike_sa == ike(1, 1)
    assert s.get_changes("gw1", 7).ike_sas == (ike(1, 1),)
    s.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT ike_sa FROM sa").fetchall() == [(None,)]
    db.close()


def test_ike_spis_keep_all_64_bits_and_sort_unsigned(store: SqliteStore) -> None:
    """SQLite integers are signed: SPIs with the top bit set round-trip and page in order."""
    spis = [(1, 0), (0x7FFF_FFFF_FFFF_FFFF, 2**64 - 1), (2**63, 0), (2**64 - 1, 2**64 - 1)]
    records = [IkeSaRecord(s, (), b"r") for s in spis]
    store.apply("gw1", 1, Batch(ike_sas=tuple(reversed(records))))
    walked = [r for page in store.iter_server("gw1", 1) for r in page.ike_sas]
    assert walked == records
    assert all(len(page.cursor or b"") <= 64 for page in store.iter_server("gw1", 1))
    assert store.get_page("gw1", store.ike_sa_cursor(spis[1]), 1).ike_sas == (records[2],)
    store.apply("gw1", 1, Batch(delete_ike_sas=(spis[3],)))
    removed = store.get_changes("gw1", 1, store.removed_ike_sa_cursor((0, 1))).removed_ike_sas
    assert removed == (spis[3],)


@pytest.mark.parametrize(
    "cursor", [b"I" + bytes(15), b"I" + bytes(17), b"RI" + bytes(3), b"RI" + bytes(17)]
)
def test_malformed_ike_cursor_is_refused(store: SqliteStore, cursor: bytes) -> None:
    with pytest.raises(InvalidRequestError):
        store.get_page("gw1", cursor)
    with pytest.raises(InvalidRequestError):
        store.get_changes("gw1", 0, cursor)


def test_a_batch_of_absent_deletes_moves_no_revision(store: SqliteStore) -> None:
    store.apply("gw1", 1, Batch(puts=(sa_put(1),), ike_sas=(ike(1, 1),)))
    before = store.revision("gw1")
    store.apply(
        "gw1",
        1,
        Batch(delete_sas=(sa_key(9),), delete_policies=(b"x",), delete_ike_sas=(ike(9).spis,)),
    )
    assert store.revision("gw1") == before
    assert store.get_changes("gw1", before).removed_ike_sas == ()


def test_ike_child_index_follows_the_records(store: SqliteStore) -> None:
    """The lookup index is kept in the write's transaction: no stale CHILD SA is left."""
    store.apply("gw1", 1, Batch(ike_sas=(ike(1, 1, 2), ike(2, 3))))
    store.apply("gw1", 1, Batch(ike_sas=(ike(1, 2, 4),), delete_ike_sas=(ike(2).spis,)))
    rows = store._db.execute("SELECT spi FROM ike_child ORDER BY spi").fetchall()
    assert rows == [(sa_key(2).spi,), (sa_key(4).spi,)]


def test_the_newest_ike_sa_naming_a_child_is_its_ike_sa(store: SqliteStore) -> None:
    """During an IKE rekey both IKE SAs may name a CHILD SA for a moment."""
    store.apply("gw1", 1, Batch(puts=(sa_put(1),), ike_sas=(ike(2, 1),)))
    store.apply("gw1", 1, Batch(ike_sas=(ike(1, 1, record=b"rekeyed"),)))
    found = store.get_by_spi(sa_key(1))
    assert found is not None and found.ike_sa == ike(1, 1, record=b"rekeyed")


def test_a_failed_ike_write_writes_nothing(store: SqliteStore) -> None:
    store.apply("gw1", 1, Batch(ike_sas=(ike(1, 1),), policies=(PolicyRecord(b"p", b"x"),)))
    before = store.revision("gw1")
    store._db.execute(
        "CREATE TRIGGER fail_ike BEFORE INSERT ON ike_child WHEN NEW.spi = 4099 "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )
    with pytest.raises(StoreUnavailableError, match="injected failure"):
        store.apply("gw1", 1, Batch(delete_policies=(b"p",), ike_sas=(ike(1, 2), ike(2, 3))))
    assert store.revision("gw1") == before
    (page,) = list(store.iter_server("gw1"))
    assert page.ike_sas == (ike(1, 1),) and page.policies == (PolicyRecord(b"p", b"x"),)


def test_future_schema_version_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaVersionError, match="newer than this ipsec-ha knows"):
        SqliteStore(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    db.close()


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t(x)")
    db.commit()
    db.close()
    with pytest.raises(SchemaVersionError, match="not an ipsec-ha store"):
        SqliteStore(path)


def test_batch_failing_midway_in_sqlite_writes_nothing(store: SqliteStore) -> None:
    """A real SQLite failure on the 5th SA of a batch rolls back the first four."""
    store.put("gw1", 1, [sa_put(100)])
    store._db.execute(
        "CREATE TRIGGER fail_spi BEFORE INSERT ON sa WHEN NEW.spi = 4100 "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )
    batch = [sa_put(n, pols=2) for n in range(10)]  # spi 0x1004 = 4100 is the 5th
    with pytest.raises(StoreUnavailableError, match="injected failure"):
        store.put("gw1", 2, batch)
    assert all(store.get_by_spi(sa_key(n)) is None for n in range(10))
    assert store.epoch("gw1") == 1  # the epoch raise rolled back too
    assert store.stats().servers[0].policies == 1


def _in_thread(fn: Callable[[], _T]) -> _T:
    """``fn()`` on another thread (as the server's reader threads call the store)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result(timeout=30)


def test_reads_from_other_threads_see_only_committed_data_during_a_group(
    store: SqliteStore,
) -> None:
    store.put("gw1", 1, [sa_put(1)])
    with store.group():
        store.put("gw1", 2, [sa_put(2)])
        store.claim("gw3")
        # The group's own thread sees its uncommitted writes (SA_Stor deletes rely on it) ...
        assert store.get_by_spi(sa_key(2)) is not None and store.epoch("gw1") == 2
        # ... a reader thread sees the last commit, at once, though the group holds the lock.
        seen = _in_thread(
            lambda: (
                store.get_by_spi(sa_key(1)),
                store.get_by_spi(sa_key(2)),
                store.epoch("gw1"),
                [s.server_id for s in store.stats().servers],
                [sa.key for sa in store.get_page("gw1").sas],
            )
        )
        one, two, epoch, servers, keys = seen
        assert one is not None and one.sa.entry == b"sa 1 of gw1"
        assert (two, epoch, servers, keys) == (None, 1, ["gw1"], [sa_key(1)])
    after = _in_thread(lambda: (store.get_by_spi(sa_key(2)), store.epoch("gw1")))
    assert after[0] is not None and after[1] == 2


def test_reads_do_not_wait_for_another_connection_holding_the_write_lock(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.put("gw1", 1, [sa_put(1)])
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None, timeout=0.1)
    other.execute("BEGIN IMMEDIATE")
    other.execute("UPDATE server SET epoch=9")
    try:
        found = _in_thread(lambda: store.get_by_spi(sa_key(1)))
        assert found is not None and found.epoch == 1
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.close()


def test_reader_connections_are_read_only_and_closed_with_the_store(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.put("gw1", 1, [sa_put(1)])
    reader = _in_thread(lambda: (store.stats(), store._reader())[1])
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.execute("DELETE FROM sa")
    store.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        reader.execute("SELECT 1")
