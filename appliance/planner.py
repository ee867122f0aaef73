"""Plan XFRM changes: from (kernel state, wanted state, jump) to typed operations (sans-IO).

Theory of operation
-------------------
Three commands change a namespace's SAD/SPD, and they follow one set of
rules, planned here and carried out by their callers:

- ``ipsec-ha restore`` (``appliance.restore``): ``plan_restore`` installs a
  snapshot, all or nothing; ``plan_undo`` reverses what was applied when a
  later operation fails.
- The failover executor's install and counter steps
  (``appliance.failover.executor``): ``plan_install`` is an idempotent diff
  between the kernel and the fetched state (an SA already installed is left
  alone: its counters have moved on); ``counters_behind`` moves a replay
  counter forward only, never back; ``plan_close_outbound``,
  ``plan_open_outbound`` and ``plan_remove_state`` gate, open and empty it.
- On-demand install (``appliance.failover.ondemand_install``):
  ``plan_sa_install`` puts one SA and its policies in.

The rules they share:

1. **The jump.** An outbound SA's sequence number moves ``jump`` ahead
   before it is installed, through ``seqjump.advance_sa`` (one function, one
   set of limits: the CLI refuses what the daemon refuses). An SA that would
   have to wrap is not installed: ``prepare_sas`` reports it for a rekey.
2. **Order.** SAs go in before the policies that name them; policies come
   out before the SAs they name. Each plan is a list in the order to apply.
3. **Identity.** The kernel finds an SA by (daddr, SPI, proto, family,
   mark) and a policy by (type, dir, selector, mark, if_id, security
   context): ``sa_identity`` and ``policy_identity``.

``XfrmKernel`` is the one protocol the callers need of the netlink layer
(``XfrmSocket`` provides it; tests use fakes), and ``apply_ops`` is the one
place where a typed ``Op`` becomes the netlink layer's request.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from appliance.model import (
    Direction,
    LifetimeCur,
    PolicyAction,
    ReplayState,
    ReplayStateEsn,
    SadEntry,
    SpdEntry,
)

if TYPE_CHECKING:
    from appliance.failover.seqjump import AdvancedSa, RekeyRequired, SeqJumpError
    from appliance.xfrm.types import AeState, BatchFailure


class OpKind(enum.Enum):
    """What one operation does; the value is the netlink layer's name for the request."""

    ADD_SA = "add_sa"
    DELETE_SA = "delete_sa"
    SET_REPLAY = "set_replay"
    """NEWAE with replace: the entry's replay state onto the live SA."""
    SET_THRESHOLDS = "set_thresholds"
    """NEWAE: the entry's ``replay_thresh`` and ``etimer_thresh`` onto the live SA."""
    ADD_POLICY = "add_policy"
    UPDATE_POLICY = "update_policy"
    DELETE_POLICY = "delete_policy"


@dataclass(frozen=True, slots=True)
class Op:
    """One kernel change."""

    kind: OpKind
    entry: SadEntry | SpdEntry


class XfrmKernel(Protocol):
    """What planning and applying need of the netlink layer (``XfrmSocket``)."""

    def dump_sad(self) -> list[SadEntry]: ...

    def dump_spd(self) -> list[SpdEntry]: ...

    def install_batch(
        self,
        operations: Sequence[tuple[str, SadEntry | SpdEntry]],
        *,
        with_lifetime_cur: bool = False,
    ) -> list[BatchFailure]:
        """Send every operation, pipelined; return the refused ones (index, errno, message)."""
        ...

    def get_ae_batch(self, entries: Sequence[SadEntry]) -> list[AeState | BatchFailure]: ...


def apply_ops(
    kernel: XfrmKernel, ops: Sequence[Op], *, with_lifetime_cur: bool = False
) -> list[BatchFailure]:
    """Send ``ops`` in order; every op not reported refused has been applied."""
    if not ops:
        return []
    requests = [(op.kind.value, op.entry) for op in ops]
    return kernel.install_batch(requests, with_lifetime_cur=with_lifetime_cur)


# --- identities -----------------------------------------------------------------

Identity = tuple[object, ...]


def sa_identity(sa: SadEntry) -> Identity:
    """What the kernel uses to find an SA: (daddr, spi, proto, family, mark)."""
    mark = (sa.mark.value, sa.mark.mask) if sa.mark is not None else (0, 0)
    return (sa.family, sa.daddr, sa.spi, sa.proto, mark)


