"""What a node does at each VRRP transition: a table, per standby mode.

Theory of operation
-------------------
keepalived tells a node the VRRP state it enters (MASTER, BACKUP, FAULT,
STOP, DELETED). The node knows the role it holds (``Role``). ``plan(role,
state, mode)`` looks the pair up in ``TABLE`` and returns the ordered
steps that take the kernel and the sync loops from that role to the one
the state calls for (``role_for(state)``). The table is data so that it can
be checked against the draft (section 4, failover) and RFC 6027/6311.

One rule matters above all: **a node that is not ACTIVE never emits ESP,
and an ACTIVE node never emits ESP with a sequence number the peer has
seen.** It is kept by how outbound traffic is gated, the same in both modes:

- The kernel picks an outbound SA only through an ``out`` policy
  (SPD) whose template names it; nothing else on a gateway uses one (no
  socket policies carry tunnel traffic). So while a node is not ACTIVE
  every ``out`` policy of the served state is installed as a *gate*: the
  same selector and priority, action ``block``, no template. A packet that
  reaches a gate is dropped (``XfrmOutPolBlock``): neither ESP with a stale
  counter nor, which removing the policy would allow, the clear text.
  ``fwd``/``in`` policies only check inbound traffic and stay as they are.
- ``OPEN_OUTBOUND`` swaps the gates for the real policies
  (``XFRM_MSG_UPDPOLICY`` replaces each in place). It comes only in MASTER
  plans and only after the counters have moved: after ``INSTALL_STATE``
  (cold: every outbound SA is added with its counter already advanced by the
  jump) or ``ADVANCE_OUTBOUND_SEQ`` (hot: ``XFRM_MSG_NEWAE`` moves the
  counters of the pre-installed SAs). Both come after ``FETCH_STATE``, and
  that after ``CLAIM_OWNERSHIP``: raising the owner epoch first fences the
  old active node (the store refuses its later SA_Stor), so the counters
  fetched are the last it can ever publish.
- Every plan that leaves ACTIVE, or starts from ``INIT`` (a daemon that
  does not know what the kernel holds), begins with ``CLOSE_OUTBOUND``.
- **Cold** standby holds nothing of the served state (only gates): MASTER
  installs all of it. **Hot** standby follows the store and keeps the
  peer's SAs, inbound replay state and ``in``/``fwd`` policies installed,
  outbound gated: MASTER only reconciles what changed, moves counters and
  opens the gates, which is much less kernel work on the failover path.

If a MASTER plan stops half way (store unreachable, kernel refusal), every
step before ``OPEN_OUTBOUND`` has left outbound closed: the failure costs
traffic, never a replayed sequence number. Running the plan again is safe.

Plans are idempotent by construction: the role a state leads to maps that
state to an empty plan (``plan(role_for(s), s, mode) == []``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from appliance.notify import VrrpState


class StandbyMode(enum.StrEnum):
    """How much of the served state a standby node keeps in its kernel."""

    COLD = "cold"
    HOT = "hot"


class Role(enum.StrEnum):
    """What a node is, as far as failover goes."""

    INIT = "init"
    """Daemon just started: kernel content unknown, no loop running."""
    ACTIVE = "active"
    """Holds the VIP: outbound open, publishes its state to the store."""
    STANDBY = "standby"
    """BACKUP or FAULT: outbound gated; hot mode follows the store."""
    STOPPED = "stopped"
    """keepalived stopped (STOP/DELETED): outbound gated, no state, no loops."""


class Step(enum.StrEnum):
    """One step of a transition plan."""

    CLOSE_OUTBOUND = "close-outbound"
    """Replace every ``out`` policy of the served state with a block gate."""
    STOP_PUBLISHING = "stop-publishing"
    """Flush pending counter updates to the store, then stop following XFRM events."""
    STOP_FOLLOWING = "stop-following"
    """Stop applying store updates to the kernel (hot standby loop)."""
    CLAIM_OWNERSHIP = "claim-ownership"
    """Raise this node's owner epoch for the server ID in the store (fences the old owner)."""
    FETCH_STATE = "fetch-state"
    """SA_Retr: every SA and policy of the server ID, with replay counters."""
    INSTALL_STATE = "install-state"
    """Add all fetched SAs (outbound counters advanced by the jump, inbound replay state
    restored) and policies (``out`` ones as gates); SAs that would wrap are reported for
    rekey, not installed."""
    RECONCILE_STATE = "reconcile-state"
    """Hot: add fetched SAs/policies the kernel lacks (as INSTALL_STATE), delete the
    ones the store no longer has."""
    ADVANCE_OUTBOUND_SEQ = "advance-outbound-seq"
    """Hot: NEWAE each pre-installed outbound SA to its fetched counter + the jump."""
    RESTORE_INBOUND_REPLAY = "restore-inbound-replay"
    """Hot: NEWAE each inbound SA to its fetched replay window."""
    OPEN_OUTBOUND = "open-outbound"
    """Replace the gates with the real ``out`` policies: ESP flows."""
    START_PUBLISHING = "start-publishing"
    """Follow XFRM events and push SAs, policies and counters to the store (SA_Stor)."""
    START_FOLLOWING = "start-following"
    """Hot: install the served state from the store, outbound gated, and keep it current."""
    REMOVE_STATE = "remove-state"
    """Delete the served state's SAs and non-gate policies (gates stay); with ``[ike]``
    feeding, not those of charon's CHILD SAs."""
    FEED_CHARON = "feed-charon"
    """``[ike]``: hand the local charon the fetched IKE SAs (passive) and wait until the
    kernel holds their CHILD SAs, which charon installs (outbound gated from birth)."""
    ACTIVATE_CHARON = "activate-charon"
    """``[ike]``: activate charon's segment: the fed IKE SAs become ESTABLISHED."""
    RETIRE_CHARON = "retire-charon"
    """``[ike]``: charon's IKE SAs go passive and charon deletes them with their CHILD SAs
    (no message to the peers); wait until the kernel no longer holds those."""
    DROP_CHARON_ORPHANS = "drop-charon-orphans"
    """``[ike]``, after charon restarted without deleting its IKE SAs: delete the CHILD SAs
    the old charon left in the kernel, so that the new one can install them again."""


