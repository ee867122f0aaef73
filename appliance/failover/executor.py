"""Carry out a transition plan (``transitions.plan``) against the kernel and the store.

Theory of operation
-------------------
``PlanExecutor.run(actions, received_at)`` performs the actions in order.
What each kernel action changes is planned by ``appliance.planner`` (the
same rules as ``ipsec-ha restore`` and on-demand install); the kernel side
goes through its ``XfrmKernel`` protocol (what ``XfrmSocket`` offers), the
store side through ``StateStore`` (``StoreAccess``
below wraps one ``StoreClient`` per configured store) and the daemon's loops
through ``SyncLoops``, so that the logic is tested with fakes.

The served state is the namespace's whole XFRM SAD/SPD: the daemon serves
one namespace (``[xfrm].netns``) per server ID, and its sync loop publishes
all of it.

Every action is **idempotent**: it compares what the kernel holds with what
it should hold and changes only the difference. An SA already installed is
left alone (its counters have moved on; rewinding them would replay); an
outbound counter is only ever moved forward (``ADVANCE_OUTBOUND_SEQ`` reads
it with GETAE first), an inbound window likewise; a policy that is already
as it should be is not rewritten. Running the same plan again changes
nothing in the kernel (``CLAIM_OWNERSHIP`` raises this node's epoch once
more, which fences nobody new).

Outbound SAs get their counter advanced by the jump (``seqjump.advance_sa``,
through ``planner.prepare_sas``) before they are added; an SA whose counter
would wrap is *not* installed but reported (``ExecutionReport.rekey``), for
IKE to rekey. Inbound SAs are added with the replay window the store holds.

The run is bounded: before each action and each kernel batch the deadline
is checked, and ``ExecutionTimeout`` names the action it stopped at. Since
``OPEN_OUTBOUND`` comes last among the kernel actions, a run stopped early
leaves the outbound side gated (``transitions``).

With ``[ike] feed`` the executor has a ``CharonControl``: the local
charon installs and removes the CHILD SAs of the IKE SAs it is fed, so
``INSTALL_STATE`` and ``REMOVE_STATE`` leave those SAs and their policies
alone, and only their counters are moved (``ADVANCE_OUTBOUND_SEQ``,
``RESTORE_INBOUND_REPLAY``); see ``transitions.with_charon``.

The timeline (``notify-received``, ``state-fetched``, ``sas-installed``,
``outbound-opened``, ``done``, and one record per action) is logged as JSON
with monotonic timestamps; it names SAs by SPI only, never keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import logging
import platform
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from appliance.errors import ApplianceError
from appliance.failover.seqjump import AdvancedSa
from appliance.failover.transitions import Step
from appliance.model import (
    Address,
    Direction,
    ReplayState,
    ReplayStateEsn,
    SadEntry,
    SpdEntry,
    classify_outbound,
)
from appliance.planner import (
    Identity,
    InstallPlan,
    Op,
    OpKind,
    XfrmKernel,
    apply_ops,
    counters_behind,
    plan_close_outbound,
    plan_install,
    plan_open_outbound,
    plan_remove_state,
    policy_identity,
    prepare_sas,
    replay_of,
    sa_identity,
    wanted_counter,
)
from appliance.rtnl import local_addresses
from appliance.store.client import Retrieved
from appliance.xfrm.types import AeState, BatchFailure

if TYPE_CHECKING:
    from appliance.failover.config import StoreConfig
    from appliance.store.client import StoreClient

log = logging.getLogger("ipsec_ha.failover")

DEFAULT_HZ = 250
"""Debian's CONFIG_HZ, used when the kernel's configuration cannot be read."""


class ExecutionError(ApplianceError):
    """An action failed; the message names it and the reason."""


class ExecutionTimeout(ExecutionError):
    """The plan did not finish within its time limit."""


AE_ROUND = 512
"""SAs per GETAE-then-NEWAE round. Batching saves a round trip per SA; the
rounds keep short the time in which traffic could move an inbound counter
between the read and the write (a NEWAE with replace would then rewind it)."""


class StateStore(Protocol):
    """The store operations a plan needs."""

    def claim(self, server_id: str) -> dict[str, int]:
        """Raise the epoch; returns the new epoch per store that answered."""
        ...

    def fetch(self, server_id: str) -> Retrieved: ...


@dataclass(frozen=True)
class FollowedState:
    """A hot standby's copy of the state, brought up to date at a takeover."""

    state: Retrieved
    kernel_holds_it: bool
    """The kernel already holds exactly this state: the last follow run put it there and
    the store had no change since (``RECONCILE_STATE`` then needs no kernel dump)."""


class SyncLoops(Protocol):
    """The daemon's loops the plan starts and stops."""

    def start_publishing(self, epochs: dict[str, int]) -> None: ...

    def stop_publishing(self) -> None: ...

    def start_following(self) -> None: ...

    def stop_following(self) -> None: ...

    def followed_state(self, server_id: str) -> FollowedState | None:
        """The follower's copy, current as of now (None: none, fetch the whole state)."""
        ...


@dataclass(frozen=True)
class KernelMirror:
    """The served state's SAs and policies as a run left them in the kernel, by identity.

    Computed from what the run planned on and the batches it applied (all or
    nothing each), so a follow run after a completed one, and a hot takeover,
    plan without dumping the kernel: the same trust as the ``"kernel":
    "current"`` shortcut, that nothing else changes the served state there.
    """

    sas: dict[Identity, SadEntry]
    policies: dict[Identity, SpdEntry]

    @classmethod
    def after(
        cls,
        sas: Mapping[Identity, SadEntry],
        policies: Mapping[Identity, SpdEntry],
        plan: InstallPlan,
    ) -> KernelMirror:
        """What the kernel holds once ``plan`` went in over ``sas`` and ``policies``."""
        held_sas, held_pols = dict(sas), dict(policies)
        for op in (*plan.sa_ops, *plan.policy_ops, *plan.removals):
            entry = op.entry
            if isinstance(entry, SadEntry):
                if op.kind is OpKind.DELETE_SA:
                    held_sas.pop(sa_identity(entry), None)
                else:
                    held_sas[sa_identity(entry)] = entry
            elif op.kind is OpKind.DELETE_POLICY:
                held_pols.pop(policy_identity(entry), None)
            else:
                held_pols[policy_identity(entry)] = entry
        return cls(held_sas, held_pols)


