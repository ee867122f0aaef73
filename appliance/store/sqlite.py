"""The embedded SQLite backend (the default): one file, mode 0600, WAL.

Durability: the database runs in WAL mode with ``synchronous=FULL``, so
SQLite fsyncs the WAL at every commit before ``COMMIT`` returns, and the
server acknowledges a message only after its transaction committed.  An
acknowledged entry therefore survives not only ``kill -9`` of the server
(which ``NORMAL`` would also give: the WAL is in the page cache) but also a
crash or power loss of the store host, which ``NORMAL`` does not (the last
commits may roll back).  A store whose job is to outlive a failed gateway
should not lose what it acknowledged to a failure of its own host; the cost is
one fsync per message, and a message carries a batch of entries.

Each mutating call is one ``BEGIN IMMEDIATE`` ... ``COMMIT``: all entries of a
message or none of them.

Readers and the writer: writes (and :meth:`SqliteStore.group`) go through
one connection, serialised by a lock.  Reads from any other thread, or from
the writer's thread outside a group, use a connection of their own, one per
thread, ``query_only``, each read in one read transaction: in WAL mode such
a reader sees the last committed state (never a half-applied message, never
a group that has not committed) and waits neither for the writer's lock nor
for its fsync.  Reads inside a group see the group's own writes (the
service checks an SA_Stor's deletes against them).  Page cursors are keys,
so a cursor from one connection resumes on any other.

The schema version lives in ``PRAGMA user_version``; :data:`SCHEMA_VERSION`
is the one this code writes.  Older versions are migrated step by step in one
transaction; a newer one is refused (it was written by a newer ipsec-ha).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from appliance.store.base import (
    MAX_CURSOR_LEN,
    MAX_POLICY_ID_LEN,
    Batch,
    ChangePage,
    IkeSaRecord,
    IkeSpis,
    InvalidRequestError,
    NotFoundError,
    Page,
    PolicyRecord,
    SaKey,
    SaLookup,
    SaRecord,
    SaStore,
    SchemaVersionError,
    ServerStats,
    SpiCollisionError,
    StaleEpochError,
    StoreStats,
    StoreUnavailableError,
    check_batch,
    check_changes_held,
    check_epoch,
    check_epoch_raise,
    check_revision,
    check_server_id,
)

SCHEMA_VERSION = 3

_SCHEMA_V1 = """
CREATE TABLE server (
    server_id TEXT PRIMARY KEY,
    epoch     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE sa (
    proto     INTEGER NOT NULL,
    dst       TEXT    NOT NULL,
    spi       INTEGER NOT NULL,
    server_id TEXT    NOT NULL REFERENCES server(server_id),
    entry     BLOB    NOT NULL,
    replay    BLOB,
    ike_sa    BLOB,
    PRIMARY KEY (proto, dst, spi)
) WITHOUT ROWID;
CREATE INDEX sa_by_server ON sa(server_id, proto, dst, spi);
CREATE INDEX sa_by_spi ON sa(spi);
CREATE TABLE policy (
    server_id TEXT NOT NULL REFERENCES server(server_id),
    policy_id BLOB NOT NULL,
    entry     BLOB NOT NULL,
    PRIMARY KEY (server_id, policy_id)
) WITHOUT ROWID;
CREATE TABLE sa_policy (
    server_id TEXT    NOT NULL,
    proto     INTEGER NOT NULL,
    dst       TEXT    NOT NULL,
    spi       INTEGER NOT NULL,
    policy_id BLOB    NOT NULL,
    PRIMARY KEY (server_id, proto, dst, spi, policy_id)
) WITHOUT ROWID;
CREATE INDEX sa_policy_by_policy ON sa_policy(server_id, policy_id);
"""

# Version 2: the change feed. Every write to a server ID takes the next ``revision``
# and stamps the rows it puts (``rev``); removals leave a marker until they are
# stored again or forgotten (beyond ``removal_history``; ``horizon`` is then the
# newest forgotten one). Rows of version 1 count as written at revision 1.
_SCHEMA_V2 = """
ALTER TABLE server ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
ALTER TABLE server ADD COLUMN horizon INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sa ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
ALTER TABLE policy ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
UPDATE server SET revision = 1;
UPDATE sa SET rev = 1;
UPDATE policy SET rev = 1;
CREATE INDEX sa_by_rev ON sa(server_id, rev);
CREATE INDEX policy_by_rev ON policy(server_id, rev);
CREATE TABLE sa_removed (
    server_id TEXT    NOT NULL,
    proto     INTEGER NOT NULL,
    dst       TEXT    NOT NULL,
    spi       INTEGER NOT NULL,
    rev       INTEGER NOT NULL,
    PRIMARY KEY (server_id, proto, dst, spi)
) WITHOUT ROWID;
CREATE INDEX sa_removed_by_rev ON sa_removed(server_id, rev);
CREATE TABLE policy_removed (
    server_id TEXT    NOT NULL,
    policy_id BLOB    NOT NULL,
    rev       INTEGER NOT NULL,
    PRIMARY KEY (server_id, policy_id)
) WITHOUT ROWID;
CREATE INDEX policy_removed_by_rev ON policy_removed(server_id, rev);
"""

# Version 3: IKE SA records. SQLite integers are signed 64-bit, so the two 64-bit IKE SPIs
# are kept as 8-byte big-endian BLOBs: they round-trip, and BLOBs compare bytewise, so
# they sort as the unsigned SPIs do (the page cursor's order). ``child_spis`` is the CHILD
# SA SPIs, 4 bytes big-endian each, in the caller's order; ``ike_child`` indexes them for a
# lookup by an SA's SPI and is written in the same transaction as ``ike_sa``. ``ike_sa``
# keeps its rowid: its records (key material and IKE state) are too large for the B-tree
# of a WITHOUT ROWID table. The ``sa.ike_sa`` column of version 1 is no longer used.
_SCHEMA_V3 = """
CREATE TABLE ike_sa (
    server_id  TEXT    NOT NULL REFERENCES server(server_id),
    spi_i      BLOB    NOT NULL,
    spi_r      BLOB    NOT NULL,
    child_spis BLOB    NOT NULL,
    record     BLOB    NOT NULL,
    rev        INTEGER NOT NULL,
    PRIMARY KEY (server_id, spi_i, spi_r)
);
CREATE INDEX ike_sa_by_rev ON ike_sa(server_id, rev);
CREATE TABLE ike_removed (
    server_id TEXT    NOT NULL,
    spi_i     BLOB    NOT NULL,
    spi_r     BLOB    NOT NULL,
    rev       INTEGER NOT NULL,
    PRIMARY KEY (server_id, spi_i, spi_r)
) WITHOUT ROWID;
CREATE INDEX ike_removed_by_rev ON ike_removed(server_id, rev);
CREATE TABLE ike_child (
    server_id TEXT    NOT NULL,
    spi       INTEGER NOT NULL,
    spi_i     BLOB    NOT NULL,
    spi_r     BLOB    NOT NULL,
    PRIMARY KEY (server_id, spi, spi_i, spi_r)
) WITHOUT ROWID;
CREATE INDEX ike_child_by_ike ON ike_child(server_id, spi_i, spi_r);
"""


def _run_statements(db: sqlite3.Connection, script: str) -> None:
    # Not executescript(): it commits first, and a migration must be one transaction.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


#: Step ``n`` brings a database from version ``n`` to ``n + 1``.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    0: lambda db: _run_statements(db, _SCHEMA_V1),
    1: lambda db: _run_statements(db, _SCHEMA_V2),
    2: lambda db: _run_statements(db, _SCHEMA_V3),
}

_FILE_MODE = 0o600


def _open_private(path: Path) -> None:
    """Create the database file 0600 before SQLite opens it; refuse a readable one."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
    except OSError as exc:
        raise StoreUnavailableError(f"cannot open store database {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise StoreUnavailableError(f"store database {path} is not a regular file")
    if st.st_mode & 0o077:
        raise StoreUnavailableError(
            f"store database {path} is readable by group/others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it"
        )


@contextlib.contextmanager
def _private_umask() -> Iterator[None]:
    # SQLite creates -wal and -shm itself; it copies the database's mode, and
    # the umask makes sure even a future SQLite cannot widen it.
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _sa_cursor(proto: int, dst: str, spi: int) -> bytes:
    return b"S" + bytes([proto]) + spi.to_bytes(4, "big") + dst.encode()


def _spi64(spi: int) -> bytes:
    """An IKE SPI as the database keeps it (see :data:`_SCHEMA_V3`)."""
    return spi.to_bytes(8, "big")


def _ike_row_key(server_id: str, spis: IkeSpis) -> tuple[str, bytes, bytes]:
    return server_id, _spi64(spis[0]), _spi64(spis[1])


def _ike_cursor(spi_i: bytes, spi_r: bytes) -> bytes:
    return b"I" + spi_i + spi_r


def _ike_record(spi_i: bytes, spi_r: bytes, children: bytes, record: bytes) -> IkeSaRecord:
    """An ``ike_sa`` row as the record it stores."""
    return IkeSaRecord(
        (int.from_bytes(spi_i, "big"), int.from_bytes(spi_r, "big")),
        struct.unpack(f">{len(children) // 4}I", children),
        record,
    )


def _decode_cursor(cursor: bytes) -> tuple[str, list[object]]:
    """Cursors are compact (at most 64 bytes): ``S`` proto spi dst, ``P`` policy ID, or
    ``I`` initiator SPI responder SPI (8 bytes each; ``I`` alone: the first IKE SA).

    A change walk's cursors in its removals carry an ``R`` in front.
    """
    if cursor[:1] == b"R" and len(cursor) > 1:
        phase, key = _decode_cursor(cursor[1:])
        return "removed-" + phase, key
    if cursor[:1] == b"S" and 6 < len(cursor) <= MAX_CURSOR_LEN:
        try:
            dst = cursor[6:].decode("ascii")
        except UnicodeDecodeError:
            raise InvalidRequestError("malformed page cursor") from None
        return "sa", [cursor[1], dst, int.from_bytes(cursor[2:6], "big")]
    if cursor[:1] == b"P" and len(cursor) <= MAX_POLICY_ID_LEN + 1:
        return "pol", [cursor[1:].hex()]
    if cursor == b"I":
        return "ike", [b"", b""]
    if cursor[:1] == b"I" and len(cursor) == 17:
        return "ike", [cursor[1:9], cursor[9:]]
    raise InvalidRequestError("malformed page cursor")


class _ChangeWalk:
    """One page of a change walk: changed SAs, policies and IKE SAs, then removed SAs,
    policies and IKE SAs, each in key order, ``limit`` entries in all; ``cursor`` resumes it."""

    _PHASES = ("sa", "pol", "ike", "removed-sa", "removed-pol", "removed-ike")

    def __init__(self, db: sqlite3.Connection, server_id: str, since: int, limit: int) -> None:
        self.db, self.server_id, self.since, self.left = db, server_id, since, limit
        self.sas: list[SaRecord] = []
        self.policies: list[PolicyRecord] = []
        self.ike_sas: list[IkeSaRecord] = []
        self.removed_sas: list[SaKey] = []
        self.removed_policies: list[bytes] = []
        self.removed_ike_sas: list[IkeSpis] = []
        self.cursor: bytes | None = None

    def run(self, phase: str, key: list[object]) -> None:
        if phase not in self._PHASES:
            raise InvalidRequestError("malformed page cursor")
        start = self._PHASES.index(phase)
        for i, name in enumerate(self._PHASES[start:], start):
            if self.since == 0 and name.startswith("removed-"):
                return  # at revision 0 the server held nothing: nothing since was removed
            after = key if i == start else None
            kind = name.rsplit("-", 1)[-1]
            rows = {"sa": self._sa_rows, "pol": self._pol_rows, "ike": self._ike_rows}[kind]
            last = rows(name, after)
            if last is not None:  # the page is full
                self.cursor = last
                return

    def _sa_rows(self, phase: str, after: list[object] | None) -> bytes | None:
        table = "sa" if phase == "sa" else "sa_removed"
        columns = "proto, dst, spi, entry, replay" if phase == "sa" else "proto, dst, spi"
        rows = self.db.execute(
            f"SELECT {columns} FROM {table} WHERE server_id=? AND rev > ? "
            "AND (proto, dst, spi) > (?, ?, ?) ORDER BY proto, dst, spi LIMIT ?",
            (self.server_id, self.since, *(after or [-1, "", -1]), self.left),
        ).fetchall()
        for row in rows:
            k = SaKey(row[2], row[1], row[0])
            if phase == "sa":
                links = self.db.execute(
                    "SELECT policy_id FROM sa_policy WHERE server_id=? AND proto=? AND dst=? "
                    "AND spi=? ORDER BY policy_id",
                    (self.server_id, row[0], row[1], row[2]),
                ).fetchall()
                self.sas.append(SaRecord(k, row[3], tuple(p for (p,) in links), row[4]))
            else:
                self.removed_sas.append(k)
        self.left -= len(rows)
        if self.left:
            return None
        # A full page ends on a row of this phase (``left`` was not 0 before it).
        return (b"" if phase == "sa" else b"R") + _sa_cursor(*rows[-1][:3])

    def _pol_rows(self, phase: str, after: list[object] | None) -> bytes | None:
        table = "policy" if phase == "pol" else "policy_removed"
        columns = "policy_id, entry" if phase == "pol" else "policy_id"
        rows = self.db.execute(
            f"SELECT {columns} FROM {table} WHERE server_id=? AND rev > ? AND policy_id > ? "
            "ORDER BY policy_id LIMIT ?",
            (self.server_id, self.since, bytes.fromhex(str((after or [""])[0])), self.left),
        ).fetchall()
        if phase == "pol":
            self.policies += [PolicyRecord(pid, entry) for pid, entry in rows]
        else:
            self.removed_policies += [pid for (pid,) in rows]
        self.left -= len(rows)
        if self.left:
            return None
        return (b"P" if phase == "pol" else b"RP") + bytes(rows[-1][0])

    def _ike_rows(self, phase: str, after: list[object] | None) -> bytes | None:
        table = "ike_sa" if phase == "ike" else "ike_removed"
        columns = "spi_i, spi_r, child_spis, record" if phase == "ike" else "spi_i, spi_r"
        rows = self.db.execute(
            f"SELECT {columns} FROM {table} WHERE server_id=? AND rev > ? "
            "AND (spi_i, spi_r) > (?, ?) ORDER BY spi_i, spi_r LIMIT ?",
            (self.server_id, self.since, *(after or [b"", b""]), self.left),
        ).fetchall()
        if phase == "ike":
            self.ike_sas += [_ike_record(*row) for row in rows]
        else:
            self.removed_ike_sas += [
                (int.from_bytes(i, "big"), int.from_bytes(r, "big")) for i, r in rows
            ]
        self.left -= len(rows)
        if self.left:
            return None
        return (b"" if phase == "ike" else b"R") + _ike_cursor(*rows[-1][:2])


class SqliteStore(SaStore):
    """The SA store in one SQLite file."""

    backend_name = "sqlite"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # The thread inside group(), if any; its reads use the writer's connection.
        self._group_thread: int | None = None
        self._write_lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        _open_private(self.path)
        try:
            with _private_umask():
                self._db = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=10.0
                )
                self._db.execute("PRAGMA journal_mode=WAL").fetchone()
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("PRAGMA foreign_keys=ON")
                self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailableError(f"store database {self.path}: {exc}") from None

    # -- schema ---------------------------------------------------------------

    def _migrate(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"store database {self.path} has schema version {version}, newer than "
                    f"this ipsec-ha knows ({SCHEMA_VERSION}); upgrade ipsec-ha or use another file"
                )
            if version == 0 and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise SchemaVersionError(
                    f"{self.path} is an SQLite database but not an ipsec-ha store"
                )
            while version < SCHEMA_VERSION:
                _MIGRATIONS[version](db)
                version += 1
                db.execute(f"PRAGMA user_version={version}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @property
    def schema_version(self) -> int:
        with self._read() as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])

    # -- transactions ---------------------------------------------------------

    @contextlib.contextmanager
    def group(self) -> Iterator[None]:
        """Group commit: calls inside share one transaction and one fsync.

        Each mutating call inside is still all-or-nothing (a savepoint of its
        own); nothing inside is durable until the group commits, so the caller
        acknowledges only after the ``with`` block ends without an error.
        """
        if self._in_group():
            yield
            return
        with self._write_lock:
            db = self._db
            self._begin_immediate(db)
            self._group_thread = threading.get_ident()
            try:
                yield
            except BaseException:
                self._group_thread = None
                db.execute("ROLLBACK")
                raise
            self._group_thread = None
            self._commit(db)

    def _begin_immediate(self, db: sqlite3.Connection) -> None:
        """Take the write lock now, so that a busy database is reported before any work."""
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(f"store database {self.path}: {exc}") from None

    def _commit(self, db: sqlite3.Connection) -> None:
        """Commit, or roll back and report: nothing half-committed is ever acknowledged."""
        try:
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(sqlite3.DatabaseError):
                db.execute("ROLLBACK")
            raise StoreUnavailableError(f"store database {self.path}: {exc}") from None

    def _in_group(self) -> bool:
        return self._group_thread == threading.get_ident()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        if self._in_group():
            # Inside a group commit: this call's changes stand or fall together.
            db.execute("SAVEPOINT message")
            try:
                yield db
            except sqlite3.Error as exc:
                db.execute("ROLLBACK TO message")
                db.execute("RELEASE message")
                raise StoreUnavailableError(f"store database {self.path}: {exc}") from None
            except BaseException:
                db.execute("ROLLBACK TO message")
                db.execute("RELEASE message")
                raise
            db.execute("RELEASE message")
            return
        with self._write_lock:
            self._begin_immediate(db)
            try:
                yield db
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                raise StoreUnavailableError(f"store database {self.path}: {exc}") from None
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._commit(db)

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (opened on first use, closed with the store)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            return db
        try:
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            db.execute("PRAGMA query_only=ON")
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailableError(f"store database {self.path}: {exc}") from None
        with self._readers_lock:
            if self._closed:
                db.close()
                raise StoreUnavailableError(f"store database {self.path} is closed")
            self._readers.append(db)
        self._local.db = db
        return db

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction (a page and its links agree), or the group's own view."""
        if self._in_group():
            yield self._db
            return
        db = self._reader()
        try:
            db.execute("BEGIN")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(f"store database {self.path}: {exc}") from None
        try:
            yield db
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(f"store database {self.path}: {exc}") from None
        finally:
            db.execute("COMMIT")

    def _current_epoch(self, db: sqlite3.Connection, server_id: str) -> int | None:
        row = db.execute("SELECT epoch FROM server WHERE server_id=?", (server_id,)).fetchone()
        return None if row is None else int(row[0])

    def _check_and_raise_epoch(self, db: sqlite3.Connection, server_id: str, epoch: int) -> None:
        current = self._current_epoch(db, server_id)
        if current is not None and epoch < current:
            raise StaleEpochError(
                f"server {server_id}: write with epoch {epoch} refused, "
                f"the current epoch is {current} (another node took over)",
                current,
            )
        check_epoch_raise(server_id, current or 0, epoch)
        if current is None:
            db.execute("INSERT INTO server(server_id, epoch) VALUES (?, ?)", (server_id, epoch))
        elif epoch > current:
            db.execute("UPDATE server SET epoch=? WHERE server_id=?", (epoch, server_id))

    # -- interface ------------------------------------------------------------

    def epoch(self, server_id: str) -> int:
        check_server_id(server_id)
        with self._read() as db:
            return self._current_epoch(db, server_id) or 0

    def claim(self, server_id: str, epoch: int | None = None) -> int:
        check_server_id(server_id)
        if epoch is not None:
            check_epoch(epoch)
        with self._transaction() as db:
            current = self._current_epoch(db, server_id)
            new = (current or 0) + 1 if epoch is None else epoch
            check_epoch_raise(server_id, current or 0, new)
            if current is not None and new <= current:
                raise StaleEpochError(
                    f"server {server_id}: claim of epoch {new} refused, "
                    f"the current epoch is already {current}",
                    current,
                )
            db.execute(
                "INSERT INTO server(server_id, epoch) VALUES (?, ?) "
                "ON CONFLICT(server_id) DO UPDATE SET epoch=excluded.epoch",
                (server_id, new),
            )
        return new

    def apply(self, server_id: str, epoch: int, batch: Batch) -> None:
        check_server_id(server_id)
        check_epoch(epoch)
        check_batch(batch)
        delete_sas = list(dict.fromkeys(batch.delete_sas))
        delete_pids = list(dict.fromkeys(batch.delete_policies))
        delete_ikes = [_ike_row_key(server_id, s) for s in dict.fromkeys(batch.delete_ike_sas)]
        with self._transaction() as db:
            self._check_and_raise_epoch(db, server_id, epoch)
            owners = self._owners(
                db, [sa.key for sa in batch.puts] + delete_sas + [k for k, _ in batch.replay]
            )
            for sa in batch.puts:
                owner = owners.get(sa.key)
                if owner is not None and owner != server_id:
                    raise SpiCollisionError(
                        f"SA {sa.key} belongs to server {owner}, not {server_id}: "
                        "SPI collisions must not occur",
                        sa.key,
                    )
            for k in delete_sas:
                owner = owners.get(k)
                if owner is not None and owner != server_id:
                    raise SpiCollisionError(
                        f"SA {k} belongs to server {owner}; server {server_id} cannot delete it",
                        k,
                    )
            for k, _ in batch.replay:
                if owners.get(k) != server_id:
                    raise NotFoundError(f"SA {k} of server {server_id} is not in the store")

            if not batch:
                return  # an epoch probe (an empty delete): checked, nothing to change
            # The revision this write takes, if it changes anything: a batch of deletes of
            # absent entries changes nothing, and a follower must not see a revision move
            # without a change behind it.
            rev = self._server_row(db, server_id)[1] + 1
            before = db.total_changes
            removed = self._apply_deletes(db, server_id, rev, delete_sas, delete_pids, delete_ikes)
            self._apply_puts(db, server_id, rev, batch, owners)
            db.executemany(
                "UPDATE sa SET replay=?, rev=? WHERE proto=? AND dst=? AND spi=? AND server_id=?",
                [(r, rev, k.proto, k.dst, k.spi, server_id) for k, r in batch.replay],
            )
            if db.total_changes == before:
                return
            db.execute("UPDATE server SET revision=? WHERE server_id=?", (rev, server_id))
            if removed:
                self._forget_old_removals(db, server_id)

    def _apply_deletes(
        self,
        db: sqlite3.Connection,
        server_id: str,
        rev: int,
        delete_sas: Sequence[SaKey],
        delete_pids: Sequence[bytes],
        delete_ikes: Sequence[tuple[str, bytes, bytes]],
    ) -> int:
        """A batch's deletes; the number of removal markers they left."""
        rows = [(server_id, k.proto, k.dst, k.spi) for k in delete_sas]
        # A removal leaves a marker for the change feed, if there was something to remove.
        removed = db.total_changes
        db.executemany(
            "INSERT OR REPLACE INTO sa_removed(server_id, proto, dst, spi, rev) "
            "SELECT server_id, proto, dst, spi, ? FROM sa "
            "WHERE server_id=? AND proto=? AND dst=? AND spi=?",
            [(rev, *row) for row in rows],
        )
        db.executemany(
            "INSERT OR REPLACE INTO policy_removed(server_id, policy_id, rev) "
            "SELECT server_id, policy_id, ? FROM policy WHERE server_id=? AND policy_id=?",
            [(rev, server_id, pid) for pid in delete_pids],
        )
        db.executemany(
            "INSERT OR REPLACE INTO ike_removed(server_id, spi_i, spi_r, rev) "
            "SELECT server_id, spi_i, spi_r, ? FROM ike_sa "
            "WHERE server_id=? AND spi_i=? AND spi_r=?",
            [(rev, *row) for row in delete_ikes],
        )
        removed = db.total_changes - removed
        db.executemany(
            "DELETE FROM sa_policy WHERE server_id=? AND proto=? AND dst=? AND spi=?", rows
        )
        db.executemany("DELETE FROM sa WHERE server_id=? AND proto=? AND dst=? AND spi=?", rows)
        prow = [(server_id, pid) for pid in delete_pids]
        db.executemany("DELETE FROM sa_policy WHERE server_id=? AND policy_id=?", prow)
        db.executemany("DELETE FROM policy WHERE server_id=? AND policy_id=?", prow)
        db.executemany(
            "DELETE FROM ike_child WHERE server_id=? AND spi_i=? AND spi_r=?", delete_ikes
        )
        db.executemany("DELETE FROM ike_sa WHERE server_id=? AND spi_i=? AND spi_r=?", delete_ikes)
        return removed

    def _apply_puts(
        self,
        db: sqlite3.Connection,
        server_id: str,
        rev: int,
        batch: Batch,
        owners: dict[SaKey, str],
    ) -> None:
        """A batch's puts: SAs with their policies, standalone policies, IKE SAs."""
        pol_rows = [(server_id, p.policy_id, p.entry, rev) for p in batch.policies]
        link_rows = []
        for sa in batch.puts:
            k = sa.key
            for p in sa.policies:
                pol_rows.append((server_id, p.policy_id, p.entry, rev))
                link_rows.append((server_id, k.proto, k.dst, k.spi, p.policy_id))
        db.executemany(
            "INSERT INTO policy(server_id, policy_id, entry, rev) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(server_id, policy_id) "
            "DO UPDATE SET entry=excluded.entry, rev=excluded.rev",
            pol_rows,
        )
        # Stored again: a change now, no longer a removal.
        db.executemany(
            "DELETE FROM policy_removed WHERE server_id=? AND policy_id=?",
            [row[:2] for row in pol_rows],
        )
        db.executemany(
            "DELETE FROM sa_removed WHERE server_id=? AND proto=? AND dst=? AND spi=?",
            [(server_id, sa.key.proto, sa.key.dst, sa.key.spi) for sa in batch.puts],
        )
        db.executemany(
            "DELETE FROM sa_policy WHERE server_id=? AND proto=? AND dst=? AND spi=?",
            # Only a replaced SA has old policy links to drop.
            [
                (server_id, sa.key.proto, sa.key.dst, sa.key.spi)
                for sa in batch.puts
                if sa.key in owners
            ],
        )
        # The ``ike_sa`` column of version 1 is left out: a rewritten SA clears it.
        db.executemany(
            "INSERT OR REPLACE INTO sa(proto, dst, spi, server_id, entry, replay, rev) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (sa.key.proto, sa.key.dst, sa.key.spi, server_id, sa.entry, sa.replay, rev)
                for sa in batch.puts
            ],
        )
        db.executemany("INSERT OR IGNORE INTO sa_policy VALUES (?, ?, ?, ?, ?)", link_rows)

        ike_keys = [_ike_row_key(server_id, ike.spis) for ike in batch.ike_sas]
        db.executemany(
            "DELETE FROM ike_removed WHERE server_id=? AND spi_i=? AND spi_r=?", ike_keys
        )
        # A record replaces the stored one whole: its CHILD SAs too.
        db.executemany("DELETE FROM ike_child WHERE server_id=? AND spi_i=? AND spi_r=?", ike_keys)
        db.executemany(
            "INSERT OR REPLACE INTO ike_sa(server_id, spi_i, spi_r, child_spis, record, rev) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (*key, struct.pack(f">{len(ike.child_spis)}I", *ike.child_spis), ike.record, rev)
                for key, ike in zip(ike_keys, batch.ike_sas, strict=True)
            ],
        )
        db.executemany(
            "INSERT INTO ike_child(server_id, spi, spi_i, spi_r) VALUES (?, ?, ?, ?)",
            [
                (server_id, child, spi_i, spi_r)
                for (_, spi_i, spi_r), ike in zip(ike_keys, batch.ike_sas, strict=True)
                for child in ike.child_spis
            ],
        )

    def _forget_old_removals(self, db: sqlite3.Connection, server_id: str) -> None:
        """Keep at most ``removal_history`` removal markers of each kind per server ID.

        The newest forgotten revision becomes the horizon: changes since an
        older revision can no longer be told (``RevisionGoneError``).
        """
        for table in ("sa_removed", "policy_removed", "ike_removed"):
            cut = db.execute(
                f"SELECT rev FROM {table} WHERE server_id=? ORDER BY rev DESC LIMIT 1 OFFSET ?",
                (server_id, self.removal_history),
            ).fetchone()
            if cut is None:
                continue
            db.execute(f"DELETE FROM {table} WHERE server_id=? AND rev <= ?", (server_id, cut[0]))
            db.execute(
                "UPDATE server SET horizon = max(horizon, ?) WHERE server_id=?",
                (cut[0], server_id),
            )

    def _owners(self, db: sqlite3.Connection, keys: Sequence[SaKey]) -> dict[SaKey, str]:
        owners: dict[SaKey, str] = {}
        # One query per few hundred keys (row values in an IN list), not one per key.
        for i in range(0, len(keys), 300):
            chunk = keys[i : i + 300]
            marks = ",".join("(?,?,?)" for _ in chunk)
            params = [v for k in chunk for v in (k.proto, k.dst, k.spi)]
            for proto, dst, spi, owner in db.execute(
                f"SELECT proto, dst, spi, server_id FROM sa WHERE (proto, dst, spi) IN ({marks})",
                params,
            ):
                owners[SaKey(spi, dst, proto)] = owner
        return owners

    def keys_for_spi(self, server_id: str, spi: int, proto: int) -> list[SaKey]:
        with self._read() as db:
            rows = db.execute(
                "SELECT dst FROM sa WHERE spi=? AND proto=? AND server_id=? ORDER BY dst",
                (spi, proto, server_id),
            ).fetchall()
        return [SaKey(spi, dst, proto) for (dst,) in rows]

    def sa_cursor(self, key: SaKey) -> bytes:
        return _sa_cursor(key.proto, key.dst, key.spi)

    def policy_cursor(self, policy_id: bytes) -> bytes:
        return b"P" + policy_id

    def ike_sa_cursor(self, spis: IkeSpis) -> bytes:
        return _ike_cursor(_spi64(spis[0]), _spi64(spis[1]))

    def get_page(self, server_id: str, cursor: bytes | None = None, limit: int = 256) -> Page:
        check_server_id(server_id)
        if not 0 < limit <= 100_000:
            raise InvalidRequestError("page limit must be 1..100000")
        phase, key = ("sa", [-1, "", -1]) if cursor is None else _decode_cursor(cursor)
        if phase not in ("sa", "pol", "ike"):
            raise InvalidRequestError("malformed page cursor")
        with self._read() as db:
            epoch, revision, _ = self._server_row(db, server_id)
            sas: list[SaRecord] = []
            policies: list[PolicyRecord] = []
            if phase == "sa":
                rows = db.execute(
                    "SELECT proto, dst, spi, entry, replay FROM sa "
                    "WHERE server_id=? AND (proto, dst, spi) > (?, ?, ?) "
                    "ORDER BY proto, dst, spi LIMIT ?",
                    (server_id, *key, limit),
                ).fetchall()
                links: dict[tuple[int, str, int], list[bytes]] = {}
                if rows:
                    for proto, dst, spi, pid in db.execute(
                        "SELECT proto, dst, spi, policy_id FROM sa_policy WHERE server_id=? "
                        "AND (proto, dst, spi) > (?, ?, ?) AND (proto, dst, spi) <= (?, ?, ?) "
                        "ORDER BY proto, dst, spi, policy_id",
                        (server_id, *key, *rows[-1][:3]),
                    ):
                        links.setdefault((proto, dst, spi), []).append(pid)
                for proto, dst, spi, entry, replay in rows:
                    sas.append(
                        SaRecord(
                            SaKey(spi, dst, proto),
                            entry,
                            tuple(links.get((proto, dst, spi), ())),
                            replay,
                        )
                    )
                if len(rows) == limit:
                    last = rows[-1]
                    return Page(epoch, tuple(sas), (), _sa_cursor(*last[:3]), revision)
                phase, key, limit = "pol", [""], limit - len(rows)
            if phase == "pol":
                after = bytes.fromhex(str(key[0]))
                prow = db.execute(
                    "SELECT policy_id, entry FROM policy WHERE server_id=? AND policy_id > ? "
                    "ORDER BY policy_id LIMIT ?",
                    (server_id, after, limit),
                ).fetchall()
                policies = [PolicyRecord(pid, entry) for pid, entry in prow]
                if len(prow) == limit:
                    pcursor = b"P" + prow[-1][0]
                    return Page(epoch, tuple(sas), tuple(policies), pcursor, revision)
                phase, key, limit = "ike", [b"", b""], limit - len(prow)
            irows = db.execute(
                "SELECT spi_i, spi_r, child_spis, record FROM ike_sa "
                "WHERE server_id=? AND (spi_i, spi_r) > (?, ?) ORDER BY spi_i, spi_r LIMIT ?",
                (server_id, *key, limit),
            ).fetchall()
            ike_sas = tuple(_ike_record(*row) for row in irows)
            next_cursor = _ike_cursor(*irows[-1][:2]) if len(irows) == limit else None
            return Page(epoch, tuple(sas), tuple(policies), next_cursor, revision, ike_sas)

    def _server_row(self, db: sqlite3.Connection, server_id: str) -> tuple[int, int, int]:
        """The server ID's epoch, revision and horizon (zeros if it never wrote)."""
        row = db.execute(
            "SELECT epoch, revision, horizon FROM server WHERE server_id=?", (server_id,)
        ).fetchone()
        return (0, 0, 0) if row is None else (int(row[0]), int(row[1]), int(row[2]))

    def revision(self, server_id: str) -> int:
        check_server_id(server_id)
        with self._read() as db:
            return self._server_row(db, server_id)[1]

    def get_changes(
        self, server_id: str, since: int, cursor: bytes | None = None, limit: int = 256
    ) -> ChangePage:
        check_server_id(server_id)
        check_revision(since)
        if not 0 < limit <= 100_000:
            raise InvalidRequestError("page limit must be 1..100000")
        phase, key = ("sa", [-1, "", -1]) if cursor is None else _decode_cursor(cursor)
        with self._read() as db:
            epoch, revision, horizon = self._server_row(db, server_id)
            check_changes_held(server_id, since, revision, horizon)
            walk = _ChangeWalk(db, server_id, since, limit)
            if revision > since:
                walk.run(phase, key)
            return ChangePage(
                epoch,
                revision,
                tuple(walk.sas),
                tuple(walk.policies),
                tuple(walk.removed_sas),
                tuple(walk.removed_policies),
                walk.cursor,
                tuple(walk.ike_sas),
                tuple(walk.removed_ike_sas),
            )

    def get_by_spi(self, key: SaKey) -> SaLookup | None:
        with self._read() as db:
            row = db.execute(
                "SELECT sa.server_id, server.epoch, entry, replay FROM sa "
                "JOIN server USING (server_id) WHERE proto=? AND dst=? AND spi=?",
                (key.proto, key.dst, key.spi),
            ).fetchone()
            if row is None:
                return None
            server_id, epoch, entry, replay = row
            prow = db.execute(
                "SELECT p.policy_id, p.entry FROM sa_policy l CROSS JOIN policy p "
                "ON p.server_id=l.server_id AND p.policy_id=l.policy_id "
                "WHERE l.server_id=? AND l.proto=? AND l.dst=? AND l.spi=? ORDER BY p.policy_id",
                (server_id, key.proto, key.dst, key.spi),
            ).fetchall()
            # Two IKE SAs name this SPI while the gateway moves its CHILD SAs to a rekeyed
            # IKE SA and has not yet rewritten or deleted the old one: the newest wins.
            irow = db.execute(
                "SELECT i.spi_i, i.spi_r, i.child_spis, i.record FROM ike_child c "
                "CROSS JOIN ike_sa i "
                "ON i.server_id=c.server_id AND i.spi_i=c.spi_i AND i.spi_r=c.spi_r "
                "WHERE c.server_id=? AND c.spi=? ORDER BY i.rev DESC, i.spi_i, i.spi_r LIMIT 1",
                (server_id, key.spi),
            ).fetchone()
        pols = tuple(PolicyRecord(pid, pentry) for pid, pentry in prow)
        return SaLookup(
            server_id,
            int(epoch),
            SaRecord(key, entry, tuple(p.policy_id for p in pols), replay),
            pols,
            None if irow is None else _ike_record(*irow),
        )

    def stats(self) -> StoreStats:
        with self._read() as db:
            rows = db.execute(
                "SELECT s.server_id, s.epoch, "
                "(SELECT count(*) FROM sa WHERE sa.server_id=s.server_id), "
                "(SELECT count(*) FROM policy p WHERE p.server_id=s.server_id), "
                "(SELECT count(*) FROM ike_sa i WHERE i.server_id=s.server_id) "
                "FROM server s ORDER BY s.server_id"
            ).fetchall()
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
        size = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                size += os.stat(f"{self.path}{suffix}").st_size
        return StoreStats(
            self.backend_name,
            tuple(
                ServerStats(sid, int(ep), int(n_sa), int(n_pol), int(n_ike))
                for sid, ep, n_sa, n_pol, n_ike in rows
            ),
            size,
            {"schema_version": version},
        )

    def close(self) -> None:
        with self._readers_lock:
            self._closed = True
            readers, self._readers = self._readers, []
        for db in readers:  # the writer closes last: it checkpoints the WAL
            db.close()
        self._db.close()
