"""The SA store interface shared by every backend, its records and its errors.

Theory of operation
-------------------
The store keeps, per *server ID* (the draft's name for a backend gateway: an
IP address or an FQDN), the IPsec state that gateway deposited:

* SAs, indexed by ``(SPI, destination, protocol)`` (:class:`SaKey`), each with
  its canonical serialisation (opaque bytes from :mod:`appliance.model`), its
  latest replay state (updated on its own, frequently), and the IDs of the
  SPD entries that belong to it;
* SPD entries (policies), identified within their server by a caller-given
  ``policy_id`` and stored as opaque canonical bytes.  A policy can belong to
  several SAs (rekeying keeps two SAs on one policy) or to none (bulk state);
* IKE SAs (:class:`IkeSaRecord`), identified within their server by their two
  IKE SPIs, each with the SPIs of its CHILD SAs (so that a lookup by an SA's
  SPI finds the IKE SA it belongs to) and an opaque record (the IKE state, key
  material included: ``appliance.strongswan.ike_record``).

The store never decodes entries: it only needs the index keys the caller
passes with them.  Three rules hold in every backend:

1. **No SPI collisions.**  An SA key belongs to at most one server ID; a write
   of that key by another server fails with :class:`SpiCollisionError`
   (the draft: collisions MUST NOT occur).
2. **Owner epochs.**  Each server ID has an epoch.  A write carrying an older
   epoch fails with :class:`StaleEpochError`, so a deposed master can never
   overwrite what its successor took over.  A write with a newer epoch raises
   the stored one in the same transaction; :meth:`SaStore.claim` raises it
   without writing anything (the new master takes over).  No raise may pass
   :data:`MAX_EPOCH` or jump more than :data:`MAX_EPOCH_STEP`
   (:func:`check_epoch_raise`, :class:`EpochLimitError`).
3. **One message, one transaction.**  Every mutating call applies all of its
   entries or none of them.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import functools
import ipaddress
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from appliance.errors import ApplianceError

if TYPE_CHECKING:
    from appliance.model import Address, SadEntry

#: Largest server ID: an FQDN is at most 253 characters.
MAX_SERVER_ID_LEN = 253
#: Largest policy ID; callers derive it from the policy's index (or selector and direction).
MAX_POLICY_ID_LEN = 32
#: Largest page cursor a backend hands out (the wire's Page payload limit).
MAX_CURSOR_LEN = 64
#: Largest single entry we accept, a sanity bound far above any XFRM state.
MAX_ENTRY_LEN = 64 * 1024
#: Most CHILD SA SPIs one IKE SA record may name (the wire counts them in 16 bits).
MAX_CHILD_SPIS = 1024
#: Largest epoch: SQLite integers are signed 64-bit, so epochs stop at 2**63 - 1.
MAX_EPOCH = 2**63 - 1
#: Largest raise of a server ID's epoch by one claim or write (see :func:`check_epoch_raise`).
MAX_EPOCH_STEP = 2**32

_SERVER_ID_RE = re.compile(r"^[A-Za-z0-9._:-]+$")

PROTO_NUMBERS = {"esp": 50, "ah": 51, "comp": 108}
PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}


class Status(enum.IntEnum):
    """Outcome of a store operation; the server sends these codes on the wire."""

    OK = 0
    SPI_COLLISION = 1
    STALE_EPOCH = 2
    NOT_FOUND = 3
    INVALID = 4
    UNAVAILABLE = 5
    INTERNAL = 6
    EPOCH_LIMIT = 7
    REVISION_GONE = 8


class StoreError(ApplianceError):
    """A store operation failed; ``status`` says how (a :class:`Status`)."""

    status = Status.INTERNAL


class FetchCancelled(Exception):
    """A bulk retrieval stopped between pages because its caller no longer wants it.

    Not a ``StoreError``: the store did nothing wrong, so nobody should try
    the next store.
    """


class SpiCollisionError(StoreError):
    """The SA key already belongs to another server ID."""

    status = Status.SPI_COLLISION

    def __init__(self, message: str, key: SaKey | None = None) -> None:
        super().__init__(message)
        self.key = key


class StaleEpochError(StoreError):
    """The write carries an epoch older than the server ID's current one."""

    status = Status.STALE_EPOCH

    def __init__(self, message: str, current_epoch: int = 0) -> None:
        super().__init__(message)
        self.current_epoch = current_epoch