@dataclass(frozen=True)
class FollowPrep:
    """What a completed follow run worked out for a takeover of the same state.

    A hot takeover whose copy brought no change starts from the very tuples
    the follow planned with (``StateCopy.retrieved`` keeps them while nothing
    changes) and from the kernel as that follow left it. The outbound flags,
    and which SAs the takeover must still read back or check, are then what
    the follow found: the takeover skips its passes over every SA (20,000 at
    10,000 tunnels, seconds of Python on a slow CPU).

    Of the classification's rules only "``saddr`` is local" can change in
    between (the VIP arrives at MASTER), so the local addresses the flags
    assumed are kept and compared (``holds_for``).
    """

    sad: tuple[SadEntry, ...]
    spd: tuple[SpdEntry, ...]
    local: frozenset[Address]
    flags: list[bool]
    inbound_saddrs: frozenset[Address]
    """Source addresses of SAs classified inbound without ``XFRMA_SA_DIR``: one that
    becomes local may turn its SA outbound."""
    outbound_saddrs: frozenset[Address]
    """Likewise of outbound ones: one that stops being local may turn its SA inbound."""
    outbound_todo: tuple[SadEntry, ...]
    """Outbound SAs in the kernel whose counter the follow did not set to the stored one
    plus the jump: a takeover reads them back (normally none)."""
    inbound_todo: tuple[tuple[SadEntry, int], ...]
    """Inbound SAs in the kernel whose stored counter the follow did not bring in, with
    that counter (normally none)."""

    @classmethod
    def of(
        cls,
        fetched: Retrieved,
        local: frozenset[Address],
        flags: list[bool],
        outbound_todo: Iterable[SadEntry],
        inbound_todo: Iterable[tuple[SadEntry, int]],
    ) -> FollowPrep:
        inbound: set[Address] = set()
        outbound: set[Address] = set()
        for sa, out in zip(fetched.sad, flags, strict=True):
            if sa.sa_dir is None:
                (outbound if out else inbound).add(sa.saddr)
        return cls(
            fetched.sad,
            fetched.spd,
            local,
            flags,
            frozenset(inbound),
            frozenset(outbound),
            tuple(outbound_todo),
            tuple(inbound_todo),
        )

    def holds_for(self, fetched: Retrieved, local: frozenset[Address]) -> bool:
        """``fetched`` is the state this was worked out for, and ``local`` changes no flag."""
        return (
            fetched.sad is self.sad
            and fetched.spd is self.spd
            and not (local - self.local) & self.inbound_saddrs
            and not (self.local - local) & self.outbound_saddrs
        )


class OutboundGate(Protocol):
    """A gate held outside the SPD, opened in one step (``appliance.nft.gate.NftGate``).

    With one, ``out`` policies go in as they are, and outbound ESP is held
    back by SPI until ``open``.
    """

    def close(self, spis: Iterable[int]) -> None:
        """Gate exactly ``spis`` and hold them back."""
        ...

    def add(self, spis: Iterable[int]) -> None:
        """Gate more SPIs (before their SAs go in)."""
        ...

    def discard(self, spis: Iterable[int]) -> None:
        """Forget SPIs whose SAs are gone."""
        ...

    def open(self) -> None:
        """Let every gated SA's ESP out."""
        ...


class CharonControl(Protocol):
    """The local charon, fed from the store (``ike_link.IkeLink``; ``[ike] feed``)."""

    def feed(
        self,
        fetched: Retrieved,
        installed: Callable[[frozenset[int]], None],
        make_room: Callable[[frozenset[int]], None],
    ) -> tuple[frozenset[int], frozenset[int]]:
        """Make charon hold the fetched IKE SAs, passive: the ones it lacks in batches, and
        the changes and deletions of those it was fed (charon's own are left alone).
        Before each batch, ``make_room(spis)`` deletes the served SAs with those SPIs
        (ipsec-ha's, none of charon's); after it, ``installed(spis)`` returns once the
        kernel holds the batch's CHILD SAs (or raises). Return the kernel SPIs of every
        CHILD SA charon is then to hold, and of those it is removing."""
        ...

    def activate(self) -> None:
        """charon's fed (passive) IKE SAs become ESTABLISHED."""
        ...

    def retire(self) -> frozenset[int]:
        """charon's IKE SAs go passive and charon deletes them; return the kernel SPIs of
        the CHILD SAs charon is to remove with them."""
        ...

    def refeed(self, spis: frozenset[int]) -> None:
        """charon lacks these CHILD SAs it was fed: feed their IKE SAs whole again."""
        ...

    def orphans(self) -> frozenset[int]:
        """The kernel SPIs of the CHILD SAs a charon that restarted without deleting its
        IKE SAs left behind."""
        ...

    def forget_orphans(self, spis: frozenset[int]) -> None:
        """``spis`` are out of the kernel: no longer orphans to drop."""
        ...


CHARON_RETIRE_WAIT_S = 10.0
"""How long ``RETIRE_CHARON`` (and a feed that deletes) waits for charon to remove the
CHILD SAs it deleted; what is left then is charon's still, and ``REMOVE_STATE`` (or the
follow) leaves it alone."""
CHARON_POLL_S = 0.05
FOLLOW_CHARON_WAIT_S = 5.0
"""How long a hot standby's follow run waits for charon to install what it was fed."""


@dataclass(frozen=True)
class ExecutorSettings:
    """What the executor needs from the daemon's configuration."""

    server_id: str
    oseq_jump: int
    timeout_s: float
    replay_seq_thresh: int
    etimer_jiffies: int
    """``XFRMA_ETIMER_THRESH`` as the kernel takes it on input: in jiffies."""