_ROLE_FOR_STATE: Mapping[VrrpState, Role] = {
    VrrpState.MASTER: Role.ACTIVE,
    VrrpState.BACKUP: Role.STANDBY,
    VrrpState.FAULT: Role.STANDBY,
    VrrpState.STOP: Role.STOPPED,
    VrrpState.DELETED: Role.STOPPED,
}

S = Step
# ADVANCE_OUTBOUND_SEQ also in cold takeovers: an outbound SA the kernel still
# holds (a daemon restarted, a node back from a crash) is not re-added by
# INSTALL_STATE, and its counter may be older than the store's. SAs the run
# just added carry the jump already and are skipped.
_COLD_TAKEOVER = (
    S.CLAIM_OWNERSHIP,
    S.FETCH_STATE,
    S.INSTALL_STATE,
    S.ADVANCE_OUTBOUND_SEQ,
    S.OPEN_OUTBOUND,
)
# RESTORE_INBOUND_REPLAY after OPEN_OUTBOUND: inbound ESP reaches the VIP from the
# moment keepalived moves it, whatever the outbound gate, and a window restored a
# moment later is as good; outbound waits only for what keeps it safe.
_HOT_TAKEOVER = (
    S.CLAIM_OWNERSHIP,
    S.FETCH_STATE,
    S.RECONCILE_STATE,
    S.ADVANCE_OUTBOUND_SEQ,
    S.OPEN_OUTBOUND,
    S.RESTORE_INBOUND_REPLAY,
)
_LEAVE_ACTIVE = (S.CLOSE_OUTBOUND, S.STOP_PUBLISHING)

RoleChange = tuple[Role, Role]
"""(current role, target role)."""

TABLE: Mapping[StandbyMode, Mapping[RoleChange, tuple[Step, ...]]] = {
    StandbyMode.COLD: {
        (Role.INIT, Role.ACTIVE): (S.CLOSE_OUTBOUND, *_COLD_TAKEOVER, S.START_PUBLISHING),
        (Role.INIT, Role.STANDBY): (S.CLOSE_OUTBOUND, S.REMOVE_STATE),
        (Role.INIT, Role.STOPPED): (S.CLOSE_OUTBOUND, S.REMOVE_STATE),
        (Role.ACTIVE, Role.ACTIVE): (),
        (Role.ACTIVE, Role.STANDBY): (*_LEAVE_ACTIVE, S.REMOVE_STATE),
        (Role.ACTIVE, Role.STOPPED): (*_LEAVE_ACTIVE, S.REMOVE_STATE),
        (Role.STANDBY, Role.ACTIVE): (*_COLD_TAKEOVER, S.START_PUBLISHING),
        (Role.STANDBY, Role.STANDBY): (),
        (Role.STANDBY, Role.STOPPED): (),
        (Role.STOPPED, Role.ACTIVE): (*_COLD_TAKEOVER, S.START_PUBLISHING),
        (Role.STOPPED, Role.STANDBY): (),
        (Role.STOPPED, Role.STOPPED): (),
    },
    StandbyMode.HOT: {
        # Nothing pre-installed can be trusted from INIT or STOPPED: install it all.
        (Role.INIT, Role.ACTIVE): (S.CLOSE_OUTBOUND, *_COLD_TAKEOVER, S.START_PUBLISHING),
        (Role.INIT, Role.STANDBY): (S.CLOSE_OUTBOUND, S.START_FOLLOWING),
        (Role.INIT, Role.STOPPED): (S.CLOSE_OUTBOUND, S.REMOVE_STATE),
        (Role.ACTIVE, Role.ACTIVE): (),
        (Role.ACTIVE, Role.STANDBY): (*_LEAVE_ACTIVE, S.START_FOLLOWING),
        (Role.ACTIVE, Role.STOPPED): (*_LEAVE_ACTIVE, S.REMOVE_STATE),
        (Role.STANDBY, Role.ACTIVE): (S.STOP_FOLLOWING, *_HOT_TAKEOVER, S.START_PUBLISHING),
        (Role.STANDBY, Role.STANDBY): (),
        (Role.STANDBY, Role.STOPPED): (S.STOP_FOLLOWING, S.REMOVE_STATE),
        (Role.STOPPED, Role.ACTIVE): (*_COLD_TAKEOVER, S.START_PUBLISHING),
        (Role.STOPPED, Role.STANDBY): (S.START_FOLLOWING,),
        (Role.STOPPED, Role.STOPPED): (),
    },
}