class EpochLimitError(StoreError):
    """The epoch would jump too far or pass :data:`MAX_EPOCH`; nothing was changed."""

    status = Status.EPOCH_LIMIT

    def __init__(self, message: str, current_epoch: int | None = None) -> None:
        super().__init__(message)
        self.current_epoch = current_epoch
        """The server ID's epoch, where the refusal knows it."""


class NotFoundError(StoreError):
    """The SA to update is not in the store (or not under this server ID)."""

    status = Status.NOT_FOUND


class InvalidRequestError(StoreError):
    """The request itself is malformed (bad server ID, oversized entry...)."""

    status = Status.INVALID


class StoreUnavailableError(StoreError):
    """The backend cannot be reached or refused to work (etcd down, disk full)."""

    status = Status.UNAVAILABLE


class RevisionGoneError(StoreError):
    """The store no longer holds the changes after the asked revision: retrieve everything.

    Its removals before ``horizon`` were forgotten (the store keeps a bounded
    number), or the asked revision is newer than the store's own (the store
    was replaced or rolled back).
    """

    status = Status.REVISION_GONE


class SchemaVersionError(StoreError):
    """The database was written by a newer ipsec-ha whose schema we do not know."""

    status = Status.UNAVAILABLE


ERRORS_BY_STATUS: dict[Status, type[StoreError]] = {
    Status.SPI_COLLISION: SpiCollisionError,
    Status.STALE_EPOCH: StaleEpochError,
    Status.EPOCH_LIMIT: EpochLimitError,
    Status.NOT_FOUND: NotFoundError,
    Status.INVALID: InvalidRequestError,
    Status.UNAVAILABLE: StoreUnavailableError,
    Status.INTERNAL: StoreError,
    Status.REVISION_GONE: RevisionGoneError,
}


def _parse_address(text: str) -> Address:
    try:
        return _cached_address(text)
    except ValueError:
        raise InvalidRequestError(f"destination {text!r} is not an IP address") from None


# Backends keep destinations as text and read back the same few (VIPs) over and over.
_cached_address = functools.lru_cache(maxsize=4096)(ipaddress.ip_address)


@functools.total_ordering
class SaKey:
    """The SAD index of one SA: ``(SPI, destination address, IP protocol)``.

    The one key of an SA across the package: the sync core, the store client,
    the server and the backends. ``SaKey.of`` derives it from a model SA and
    ``_convert.raw_sa_key`` from a payload's raw fields; both give the same
    key (the destination is an address object, so ``2001:DB8:0::1`` and
    ``2001:db8::1`` are one key). Backends that keep the destination as text
    pass it as text and read it back as ``dst``.
    """

    __slots__ = ("_hash", "_text", "daddr", "proto", "spi")

    spi: int
    """The SPI, 0..2**32-1 (host order)."""
    daddr: Address
    """The destination address."""
    proto: int
    """The IP protocol number: 50 (ESP), 51 (AH) or 108 (IPComp)."""
    _text: str | None
    _hash: int

    def __init__(
        self, spi: int, daddr: Address | str, proto: int, *, text: str | None = None
    ) -> None:
        """``text``: the destination's compressed text, when the caller has it at hand."""
        if isinstance(daddr, str):
            daddr = _parse_address(daddr)
        object.__setattr__(self, "spi", spi)
        object.__setattr__(self, "daddr", daddr)
        object.__setattr__(self, "proto", proto)
        object.__setattr__(self, "_text", text)
        object.__setattr__(self, "_hash", hash((spi, int(daddr), proto)))

    @classmethod
    def of(cls, sa: SadEntry) -> SaKey:
        """The key of a model SA."""
        return cls(sa.spi, sa.daddr, sa.proto)

    @classmethod
    def make(cls, spi: int, dst: str, proto: int | str) -> SaKey:
        """Validate and normalise what a user or a request gave (``InvalidRequestError``)."""
        if isinstance(spi, bool) or not isinstance(spi, int) or not 0 <= spi < 2**32:
            raise InvalidRequestError(f"SPI must be an integer 0..0xffffffff, got {spi!r}")
        addr = _parse_address(dst)
        if isinstance(proto, str):
            if proto.lower() not in PROTO_NUMBERS:
                raise InvalidRequestError(
                    f"protocol {proto!r} is not one of {', '.join(PROTO_NUMBERS)}"
                )
            proto = PROTO_NUMBERS[proto.lower()]
        if proto not in PROTO_NAMES:
            raise InvalidRequestError(f"protocol number {proto!r} is not ESP (50), AH or IPComp")
        return cls(spi, addr, proto)

    @property
    def dst(self) -> str:
        """The destination in its compressed text form (how backends keep it)."""
        if self._text is None:
            object.__setattr__(self, "_text", self.daddr.compressed)
        assert self._text is not None
        return self._text

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"SaKey is immutable: cannot set {name}")

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SaKey):
            return NotImplemented
        return (self.spi, self.daddr, self.proto) == (other.spi, other.daddr, other.proto)

    def _order(self) -> tuple[int, int, int, int]:
        return (self.spi, self.daddr.version, int(self.daddr), self.proto)

    def __lt__(self, other: SaKey) -> bool:
        if not isinstance(other, SaKey):
            return NotImplemented
        return self._order() < other._order()

    def __repr__(self) -> str:
        return f"SaKey(spi={self.spi}, daddr={self.daddr!r}, proto={self.proto})"

    def __str__(self) -> str:
        return f"{PROTO_NAMES.get(self.proto, self.proto)} spi 0x{self.spi:08x} dst {self.dst}"