def policy_identity(policy: SpdEntry) -> Identity:
    """What the kernel uses to find a policy by selector: type, dir, selector, mark, if_id."""
    mark = (policy.mark.value, policy.mark.mask) if policy.mark is not None else (0, 0)
    return (policy.ptype, policy.dir, policy.selector, mark, policy.if_id or 0, policy.sec_ctx)


# --- outbound gates ---------------------------------------------------------------


def is_gate(policy: SpdEntry) -> bool:
    """An outbound block gate: ``out``, action block, no template."""
    return (
        policy.dir == Direction.OUT and policy.action == PolicyAction.BLOCK and not policy.templates
    )


def gate_for(policy: SpdEntry) -> SpdEntry:
    """The block gate standing in for an ``out`` policy: same identity and priority."""
    return dataclasses.replace(
        policy, action=PolicyAction.BLOCK, templates=(), lifetime_cur=LifetimeCur()
    )


def same_policy(a: SpdEntry, b: SpdEntry) -> bool:
    """Whether ``a`` already does what ``b`` does (action, templates, priority)."""
    return (a.action, a.templates, a.priority) == (b.action, b.templates, b.priority)


# --- the jump -----------------------------------------------------------------------


@dataclass(slots=True)
class PreparedSas:
    """Wanted SAs made ready to install: outbound counters moved by the jump."""

    sad: list[SadEntry] = field(default_factory=list)
    """What to install, in the order given (an SA that needs a rekey is left out)."""
    advanced: list[AdvancedSa] = field(default_factory=list)
    """Each outbound SA moved: the SA as moved, its old and new counter."""
    rekey: list[tuple[SadEntry, RekeyRequired]] = field(default_factory=list)
    """Outbound SAs the jump would make wrap: not installed, IKE must rekey them."""
    invalid: list[tuple[SadEntry, SeqJumpError]] = field(default_factory=list)
    """Outbound SAs whose replay state cannot take a jump at all (an ESN SA without
    an ESN replay state): not installed; each caller says how loud that is."""


def prepare_sas(
    sad: Sequence[SadEntry],
    outbound: Sequence[bool],
    jump: int,
    *,
    thresholds: tuple[int, int] | None = None,
) -> PreparedSas:
    """Move each outbound SA's counter ``jump`` ahead (``seqjump.advance_sa``).

    ``outbound`` flags each SA of ``sad`` (``model.classify_outbound``).
    ``thresholds`` (``XFRMA_REPLAY_THRESH``, ``XFRMA_ETIMER_THRESH`` in
    jiffies), when given, go into every SA so that the kernel reports its
    counters often enough. A jump out of range raises ``SeqJumpError``.
    """
    # Imported here: the appliance.failover package costs `ipsec-ha restore`
    # start-up time, and a restore without a jump never gets here.
    from appliance.failover.seqjump import RekeyRequired, SeqJumpError, advance_sa, check_jump

    check_jump(jump)
    prepared = PreparedSas()
    for sa, is_out in zip(sad, outbound, strict=True):
        if is_out:
            try:
                outcome = advance_sa(sa, jump)
            except SeqJumpError as exc:
                prepared.invalid.append((sa, exc))
                continue
            if isinstance(outcome, RekeyRequired):
                prepared.rekey.append((sa, outcome))
                continue
            prepared.advanced.append(outcome)
            sa = outcome.sa
        if thresholds is not None:
            sa = dataclasses.replace(sa, replay_thresh=thresholds[0], etimer_thresh=thresholds[1])
        prepared.sad.append(sa)
    return prepared


# --- restore ------------------------------------------------------------------------


def plan_restore(
    sad: Sequence[SadEntry],
    spd: Sequence[SpdEntry],
    kernel_sas: Mapping[Identity, SadEntry],
    kernel_policies: Mapping[Identity, SpdEntry],
) -> list[Op]:
    """Install ``sad`` and ``spd`` over what the kernel holds (empty maps: add everything).

    An SA the kernel holds is deleted first and added again (an update cannot
    change keys or replay state); a policy it holds is updated.
    """
    replaced = dict.fromkeys(sa_identity(sa) for sa in sad)
    ops = [Op(OpKind.DELETE_SA, kernel_sas[k]) for k in replaced if k in kernel_sas]
    ops += [Op(OpKind.ADD_SA, sa) for sa in sad]
    ops += [
        Op(
            OpKind.UPDATE_POLICY if policy_identity(p) in kernel_policies else OpKind.ADD_POLICY,
            p,
        )
        for p in spd
    ]
    return ops


