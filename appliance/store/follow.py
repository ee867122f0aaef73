"""The hot standby's copy of the stored state, kept current by the store's change feed.

Theory of operation
-------------------
A hot standby used to retrieve its server ID's whole state every cycle and
reconcile the kernel with it, even when nothing had changed: at 10,000 SA
pairs that is a bulk SA_Retr, thousands of entry conversions and a kernel
dump every few seconds (docs/failover.md, "Following").

:class:`Follower` retrieves the whole state once, remembering the store
revision of that walk (protocol.md 5.3), and from then on asks the same
store only for the changes after the revision it holds. It keeps the
state as model objects (:class:`StateCopy`), so a change costs the
conversion of the changed entries only. A poll that brings no change says
so (``changed`` False), and the daemon leaves the kernel alone.

It retrieves the whole state again when it has none, when the store says
the revision is gone (it forgot the removals since, or was replaced), when
the store's epoch went backwards (a store rebuilt from nothing), and when
the store it followed has not answered ``SOURCE_PATIENCE`` polls in a row
(then from the next store that answers: revisions of two stores do not
compare). Until then it waits for that store: a loaded store is slow, and
its changes are still the cheap way. A poll that fails or is stopped keeps
the copy as it was.

An entry that does not convert is left out and named in ``skipped``, as in
a bulk retrieval (``RetrievedState.convert``); a changed SA whose replay
state does not apply is dropped from the copy, not kept with older counters.
A hot takeover brings the same copy up to date (``StateCopy.catch_up``)
through its own store clients and starts from it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import ApplianceError
from appliance.model import SadEntry, SpdEntry
from appliance.store import _convert as conv
from appliance.store.base import (
    FetchCancelled,
    IkeSaRecord,
    IkeSpis,
    RevisionGoneError,
    SaKey,
    StoreError,
)
from appliance.store.client import CONVERT_STEP, Retrieved, RetrievedState, merge_replay

log = logging.getLogger("appliance.store.follow")

SOURCE_PATIENCE = 3
"""Polls in a row the copy's store may fail before the follower retrieves the whole
state from another store (revisions of two stores do not compare)."""


@dataclass
class StateCopy:
    """One server ID's stored state as model objects, at a store revision."""

    server_id: str
    source: str
    """The store it came from: revisions compare only within one store."""
    epoch: int = 0
    revision: int = 0
    sas: dict[SaKey, SadEntry] = field(default_factory=dict)
    """Each SA with its latest stored counters merged in."""
    policies: dict[bytes, SpdEntry] = field(default_factory=dict)
    """By the store's policy ID."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Entries left out, by where they are (``SAD spi ...``, ``SPD ...``): why."""
    ike_sas: dict[IkeSpis, IkeSaRecord] = field(default_factory=dict)
    """The IKE SAs stored beside the kernel state (records are opaque here); they do not
    count as a change of the kernel state (``apply``'s answer, ``retrieved``)."""
    pages: int = 0
    _version: int = field(default=0, init=False, repr=False, compare=False)
    """Bumped by every change of ``sas``, ``policies`` or ``skipped``."""
    _tuples: tuple[int, tuple[SadEntry, ...], tuple[SpdEntry, ...], tuple[str, ...]] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    """``retrieved``'s tuples and the version they show: while nothing changes, every
    ``retrieved`` gives the same tuple objects, so a user can tell "the same state" by
    identity (the executor's follow-then-takeover, ``PlanExecutor.kernel_holds``)."""
    _ike_version: int = field(default=0, init=False, repr=False, compare=False)
    """Bumped by every change of ``ike_sas``."""
    _ike_copy: tuple[int, dict[IkeSpis, IkeSaRecord]] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    """``retrieved``'s IKE SAs and the version they show, likewise by identity (a hot
    standby's charon is fed when they change, ``FailoverDaemon._follower``)."""

    @classmethod
    def from_full(
        cls, state: RetrievedState, source: str, stop: Callable[[], bool] | None = None
    ) -> StateCopy:
        """The copy of a whole-state retrieval (``StoreClient.get_server``)."""
        copy = cls(state.server_id, source, state.epoch, state.revision, pages=state.pages)
        copy._take(state, stop)
        return copy

    def catch_up(self, client: Any, stop: Callable[[], bool] | None = None) -> bool | None:
        """Apply the changes since this copy's revision, asked from ``client`` (its store).

        True or False: whether anything changed. None: the store cannot tell
        (the revision is gone, or its epoch went backwards); retrieve the whole
        state. Other ``StoreError`` s pass through, the copy as it was.
        """
        try:
            changes = client.get_changes(self.server_id, self.revision, stop)
        except RevisionGoneError as exc:
            log.info("hot standby: %s; retrieving the whole state", exc)
            return None
        if changes.epoch < self.epoch:
            log.warning(
                "hot standby: store %s went back from epoch %d to %d; retrieving everything",
                self.source,
                self.epoch,
                changes.epoch,
            )
            return None
        return self.apply(changes, stop)

    def apply(self, changes: RetrievedState, stop: Callable[[], bool] | None = None) -> bool:
        """Bring the copy to the changes' revision; True if any entry changed.

        Stopped half way (``FetchCancelled``), the copy keeps its revision:
        the changes come again next time, and applying them twice is harmless.
        """
        if changes.removed_sas or changes.removed_policies:
            self._version += 1
        for key in changes.removed_sas:
            self.sas.pop(key, None)
            self.skipped.pop(_sa_place(key), None)
        for pid in changes.removed_policies:
            self.policies.pop(pid, None)
            self.skipped.pop(_spd_place(pid), None)
        if changes.removed_ike_sas:
            self._ike_version += 1
        for spis in changes.removed_ike_sas:
            self.ike_sas.pop(spis, None)
        self._take(changes, stop)
        self.epoch, self.revision = changes.epoch, changes.revision
        self.pages = changes.pages
        return bool(
            changes.sad_entries
            or changes.spd_entries
            or changes.removed_sas
            or changes.removed_policies
            or changes.unreadable
        )

    def _take(self, state: RetrievedState, stop: Callable[[], bool] | None) -> None:
        if state.ike_sas:
            self._ike_version += 1
            self.ike_sas.update(state.ike_sas)
        if state.sad_entries or state.spd_entries or state.unreadable:
            self._version += 1
        for i, entry in enumerate(state.sad_entries):
            _check_stop(stop, i, state.server_id)
            try:
                sa = conv.sad_from_stored(entry)
            except ApplianceError as exc:
                self.skipped[conv.describe_stored("SAD", i + 1, entry)] = str(exc)
                continue
            key = SaKey.of(sa)
            place = _sa_place(key)
            self.sas.pop(key, None)  # an SA that no longer converts is not kept older
            self.skipped.pop(place, None)
            if i in state.unreadable_replay:
                self.skipped[place] = f"its replay state: {state.unreadable_replay[i]}"
                continue
            update = state.replay.get(key)
            try:
                self.sas[key] = sa if update is None else merge_replay(sa, update)
            except ApplianceError as exc:
                self.skipped[place] = f"its replay state: {exc}"
        for line in state.unreadable:
            # A record the store could not read back names its SPI only: drop that SPI's SAs.
            self.skipped[line] = "the store could not read it back"
            spi = _spi_of_unreadable(line)
            for key in [k for k in self.sas if k.spi == spi]:
                del self.sas[key]
        for i, entry in enumerate(state.spd_entries):
            _check_stop(stop, i, state.server_id)
            try:
                pid = conv.policy_id_of_stored(entry)
            except ApplianceError as exc:
                self.skipped[conv.describe_stored("SPD", i + 1, entry)] = str(exc)
                continue
            try:
                self.policies[pid] = conv.spd_from_stored(entry)
                self.skipped.pop(_spd_place(pid), None)
            except ApplianceError as exc:
                self.policies.pop(pid, None)
                self.skipped[_spd_place(pid)] = str(exc)

    def retrieved(self) -> Retrieved:
        """The copy in the form a whole-state retrieval gives (for the executor)."""
        if self._tuples is None or self._tuples[0] != self._version:
            self._tuples = (
                self._version,
                tuple(self.sas.values()),
                tuple(self.policies.values()),
                tuple(f"{place}: {why}" for place, why in self.skipped.items()),
            )
        if self._ike_copy is None or self._ike_copy[0] != self._ike_version:
            self._ike_copy = (self._ike_version, dict(self.ike_sas))
        _, sad, spd, skipped = self._tuples
        return Retrieved(
            sad,
            spd,
            self.source,
            skipped,
            self.server_id,
            self.epoch,
            self.pages,
            self._ike_copy[1],
        )