@dataclass(frozen=True)
class PolicyRecord:
    """One SPD entry as stored: its ID within the server and its canonical bytes."""

    policy_id: bytes
    entry: bytes


@dataclass(frozen=True)
class SaPut:
    """One SA to store, with the SPD entries that belong to it."""

    key: SaKey
    entry: bytes
    policies: tuple[PolicyRecord, ...] = ()
    replay: bytes | None = None
    """The replay state at the time of the write, if the caller has a newer one than ``entry``."""


@dataclass(frozen=True)
class SaRecord:
    """One SA as retrieved."""

    key: SaKey
    entry: bytes
    policy_ids: tuple[bytes, ...]
    replay: bytes | None = None
    """The latest replay state sent with :meth:`SaStore.update_replay` (None: only ``entry``)."""
    unreadable: str | None = None
    """Why the stored record could not be read back (then ``entry`` is empty): a bulk
    retrieval reports that SA in its place instead of failing the whole server ID."""


IkeSpis = tuple[int, int]
"""An IKE SA's identity: (initiator's SPI, responder's SPI), each 64 bits."""


@dataclass(frozen=True)
class IkeSaRecord:
    """One IKE SA as stored: its SPIs, its CHILD SAs' SPIs, and its opaque record."""

    spis: IkeSpis
    child_spis: tuple[int, ...]
    """The SPIs (inbound and outbound, 32 bits each) of the CHILD SAs it holds, in the
    caller's order: a lookup by one of them (:meth:`SaStore.get_by_spi`) finds this IKE SA."""
    record: bytes
    """The IKE state; key material (sealed at rest, never logged)."""
    unreadable: str | None = None
    """As :attr:`SaRecord.unreadable`: why a stored record could not be read back."""


@dataclass(frozen=True)
class SaLookup:
    """The answer to a lookup by SPI: the SA, its owner, its SPD entries and IKE SA."""

    server_id: str
    epoch: int
    sa: SaRecord
    policies: tuple[PolicyRecord, ...]
    ike_sa: IkeSaRecord | None = None
    """The server ID's IKE SA that names the SA's SPI among its CHILD SAs, if any."""


@dataclass(frozen=True)
class Page:
    """One page of a server's state; ``cursor`` is None on the last page."""

    epoch: int
    sas: tuple[SaRecord, ...]
    policies: tuple[PolicyRecord, ...]
    cursor: bytes | None
    revision: int = 0
    """The server ID's revision when the page was read (see :meth:`SaStore.get_changes`)."""
    ike_sas: tuple[IkeSaRecord, ...] = ()
    """IKE SAs; a walk gives every SA, then every policy, then every IKE SA."""


