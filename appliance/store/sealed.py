"""A store whose records of key material are sealed at rest, in front of any backend.

Theory of operation
-------------------
The backends stay opaque byte stores.  :class:`SealedStore` wraps one and
seals, on the way in, the fields that hold keys (an SA's entry and an IKE
SA's record) with :class:`~.envelope.Sealer`; on the way out it opens them,
so the service and the clients only ever see clear records.  The associated
data is the record's identity: a sealed entry copied to another SA, IKE SA
or server ID does not open.

Records written before encryption at rest are clear entries (format byte
``0x01``, :data:`~._convert.ENTRY_FORMAT_WIRE_V1`); they are read as they
are and sealed when they are next written, or at once by :meth:`reseal`
(``ipsec-ha store reseal``), which also moves records sealed under a
previous cluster key to the current one.  IKE SA records came after
encryption at rest: they are always sealed.

A record that does not open (a key that is not configured, a tampered
record) is a :class:`SealedRecordError` naming the SA and the key ID, never
anything of the record.  In a bulk page a tampered record is marked
``unreadable`` instead, so that one bad record does not cost the server ID's
other SAs (the service reports it in its place, protocol.md 5.3); a record
of an unknown key still fails the page.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace

from appliance.store._convert import ENTRY_FORMAT_WIRE_V1
from appliance.store.base import (
    Batch,
    ChangePage,
    IkeSaRecord,
    IkeSpis,
    Page,
    PolicyRecord,
    SaKey,
    SaLookup,
    SaPut,
    SaRecord,
    SaStore,
    ServerStats,
    StoreError,
    StoreStats,
    StoreSummary,
    check_batch,
    format_spis,
)
from appliance.store.envelope import EnvelopeError, Sealer, UnknownKeyError, is_sealed

log = logging.getLogger("appliance.store.sealed")

#: SAs per write when re-sealing (etcd's default --max-txn-ops is 128).
_RESEAL_CHUNK = 16


class SealedRecordError(StoreError):
    """A stored record of key material does not open under any configured key."""

    def __init__(self, message: str, key: SaKey | None = None, unknown_key: bool = False) -> None:
        super().__init__(message)
        self.key = key
        self.unknown_key = unknown_key
        """Sealed under a key that is not configured (rather than tampered with)."""


@dataclass(frozen=True)
class ResealReport:
    """What :meth:`SealedStore.reseal` did."""

    servers: int
    resealed: int
    """SAs and IKE SAs written again under the current key (clear, or under a previous key)."""
    current: int
    """SAs and IKE SAs already sealed under the current key."""


def _context(server_id: str, key: SaKey, field: bytes) -> bytes:
    return b"%s\0%s\0%d/%s/%08x" % (field, server_id.encode(), key.proto, key.dst.encode(), key.spi)


def _ike_context(server_id: str, spis: IkeSpis) -> bytes:
    return b"ike_sa\0%s\0%016x_%016x" % (server_id.encode(), *spis)


def _ike_label(spis: IkeSpis) -> str:
    return f"IKE SA {format_spis(spis)}"


class SealedStore(SaStore):
    """``inner`` with SA entries and IKE SA records sealed at rest."""

    def __init__(self, inner: SaStore, sealer: Sealer) -> None:
        self.inner = inner
        self.sealer = sealer
        self.backend_name = inner.backend_name

    # -- sealing ------------------------------------------------------------------

    def _seal(self, server_id: str, sa: SaPut) -> SaPut:
        entry = self.sealer.seal(sa.entry, _context(server_id, sa.key, b"entry"))
        return replace(sa, entry=entry)

    def _seal_ike(self, server_id: str, ike: IkeSaRecord) -> IkeSaRecord:
        return replace(ike, record=self.sealer.seal(ike.record, _ike_context(server_id, ike.spis)))

    def _open_ike(self, server_id: str, ike: IkeSaRecord) -> IkeSaRecord:
        try:
            if not is_sealed(ike.record):
                raise EnvelopeError("is not sealed")
            record = self.sealer.open(ike.record, _ike_context(server_id, ike.spis))
        except EnvelopeError as exc:
            unknown = isinstance(exc, UnknownKeyError)
            hint = "; configure that cluster key in [store].previous_psk_files" if unknown else ""
            message = f"{_ike_label(ike.spis)} of server {server_id}: its stored record {exc}{hint}"
            log.error("%s", message)
            raise SealedRecordError(message, None, unknown) from None
        return replace(ike, record=record)

    def _open_ike_in_page(self, server_id: str, ike: IkeSaRecord) -> IkeSaRecord:
        """As :meth:`_open_in_page`, for an IKE SA."""
        try:
            return self._open_ike(server_id, ike)
        except SealedRecordError as exc:
            if exc.unknown_key:
                raise
            return replace(ike, record=b"", unreadable=str(exc))

    def _open(self, server_id: str, sa: SaRecord) -> SaRecord:
        if not is_sealed(sa.entry):
            if sa.entry[:1] == ENTRY_FORMAT_WIRE_V1:
                return sa  # written before encryption at rest: clear, sealed on the next write
            raise self._refuse(server_id, sa.key, "is neither sealed nor a clear entry")
        try:
            entry = self.sealer.open(sa.entry, _context(server_id, sa.key, b"entry"))
        except EnvelopeError as exc:
            raise self._refuse(
                server_id, sa.key, str(exc), isinstance(exc, UnknownKeyError)
            ) from None
        return replace(sa, entry=entry)

    def _refuse(
        self, server_id: str, key: SaKey, why: str, unknown_key: bool = False
    ) -> SealedRecordError:
        hint = "; configure that cluster key in [store].previous_psk_files" if unknown_key else ""
        message = f"SA {key} of server {server_id}: its stored record {why}{hint}"
        log.error("%s", message)
        return SealedRecordError(message, key, unknown_key)

    def _open_in_page(self, server_id: str, sa: SaRecord) -> SaRecord:
        """``sa`` opened, or marked unreadable when it was tampered with.

        A record of a key that is not configured still fails the whole page:
        with the wrong key every record would be skipped, and a takeover must
        not mistake that for a server ID with no state.
        """
        try:
            return self._open(server_id, sa)
        except SealedRecordError as exc:
            if exc.unknown_key:
                raise
            return replace(sa, entry=b"", unreadable=str(exc))

    # -- interface ----------------------------------------------------------------

    def claim(self, server_id: str, epoch: int | None = None) -> int:
        return self.inner.claim(server_id, epoch)

    def epoch(self, server_id: str) -> int:
        return self.inner.epoch(server_id)

    def apply(self, server_id: str, epoch: int, batch: Batch) -> None:
        check_batch(batch)  # on the clear records: the sealed ones are never empty
        if batch.puts:
            batch = replace(batch, puts=tuple(self._seal(server_id, sa) for sa in batch.puts))
        if batch.ike_sas:
            batch = replace(
                batch, ike_sas=tuple(self._seal_ike(server_id, ike) for ike in batch.ike_sas)
            )
        self.inner.apply(server_id, epoch, batch)

    def keys_for_spi(self, server_id: str, spi: int, proto: int) -> list[SaKey]:
        return self.inner.keys_for_spi(server_id, spi, proto)

    def sa_cursor(self, key: SaKey) -> bytes:
        return self.inner.sa_cursor(key)

    def policy_cursor(self, policy_id: bytes) -> bytes:
        return self.inner.policy_cursor(policy_id)

    def ike_sa_cursor(self, spis: IkeSpis) -> bytes:
        return self.inner.ike_sa_cursor(spis)

    def removed_sa_cursor(self, key: SaKey) -> bytes:
        return self.inner.removed_sa_cursor(key)

    def removed_policy_cursor(self, policy_id: bytes) -> bytes:
        return self.inner.removed_policy_cursor(policy_id)

    def removed_ike_sa_cursor(self, spis: IkeSpis) -> bytes:
        return self.inner.removed_ike_sa_cursor(spis)

    def get_page(self, server_id: str, cursor: bytes | None = None, limit: int = 256) -> Page:
        page = self.inner.get_page(server_id, cursor, limit)
        return replace(
            page,
            sas=tuple(self._open_in_page(server_id, sa) for sa in page.sas),
            ike_sas=tuple(self._open_ike_in_page(server_id, ike) for ike in page.ike_sas),
        )

    def revision(self, server_id: str) -> int:
        return self.inner.revision(server_id)

    def get_changes(
        self, server_id: str, since: int, cursor: bytes | None = None, limit: int = 256
    ) -> ChangePage:
        page = self.inner.get_changes(server_id, since, cursor, limit)
        return replace(
            page,
            sas=tuple(self._open_in_page(server_id, sa) for sa in page.sas),
            ike_sas=tuple(self._open_ike_in_page(server_id, ike) for ike in page.ike_sas),
        )

    @property
    def removal_history(self) -> int:
        return self.inner.removal_history

    @removal_history.setter
    def removal_history(self, value: int) -> None:
        self.inner.removal_history = value

    def get_by_spi(self, key: SaKey) -> SaLookup | None:
        found = self.inner.get_by_spi(key)
        if found is None:
            return None
        ike = None if found.ike_sa is None else self._open_ike(found.server_id, found.ike_sa)
        return replace(found, sa=self._open(found.server_id, found.sa), ike_sa=ike)

    def stats(self) -> StoreStats:
        return self.inner.stats()

    def summary(self) -> StoreSummary:
        return self.inner.summary()

    def server_stats(self, start: int, limit: int) -> tuple[ServerStats, ...]:
        return self.inner.server_stats(start, limit)  # the backend's own paging, if it has one

    def close(self) -> None:
        self.inner.close()

    def group(self) -> contextlib.AbstractContextManager[None]:
        return self.inner.group()

    # -- re-sealing -----------------------------------------------------------------

    def reseal(self) -> ResealReport:
        """Write every clear record, and every record of a previous key, under the current key.

        Each server ID is walked and rewritten inside one ``group()`` (one
        SQLite transaction, so a running server cannot interleave); etcd has
        no such group, so run it while no store server writes.
        """
        servers = resealed = current = 0
        for server in self.inner.stats().servers:
            servers += 1
            with self.inner.group():
                done, kept = self._reseal_server(server.server_id)
            resealed += done
            current += kept
        return ResealReport(servers, resealed, current)

    def _reseal_server(self, server_id: str) -> tuple[int, int]:
        stale: list[SaRecord] = []
        stale_ike: list[IkeSaRecord] = []
        policies: dict[bytes, bytes] = {}
        epoch = None
        current = 0
        for page in self.inner.iter_server(server_id):
            epoch = page.epoch if epoch is None else epoch
            for sa in page.sas:
                if self.sealer.is_current(sa.entry):
                    current += 1
                else:
                    stale.append(self._open(server_id, sa))
            policies.update((p.policy_id, p.entry) for p in page.policies)
            for ike in page.ike_sas:
                if self.sealer.is_current(ike.record):
                    current += 1
                else:
                    stale_ike.append(self._open_ike(server_id, ike))
        for i in range(0, len(stale), _RESEAL_CHUNK):
            puts = tuple(
                SaPut(
                    sa.key,
                    sa.entry,
                    tuple(PolicyRecord(p, policies[p]) for p in sa.policy_ids if p in policies),
                    sa.replay,
                )
                for sa in stale[i : i + _RESEAL_CHUNK]
            )
            self.apply(server_id, epoch or 0, Batch(puts=puts))
        for i in range(0, len(stale_ike), _RESEAL_CHUNK):
            chunk = tuple(stale_ike[i : i + _RESEAL_CHUNK])
            self.apply(server_id, epoch or 0, Batch(ike_sas=chunk))
        return len(stale) + len(stale_ike), current