def _check_stop(stop: Callable[[], bool] | None, i: int, server_id: str) -> None:
    if stop is not None and i % CONVERT_STEP == 0 and stop():
        raise FetchCancelled(f"conversion of {server_id} stopped")


def _sa_place(key: SaKey) -> str:
    return f"SAD {key}"


def _spd_place(policy_id: bytes) -> str:
    return f"SPD policy {policy_id.hex()}"


def _spi_of_unreadable(line: str) -> int | None:
    # ``StoreClient`` writes "SA spi 0x%08x: why" for an unreadable record.
    head = line.split(":", 1)[0]
    if head.startswith("SA spi 0x"):
        try:
            return int(head[len("SA spi 0x") :], 16)
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class Poll:
    """What one poll of the follower gives."""

    state: Retrieved
    changed: bool
    """False: the store had nothing new since the last poll (the kernel needs nothing)."""
    full: bool
    """True: the whole state was retrieved (first poll, revision gone, store changed)."""
    revision: int


class Follower:
    """Keeps a :class:`StateCopy` current from the first store that answers.

    ``clients`` are store clients (``StoreClient``: ``server``, ``get_server``,
    ``get_changes``). Blocking; one caller at a time.
    """

    def __init__(self, clients: Sequence[Any]) -> None:
        self.clients = list(clients)
        self.state: StateCopy | None = None
        self.source_failures = 0
        """Polls in a row that the copy's store did not answer."""
        self.lock = threading.Lock()
        """Held while a poll reads or changes ``state``; a takeover that uses the copy
        takes it too."""

    def forget(self) -> None:
        """Drop the copy: the next poll retrieves the whole state."""
        self.state = None

    def poll(self, server_id: str, stop: Callable[[], bool] | None = None) -> Poll:
        """The state now, and whether it changed since the last poll.

        Raises ``StoreError`` (the last store's) when no store answered, and
        ``FetchCancelled`` when ``stop`` says so. Either way the copy is kept
        unless a whole retrieval was replacing it.
        """
        with self.lock:
            return self._poll(server_id, stop)

    def _poll(self, server_id: str, stop: Callable[[], bool] | None) -> Poll:
        current = self.state
        if current is not None and self.source_failures < SOURCE_PATIENCE:
            # Stay with the copy's store while it may only be busy: its changes are
            # cheap, a whole retrieval from another store is not.
            source = [c for c in self.clients if c.server == current.source]
            if source:
                try:
                    poll = self._poll_one(source[0], server_id, stop)
                except StoreError as exc:
                    self.source_failures += 1
                    log.warning("hot standby: store %s (%d in a row): %s",
                                current.source, self.source_failures, exc)  # fmt: skip
                    raise
                self.source_failures = 0
                return poll
        errors: list[StoreError] = []
        for client in sorted(
            self.clients, key=lambda c: current is None or c.server != current.source
        ):
            try:
                poll = self._poll_one(client, server_id, stop)
            except StoreError as exc:
                log.warning("hot standby: store %s: %s", client.server, exc)
                errors.append(exc)
                continue
            self.source_failures = 0
            return poll
        raise errors[-1] if errors else StoreError("no store configured")

    def _poll_one(self, client: Any, server_id: str, stop: Callable[[], bool] | None) -> Poll:
        state = self.state
        if state is not None and state.source == client.server and state.server_id == server_id:
            changed = state.catch_up(client, stop)
            if changed is not None:
                return Poll(state.retrieved(), changed, False, state.revision)
        # The old copy stays until the new one is whole: a retrieval that fails or is
        # stopped half way leaves it (and its revision) as it was.
        full = client.get_server(server_id, stop)
        copy = StateCopy.from_full(full, client.server, stop)
        self.state = copy
        return Poll(copy.retrieved(), True, True, copy.revision)