@dataclass(frozen=True)
class ChangePage:
    """One page of what changed in a server's state after a revision (the change feed).

    ``sas`` and ``policies`` are the entries stored or updated after the
    asked revision, as they are now; ``removed_sas`` and ``removed_policies``
    the ones deleted after it (and not stored again since). ``cursor`` is None
    on the last page.
    """

    epoch: int
    revision: int
    """The server ID's revision when this page was read: everything up to it is in the
    pages of this walk (or in a later one: pages are not a snapshot)."""
    sas: tuple[SaRecord, ...]
    policies: tuple[PolicyRecord, ...]
    removed_sas: tuple[SaKey, ...]
    removed_policies: tuple[bytes, ...]
    cursor: bytes | None
    ike_sas: tuple[IkeSaRecord, ...] = ()
    removed_ike_sas: tuple[IkeSpis, ...] = ()


@dataclass(frozen=True)
class ServerStats:
    """Per-server counters."""

    server_id: str
    epoch: int
    sas: int
    policies: int
    ike_sas: int = 0


@dataclass(frozen=True)
class StoreStats:
    """What ``ipsec-ha store stats`` shows about the backend."""

    backend: str
    servers: tuple[ServerStats, ...]
    size_bytes: int
    extra: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreSummary:
    """:class:`StoreStats` without the per-server list: what a Heartbeat answers."""

    backend: str
    server_count: int
    size_bytes: int
    extra: dict[str, int] = field(default_factory=dict)


def check_server_id(server_id: str) -> str:
    """A server ID is an IP address or an FQDN: letters, digits, ``.-_:``."""
    if not isinstance(server_id, str) or not server_id:
        raise InvalidRequestError("server ID must be a non-empty string")
    if len(server_id) > MAX_SERVER_ID_LEN or not _SERVER_ID_RE.match(server_id):
        raise InvalidRequestError(
            f"server ID {server_id[:64]!r} must be 1..{MAX_SERVER_ID_LEN} characters "
            "of letters, digits and . - _ : (an IP address or FQDN)"
        )
    return server_id


def check_epoch(epoch: int) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise InvalidRequestError(f"epoch must be an integer 0..2**63-1, got {epoch!r}")
    if epoch > MAX_EPOCH:
        raise EpochLimitError(f"epoch {epoch} refused, the largest epoch is 2**63-1")
    return epoch


def check_revision(revision: int) -> int:
    if not isinstance(revision, int) or not 0 <= revision < 2**64:
        raise InvalidRequestError(f"revision must be an integer 0..2^64-1, not {revision!r}")
    return revision


def check_changes_held(server_id: str, since: int, revision: int, horizon: int) -> None:
    """Raise :class:`RevisionGoneError` unless the store can tell every change after ``since``."""
    if since > revision:
        raise RevisionGoneError(
            f"server {server_id}: revision {since} is newer than the store's ({revision}); "
            "the store was replaced or rolled back: retrieve the whole state"
        )
    if since < horizon:
        raise RevisionGoneError(
            f"server {server_id}: the changes since revision {since} are no longer held "
            f"(removals up to revision {horizon} are forgotten): retrieve the whole state"
        )


def check_epoch_raise(server_id: str, current: int, new: int) -> None:
    """Refuse raising ``server_id``'s epoch from ``current`` to ``new`` if it could overflow.

    Every backend calls this before it stores a higher epoch (a claim, or a
    write that carries a newer epoch).  One step may add at most
    :data:`MAX_EPOCH_STEP`, so ordinary claims (current + 1) can go on for
    2**31 maximal jumps before :data:`MAX_EPOCH`, and nobody can take the
    last epoch in one request, after which no claim could ever succeed.
    """
    if new <= current:
        return
    if new > MAX_EPOCH:
        raise EpochLimitError(
            f"server {server_id}: epoch {new} refused, the largest epoch is 2**63-1 "
            f"(current {current}); this server ID can take no new owner",
            current,
        )
    if new - current > MAX_EPOCH_STEP:
        raise EpochLimitError(
            f"server {server_id}: epoch {new} refused, it is more than 2**32 above "
            f"the current epoch {current}; claim current + 1 (epoch 0) instead",
            current,
        )


def _check_blob(what: object, blob: bytes | None, limit: int = MAX_ENTRY_LEN) -> None:
    if blob is None:
        return
    if not isinstance(blob, bytes) or len(blob) > limit:
        raise InvalidRequestError(f"{what} must be bytes of at most {limit} bytes")


