"""On-demand install with fakes: lookup across stores, install with policies, jump, hold, sync."""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest
from test_executor import FWD_POL, GW, IN_POL, IN_SA, JUMP, OUT_POL, OUT_SA, PEER, FakeKernel

from appliance import model as m
from appliance.errors import KernelError
from appliance.failover.ondemand_install import PENDING_HOLD_S, OnDemandInstaller
from appliance.planner import policy_identity, sa_identity
from appliance.store.base import NotFoundError, StoreUnavailableError
from appliance.store.client import SaAnswer, StoreClient
from appliance.wire.entries import replay_update_for
from appliance.xfrm.types import BatchFailure

pytestmark = pytest.mark.unit

SID = "192.0.2.1"


class FakeStore:
    """``get_spi`` over a dict; records every lookup. ``fetch_sa`` is the client's own."""

    def __init__(self, server: str, answers: dict[int, SaAnswer] | None = None) -> None:
        self.server = server
        self.answers = answers or {}
        self.calls: list[tuple[int, str, str]] = []
        self.fail_with: Exception | None = None

    def get_spi(self, spi: int, dst: str, proto: int | str = "esp") -> SaAnswer:
        self.calls.append((spi, dst, str(proto)))
        if self.fail_with is not None:
            raise self.fail_with
        if spi not in self.answers:
            raise NotFoundError(f"no SA {spi:#x}")
        return self.answers[spi]

    fetch_sa = StoreClient.fetch_sa


class FakeHeld:
    def __init__(self, spis: Iterable[int] = ()) -> None:
        self.spis = set(spis)
        self.fail = False

    def add(self, spis: Iterable[int]) -> None:
        if self.fail:
            raise KernelError("table inet ipsec_ha is absent")
        self.spis |= set(spis)

    def remove(self, spis: Iterable[int]) -> None:
        self.spis -= set(spis)

    def list(self) -> list[int]:
        return sorted(self.spis)


class Kernel(FakeKernel):
    """Answers EEXIST for a policy already present, as the kernel does."""

    def install_batch(
        self,
        operations: Sequence[tuple[str, m.SadEntry | m.SpdEntry]],
        *,
        with_lifetime_cur: bool = False,
    ) -> list[BatchFailure]:
        failures = []
        for i, (op, entry) in enumerate(operations):
            if op == "add_policy" and policy_identity(entry) in self.spd:  # type: ignore[arg-type]
                failures.append(BatchFailure(i, errno.EEXIST, "policy exists"))
            else:
                failures += [dataclasses.replace(f, index=i)
                             for f in super().install_batch([(op, entry)])]  # fmt: skip
        return failures


class RefusingKernel(FakeKernel):
    """Refuses policies with EINVAL."""

    def install_batch(
        self,
        operations: Sequence[tuple[str, m.SadEntry | m.SpdEntry]],
        *,
        with_lifetime_cur: bool = False,
    ) -> list[BatchFailure]:
        sas = [(op, e) for op, e in operations if isinstance(e, m.SadEntry)]
        super().install_batch(sas)
        return [
            BatchFailure(i, errno.EINVAL, "policy: invalid")
            for i, (_, e) in enumerate(operations)
            if isinstance(e, m.SpdEntry)
        ]


def answer(sa: m.SadEntry, spd: Sequence[m.SpdEntry], sid: str = SID, replay: Any = None) -> Any:
    return SaAnswer(sid, 3, sa, list(spd), replay, None)


def make(
    stores: Sequence[FakeStore],
    kernel: FakeKernel | None = None,
    held: FakeHeld | None = None,
    guard: Callable[[Callable[[], bool]], bool] | None = None,
) -> tuple[OnDemandInstaller, FakeKernel, FakeHeld]:
    kernel = kernel or Kernel()
    held = held if held is not None else FakeHeld()
    installer = OnDemandInstaller(
        kernel,
        stores,
        held,
        server_id=SID,
        oseq_jump=JUMP,
        vips=[GW],
        local_addresses=lambda: [GW],
        replay_seq_thresh=64,
        etimer_jiffies=75,
        **({"install_guard": guard} if guard else {}),
    )
    return installer, kernel, held


