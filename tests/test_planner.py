"""The planner: typed operations from (kernel state, wanted state, jump), without a kernel."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence

import pytest

from appliance import model as m
from appliance.failover.seqjump import MAX_JUMP, SEQ32_MAX, AdvancedSa, SeqJumpError, advance_sa
from appliance.planner import (
    Op,
    OpKind,
    apply_ops,
    counters_behind,
    gate_for,
    is_gate,
    plan_close_outbound,
    plan_install,
    plan_open_outbound,
    plan_remove_state,
    plan_restore,
    plan_sa_install,
    plan_undo,
    policy_identity,
    prepare_sas,
    sa_identity,
)
from appliance.xfrm.types import BatchFailure

pytestmark = pytest.mark.unit

GW = ipaddress.ip_address("192.0.2.1")
PEER = ipaddress.ip_address("192.0.2.2")
NET_A = ipaddress.ip_address("198.51.100.0")
NET_B = ipaddress.ip_address("203.0.113.0")


def sa(spi: int, oseq: int = 100, seq: int = 50, **kw: object) -> m.SadEntry:
    fields: dict[str, object] = {
        "daddr": PEER,
        "saddr": GW,
        "spi": spi,
        "reqid": 1,
        "replay": m.ReplayState(oseq=oseq, seq=seq, bitmap=1),
    }
    fields.update(kw)
    return m.SadEntry(**fields)  # type: ignore[arg-type]


def policy(direction: int, index: int = 0) -> m.SpdEntry:
    return m.SpdEntry(
        selector=m.Selector(daddr=NET_B, saddr=NET_A, prefixlen_d=24, prefixlen_s=24),
        dir=direction,
        index=index,
        templates=(m.Template(daddr=PEER, saddr=GW, reqid=1, mode=m.Mode.TUNNEL),),
    )


OUT, IN = policy(m.Direction.OUT, 1), policy(m.Direction.IN, 2)


def kinds(ops: Sequence[Op]) -> list[OpKind]:
    return [op.kind for op in ops]


def by_identity(
    sad: Sequence[m.SadEntry] = (), spd: Sequence[m.SpdEntry] = ()
) -> tuple[dict[tuple[object, ...], m.SadEntry], dict[tuple[object, ...], m.SpdEntry]]:
    return {sa_identity(s): s for s in sad}, {policy_identity(p): p for p in spd}


# -- the jump -------------------------------------------------------------------------


def test_prepare_moves_only_outbound_sas_with_the_daemons_function() -> None:
    out, inbound = sa(1), sa(2, daddr=GW, saddr=PEER)
    prepared = prepare_sas([out, inbound], [True, False], 1000, thresholds=(64, 75))
    moved = advance_sa(out, 1000)
    assert isinstance(moved, AdvancedSa) and not prepared.rekey and not prepared.invalid
    assert prepared.sad[0] == dataclasses.replace(moved.sa, replay_thresh=64, etimer_thresh=75)
    assert prepared.sad[1].replay == inbound.replay
    assert [(a.sa.spi, a.old_oseq, a.new_oseq) for a in prepared.advanced] == [(1, 100, 1100)]


def test_prepare_leaves_out_an_sa_that_would_wrap_and_one_that_cannot_take_a_jump() -> None:
    near_end = sa(1, oseq=SEQ32_MAX - 5)
    esn_without_esn_state = sa(2, flags=int(m.StateFlag.ESN))
    prepared = prepare_sas([near_end, esn_without_esn_state, sa(3)], [True, True, True], 6)
    assert [s.spi for s in prepared.sad] == [3]
    assert [(s.spi, r.limit) for s, r in prepared.rekey] == [(1, SEQ32_MAX)]
    assert [s.spi for s, _ in prepared.invalid] == [2]


@pytest.mark.parametrize("jump", [-1, MAX_JUMP])
def test_prepare_refuses_a_jump_out_of_range_even_without_outbound_sas(jump: int) -> None:
    with pytest.raises(SeqJumpError):
        prepare_sas([sa(1)], [False], jump)


# -- restore --------------------------------------------------------------------------


def test_restore_replaces_held_sas_by_deleting_first_and_updates_held_policies() -> None:
    held_sa, new = sa(1, reqid=9), sa(1)
    held_sas, held_pols = by_identity([held_sa], [OUT])
    ops = plan_restore([new, sa(2)], [OUT, IN], held_sas, held_pols)
    assert ops == [
        Op(OpKind.DELETE_SA, held_sa),
        Op(OpKind.ADD_SA, new),
        Op(OpKind.ADD_SA, sa(2)),
        Op(OpKind.UPDATE_POLICY, OUT),
        Op(OpKind.ADD_POLICY, IN),
    ]


def test_undo_reverses_each_applied_op_in_reverse_order() -> None:
    old_out = dataclasses.replace(OUT, priority=5)
    applied = plan_restore([sa(1)], [OUT, IN], *by_identity([sa(1, reqid=9)], [old_out]))
    assert plan_undo(applied, {policy_identity(old_out): old_out}) == [
        Op(OpKind.DELETE_POLICY, IN),
        Op(OpKind.UPDATE_POLICY, old_out),
        Op(OpKind.DELETE_SA, sa(1)),
        Op(OpKind.ADD_SA, sa(1, reqid=9)),
    ]


# -- the failover executor ---------------------------------------------------------------


def test_install_adds_what_is_missing_with_the_jump_and_gates_outbound() -> None:
    held = sa(2, daddr=GW, saddr=PEER)
    plan = plan_install(
        [sa(1), held], [True, False], [OUT, IN], *by_identity([held], [IN]), 10, thresholds=(1, 2)
    )
    (add,) = plan.sa_ops
    assert add.kind is OpKind.ADD_SA and add.entry.spi == 1
    assert add.entry.oseq64 == 110 and (add.entry.replay_thresh, add.entry.etimer_thresh) == (1, 2)  # type: ignore[union-attr]
    assert plan.policy_ops == [Op(OpKind.ADD_POLICY, gate_for(OUT))]
    assert plan.removals == [] and [a.new_oseq for a in plan.advanced] == [110]


def test_install_twice_plans_nothing_and_leaves_an_open_out_policy_open() -> None:
    held_sas, held_pols = by_identity([sa(1)], [OUT, IN])
    plan = plan_install([sa(1)], [True], [OUT, IN], held_sas, held_pols, 10)
    assert (plan.sa_ops, plan.policy_ops, plan.advanced) == ([], [], [])


def test_reconcile_removes_stale_policies_before_stale_sas_and_keeps_gates() -> None:
    stale_pol = dataclasses.replace(IN, dir=m.Direction.FWD)
    gate = gate_for(dataclasses.replace(OUT, priority=7, selector=IN.selector))
    held_sas, held_pols = by_identity([sa(9), sa(1)], [stale_pol, gate, OUT])
    plan = plan_install([sa(1)], [True], [OUT], held_sas, held_pols, 10, reconcile=True)
    assert plan.removals == [Op(OpKind.DELETE_POLICY, stale_pol), Op(OpKind.DELETE_SA, sa(9))]


def test_counters_move_forward_only() -> None:
    wanted = [(sa(1), 500), (sa(2), 500), (sa(3), 500)]
    current = [m.ReplayState(oseq=499), m.ReplayState(oseq=500), None]
    assert counters_behind(wanted, current, outbound=True) == [
        Op(OpKind.SET_REPLAY, sa(1)),
        Op(OpKind.SET_REPLAY, sa(3)),
    ]
    inbound = [m.ReplayState(seq=501), m.ReplayState(seq=10), m.ReplayState(seq=500)]
    assert kinds(counters_behind(wanted, inbound, outbound=False)) == [OpKind.SET_REPLAY]


def test_close_open_and_remove_outbound() -> None:
    closed = plan_close_outbound([OUT, IN, gate_for(OUT)])
    assert closed == [Op(OpKind.UPDATE_POLICY, gate_for(OUT))] and is_gate(closed[0].entry)  # type: ignore[arg-type]
    _, gated = by_identity(spd=[gate_for(OUT), IN])
    assert plan_open_outbound([OUT, IN], gated) == [Op(OpKind.UPDATE_POLICY, OUT)]
    assert plan_open_outbound([OUT, IN], by_identity(spd=[OUT])[1]) == []
    assert plan_remove_state([sa(1)], [gate_for(OUT), IN]) == [
        Op(OpKind.DELETE_POLICY, IN),
        Op(OpKind.DELETE_SA, sa(1)),
    ]


def test_without_policy_gates_out_policies_go_in_real_and_leave_as_gates() -> None:
    # [failover] gate = "nft": the nftables rule holds outbound back, the SPD stays real.
    plan = plan_install([sa(1)], [True], [OUT, IN], {}, {}, 10, policy_gates=False)
    assert plan.policy_ops == [Op(OpKind.ADD_POLICY, OUT), Op(OpKind.ADD_POLICY, IN)]
    # a gate left by remove-state (or policy mode) is replaced by the real policy
    _, gated = by_identity(spd=[gate_for(OUT), IN])
    plan = plan_install([], [], [OUT, IN], {}, gated, 10, policy_gates=False)
    assert plan.policy_ops == [Op(OpKind.UPDATE_POLICY, OUT)]
    # a stale out policy becomes a gate (its traffic dropped, not routed in clear)
    held_sas, held_pols = by_identity([sa(9)], [OUT, IN])
    plan = plan_install([], [], [IN], held_sas, held_pols, 10, reconcile=True, policy_gates=False)
    assert plan.removals == [Op(OpKind.UPDATE_POLICY, gate_for(OUT)), Op(OpKind.DELETE_SA, sa(9))]
    assert plan_remove_state([sa(1)], [OUT, IN, gate_for(OUT)], policy_gates=False) == [
        Op(OpKind.UPDATE_POLICY, gate_for(OUT)),
        Op(OpKind.DELETE_POLICY, IN),
        Op(OpKind.DELETE_SA, sa(1)),
    ]


# -- on-demand install and the kernel boundary --------------------------------------------


def test_one_sa_goes_in_before_its_policies_as_stored() -> None:
    ops = plan_sa_install(sa(1), [OUT, IN], True, 10)
    assert kinds(ops) == [OpKind.ADD_SA, OpKind.ADD_POLICY, OpKind.ADD_POLICY]  # type: ignore[arg-type]
    assert ops[0].entry.oseq64 == 110 and ops[1].entry == OUT  # type: ignore[index, union-attr]
    rekey = plan_sa_install(sa(1, oseq=SEQ32_MAX), [OUT], True, 1)
    assert not isinstance(rekey, list) and rekey.limit == SEQ32_MAX
    with pytest.raises(SeqJumpError, match="ESN replay state"):
        plan_sa_install(sa(1, flags=int(m.StateFlag.ESN)), [OUT], True, 1)


class RecordingKernel:
    def __init__(self) -> None:
        self.sent: list[tuple[list[tuple[str, object]], dict[str, bool]]] = []

    def install_batch(
        self, operations: Sequence[tuple[str, object]], **options: bool
    ) -> list[BatchFailure]:
        self.sent.append((list(operations), options))
        return [BatchFailure(1, 17, "exists")]


def test_apply_ops_sends_the_netlink_layers_names_and_nothing_for_no_ops() -> None:
    kernel = RecordingKernel()
    ops = [Op(OpKind.ADD_SA, sa(1)), Op(OpKind.ADD_POLICY, OUT)]
    assert apply_ops(kernel, ops, with_lifetime_cur=True) == [BatchFailure(1, 17, "exists")]  # type: ignore[arg-type]
    assert apply_ops(kernel, ops) and apply_ops(kernel, []) == []  # type: ignore[arg-type]
    assert kernel.sent == [
        ([("add_sa", sa(1)), ("add_policy", OUT)], {"with_lifetime_cur": True}),
        ([("add_sa", sa(1)), ("add_policy", OUT)], {"with_lifetime_cur": False}),
    ]