class _Label:
    """A message part built only when an error is raised (batches hold thousands of entries)."""

    def __init__(self, fmt: str, *args: object) -> None:
        self.fmt = fmt
        self.args = args

    def __str__(self) -> str:
        return self.fmt.format(*self.args)


def check_put(sas: Sequence[SaPut], policies: Sequence[PolicyRecord]) -> None:
    """Reject malformed batches before any backend work (nothing is written)."""
    seen: set[SaKey] = set()
    for sa in sas:
        if not isinstance(sa.key, SaKey):
            raise InvalidRequestError("SA key must be an SaKey")
        if sa.key in seen:
            raise InvalidRequestError(f"SA {sa.key} appears twice in one batch")
        seen.add(sa.key)
        _check_blob(_Label("SA {} entry", sa.key), sa.entry)
        if sa.replay is not None:
            _check_blob(_Label("SA {} replay state", sa.key), sa.replay)
        if not sa.entry:
            raise InvalidRequestError(f"SA {sa.key} entry is empty")
        for pol in sa.policies:
            check_policy(pol)
    for pol in policies:
        check_policy(pol)


def check_policy(pol: PolicyRecord) -> None:
    if not isinstance(pol.policy_id, bytes) or not 0 < len(pol.policy_id) <= MAX_POLICY_ID_LEN:
        raise InvalidRequestError(f"policy ID must be 1..{MAX_POLICY_ID_LEN} bytes")
    _check_blob(_Label("policy {} entry", pol.policy_id.hex()[:32]), pol.entry)
    if not pol.entry:
        raise InvalidRequestError(f"policy {pol.policy_id.hex()[:32]} entry is empty")


def format_spis(spis: IkeSpis) -> str:
    """An IKE SA's SPIs as swanctl shows them: ``0123456789abcdef_i fedcba9876543210_r``."""
    return f"{spis[0]:016x}_i {spis[1]:016x}_r"


def _check_spis(spis: object) -> str:
    """``spis`` as the error messages show it; InvalidRequestError if it is not two 64-bit SPIs."""
    if not (
        isinstance(spis, tuple)
        and len(spis) == 2
        and all(type(s) is int and 0 <= s < 1 << 64 for s in spis)
        and spis != (0, 0)
    ):
        raise InvalidRequestError(f"IKE SA SPIs must be two 64-bit integers, not {spis!r}")
    return format_spis(spis)


def check_ike_sa(ike: IkeSaRecord) -> None:
    label = _check_spis(ike.spis)
    if not isinstance(ike.child_spis, tuple) or len(ike.child_spis) > MAX_CHILD_SPIS:
        raise InvalidRequestError(
            f"IKE SA {label}: at most {MAX_CHILD_SPIS} CHILD SA SPIs, as a tuple"
        )
    if not all(type(s) is int and 0 < s < 1 << 32 for s in ike.child_spis):
        raise InvalidRequestError(f"IKE SA {label}: CHILD SA SPIs must be 1..2**32-1")
    if len(set(ike.child_spis)) != len(ike.child_spis):
        raise InvalidRequestError(f"IKE SA {label}: a CHILD SA SPI appears twice")
    _check_blob(_Label("IKE SA {} record", label), ike.record)
    if not ike.record:
        raise InvalidRequestError(f"IKE SA {label}: record is empty")


@dataclass(frozen=True)
class Batch:
    """Everything one SA_Stor message changes; applied as one transaction."""

    puts: tuple[SaPut, ...] = ()
    policies: tuple[PolicyRecord, ...] = ()
    """Standalone SPD entries (bulk state without an SA)."""
    delete_sas: tuple[SaKey, ...] = ()
    delete_policies: tuple[bytes, ...] = ()
    replay: tuple[tuple[SaKey, bytes], ...] = ()
    """Replay-state-only updates of SAs already stored."""
    ike_sas: tuple[IkeSaRecord, ...] = ()
    """IKE SAs to store; each replaces the stored one with the same SPIs."""
    delete_ike_sas: tuple[IkeSpis, ...] = ()

    def __bool__(self) -> bool:
        return any(
            (
                self.puts,
                self.policies,
                self.delete_sas,
                self.delete_policies,
                self.replay,
                self.ike_sas,
                self.delete_ike_sas,
            )
        )


