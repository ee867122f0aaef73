"""Restore a snapshot into a namespace's XFRM SAD/SPD: all or nothing by default.

Theory of operation
-------------------
1. Prepare, without touching the kernel: decide which SAs are outbound
   (``classify_outbound``, docs/model.md) and move their outbound sequence
   number ``oseq_jump`` ahead, with the failover daemon's function and
   limits (``seqjump.advance_sa``): a jump of 2^31 or more is refused, and
   so is a non-ESN SA that would pass 2^32-1, as restoring it would make it
   wrap (or die) at once.
2. Dump what the namespace holds now. Without ``replace`` an entry that
   already exists is a failure (the kernel says EEXIST). With ``replace``
   an existing SA is deleted and added again (an SA update cannot change
   keys or replay state) and an existing policy is updated; the old
   entries are remembered.
3. Install in batches (the netlink layer sends many requests before
   reading the acks): deletions for ``replace``, then SAs, then policies,
   so that no policy ever points at a missing SA.
4. On the first failure, unless ``keep_going``: undo in reverse order --
   delete added policies, put updated policies back, delete added SAs,
   re-add deleted SAs -- and raise ``RestoreError`` naming the entry and
   the kernel's reason. The namespace is then as it was. With
   ``keep_going`` everything that can be installed is, and every failure
   is reported.

The plans (which ops, in which order, and how to undo them) come from
``appliance.planner``, as for the failover daemon's install; the kernel work
goes through its ``XfrmKernel`` protocol, so that this logic is testable
with a fake; ``appliance.xfrm.socket.XfrmSocket`` is the real one.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from appliance.errors import ApplianceError, KernelError
from appliance.model import (
    Address,
    SadEntry,
    Snapshot,
    SpdEntry,
    classify_outbound,
    gc_paused,
)
from appliance.planner import (
    Identity,
    Op,
    OpKind,
    XfrmKernel,
    apply_ops,
    plan_restore,
    plan_undo,
    policy_identity,
    prepare_sas,
    sa_identity,
)
from appliance.rtnl import local_addresses

Progress = Callable[[int], None]
"""Called with the number of entries just finished."""


class RestoreError(ApplianceError):
    """A restore failed; the message names the entry and the reason."""


class RestoreRollbackError(KernelError):
    """A restore failed and undoing it failed too: the namespace is not as it was."""


@dataclass(frozen=True, slots=True)
class OpFailure:
    """The kernel refused one ``Op``."""

    op: Op
    errno: int
    message: str = ""
    """The netlink layer's sentence for it (with the kernel's extended ack), if any."""


Outcome = OpFailure | Literal["ok", "skipped"]
"""Per op: applied ("ok"), refused (``OpFailure``) or not sent ("skipped")."""


@dataclass(frozen=True, slots=True)
class Failure:
    """One entry that was not restored, and why."""

    entry: str
    reason: str


@dataclass(slots=True)
class RestoreReport:
    """What a restore did."""

    sa_added: int = 0
    sa_replaced: int = 0
    policy_added: int = 0
    policy_replaced: int = 0
    oseq_jumped: int = 0
    failures: list[Failure] = field(default_factory=list)
    rolled_back: bool = False

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary."""
        return {
            "sa_added": self.sa_added,
            "sa_replaced": self.sa_replaced,
            "policy_added": self.policy_added,
            "policy_replaced": self.policy_replaced,
            "oseq_jumped": self.oseq_jumped,
            "failures": [{"entry": f.entry, "reason": f.reason} for f in self.failures],
            "rolled_back": self.rolled_back,
        }


# --- sequence numbers ---------------------------------------------------------


def check_oseq_jump(jump: int) -> None:
    """Refuse a jump that ``seqjump.advance_oseq`` refuses, before anything is touched.

    Raises ``RestoreError`` naming ``--oseq-jump`` and the range (0..2^31-1:
    the daemon's limit, see ``appliance.failover.seqjump``).
    """
    if jump == 0:  # the default, always valid: spare the command the import
        return
    from appliance.failover.seqjump import SeqJumpError, check_jump  # see jump_oseq

    try:
        check_jump(jump, name="--oseq-jump")
    except SeqJumpError as exc:
        raise RestoreError(str(exc)) from None


