"""Encryption at rest: the envelope, and the sealed store in front of SQLite (no root)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from change_feed_contract import ChangeFeedContract
from entries_factory import make_sa
from store_contract import BackendContract, all_state, sa_key, sa_put

from appliance.store import _convert as conv
from appliance.store.base import PolicyRecord, SaKey, SaPut
from appliance.store.envelope import (
    ENVELOPE_TAG,
    OVERHEAD,
    EnvelopeError,
    Sealer,
    UnknownKeyError,
    is_sealed,
)
from appliance.store.sealed import SealedRecordError, SealedStore
from appliance.store.sqlite import SqliteStore

pytestmark = pytest.mark.unit

OLD_KEY = b"o" * 32
KEY = b"k" * 32
CTX = b"entry\0gw1\x0050/192.0.2.1/00001001"


def test_envelope_round_trips_and_hides_the_record() -> None:
    sealer = Sealer(KEY)
    record = b"\x01" + bytes(range(64))
    sealed = sealer.seal(record, CTX)
    assert sealed[0] == ENVELOPE_TAG and len(sealed) == len(record) + OVERHEAD
    assert record[1:] not in sealed and is_sealed(sealed)
    assert sealer.open(sealed, CTX) == record
    assert sealer.seal(record, CTX) != sealed  # a fresh nonce every time


@pytest.mark.parametrize(
    "other",
    [
        b"entry\0gw2\x0050/192.0.2.1/00001001",  # another server ID
        b"entry\0gw1\x0050/192.0.2.1/00001002",  # another SA
        b"ike_sa\0gw1\x0050/192.0.2.1/00001001",  # another field
    ],
)
def test_envelope_does_not_open_under_another_identity(other: bytes) -> None:
    sealer = Sealer(KEY)
    with pytest.raises(EnvelopeError, match="does not authenticate"):
        sealer.open(sealer.seal(b"\x01secret", CTX), other)


def test_tampered_envelope_is_refused() -> None:
    sealer = Sealer(KEY)
    sealed = bytearray(sealer.seal(b"\x01secret", CTX))
    sealed[-20] ^= 1
    with pytest.raises(EnvelopeError, match="does not authenticate"):
        sealer.open(bytes(sealed), CTX)


def test_previous_key_opens_old_envelopes_and_new_ones_use_the_current_key() -> None:
    old = Sealer(OLD_KEY).seal(b"\x01old", CTX)
    rotated = Sealer(KEY, (OLD_KEY,))
    assert rotated.open(old, CTX) == b"\x01old"
    assert not rotated.is_current(old)
    assert rotated.is_current(rotated.seal(b"\x01new", CTX))
    with pytest.raises(UnknownKeyError, match="not configured") as info:
        Sealer(KEY).open(old, CTX)
    assert info.value.key_id == Sealer(OLD_KEY).current.key_id


def test_key_id_and_repr_do_not_reveal_the_key() -> None:
    sealer = Sealer(KEY)
    assert sealer.current.key_id not in KEY and KEY.hex() not in repr(sealer.current)


# -- the sealed store over SQLite ---------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SealedStore]:
    s = SealedStore(SqliteStore(tmp_path / "store.db"), Sealer(KEY))
    yield s
    s.close()


class TestSealedSqliteContract(BackendContract, ChangeFeedContract):
    pass


def _real_sa(n: int) -> tuple[SaPut, bytes]:
    """A realistic SA (its stored encoding, as the server keeps it) and its key bytes."""
    sa = make_sa(n)
    assert sa.aead is not None
    entry = conv.sad_entry_bytes(conv.sad_to_payload(sa))
    key = SaKey.make(sa.spi, str(sa.daddr), "esp")
    policies = (PolicyRecord(b"p%d" % n, b"\x01pol"),)
    return SaPut(key, entry, policies), sa.aead.key.data


def _raw_file_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_sqlite_file_holds_no_key_bytes_and_retrieval_opens_them(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    puts, keys = zip(*(_real_sa(n) for n in range(20)), strict=True)
    with SealedStore(SqliteStore(path), Sealer(KEY)) as s:
        s.put("gw1", 1, puts)
        raw = _raw_file_bytes(path)
        assert not [k for k in keys if k in raw]
        sas, _ = all_state(s, "gw1")
        assert {k: r.entry for k, r in sas.items()} == {p.key: p.entry for p in puts}
        found = s.get_by_spi(puts[3].key)
        assert found is not None and found.sa.entry == puts[3].entry


def test_records_moved_to_another_sa_do_not_open(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SealedStore(SqliteStore(path), Sealer(KEY)) as s:
        s.put("gw1", 1, [sa_put(1), sa_put(2)])
    db = sqlite3.connect(path)
    (one,) = db.execute("SELECT entry FROM sa WHERE spi=?", (sa_key(1).spi,)).fetchone()
    db.execute("UPDATE sa SET entry=? WHERE spi=?", (one, sa_key(2).spi))
    db.commit()
    db.close()
    s = SealedStore(SqliteStore(path), Sealer(KEY))
    with s, pytest.raises(SealedRecordError, match=r"SA esp spi 0x00001002 .* authenticate"):
        s.get_by_spi(sa_key(2))


def test_wrong_key_is_refused_naming_the_sa(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SealedStore(SqliteStore(path), Sealer(OLD_KEY)) as s:
        s.put("gw1", 1, [sa_put(1)])
    s = SealedStore(SqliteStore(path), Sealer(KEY))
    with s, pytest.raises(SealedRecordError, match="previous_psk_files") as info:
        list(s.iter_server("gw1"))
    assert "esp spi 0x00001001 dst 192.0.2.1" in str(info.value)


def test_clear_records_of_an_older_store_are_read_then_resealed(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    put, key_bytes = _real_sa(1)
    with SqliteStore(path) as plain:  # what the server wrote before encryption at rest
        plain.put("gw1", 3, [put])
        plain.update_replay("gw1", 3, [(put.key, b"replay")])
    assert key_bytes in _raw_file_bytes(path)
    with SealedStore(SqliteStore(path), Sealer(KEY)) as s:
        found = s.get_by_spi(put.key)
        assert found is not None and found.sa.entry == put.entry
        report = s.reseal()
        assert (report.resealed, report.current) == (1, 0)
        assert s.reseal().resealed == 0
        found = s.get_by_spi(put.key)
        assert found is not None
        assert (found.epoch, found.sa.entry, found.sa.replay) == (3, put.entry, b"replay")
        assert found.policies == put.policies
    plain = SqliteStore(path)
    with plain:
        row = plain.get_by_spi(put.key)
        assert row is not None and is_sealed(row.sa.entry)
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("VACUUM")
    db.close()
    assert key_bytes not in _raw_file_bytes(path)


def test_rotation_reseals_under_the_new_key_then_the_old_one_is_not_needed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    with SealedStore(SqliteStore(path), Sealer(OLD_KEY)) as s:
        s.put("gw1", 1, [sa_put(n) for n in range(40)])
        s.put("gw2", 2, [sa_put(100, "gw2")])
    with SealedStore(SqliteStore(path), Sealer(KEY, (OLD_KEY,))) as s:
        s.put("gw1", 1, [sa_put(0)])  # written again: under the new key
        report = s.reseal()
        assert (report.servers, report.resealed, report.current) == (2, 40, 1)
    with SealedStore(SqliteStore(path), Sealer(KEY)) as s:
        sas, pols = all_state(s, "gw1")
        assert {k: r.entry for k, r in sas.items()} == {
            sa_put(n).key: sa_put(n).entry for n in range(40)
        }
        assert set(pols) == {p.policy_id for n in range(40) for p in sa_put(n).policies}
        assert s.epoch("gw2") == 2


def test_a_tampered_record_is_marked_in_its_page_and_the_others_open(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SealedStore(SqliteStore(path), Sealer(KEY)) as s:
        s.put("gw1", 1, [sa_put(1), sa_put(2), sa_put(3)])
    db = sqlite3.connect(path)
    (entry,) = db.execute("SELECT entry FROM sa WHERE spi=?", (sa_key(2).spi,)).fetchone()
    db.execute("UPDATE sa SET entry=? WHERE spi=?", (entry[:-1] + bytes([entry[-1] ^ 1]), 0x1002))
    db.commit()
    db.close()
    with SealedStore(SqliteStore(path), Sealer(KEY)) as s:
        (page,) = s.iter_server("gw1")
        marked = {sa.key: sa for sa in page.sas}
        assert marked[sa_key(2)].unreadable is not None and marked[sa_key(2)].entry == b""
        assert "esp spi 0x00001002" in marked[sa_key(2)].unreadable
        assert marked[sa_key(1)].unreadable is None and marked[sa_key(1)].entry
        with pytest.raises(SealedRecordError):  # one SA by SPI: the error itself
            s.get_by_spi(sa_key(2))


def test_a_page_of_an_unknown_key_still_fails_whole(tmp_path: Path) -> None:
    # Skipping every record would look like a server ID without state to a takeover.
    path = tmp_path / "s.db"
    with SealedStore(SqliteStore(path), Sealer(OLD_KEY)) as s:
        s.put("gw1", 1, [sa_put(1), sa_put(2)])
    with SealedStore(SqliteStore(path), Sealer(KEY)) as s, pytest.raises(SealedRecordError):
        list(s.iter_server("gw1"))