def check_batch(batch: Batch) -> None:
    """Reject malformed batches before any backend work (nothing is written)."""
    check_put(batch.puts, batch.policies)
    put_keys = {sa.key for sa in batch.puts}
    for key in batch.delete_sas:
        if not isinstance(key, SaKey):
            raise InvalidRequestError("SA key must be an SaKey")
        if key in put_keys:
            raise InvalidRequestError(f"SA {key} is both stored and deleted in one batch")
    for pid in batch.delete_policies:
        check_policy(PolicyRecord(pid, b"-"))
    put_pids = {p.policy_id for p in batch.policies} | {
        p.policy_id for sa in batch.puts for p in sa.policies
    }
    if put_pids & set(batch.delete_policies):
        raise InvalidRequestError("a policy is both stored and deleted in one batch")
    seen: set[SaKey] = set()
    for key, replay in batch.replay:
        if not isinstance(key, SaKey):
            raise InvalidRequestError("SA key must be an SaKey")
        if key in put_keys or key in batch.delete_sas or key in seen:
            raise InvalidRequestError(f"replay update of SA {key} conflicts in one batch")
        seen.add(key)
        _check_blob(_Label("SA {} replay state", key), replay)
        if not replay:
            raise InvalidRequestError(f"SA {key} replay state is empty")
    ike_seen: set[IkeSpis] = set()
    for ike in batch.ike_sas:
        check_ike_sa(ike)
        if ike.spis in ike_seen:
            raise InvalidRequestError(f"IKE SA {_check_spis(ike.spis)} appears twice in one batch")
        ike_seen.add(ike.spis)
    for spis in batch.delete_ike_sas:
        label = _check_spis(spis)
        if spis in ike_seen:
            raise InvalidRequestError(f"IKE SA {label} is both stored and deleted in one batch")