def test_retrieve_installs_the_sa_with_its_policies_and_holds_its_spi() -> None:
    store = FakeStore("198.51.100.2", {IN_SA.spi: answer(IN_SA, [IN_POL, FWD_POL])})
    installer, kernel, held = make([store])
    assert installer.retrieve(IN_SA.spi, str(GW)) is True
    assert store.calls == [(IN_SA.spi, str(GW), "esp")]
    assert [op for op, _ in kernel.changes] == ["add_sa", "add_policy", "add_policy"]
    installed = kernel.sad[sa_identity(IN_SA)]
    assert installed.replay == IN_SA.replay  # inbound: the stored window, no jump
    assert (installed.replay_thresh, installed.etimer_thresh) == (64, 75)
    assert len(kernel.spd) == 2
    # held only once the service gave the held packets their verdicts
    assert held.spis == set()
    installer.hold(IN_SA.spi, str(GW))
    assert held.spis == {IN_SA.spi}
    assert installer.counters.installed == 1


def test_the_latest_replay_update_is_installed() -> None:
    moved = dataclasses.replace(IN_SA, replay=m.ReplayState(oseq=0, seq=9000, bitmap=3))
    store = FakeStore("s", {IN_SA.spi: answer(IN_SA, [IN_POL], replay=replay_update_for(moved))})
    installer, kernel, _ = make([store])
    assert installer.retrieve(IN_SA.spi, str(GW))
    assert kernel.sad[sa_identity(IN_SA)].replay == moved.replay


def test_a_replay_update_that_does_not_apply_is_undecodable_and_the_next_store_asked() -> None:
    # Two bitmap words for a legacy SA: installing the SA with older counters could replay.
    broken = dataclasses.replace(replay_update_for(IN_SA), bitmap=(1, 2))
    first = FakeStore("a", {IN_SA.spi: answer(IN_SA, [IN_POL], replay=broken)})
    second = FakeStore("b", {IN_SA.spi: answer(IN_SA, [IN_POL])})
    installer, kernel, _ = make([first, second])
    assert installer.retrieve(IN_SA.spi, str(GW))
    assert installer.counters.undecodable == 1 and len(second.calls) == 1
    installer, kernel, _ = make(
        [FakeStore("a", {IN_SA.spi: answer(IN_SA, [IN_POL], replay=broken)})]
    )
    assert not installer.retrieve(IN_SA.spi, str(GW))
    assert kernel.sad == {} and installer.counters.undecodable == 1


def test_a_store_without_the_sa_or_failing_passes_to_the_next() -> None:
    first, second = FakeStore("a"), FakeStore("b", {IN_SA.spi: answer(IN_SA, [IN_POL])})
    first.fail_with = StoreUnavailableError("no answer")
    installer, _, _ = make([first, second])
    assert installer.retrieve(IN_SA.spi, str(GW))
    assert installer.counters.store_errors == 1
    first.fail_with = None
    assert installer.retrieve(IN_SA.spi, str(GW))  # NOT_FOUND at a, found at b again
    assert (len(first.calls), len(second.calls)) == (2, 2)


def test_an_sa_no_store_has_is_a_failure_and_changes_nothing() -> None:
    stores = [FakeStore("a"), FakeStore("b")]
    installer, kernel, held = make(stores)
    assert installer.retrieve(0x9999, str(GW)) is False
    assert kernel.changes == [] and held.spis == set()
    assert installer.counters.not_found == 1
    assert [len(s.calls) for s in stores] == [1, 1]


def test_an_sa_of_another_server_id_is_refused() -> None:
    store = FakeStore("a", {IN_SA.spi: answer(IN_SA, [IN_POL], sid="192.0.2.99")})
    installer, kernel, held = make([store])
    assert installer.retrieve(IN_SA.spi, str(GW)) is False
    assert kernel.changes == [] and held.spis == set()
    assert installer.counters.foreign == 1


def test_an_sa_already_installed_is_left_alone_and_held() -> None:
    store = FakeStore("a", {IN_SA.spi: answer(IN_SA, [IN_POL])})
    kernel = Kernel()
    current = dataclasses.replace(IN_SA, replay=m.ReplayState(oseq=0, seq=99_999, bitmap=1))
    kernel.sad[sa_identity(current)] = current
    installer, kernel, held = make([store], kernel)
    assert installer.retrieve(IN_SA.spi, str(GW)) is True
    assert kernel.sad[sa_identity(IN_SA)] is current  # never rewound
    installer.hold(IN_SA.spi, str(GW))
    assert held.spis == {IN_SA.spi}
    assert installer.counters.already_present == 1