def jump_oseq(sa: SadEntry, jump: int) -> SadEntry:
    """``sa`` with its outbound sequence number ``jump`` further on.

    A thin wrapper over ``seqjump.advance_sa``, so that the CLI and the
    failover daemon share one set of limits: the jump must be below 2^31;
    ESN SAs count in 64 bits (``oseq_hi:oseq``, the carry goes into
    ``oseq_hi``), others in 32 bits, and one that would pass its last
    number is refused (``RestoreError`` naming the SA) rather than restored
    into an SA that must wrap.
    """
    # Imported here, not at the top: the appliance.failover package costs every
    # `ipsec-ha restore` some 8 ms of start-up, and only a jump needs it.
    from appliance.failover.seqjump import RekeyRequired, SeqJumpError, advance_sa

    try:
        outcome = advance_sa(sa, jump)
    except SeqJumpError as exc:
        raise RestoreError(f"{sa.label()}: {exc}") from None
    if isinstance(outcome, RekeyRequired):
        raise RestoreError(f"{sa.label()}: {outcome.reason}")
    return outcome.sa


# --- messages -------------------------------------------------------------------


def _algorithm_names(sa: SadEntry) -> list[str]:
    algs = (sa.aead, sa.crypt, sa.auth_trunc or sa.auth, sa.comp)
    return [a.name for a in algs if a is not None]


def describe_failure(failure: OpFailure) -> Failure:
    """A one-line, key-free reason for a kernel refusal."""
    entry = failure.op.entry
    label = entry.label()
    code = errno.errorcode.get(failure.errno, str(failure.errno))
    if (
        isinstance(entry, SadEntry)
        and failure.errno in (errno.ENOSYS, errno.ENOENT)
        and failure.op.kind is OpKind.ADD_SA
    ):
        names = _algorithm_names(entry)
        quoted = ", ".join(f"'{n}'" for n in names)
        what = f"algorithm {quoted}" if len(names) == 1 else f"one of the algorithms {quoted}"
        return Failure(label, f"kernel does not support {what} ({code})")
    if failure.errno == errno.EEXIST and failure.op.kind in (OpKind.ADD_SA, OpKind.ADD_POLICY):
        return Failure(label, "already exists (EEXIST); use --replace to overwrite")
    if failure.message:
        return Failure(label, failure.message)
    reason = os.strerror(failure.errno) if failure.errno > 0 else "refused"
    return Failure(label, f"{failure.op.kind.value.replace('_', ' ')}: {reason} ({code})")


# --- the restore --------------------------------------------------------------------


def prepare(
    snapshot: Snapshot,
    oseq_jump: int,
    local_addresses: Iterable[Address],
) -> tuple[list[SadEntry], list[Failure], int]:
    """Apply ``oseq_jump`` to outbound SAs; return (SAs, refusals, number jumped).

    A jump out of range raises ``RestoreError``; an SA that cannot take it is
    a refusal.
    """
    if oseq_jump == 0:
        return list(snapshot.sad), [], 0
    check_oseq_jump(oseq_jump)  # once, not as one refusal per SA
    outbound = classify_outbound(snapshot.sad, snapshot.spd, local_addresses)
    prepared = prepare_sas(snapshot.sad, outbound, oseq_jump)
    refused = [Failure(sa.label(), str(exc)) for sa, exc in prepared.invalid]
    refused += [Failure(sa.label(), rekey.reason) for sa, rekey in prepared.rekey]
    return prepared.sad, refused, len(prepared.advanced)