def plan_undo(applied: Sequence[Op], old_policies: Mapping[Identity, SpdEntry]) -> list[Op]:
    """The ops that reverse ``applied`` (all of which succeeded), in reverse order.

    ``old_policies`` holds what each updated policy was before.
    """
    undo: list[Op] = []
    for op in reversed(applied):
        if op.kind is OpKind.UPDATE_POLICY:
            assert isinstance(op.entry, SpdEntry)
            undo.append(Op(OpKind.UPDATE_POLICY, old_policies[policy_identity(op.entry)]))
        elif op.kind in _INVERSE:
            undo.append(Op(_INVERSE[op.kind], op.entry))
    return undo


_INVERSE = {
    OpKind.ADD_SA: OpKind.DELETE_SA,
    OpKind.DELETE_SA: OpKind.ADD_SA,
    OpKind.ADD_POLICY: OpKind.DELETE_POLICY,
    OpKind.DELETE_POLICY: OpKind.ADD_POLICY,
}
"""The op that undoes each kind with the same entry (a counter set is not undone)."""


# --- the failover executor ------------------------------------------------------------


@dataclass(slots=True)
class InstallPlan:
    """What ``plan_install`` found to do, batch by batch, in the order to apply."""

    sa_ops: list[Op]
    """SAs to add (outbound ones moved by the jump)."""
    policy_ops: list[Op]
    """Policies to add or update; ``out`` ones as gates."""
    removals: list[Op]
    """Stale policies, then stale SAs (reconcile only)."""
    advanced: list[AdvancedSa]
    rekey: list[tuple[SadEntry, RekeyRequired]]
    invalid: list[tuple[SadEntry, SeqJumpError]]


def plan_install(
    sad: Sequence[SadEntry],
    outbound: Sequence[bool],
    spd: Sequence[SpdEntry],
    kernel_sas: Mapping[Identity, SadEntry],
    kernel_policies: Mapping[Identity, SpdEntry],
    jump: int,
    *,
    thresholds: tuple[int, int] | None = None,
    reconcile: bool = False,
    policy_gates: bool = True,
) -> InstallPlan:
    """The difference between the kernel and the fetched state, as ops (idempotent).

    An SA the kernel holds is left alone (its counters have moved on;
    rewinding them would replay). With ``policy_gates``, outbound policies
    go in as gates until ``plan_open_outbound``; one already open (a re-run
    after opening) stays open. Without (the nftables gate holds outbound
    back), they go in as they are. With ``reconcile``, what the kernel holds
    and the state lacks is removed (gates excepted); without
    ``policy_gates`` a stale ``out`` policy becomes a gate instead, so its
    traffic is dropped rather than sent in clear.
    """
    missing = [
        (sa, out)
        for sa, out in zip(sad, outbound, strict=True)
        if sa_identity(sa) not in kernel_sas
    ]
    prepared = prepare_sas(
        [sa for sa, _ in missing], [out for _, out in missing], jump, thresholds=thresholds
    )
    policy_ops: list[Op] = []
    for pol in spd:
        target = gate_for(pol) if policy_gates and pol.dir == Direction.OUT else pol
        present = kernel_policies.get(policy_identity(pol))
        if present is None:
            policy_ops.append(Op(OpKind.ADD_POLICY, target))
        elif not same_policy(present, target) and not (
            pol.dir == Direction.OUT and same_policy(present, pol)
        ):
            policy_ops.append(Op(OpKind.UPDATE_POLICY, target))
    removals: list[Op] = []
    if reconcile:
        wanted_sas = {sa_identity(sa) for sa in sad}
        wanted_pols = {policy_identity(p) for p in spd}
        stale = [p for k, p in kernel_policies.items() if k not in wanted_pols and not is_gate(p)]
        removals += [_retire_policy(p, policy_gates) for p in stale]
        removals += [
            Op(OpKind.DELETE_SA, sa) for k, sa in kernel_sas.items() if k not in wanted_sas
        ]
    return InstallPlan(
        [Op(OpKind.ADD_SA, sa) for sa in prepared.sad],
        policy_ops,
        removals,
        prepared.advanced,
        prepared.rekey,
        prepared.invalid,
    )


def _seq64(state: ReplayState | ReplayStateEsn | None, *, outbound: bool) -> int:
    if state is None:
        return 0
    if isinstance(state, ReplayStateEsn):
        return state.oseq64 if outbound else state.seq64
    return state.oseq if outbound else state.seq


