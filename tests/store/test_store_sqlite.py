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
from store_contract import BackendContract, sa_key, sa_put, test_sa_key_validation

from appliance.store import sqlite as sqlite_backend
from appliance.store.base import SchemaVersionError, StoreUnavailableError
from appliance.store.sqlite import SCHEMA_VERSION, SqliteStore

pytestmark = pytest.mark.unit

__all__ = ["test_sa_key_validation"]

_T = TypeVar("_T")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.db")
    yield s
    s.close()


class TestSqliteContract(BackendContract, ChangeFeedContract):
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
    assert s.schema_version == SCHEMA_VERSION == 2
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
    assert s.schema_version == 2
    assert (s.revision("gw1"), s.epoch("gw1")) == (1, 3)
    (page,) = s.iter_changes("gw1", 0)
    assert [sa.key for sa in page.sas] == [sa_key(1)]
    assert page.sas[0].policy_ids == (b"P",)
    assert [p.policy_id for p in page.policies] == [b"P"]
    assert s.get_changes("gw1", 1).sas == ()
    s.put("gw1", 3, [sa_put(2)])
    assert [sa.key for sa in s.get_changes("gw1", 1).sas] == [sa_key(2)]
    s.close()


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