# Split brain: an ACTIVE node whose epoch the stores refuse has been fenced by
# another node's claim. It stays ACTIVE for keepalived (no transition came)
# but must not emit ESP with counters it can no longer publish: FENCED gates
# outbound at once. RECLAIM, tried every [failover].reclaim_interval_s while
# keepalived still says MASTER, takes ownership back the way a takeover does:
# new epoch, the latest published counters, the jump (never a rewind), then
# outbound. While two nodes are MASTER the store thus admits one owner at a
# time; once VRRP heals, the loser's BACKUP plan stops it claiming.
FENCED = (S.CLOSE_OUTBOUND, S.STOP_PUBLISHING)
RECLAIM = (*_COLD_TAKEOVER, S.START_PUBLISHING)

# charon restarted on the ACTIVE node (``[ike] feed``) without deleting its IKE SAs: a
# crash. Its ha plugin asks for a resync; the peers and the kernel still hold the tunnels,
# the new charon holds nothing. The answer is a takeover on the same node: outbound gated
# and the counters flushed to the store; whatever an earlier, failed answer fed charon
# retired (nothing, the first time); the dead charon's CHILD SAs out of the kernel (the
# new charon's install of the same SPIs would fail); then RECLAIM, which feeds the stored
# IKE SAs to the new charon and moves their counters past the stored ones.
CHARON_RESTARTED = (
    S.CLOSE_OUTBOUND, S.STOP_PUBLISHING, S.RETIRE_CHARON, S.DROP_CHARON_ORPHANS, *RECLAIM,
)  # fmt: skip


def with_charon(actions: list[Step]) -> list[Step]:
    """``actions`` for a node whose charon is fed from the store (``[ike] feed``).

    charon installs the CHILD SAs of the IKE SAs it is fed, and removes them when it
    deletes those IKE SAs; ipsec-ha only moves their counters.  So: feed right after the
    fetch; restore the inbound windows (charon's are empty) and then activate charon
    before outbound opens; and retire charon's IKE SAs whenever a plan leaves ACTIVE or
    holds nothing (right after publishing stopped, so no deletion reaches the store; a hot
    standby's charon, fed as it follows, after following stopped).
    """
    out: list[Step] = [a for a in actions if a is not S.RESTORE_INBOUND_REPLAY]
    if S.FETCH_STATE in out:
        out.insert(out.index(S.FETCH_STATE) + 1, S.FEED_CHARON)
    if S.OPEN_OUTBOUND in out:
        at = out.index(S.OPEN_OUTBOUND)
        out[at:at] = [S.RESTORE_INBOUND_REPLAY, S.ACTIVATE_CHARON]
    elif S.RESTORE_INBOUND_REPLAY in actions:
        out.append(S.RESTORE_INBOUND_REPLAY)
    if S.OPEN_OUTBOUND not in out and (S.CLOSE_OUTBOUND in out or S.REMOVE_STATE in out):
        anchors = (S.STOP_PUBLISHING, S.CLOSE_OUTBOUND, S.STOP_FOLLOWING)
        anchor = next((a for a in anchors if a in out), None)
        out.insert(0 if anchor is None else out.index(anchor) + 1, S.RETIRE_CHARON)
    return out


def role_for(state: VrrpState) -> Role:
    """The role a node holds once it has entered ``state``."""
    return _ROLE_FOR_STATE[state]


def plan(role: Role, state: VrrpState, mode: StandbyMode) -> list[Step]:
    """The ordered steps that take a node in ``role`` into ``state``."""
    return list(TABLE[mode][(role, role_for(state))])


_TARGETS = (Role.ACTIVE, Role.STANDBY, Role.STOPPED)


def table_markdown(mode: StandbyMode) -> str:
    """The table of ``mode`` as a Markdown table (docs/failover.md shows it; a test compares)."""
    lines = ["| from \\ to | " + " | ".join(r.value for r in _TARGETS) + " |"]
    lines.append("|---" * (len(_TARGETS) + 1) + "|")
    for current in Role:
        cells = [
            ", ".join(a.value for a in TABLE[mode][(current, target)]) or "(nothing)"
            for target in _TARGETS
        ]
        lines.append(f"| **{current.value}** | " + " | ".join(cells) + " |")
    return "\n".join(lines)