@dataclass
class TimelineEntry:
    """One step of a run."""

    step: str
    monotonic: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExecutionReport:
    """What a run did."""

    actions: list[str] = field(default_factory=list)
    timeline: list[TimelineEntry] = field(default_factory=list)
    epochs: dict[str, int] = field(default_factory=dict)
    installed_sas: int = 0
    installed_policies: int = 0
    advanced: list[tuple[int, int, int]] = field(default_factory=list)
    """(SPI, old counter, new counter) of each outbound SA moved."""
    restored_inbound: int = 0
    gated: int = 0
    opened: int = 0
    removed: int = 0
    rekey: list[tuple[int, str]] = field(default_factory=list)
    """(SPI, reason) of SAs not installed because they would wrap."""
    skipped_entries: int = 0
    """Stored entries left out of the fetched state because they did not decode."""
    skipped: list[str] = field(default_factory=list)
    """Which entries, and why (index and SPI or policy index; never key bytes)."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["timeline"] = [dataclasses.asdict(t) for t in self.timeline]
        return out


def kernel_hz(release: str | None = None) -> int:
    """CONFIG_HZ of the running kernel (``XFRMA_ETIMER_THRESH`` is read in jiffies).

    The kernel takes the attribute as jiffies on input but reports it in
    100 ms units (``xfrm_user.c``), so the daemon must know HZ. Read from
    /boot/config-RELEASE or /proc/config.gz; ``DEFAULT_HZ`` otherwise.
    """
    release = release or platform.release()
    texts: list[str] = []
    with contextlib.suppress(OSError):
        texts.append(Path(f"/boot/config-{release}").read_text())
    with contextlib.suppress(OSError, EOFError, gzip.BadGzipFile):
        texts.append(gzip.decompress(Path("/proc/config.gz").read_bytes()).decode())
    for text in texts:
        for line in text.splitlines():
            if line.startswith("CONFIG_HZ="):
                with contextlib.suppress(ValueError):
                    return int(line.split("=", 1)[1])
    return DEFAULT_HZ


def etimer_jiffies(timer_ms: int, hz: int) -> int:
    """``replay_timer_ms`` as the jiffies ``XFRMA_ETIMER_THRESH`` carries on input."""
    return -(-timer_ms * hz // 1000)


class PlanExecutor:
    """Runs plans; see the module docstring."""

    def __init__(
        self,
        kernel: XfrmKernel,
        store: StateStore,
        loops: SyncLoops,
        settings: ExecutorSettings,
        *,
        local_addresses: Callable[[], Sequence[Address]] = lambda: (),
        clock: Callable[[], float] = time.monotonic,
        gate: OutboundGate | None = None,
        charon: CharonControl | None = None,
    ) -> None:
        self.kernel = kernel
        self.gate = gate
        """The one-step gate (None: each ``out`` policy is its own block gate)."""
        self.charon = charon
        """The local charon when it is fed from the store (None: ipsec-ha installs all)."""
        self._charon_spis: frozenset[int] = frozenset()
        """SPIs of the SAs charon installs or still holds in this run: not ours to touch."""
        self._fresh: frozenset[int] = frozenset()
        """SPIs charon (re)installed in this run's feed, counters at 0."""
        self._charon_unverified = False
        """A feed failed half way: the next follow checks that the kernel holds every
        CHILD SA charon was fed."""
        self.store = store
        self.loops = loops
        self.settings = settings
        self.local_addresses = local_addresses
        self.clock = clock
        self.fetched: Retrieved | None = None
        self._installed: set[Identity] = set()
        """Identities of the SAs this run added (their counters are already advanced)."""
        self._held: set[Identity] | None = None
        """Identities of the SAs the kernel holds, once this run dumped them or installed,
        removed or cleared any (None: not known yet in this run)."""
        self._kernel_holds_fetched = False
        """``fetched`` came from the follower and the kernel already holds it."""
        self._mirror: KernelMirror | None = None
        """What the kernel holds of the served state as this run left it, while that is
        known without a dump (None: dump before planning)."""
        self._follow_mirror: KernelMirror | None = None
        """``_mirror`` as the last follow run left it, if it completed (None: unknown)."""
        self._follow_oseq: dict[Identity, int] = {}
        """Outbound SA identity -> the 64-bit counter a follow run installed it with (the
        stored one plus the jump). Kept while only follow runs run; see ``_advance_outbound``."""
        self._known_oseq: dict[Identity, int] = {}
        """This run's view of ``_follow_oseq``: what the last completed follow left."""
        self._following = False
        """The current run is a follow run (only those record ``_follow_oseq``)."""
        self._follow_state: tuple[tuple[SadEntry, ...], tuple[SpdEntry, ...]] | None = None
        """The fetched tuples the last completed follow run left in the kernel."""
        self._prep: FollowPrep | None = None
        """The last completed follow run's ``FollowPrep`` (None after any other run)."""
        self._prep_run: FollowPrep | None = None
        """``_prep`` for this run, while nothing in it changed the kernel's SAs."""
        self._local: frozenset[Address] | None = None
        """The node's local addresses, looked up once per run."""
        self._flags: list[bool] = []
        self._flags_of: Retrieved | None = None
        """The outbound flags of ``_flags_of`` (``_outbound_flags``), this run's only."""
        self._inbound_checked: dict[Identity, int] = {}
        """Inbound SA identity -> the stored counter last brought into the kernel. A hot
        standby's inbound SAs see no traffic, so an unchanged stored counter needs no
        GETAE on the next follow; any other plan clears this."""

    # -- the run -----------------------------------------------------------------

    def run(
        self,
        actions: Sequence[Step],
        received_at: float | None = None,
        *,
        fetched: Retrieved | None = None,
    ) -> ExecutionReport:
        """Perform ``actions`` in order; raise ``ExecutionError`` on the first failure.

        ``fetched`` is state retrieved before the run (the hot standby's
        follower fetches without holding the kernel); a ``fetch-state``
        action replaces it.
        """
        report = ExecutionReport()
        start = self.clock() if received_at is None else received_at
        deadline = start + self.settings.timeout_s
        self._mark(report, "notify-received", {"actions": [a.value for a in actions]}, start)
        self.fetched = fetched
        if fetched is not None:
            self._note_skipped(report, fetched)
        self._installed = set()
        self._held = None
        self._kernel_holds_fetched = False
        self._charon_spis = frozenset()
        self._fresh = frozenset()
        following = set(actions) <= _FOLLOW_ACTIONS
        # Counters a follow gave or checked are facts about the kernel only if the last
        # run was a completed follow run; any other run may have let traffic use the SAs.
        # (An inbound counter the kernel held then is still a floor: traffic only moves
        # it up.)
        after_follow = self._follow_mirror is not None
        self._known_oseq = dict(self._follow_oseq) if after_follow else {}
        self._mirror = self._follow_mirror
        self._prep_run = self._prep if after_follow else None
        self._following = following
        self._flags_of = None
        self._local = None
        if not following:
            self._follow_oseq.clear()
            if not after_follow:
                self._inbound_checked.clear()
        completed = False
        try:
            self._run_actions(actions, report, deadline)
            completed = True
        finally:
            # A follow run that completes records what the kernel holds; any other run
            # (or a failed follow) leaves that unknown, for the next run to dump.
            self._follow_mirror = self._mirror if following and completed else None
            self._follow_state = None
            self._prep = None
            if self._follow_mirror is not None and self.fetched is not None:
                self._follow_state = (self.fetched.sad, self.fetched.spd)
                try:
                    self._prep = self._prepare_takeover(self.fetched)
                except ApplianceError as exc:  # the takeover then works it out itself
                    log.warning("follow: cannot prepare the takeover: %s", exc)
        return report

    def kernel_holds(self, fetched: Retrieved) -> bool:
        """The last run was a completed follow run, of exactly this state (by identity)."""
        return (
            self._follow_mirror is not None
            and self._follow_state is not None
            and fetched.sad is self._follow_state[0]
            and fetched.spd is self._follow_state[1]
        )

    def _prepare_takeover(self, fetched: Retrieved) -> FollowPrep:
        """After a completed follow run: what a takeover of ``fetched`` will need."""
        local = self._local_addresses()
        previous = self._prep_run
        if previous is not None and previous.holds_for(fetched, local):
            return previous  # the kernel's SAs and the state are as that follow left them
        flags = self._outbound_flags(fetched)
        present = self._present(fetched, flags)
        return FollowPrep.of(
            fetched,
            local,
            flags,
            self._outbound_unsettled(present, self._follow_oseq, installed=set()),
            self._inbound_unchecked(present),
        )

    def _prep_for(self, fetched: Retrieved) -> FollowPrep | None:
        """The last follow's ``FollowPrep``, if this run may use it for ``fetched``."""
        prep = self._prep_run
        if prep is None or not prep.holds_for(fetched, self._local_addresses()):
            return None
        return prep

    def _local_addresses(self) -> frozenset[Address]:
        if self._local is None:
            self._local = frozenset(self.local_addresses())
        return self._local

    def _run_actions(
        self, actions: Sequence[Step], report: ExecutionReport, deadline: float
    ) -> None:
        for action in actions:
            self._check_deadline(deadline, action)
            try:
                detail = self._do(action, report, deadline)
            except ExecutionError:
                raise
            except ApplianceError as exc:
                raise ExecutionError(f"{action.value}: {exc}") from exc
            report.actions.append(action.value)
            self._mark(report, action.value, detail)
            milestone = _MILESTONES.get(action)
            if milestone:
                self._mark(report, milestone, {})
        self._mark(report, "done", {"rekey": [f"0x{spi:08x}" for spi, _ in report.rekey]})
        for spi, reason in report.rekey:
            log.warning("SA spi 0x%08x needs a rekey: %s", spi, reason)

    def held_of_fetched(self) -> tuple[int, int] | None:
        """(SAs, policies) of the last fetched state that the kernel holds after the last run.

        For the hot standby's health after a follow: no kernel dump, only what
        the run learnt. Every fetched policy is there once an install or
        reconcile succeeded (its batch is all or nothing); an SA may be missing
        (one that needs a rekey is not installed). None when the last run
        fetched nothing or did not learn what the kernel holds.
        """
        if self.fetched is None or self._held is None:
            return None
        held = self._held
        sas = sum(1 for sa in self.fetched.sad if sa_identity(sa) in held)
        return sas, len(self.fetched.spd)

    def _mark(
        self, report: ExecutionReport, step: str, detail: dict[str, Any], at: float | None = None
    ) -> None:
        entry = TimelineEntry(step, self.clock() if at is None else at, detail)
        report.timeline.append(entry)
        log.info("%s", json.dumps({"timeline": step, "monotonic": entry.monotonic, **detail}))

    @staticmethod
    def _note_skipped(report: ExecutionReport, fetched: Retrieved) -> None:
        # Logged once by the fetch; the report (and so the status file) carries the count.
        report.skipped = list(fetched.skipped)
        report.skipped_entries = len(fetched.skipped)

    def _check_deadline(self, deadline: float, action: Step) -> None:
        if self.clock() > deadline:
            raise ExecutionTimeout(
                f"the transition did not finish within {self.settings.timeout_s:g} s; "
                f"stopped before {action.value} (outbound stays gated)"
            )

    def _do(self, action: Step, report: ExecutionReport, deadline: float) -> dict[str, Any]:
        sid = self.settings.server_id
        if action is Step.CLOSE_OUTBOUND:
            return {"gated": self._close_outbound(report, deadline)}
        if action is Step.STOP_PUBLISHING:
            self.loops.stop_publishing()
            return {}
        if action is Step.START_PUBLISHING:
            self.loops.start_publishing(dict(report.epochs))
            return {}
        if action is Step.STOP_FOLLOWING:
            self.loops.stop_following()
            return {}
        if action is Step.START_FOLLOWING:
            self.loops.start_following()
            return {}
        if action is Step.CLAIM_OWNERSHIP:
            report.epochs = self.store.claim(sid)
            return {"epochs": report.epochs}
        if action is Step.FETCH_STATE:
            followed = self.loops.followed_state(sid)
            if followed is not None:
                # A hot standby's copy plus the store's changes since: no bulk retrieval.
                self.fetched = followed.state
                self._kernel_holds_fetched = followed.kernel_holds_it
            else:
                self.fetched = self.store.fetch(sid)
            self._note_skipped(report, self.fetched)
            return {
                "sas": len(self.fetched.sad),
                "policies": len(self.fetched.spd),
                "from": self.fetched.source,
                "skipped": len(self.fetched.skipped),
                "followed": followed is not None,
            }
        if action is Step.ACTIVATE_CHARON:
            self._need_charon(action).activate()
            return {}
        if action is Step.RETIRE_CHARON:
            return self._retire_charon(deadline)
        if action is Step.DROP_CHARON_ORPHANS:
            return self._drop_charon_orphans(report, deadline)
        fetched = self.fetched
        if action is Step.REMOVE_STATE:
            return {"removed": self._remove_state(report, deadline)}
        if fetched is None:
            raise ExecutionError(f"{action.value} needs the state from fetch-state first")
        if action is Step.FEED_CHARON:
            return self._feed_charon(fetched, deadline)
        if action is Step.INSTALL_STATE:
            return self._install(fetched, report, deadline, reconcile=False)
        if action is Step.RECONCILE_STATE:
            if self._kernel_holds_fetched and self._follow_mirror is not None:
                # The last follow run left the kernel equal to this state: no dump, no plan.
                self._held = set(self._follow_mirror.sas)
                return {"sas": 0, "policies": 0, "removed": 0, "rekey": 0, "kernel": "current"}
            return self._install(fetched, report, deadline, reconcile=True)
        if action is Step.ADVANCE_OUTBOUND_SEQ:
            return self._advance_outbound(fetched, report, deadline)
        if action is Step.RESTORE_INBOUND_REPLAY:
            return self._restore_inbound(fetched, report, deadline)
        if action is Step.OPEN_OUTBOUND:
            return {"opened": self._open_outbound(fetched, report, deadline)}
        raise ExecutionError(f"unknown action {action!r}")

    # -- the local charon ([ike] feed) ------------------------------------------

    def _need_charon(self, action: Step) -> CharonControl:
        if self.charon is None:
            raise ExecutionError(f"{action.value}: no charon is fed here ([ike] feed is off)")
        return self.charon

    def _kernel_spis(self) -> set[int]:
        return {sa.spi for sa in self.kernel.dump_sad()}

    def _feed_charon(self, fetched: Retrieved, deadline: float) -> dict[str, Any]:
        charon = self._need_charon(Step.FEED_CHARON)
        if self._following:
            # A follow run holds the kernel lock, which a takeover waits for: a charon
            # that does not install fails it soon (tried again at the next poll).
            deadline = min(deadline, self.clock() + FOLLOW_CHARON_WAIT_S)
        if self.gate is not None:
            # Gated before charon installs them: charon's out policies go in open.
            self.gate.add({sa.spi for sa in fetched.sad})
        fresh: set[int] = set()  # SPIs charon (re)installs in this feed: counters at 0
        cleared = 0

        def wait_installed(spis: frozenset[int]) -> None:
            # charon's from now on, even if the wait fails: never ipsec-ha's to remove
            self._charon_spis |= spis
            self._held = None  # charon adds SAs: the next reader dumps
            while missing := spis - self._kernel_spis():
                if self.clock() > deadline:
                    raise ExecutionTimeout(
                        f"feed-charon: {len(missing)} of {len(spis)} CHILD SAs charon was "
                        f"fed are not in the kernel in time (is "
                        "charon running, with the ha plugin on the relay's address? its log "
                        "says why; outbound stays gated)"
                    )
                time.sleep(CHARON_POLL_S)

        def installed(spis: frozenset[int]) -> None:
            fresh.update(spis)
            self._forget_counters(spis)  # before the wait: it may fail
            wait_installed(spis)

        def make_room(spis: frozenset[int]) -> None:
            # Served SAs ipsec-ha installed (a hot follow, from the store, before the IKE
            # record that names them came): charon's install of the same SPI would fail.
            nonlocal cleared
            served = {sa_identity(sa) for sa in fetched.sad if sa.spi in spis}
            if not served:
                return
            ours = [sa for sa in self.kernel.dump_sad() if sa_identity(sa) in served]
            self._held = None
            self._mirror = None
            self._forget_counters(spis)
            self._batch([Op(OpKind.DELETE_SA, sa) for sa in ours], "feed-charon", deadline)
            cleared += len(ours)

        self._charon_spis = frozenset()
        unverified, self._charon_unverified = self._charon_unverified, True
        try:
            spis, removing = charon.feed(fetched, installed, make_room)
        except (TimeoutError, RuntimeError, OSError) as exc:  # the loop or the relay socket
            raise ExecutionError(
                f"feed-charon: charon's relay did not take the feed: {exc}"
            ) from exc
        if not self._following:  # a takeover also checks what charon held already
            wait_installed(spis - self._charon_spis)
        elif unverified and (lacking := spis - self._charon_spis - self._kernel_spis()):
            # A feed that failed half way may have left charon without SAs it was fed,
            # which later feeds do not send again (the records did not change).
            charon.refeed(lacking)
            raise ExecutionError(
                f"feed-charon: charon does not hold {len(lacking)} CHILD SAs it was fed; "
                "their IKE SAs are fed again at the next poll"
            )
        self._charon_unverified = False
        # What charon removes stays charon's until it is gone.
        self._charon_spis |= spis | self._wait_gone(removing, deadline)
        if removing:
            self._mirror = None  # the kernel changed under the mirror: the install dumps
        self._fresh = frozenset(fresh)
        if fresh:
            self._mirror = None
            self._prep_run = None
        return {
            "ike_sas": len(fetched.ike_sas),
            "child_spis": len(spis),
            "installed": len(fresh),
            "cleared": cleared,
        }

    def _forget_counters(self, spis: Collection[int]) -> None:
        """SAs with these SPIs go or come again from charon, counters at 0: nothing a
        follow set or checked of them holds any more."""
        for known in (self._follow_oseq, self._known_oseq, self._inbound_checked):
            for identity in [i for i in known if i[2] in spis]:
                del known[identity]

    def _retire_charon(self, deadline: float) -> dict[str, Any]:
        charon = self._need_charon(Step.RETIRE_CHARON)
        spis = charon.retire()
        left = self._wait_gone(spis, deadline)
        self._charon_spis = left
        return {"child_spis": len(spis), "left": len(left)}

    def _wait_gone(self, spis: frozenset[int], deadline: float) -> frozenset[int]:
        """Wait (``CHARON_RETIRE_WAIT_S`` at most) until charon removed the SAs ``spis``
        from the kernel; return those still there, which stay charon's."""
        if not spis:
            return spis
        self._held = None
        until = min(deadline, self.clock() + CHARON_RETIRE_WAIT_S)
        left = spis & self._kernel_spis()
        while left and self.clock() < until:
            time.sleep(CHARON_POLL_S)
            left = spis & self._kernel_spis()
        if left:
            log.warning(
                "charon has not removed %d of the %d SAs of the IKE and CHILD SAs it "
                "deleted; they stay charon's, ipsec-ha leaves them alone",
                len(left),
                len(spis),
            )
        return frozenset(left)

    def _drop_charon_orphans(self, report: ExecutionReport, deadline: float) -> dict[str, Any]:
        # Only SAs whose SPIs the dead charon's IKE SAs named: it cannot remove them any
        # more, and the new charon, fed the same IKE SAs, installs them again. Their
        # policies stay: charon updates a policy it finds in place.
        charon = self._need_charon(Step.DROP_CHARON_ORPHANS)
        orphans = charon.orphans()
        sad = [sa for sa in self.kernel.dump_sad() if sa.spi in orphans]
        self._held = None
        self._batch([Op(OpKind.DELETE_SA, sa) for sa in sad], "drop-charon-orphans", deadline)
        charon.forget_orphans(orphans)  # only once gone: a failed batch is tried again
        report.removed += len(sad)
        return {"orphans": len(orphans), "removed": len(sad)}

    def _not_charons(
        self,
        sad: Sequence[SadEntry],
        spd: Sequence[SpdEntry],
        flags: Sequence[bool] | None = None,
    ) -> tuple[list[SadEntry], list[SpdEntry], list[bool]]:
        """``sad`` and ``spd`` without charon's SAs and the policies whose templates name
        one of their reqids (``flags`` follow ``sad``)."""
        owned = self._charon_spis
        flags = list(flags) if flags is not None else [False] * len(sad)
        if not owned:
            return list(sad), list(spd), flags
        keep = [i for i, sa in enumerate(sad) if sa.spi not in owned]
        reqids = {sa.reqid for sa in sad if sa.spi in owned and sa.reqid}
        policies = [p for p in spd if not any(t.reqid in reqids for t in p.templates)]
        return [sad[i] for i in keep], policies, [flags[i] for i in keep]

    # -- kernel work -------------------------------------------------------------

    def _batch(self, ops: list[Op], what: str, deadline: float) -> None:
        if not ops:
            return
        failures = apply_ops(self.kernel, ops)
        if failures:
            first = failures[0]
            raise ExecutionError(
                f"{what}: the kernel refused {len(failures)} of {len(ops)} changes; "
                f"first: {first.message}"
            )
        if self.clock() > deadline:
            raise ExecutionTimeout(
                f"the transition did not finish within {self.settings.timeout_s:g} s "
                f"(during {what}; outbound stays gated)"
            )

    def _close_outbound(self, report: ExecutionReport, deadline: float) -> int:
        self._mirror = None  # policy gates replace out policies; an nft close may race a rekey
        self._prep_run = None
        if self.gate is not None:
            # Every SA the kernel holds, whoever's: the rule then holds back ESP on any
            # of them, and the set forgets SPIs of SAs gone since the last close.
            spis = {sa.spi for sa in self.kernel.dump_sad()}
            self.gate.close(spis)
            report.gated += len(spis)
            return len(spis)
        ops = plan_close_outbound(self.kernel.dump_spd())
        self._batch(ops, "close-outbound", deadline)
        report.gated += len(ops)
        return len(ops)

    def _outbound_flags(self, fetched: Retrieved) -> list[bool]:
        # Once per fetched state and run: a takeover asks for it in several steps.
        if self._flags_of is not fetched:
            prep = self._prep_for(fetched)
            self._flags = (
                prep.flags
                if prep is not None
                else classify_outbound(fetched.sad, fetched.spd, self._local_addresses())
            )
            self._flags_of = fetched
        return self._flags

    def _install(
        self, fetched: Retrieved, report: ExecutionReport, deadline: float, *, reconcile: bool
    ) -> dict[str, Any]:
        if self._mirror is not None:
            # The last follow run left the kernel so (or this run did): plan without a dump.
            kernel_sas, kernel_pols = dict(self._mirror.sas), dict(self._mirror.policies)
        else:
            kernel_sas = {sa_identity(sa): sa for sa in self.kernel.dump_sad()}
            kernel_pols = {policy_identity(p): p for p in self.kernel.dump_spd()}
        sad, spd, flags = self._not_charons(fetched.sad, fetched.spd, self._outbound_flags(fetched))
        # charon's SAs and policies in the kernel are not ours to add, update or remove.
        planned_sas, planned_pols = kernel_sas, kernel_pols
        if self._charon_spis:
            theirs_sa, theirs_pol, _ = self._not_charons(
                list(kernel_sas.values()), list(kernel_pols.values())
            )
            planned_sas = {sa_identity(sa): sa for sa in theirs_sa}
            planned_pols = {policy_identity(p): p for p in theirs_pol}
        plan = plan_install(
            sad,
            flags,
            spd,
            planned_sas,
            planned_pols,
            self.settings.oseq_jump,
            thresholds=(self.settings.replay_seq_thresh, self.settings.etimer_jiffies),
            reconcile=reconcile,
            policy_gates=self.gate is None,
        )
        if plan.invalid:
            raise plan.invalid[0][1]  # the configuration's or the state's fault, not the SA's
        if plan.sa_ops or plan.removals:
            self._prep_run = None  # the kernel's SAs are no longer the follow's
        report.rekey += [(sa.spi, rekey.reason) for sa, rekey in plan.rekey]
        report.advanced += [(a.sa.spi, a.old_oseq, a.new_oseq) for a in plan.advanced]
        self._mirror = None  # until every batch went in (a refused op may leave others in)
        if self.gate is not None:
            # Gated before they exist: their policies go in open, the gate holds them.
            self.gate.add({op.entry.spi for op in plan.sa_ops if isinstance(op.entry, SadEntry)})
        self._batch(plan.sa_ops, "install SAs", deadline)
        self._installed.update(
            sa_identity(op.entry) for op in plan.sa_ops if isinstance(op.entry, SadEntry)
        )
        if self._following:
            self._follow_oseq.update((sa_identity(a.sa), a.new_oseq) for a in plan.advanced)
        self._batch(plan.policy_ops, "install policies", deadline)
        self._batch(plan.removals, "remove stale entries", deadline)
        self._mirror = KernelMirror.after(kernel_sas, kernel_pols, plan)
        self._held = set(self._mirror.sas)
        removed = {op.entry for op in plan.removals if isinstance(op.entry, SadEntry)}
        for sa in removed:
            self._follow_oseq.pop(sa_identity(sa), None)
        if self.gate is not None and removed:
            # An SPI may be shared by an SA that stays (another peer's): that one stays gated.
            held_spis = {sa.spi for sa in self._mirror.sas.values()}
            self.gate.discard({sa.spi for sa in removed} - held_spis)
        report.installed_sas += len(plan.sa_ops)
        report.installed_policies += len(plan.policy_ops)
        report.removed += len(plan.removals)
        return {
            "sas": len(plan.sa_ops),
            "policies": len(plan.policy_ops),
            "removed": len(plan.removals),
            "rekey": len(report.rekey),
        }

    def _present(
        self, fetched: Retrieved, flags: list[bool] | None = None
    ) -> list[tuple[SadEntry, bool]]:
        """The fetched SAs the kernel holds, each with its outbound flag (given or computed)."""
        if self._held is None:
            self._held = {sa_identity(sa) for sa in self.kernel.dump_sad()}
        kernel = self._held
        flags = self._outbound_flags(fetched) if flags is None else flags
        return [
            (sa, out)
            for sa, out in zip(fetched.sad, flags, strict=True)
            if sa_identity(sa) in kernel
        ]

    def _kernel_replays(
        self, sas: Sequence[SadEntry], what: str
    ) -> list[ReplayState | ReplayStateEsn | None]:
        """The kernel's current replay state of each SA (one pipelined GETAE batch)."""
        answers = self.kernel.get_ae_batch(sas)
        failures = [a for a in answers if isinstance(a, BatchFailure)]
        if failures:
            raise ExecutionError(
                f"{what}: the kernel could not read {len(failures)} of {len(sas)} replay "
                f"states; first: {failures[0].message}"
            )
        return [replay_of(a) for a in answers if isinstance(a, AeState)]

    def _move_counters(
        self,
        wanted: Sequence[tuple[SadEntry, int]],
        *,
        outbound: bool,
        action: Step,
        deadline: float,
    ) -> Iterator[tuple[Sequence[tuple[SadEntry, int]], list[Op]]]:
        """Give each SA its own replay state where the kernel's counter is below ``wanted``.

        Never rewinds (``planner.counters_behind``). Works in rounds of
        ``AE_ROUND`` SAs (one GETAE batch, then one NEWAE batch); once a round
        is done, yields what it checked and the ops it applied.
        """
        what = action.value
        for start in range(0, len(wanted), AE_ROUND):
            part = wanted[start : start + AE_ROUND]
            self._check_deadline(deadline, action)
            current = self._kernel_replays([sa for sa, _ in part], what)
            behind = counters_behind(part, current, outbound=outbound)
            self._batch(behind, what, deadline)
            yield part, behind

    def _advance_outbound(
        self, fetched: Retrieved, report: ExecutionReport, deadline: float
    ) -> dict[str, Any]:
        known = self._known_oseq
        jump = self.settings.oseq_jump
        prep = self._prep_for(fetched)
        if prep is not None:
            todo = list(prep.outbound_todo)  # what the follow left unsettled
        else:
            flags = self._outbound_flags(fetched)
            if all(
                sa_identity(sa) in self._installed
                for sa, o in zip(fetched.sad, flags, strict=True)
                if o
            ):
                return {"advanced": 0, "rekey": len(report.rekey)}  # no dump needed
            todo = self._outbound_unsettled(
                self._present(fetched, flags), known, installed=self._installed
            )
        prepared = prepare_sas(todo, [True] * len(todo), jump)
        if prepared.invalid:
            raise prepared.invalid[0][1]
        report.rekey += [(sa.spi, rekey.reason) for sa, rekey in prepared.rekey]
        outcomes: dict[Identity, AdvancedSa] = {sa_identity(a.sa): a for a in prepared.advanced}
        blind = [o for i, o in outcomes.items() if i in known]
        moved = 0
        if blind:
            self._check_deadline(deadline, Step.ADVANCE_OUTBOUND_SEQ)
            self._batch(
                [Op(OpKind.SET_REPLAY, o.sa) for o in blind], "advance-outbound-seq", deadline
            )
            report.advanced += [(o.sa.spi, o.old_oseq, o.new_oseq) for o in blind]
            moved += len(blind)
        outcomes = {i: o for i, o in outcomes.items() if i not in known}
        for _, done in self._move_counters(
            [(o.sa, o.new_oseq) for o in outcomes.values()],
            outbound=True,
            action=Step.ADVANCE_OUTBOUND_SEQ,
            deadline=deadline,
        ):
            for op in done:
                if isinstance(op.entry, SadEntry):
                    o = outcomes[sa_identity(op.entry)]
                    report.advanced.append((o.sa.spi, o.old_oseq, o.new_oseq))
            moved += len(done)
        return {"advanced": moved, "unread": len(blind), "rekey": len(report.rekey)}

    def _outbound_unsettled(
        self,
        present: Sequence[tuple[SadEntry, bool]],
        known: Mapping[Identity, int],
        *,
        installed: set[Identity],
    ) -> list[SadEntry]:
        """The outbound SAs of ``present`` whose counter may be short of the stored one
        plus the jump.

        An SA a follow run installed or moved holds at least the counter it was
        given (``known``): a gate drops before the transform (policy) or drops
        what it took (nft: never sent), and nothing else used it since. It is
        unsettled only if the store's counter plus the jump is past that.
        Any other SA is, unless this run installed it (``installed``).
        """
        jump = self.settings.oseq_jump
        return [
            sa
            for sa, outbound in present
            if outbound
            and (identity := sa_identity(sa)) not in installed
            and not (
                identity in known and wanted_counter(sa, outbound=True) + jump <= known[identity]
            )
        ]

    def _inbound_unchecked(
        self, present: Sequence[tuple[SadEntry, bool]]
    ) -> list[tuple[SadEntry, int]]:
        """The inbound SAs of ``present`` whose stored counter was not brought in yet."""
        unchecked: list[tuple[SadEntry, int]] = []
        for sa, outbound in present:
            if outbound or replay_of(sa) is None:
                continue
            wanted = wanted_counter(sa, outbound=False)
            if self._inbound_checked.get(sa_identity(sa)) != wanted:
                unchecked.append((sa, wanted))
        return unchecked

    def _restore_inbound(
        self, fetched: Retrieved, report: ExecutionReport, deadline: float
    ) -> dict[str, Any]:
        prep = self._prep_for(fetched)
        unchecked = (
            list(prep.inbound_todo)
            if prep is not None
            else self._inbound_unchecked(self._present(fetched))
        )
        restored = 0
        for checked, done in self._move_counters(
            unchecked, outbound=False, action=Step.RESTORE_INBOUND_REPLAY, deadline=deadline
        ):
            for sa, wanted in checked:
                # One charon reinstalls in this run may have been read before charon
                # removed the SA it replaces: checked again by the next run.
                if sa.spi not in self._fresh:
                    self._inbound_checked[sa_identity(sa)] = wanted
            restored += len(done)
        report.restored_inbound += restored
        return {"restored": restored}

    def _open_outbound(self, fetched: Retrieved, report: ExecutionReport, deadline: float) -> int:
        if self.gate is not None:
            # One rule out; the out policies went in as they are (install or reconcile).
            self.gate.open()
            opened = sum(1 for p in fetched.spd if p.dir == Direction.OUT)
            report.opened += opened
            return opened
        self._mirror = None  # the out policies are replaced
        kernel_pols = {policy_identity(p): p for p in self.kernel.dump_spd()}
        ops = plan_open_outbound(fetched.spd, kernel_pols)
        self._batch(ops, "open-outbound", deadline)
        report.opened += len(ops)
        return len(ops)

    def _remove_state(self, report: ExecutionReport, deadline: float) -> int:
        self._mirror = None
        self._prep_run = None
        sad, spd, _ = self._not_charons(self.kernel.dump_sad(), self.kernel.dump_spd())
        ops = plan_remove_state(sad, spd, policy_gates=self.gate is None)
        self._batch(ops, "remove-state", deadline)
        if self.gate is not None and sad:
            self.gate.discard({sa.spi for sa in sad})
        self._held = set()
        report.removed += len(ops)
        return len(ops)