def test_an_outbound_sa_gets_the_jump_and_is_not_held() -> None:
    store = FakeStore("a", {OUT_SA.spi: answer(OUT_SA, [OUT_POL])})
    installer, kernel, held = make([store])
    assert installer.retrieve(OUT_SA.spi, str(PEER))
    assert OUT_SA.replay is not None
    installed = kernel.sad[sa_identity(OUT_SA)].replay
    assert installed is not None and installed.oseq == OUT_SA.replay.oseq + JUMP
    installer.hold(OUT_SA.spi, str(PEER))
    installer.sync_held()
    assert held.spis == set()


def test_an_outbound_sa_whose_counter_would_wrap_is_not_installed() -> None:
    near = dataclasses.replace(OUT_SA, replay=m.ReplayState(oseq=0xFFFF_FFF0, seq=0, bitmap=0))
    store = FakeStore("a", {OUT_SA.spi: answer(near, [OUT_POL])})
    installer, kernel, _ = make([store])
    assert installer.retrieve(OUT_SA.spi, str(PEER)) is False
    assert kernel.changes == [] and installer.counters.rekey_required == 1


def test_a_refused_policy_is_a_failure() -> None:
    store = FakeStore("a", {IN_SA.spi: answer(IN_SA, [IN_POL])})
    installer, _, held = make([store], RefusingKernel())
    assert installer.retrieve(IN_SA.spi, str(GW)) is False
    assert held.spis == set() and installer.counters.install_failures == 1


def test_an_spi_that_cannot_be_held_still_counts_as_installed() -> None:
    store = FakeStore("a", {IN_SA.spi: answer(IN_SA, [IN_POL])})
    held = FakeHeld()
    held.fail = True
    installer, _, _ = make([store], held=held)
    assert installer.retrieve(IN_SA.spi, str(GW)) is True
    installer.hold(IN_SA.spi, str(GW))
    assert installer.counters.hold_failures == 1


def test_the_install_runs_through_the_guard() -> None:
    store = FakeStore("a", {IN_SA.spi: answer(IN_SA, [IN_POL])})
    ran: list[bool] = []

    def refuse(step: Callable[[], bool]) -> bool:
        ran.append(True)
        return False  # e.g. the kernel lock was not had in time

    installer, kernel, held = make([store], guard=refuse)
    assert installer.retrieve(IN_SA.spi, str(GW)) is False
    assert ran == [True] and kernel.changes == [] and held.spis == set()


def test_sync_held_holds_exactly_the_esp_sas_to_a_vip() -> None:
    kernel = Kernel()
    other_vip_sa = dataclasses.replace(IN_SA, spi=0x3003, daddr=ipaddress.ip_address("198.18.0.1"))
    for sa in (IN_SA, OUT_SA, other_vip_sa):
        kernel.sad[sa_identity(sa)] = sa
    held = FakeHeld({0x4444})
    installer, _, _ = make([FakeStore("a")], kernel, held)
    assert installer.sync_held() == (1, 1)
    assert held.spis == {IN_SA.spi}
    kernel.sad.clear()
    assert installer.sync_held() == (0, 1)
    assert held.spis == set()
    c = installer.counters
    assert (c.held.synced, c.held.added, c.held.removed) == (2, 1, 2)
    assert {k: v for k, v in c.as_dict().items() if k.startswith("held")} == {
        "held_synced": 2,
        "held_added": 1,
        "held_removed": 2,
    }


def test_sync_leaves_an_spi_installed_on_demand_to_hold_for_a_while() -> None:
    store = FakeStore("a", {IN_SA.spi: answer(IN_SA, [IN_POL])})
    installer, _, held = make([store])
    now = [100.0]
    installer.clock = lambda: now[0]
    assert installer.retrieve(IN_SA.spi, str(GW))
    assert installer.sync_held() == (0, 0)  # its verdicts may still be coming
    now[0] += PENDING_HOLD_S
    assert installer.sync_held() == (1, 0)  # hold never came: the sync takes over
    assert held.spis == {IN_SA.spi}
    installer.hold(IN_SA.spi, str(GW))  # late: nothing more to do
    assert held.spis == {IN_SA.spi}


def test_a_tunnel_sa_stored_without_its_policies_is_not_installed() -> None:
    store = FakeStore("a", {IN_SA.spi: answer(IN_SA, [])})
    installer, kernel, _ = make([store])
    assert installer.retrieve(IN_SA.spi, str(GW)) is False
    assert kernel.changes == [] and installer.counters.incomplete == 1