class SaStore(abc.ABC):
    """One interface, two backends (:mod:`.sqlite`, :mod:`.etcd`).

    Every method is synchronous and thread-compatible (one caller at a time);
    the UDP server calls them from a single worker thread.
    """

    backend_name = "abstract"

    removal_history = 100_000
    """Removals kept per server ID for :meth:`get_changes`; older ones are forgotten."""

    @abc.abstractmethod
    def claim(self, server_id: str, epoch: int | None = None) -> int:
        """Raise the server ID's epoch atomically and return the new value.

        ``epoch=None`` takes current + 1.  An explicit epoch must be greater
        than the current one, or :class:`StaleEpochError` (two claimants can
        never both win the same epoch).
        """

    @abc.abstractmethod
    def epoch(self, server_id: str) -> int:
        """The server ID's current epoch (0 if it never wrote)."""

    @abc.abstractmethod
    def apply(self, server_id: str, epoch: int, batch: Batch) -> None:
        """Apply one message's changes atomically: deletes, then puts (SAs, policies, IKE
        SAs), then replay updates.

        Raises :class:`StaleEpochError`, :class:`SpiCollisionError` (an SA key
        of another server), :class:`NotFoundError` (a replay update for an SA
        this server does not have) or :class:`InvalidRequestError`; then
        nothing was changed.
        """

    def put(
        self,
        server_id: str,
        epoch: int,
        sas: Sequence[SaPut],
        policies: Sequence[PolicyRecord] = (),
    ) -> None:
        """Store or replace SAs (with their policies) and standalone policies, atomically."""
        self.apply(server_id, epoch, Batch(puts=tuple(sas), policies=tuple(policies)))

    def delete(
        self,
        server_id: str,
        epoch: int,
        sa_keys: Sequence[SaKey] = (),
        policy_ids: Sequence[bytes] = (),
    ) -> None:
        """Delete SAs and policies of this server ID atomically; absent ones are ignored."""
        self.apply(
            server_id, epoch, Batch(delete_sas=tuple(sa_keys), delete_policies=tuple(policy_ids))
        )

    def update_replay(
        self, server_id: str, epoch: int, updates: Sequence[tuple[SaKey, bytes]]
    ) -> None:
        """Replace the replay state of existing SAs of this server ID, atomically."""
        self.apply(server_id, epoch, Batch(replay=tuple(updates)))

    @abc.abstractmethod
    def keys_for_spi(self, server_id: str, spi: int, proto: int) -> list[SaKey]:
        """This server's SA keys with this SPI and protocol (a wire Delete names no address)."""

    @abc.abstractmethod
    def ike_sa_cursor(self, spis: IkeSpis) -> bytes:
        """The cursor that resumes a page walk after this IKE SA."""

    def removed_ike_sa_cursor(self, spis: IkeSpis) -> bytes:
        """The cursor that resumes a change walk after this removed IKE SA."""
        return b"R" + self.ike_sa_cursor(spis)

    @abc.abstractmethod
    def sa_cursor(self, key: SaKey) -> bytes:
        """The cursor that resumes a page walk after this SA."""

    @abc.abstractmethod
    def policy_cursor(self, policy_id: bytes) -> bytes:
        """The cursor that resumes a page walk after this policy."""

    def removed_sa_cursor(self, key: SaKey) -> bytes:
        """The cursor that resumes a change walk after this removed SA."""
        return b"R" + self.sa_cursor(key)

    def removed_policy_cursor(self, policy_id: bytes) -> bytes:
        """The cursor that resumes a change walk after this removed policy."""
        return b"R" + self.policy_cursor(policy_id)

    @abc.abstractmethod
    def get_page(self, server_id: str, cursor: bytes | None = None, limit: int = 256) -> Page:
        """One page of the server's SAs, then of its policies, then of its IKE SAs;
        pass ``cursor`` on."""

    @abc.abstractmethod
    def revision(self, server_id: str) -> int:
        """The server ID's revision: it grows with every change committed to its entries.

        Puts, deletes and replay updates raise it (a claim does not); 0 for a
        server ID that never wrote. Comparable only with this store's own.
        """

    @abc.abstractmethod
    def get_changes(
        self, server_id: str, since: int, cursor: bytes | None = None, limit: int = 256
    ) -> ChangePage:
        """One page of the server's entries changed or removed after revision ``since``.

        Walk the pages with ``cursor`` as in :meth:`get_page`. Raises
        :class:`RevisionGoneError` when the store no longer holds the removals
        since ``since``, or ``since`` is beyond its revision: the caller then
        retrieves the whole state (:meth:`iter_server`) and follows from that
        page walk's first ``revision``.
        """

    @abc.abstractmethod
    def get_by_spi(self, key: SaKey) -> SaLookup | None:
        """The SA with this key, its owner, its SPD entries and the owner's IKE SA that
        names ``key.spi`` among its CHILD SAs; None if the SA is absent."""

    @abc.abstractmethod
    def stats(self) -> StoreStats:
        """Counts per server, epochs, size."""

    def summary(self) -> StoreSummary:
        """:meth:`stats` with the server IDs counted, not listed (the Heartbeat's answer).

        A backend whose ``stats`` costs a request per server overrides it so
        that a liveness check stays cheap.
        """
        st = self.stats()
        return StoreSummary(st.backend, len(st.servers), st.size_bytes, st.extra)

    def server_stats(self, start: int, limit: int) -> tuple[ServerStats, ...]:
        """Servers ``start`` to ``start + limit - 1`` of :meth:`stats`, in server ID order.

        One page of the server list (Heartbeat paging); a backend whose
        ``stats`` costs a request per server overrides it to count only these.
        """
        ordered = sorted(self.stats().servers, key=lambda s: s.server_id)
        return tuple(ordered[start : start + limit])

    @abc.abstractmethod
    def close(self) -> None:
        """Release the backend's resources."""

    def group(self) -> contextlib.AbstractContextManager[None]:
        """Group commit of several calls, where the backend has one (SQLite); else a no-op.

        Each call inside stays all-or-nothing; the caller acknowledges them
        only after the block ends without an error.
        """
        return contextlib.nullcontext()

    def iter_server(self, server_id: str, limit: int = 256) -> Iterator[Page]:
        """Every page of a server's state, in order."""
        cursor: bytes | None = None
        while True:
            page = self.get_page(server_id, cursor, limit)
            yield page
            if page.cursor is None:
                return
            cursor = page.cursor

    def iter_changes(self, server_id: str, since: int, limit: int = 256) -> Iterator[ChangePage]:
        """Every page of the changes after ``since``, in order."""
        cursor: bytes | None = None
        while True:
            page = self.get_changes(server_id, since, cursor, limit)
            yield page
            if page.cursor is None:
                return
            cursor = page.cursor

    def __enter__(self) -> SaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