_FOLLOW_ACTIONS = frozenset(
    {Step.FETCH_STATE, Step.FEED_CHARON, Step.RECONCILE_STATE, Step.RESTORE_INBOUND_REPLAY}
)
"""What a hot standby's follow runs; other plans may let traffic move inbound counters."""

_MILESTONES = {
    Step.FETCH_STATE: "state-fetched",
    Step.INSTALL_STATE: "sas-installed",
    Step.RECONCILE_STATE: "sas-installed",
    Step.OPEN_OUTBOUND: "outbound-opened",
}


def open_store_clients(store: StoreConfig, node_id: str) -> list[StoreClient]:
    """One client per ``[store].servers`` entry, with the table's settings, as ``node_id``.

    Each user of the stores (the daemon, its hot-standby follower, on-demand
    retrieval) needs its own node ID: the store caches answers per node ID
    and message ID, and the clients are not thread-safe.
    """
    from appliance.store.client import StoreClient
    from appliance.store.config import load_psk

    psk = load_psk(store.psk_file)
    return [
        StoreClient(
            server,
            store.port,
            psk,
            node_id,
            timeout=store.timeout_s,
            retries=store.retries,
            max_datagram=store.max_datagram,
        )
        for server in store.servers
    ]


class StoreAccess:
    """Every configured store: claims and writes go to all, reads to the first that answers.

    In the embedded two-node setup each gateway runs a store and the active
    node writes to both; at takeover the dead node's store does not answer,
    so one answering store is enough. Each store keeps its own epoch.
    """

    def __init__(self, clients: Sequence[Any]) -> None:
        if not clients:
            raise ExecutionError("no store configured")
        self.clients = list(clients)

    def _each(self, what: str, call: Callable[[Any], Any]) -> dict[str, Any]:
        from appliance.store.base import StaleEpochError, StoreError

        results: dict[str, Any] = {}
        errors: list[str] = []
        for client in self.clients:
            try:
                results[client.server] = call(client)
            except StaleEpochError:
                raise
            except StoreError as exc:
                errors.append(f"{client.server}: {exc}")
        if not results:
            raise ExecutionError(f"{what}: no store answered ({'; '.join(errors)})")
        for error in errors:
            log.warning("%s: %s", what, error)
        return results

    def claim(self, server_id: str) -> dict[str, int]:
        return self._each("claim", lambda c: c.claim(server_id))

    def fetch(self, server_id: str, stop: Callable[[], bool] | None = None) -> Retrieved:
        """The state from the first store that answers; ``stop`` cancels between pages.

        Entries that do not decode, and SAs whose replay state does not apply,
        are skipped, logged and counted by the client, not fatal.
        """
        from appliance.store.base import StoreError

        errors: list[str] = []
        for client in self.clients:
            try:
                return client.fetch(server_id, stop)  # type: ignore[no-any-return]
            except StoreError as exc:
                errors.append(f"{client.server}: {exc}")
        raise ExecutionError(f"fetch-state: no store answered ({'; '.join(errors)})")


def node_netns_addresses(netns: str | None) -> Callable[[], Sequence[Address]]:
    """The local-address lookup for ``classify_outbound`` in ``netns``."""

    return lambda: local_addresses(netns)


__all__ = [
    "ExecutionError",
    "ExecutionReport",
    "ExecutionTimeout",
    "ExecutorSettings",
    "FollowedState",
    "PlanExecutor",
    "StateStore",
    "StoreAccess",
    "SyncLoops",
    "etimer_jiffies",
    "kernel_hz",
]