def restore(
    snapshot: Snapshot,
    xfrm: XfrmKernel,
    *,
    oseq_jump: int = 0,
    replace: bool = False,
    keep_going: bool = False,
    local_addresses: Iterable[Address] = (),
    progress: Progress | None = None,
    with_lifetime_cur: bool = False,
) -> RestoreReport:
    """Install ``snapshot`` through ``xfrm``; see the module docstring for the rules.

    ``with_lifetime_cur``: carry the SAs' byte/packet counters and add times
    over (XFRMA_LTIME_VAL), so that lifetimes keep running where they were.
    """
    report = RestoreReport()
    sad, refused, report.oseq_jumped = prepare(snapshot, oseq_jump, local_addresses)
    if refused and not keep_going:
        first = refused[0]
        raise RestoreError(f"{first.entry}: {first.reason}; nothing was changed")
    report.failures.extend(refused)
    if refused:  # labels format addresses: not worth it for every SA of every restore
        refused_labels = {f.entry for f in refused}
        sad = [sa for sa in sad if sa.label() not in refused_labels]

    old_sas: dict[Identity, SadEntry] = {}
    old_policies: dict[Identity, SpdEntry] = {}
    if replace:
        old_sas = {sa_identity(sa): sa for sa in xfrm.dump_sad()}
        old_policies = {policy_identity(p): p for p in xfrm.dump_spd()}
    ops = plan_restore(sad, snapshot.spd, old_sas, old_policies)
    send = _Sender(xfrm, with_lifetime_cur)
    outcomes = _apply(send, ops, stop_on_error=not keep_going, progress=progress)
    failures = [o for o in outcomes if isinstance(o, OpFailure)]
    applied = [op for op, o in zip(ops, outcomes, strict=True) if o == "ok"]

    if failures and not keep_going:
        _roll_back(send, applied, old_policies)
        reason = describe_failure(failures[0])
        report.rolled_back = True
        raise RestoreError(f"{reason.entry}: {reason.reason}; the restore was undone")

    # keep_going: an SA deleted for --replace whose new version was refused
    # gets its old version back rather than vanish.
    deleted = {
        sa_identity(op.entry)
        for op in applied
        if op.kind is OpKind.DELETE_SA and isinstance(op.entry, SadEntry)
    }
    refused_sas = [
        f.op.entry
        for f in failures
        if f.op.kind is OpKind.ADD_SA and isinstance(f.op.entry, SadEntry)
    ]
    put_back = [
        Op(OpKind.ADD_SA, old_sas[sa_identity(sa)])
        for sa in refused_sas
        if sa_identity(sa) in deleted
    ]
    if put_back:
        lost = [o for o in send(put_back) if isinstance(o, OpFailure)]
        if lost:
            first = describe_failure(lost[0])
            raise RestoreRollbackError(
                f"{len(lost)} replaced SAs could not be put back after their new version "
                f"was refused (first {first.entry}: {first.reason})"
            )
    report.failures.extend(describe_failure(f) for f in failures)
    added_sas = sum(1 for op in applied if op.kind is OpKind.ADD_SA)
    report.sa_replaced = min(len(deleted), added_sas)
    report.sa_added = added_sas - report.sa_replaced
    report.policy_added = sum(1 for op in applied if op.kind is OpKind.ADD_POLICY)
    report.policy_replaced = sum(1 for op in applied if op.kind is OpKind.UPDATE_POLICY)
    return report


class _Sender:
    """Sends ops through ``apply_ops`` and answers one outcome per op."""

    def __init__(self, xfrm: XfrmKernel, with_lifetime_cur: bool) -> None:
        self.xfrm = xfrm
        self.with_lifetime_cur = with_lifetime_cur

    def __call__(self, ops: list[Op]) -> list[Outcome]:
        # The whole list is sent before the answers are read, so every op not
        # reported as refused has been applied.
        failures = apply_ops(self.xfrm, ops, with_lifetime_cur=self.with_lifetime_cur)
        outcomes: list[Outcome] = ["ok"] * len(ops)
        for failure in failures:
            outcomes[failure.index] = OpFailure(ops[failure.index], failure.errno, failure.message)
        return outcomes


def _apply(
    send: _Sender, ops: list[Op], stop_on_error: bool, progress: Progress | None
) -> list[Outcome]:
    """Apply ops in chunks, so that progress can be shown and a failure stops early."""
    chunk = 1024
    outcomes: list[Outcome] = []
    failed = False
    for start in range(0, len(ops), chunk):
        part = ops[start : start + chunk]
        if failed and stop_on_error:
            outcomes += ["skipped"] * len(part)
            continue
        results = send(part)
        failed = failed or any(isinstance(o, OpFailure) for o in results)
        outcomes += results
        if progress is not None:
            progress(len(part))
    return outcomes


def _roll_back(send: _Sender, applied: list[Op], old_policies: dict[Identity, SpdEntry]) -> None:
    """Undo ``applied`` (all succeeded) in reverse order; raise if that fails too."""
    undo = plan_undo(applied, old_policies)
    outcomes = send(undo) if undo else []
    failures = [o for o in outcomes if isinstance(o, OpFailure)]
    if failures:
        first = describe_failure(failures[0])
        raise RestoreRollbackError(
            f"restore failed and undoing it failed too ({len(failures)} entries, first "
            f"{first.entry}: {first.reason}); the namespace is NOT as it was"
        )


def restore_netns(
    snapshot: Snapshot,
    netns: str | None,
    *,
    oseq_jump: int = 0,
    replace: bool = False,
    keep_going: bool = False,
    progress: Progress | None = None,
) -> RestoreReport:
    """``restore`` into the kernel of ``netns`` (None: the current namespace).

    Byte/packet counters and add times are carried over (XFRMA_LTIME_VAL),
    so lifetimes keep running where they were instead of starting again.
    """
    from appliance.xfrm.socket import XfrmSocket

    local = local_addresses(netns) if oseq_jump else []
    with XfrmSocket(netns) as xfrm, gc_paused():
        return restore(
            snapshot,
            xfrm,
            oseq_jump=oseq_jump,
            replace=replace,
            keep_going=keep_going,
            local_addresses=local,
            progress=progress,
            with_lifetime_cur=True,
        )