def replay_of(sa: SadEntry | AeState) -> ReplayState | ReplayStateEsn | None:
    """The replay state an SA (or a kernel AE answer) carries, ESN form first."""
    return sa.replay_esn if sa.replay_esn is not None else sa.replay


def wanted_counter(sa: SadEntry, *, outbound: bool) -> int:
    """The counter an SA's replay state asks for: outbound ``oseq`` or inbound ``seq``, 64-bit."""
    return _seq64(replay_of(sa), outbound=outbound)


def counters_behind(
    wanted: Sequence[tuple[SadEntry, int]],
    current: Sequence[ReplayState | ReplayStateEsn | None],
    *,
    outbound: bool,
) -> list[Op]:
    """``SET_REPLAY`` for each SA whose kernel counter (``current``) is below its target.

    Never a rewind: an SA already there, or moved further by traffic, is left alone.
    """
    return [
        Op(OpKind.SET_REPLAY, sa)
        for (sa, target), now in zip(wanted, current, strict=True)
        if _seq64(now, outbound=outbound) < target
    ]


def plan_close_outbound(kernel_spd: Sequence[SpdEntry]) -> list[Op]:
    """Gate every ``out`` policy the kernel holds (a gate keeps its policy's identity)."""
    return [
        Op(OpKind.UPDATE_POLICY, gate_for(p))
        for p in kernel_spd
        if p.dir == Direction.OUT and not is_gate(p)
    ]


def plan_open_outbound(
    spd: Sequence[SpdEntry], kernel_policies: Mapping[Identity, SpdEntry]
) -> list[Op]:
    """Put each ``out`` policy of ``spd`` in place of its gate (or of whatever differs)."""
    ops: list[Op] = []
    for pol in spd:
        if pol.dir != Direction.OUT:
            continue
        present = kernel_policies.get(policy_identity(pol))
        if present is None or not same_policy(present, pol):
            ops.append(Op(OpKind.UPDATE_POLICY, pol))
    return ops


def plan_remove_state(
    kernel_sad: Sequence[SadEntry],
    kernel_spd: Sequence[SpdEntry],
    *,
    policy_gates: bool = True,
) -> list[Op]:
    """Remove every policy (gates stay: outbound stays closed) and then every SA.

    Without ``policy_gates`` (the nftables gate), ``out`` policies are still
    real here, so each becomes a gate rather than going: with no policy, its
    traffic would be routed in clear.
    """
    ops = [_retire_policy(p, policy_gates) for p in kernel_spd if not is_gate(p)]
    ops += [Op(OpKind.DELETE_SA, sa) for sa in kernel_sad]
    return ops


def _retire_policy(policy: SpdEntry, policy_gates: bool) -> Op:
    if not policy_gates and policy.dir == Direction.OUT:
        return Op(OpKind.UPDATE_POLICY, gate_for(policy))
    return Op(OpKind.DELETE_POLICY, policy)


# --- on-demand install ------------------------------------------------------------------


def plan_sa_install(
    sa: SadEntry,
    spd: Sequence[SpdEntry],
    outbound: bool,
    jump: int,
    *,
    thresholds: tuple[int, int] | None = None,
) -> list[Op] | RekeyRequired:
    """Add one SA (moved by the jump when outbound) and then its policies as stored.

    No kernel dump: an entry already present is refused by the kernel
    (EEXIST), which the caller takes as installed. ``SeqJumpError`` if the
    SA's replay state cannot take the jump.
    """
    prepared = prepare_sas([sa], [outbound], jump, thresholds=thresholds)
    if prepared.invalid:
        raise prepared.invalid[0][1]
    if prepared.rekey:
        return prepared.rekey[0][1]
    return [Op(OpKind.ADD_SA, prepared.sad[0]), *(Op(OpKind.ADD_POLICY, p) for p in spd)]


__all__ = [
    "Identity",
    "InstallPlan",
    "Op",
    "OpKind",
    "PreparedSas",
    "XfrmKernel",
    "apply_ops",
    "counters_behind",
    "gate_for",
    "is_gate",
    "plan_close_outbound",
    "plan_install",
    "plan_open_outbound",
    "plan_remove_state",
    "plan_restore",
    "plan_sa_install",
    "plan_undo",
    "policy_identity",
    "prepare_sas",
    "replay_of",
    "sa_identity",
    "same_policy",
    "wanted_counter",
]
