"""What a full resync must send a store: the difference, not everything (sans-IO).

A full resync makes a store equal to the kernel.  It used to re-put every SA
and policy, so one that failed part-way (a store that did not answer one
datagram in time) started again from nothing: on the lab VM an active node
of 5,000 pairs never got its state into the standby's store, each attempt
re-sending what the last one had already stored.  Planned against what the
store holds, a resync sends only what is missing or different, so every
attempt finishes what the last one left.

Counters are not "different": an SA the store holds with the same content but
other counters gets a small replay update instead of a whole SA_Stor entry,
and one it holds with the same counters too gets nothing (a resync of 10,000
idle pairs sent 20,000 counter updates to a store that had them all).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from appliance.model import LifetimeCur, SadEntry, SpdEntry, Stats

SaId = tuple[int, int, object]
"""(SPI, protocol, destination address): how the store keys an SA."""


def _sa_id(sa: SadEntry) -> SaId:
    return (sa.spi, sa.proto, sa.daddr)


def without_counters(sa: SadEntry) -> SadEntry:
    """``sa`` with what moves by itself (traffic counters, thresholds, use time) cleared."""
    esn = sa.replay_esn
    return dataclasses.replace(
        sa,
        lifetime_cur=LifetimeCur(),
        stats=Stats(),
        replay=None
        if sa.replay is None
        else dataclasses.replace(sa.replay, oseq=0, seq=0, bitmap=0),
        replay_esn=None
        if esn is None
        else dataclasses.replace(esn, oseq=0, seq=0, oseq_hi=0, seq_hi=0, bmp=(0,) * esn.bmp_len),
        lastused=None,
        replay_thresh=None,
        etimer_thresh=None,
    )


def _same_counters(a: SadEntry, b: SadEntry) -> bool:
    """The replay state the store keeps for an SA (``replay`` / ``replay_esn``) is equal."""
    return a.replay == b.replay and a.replay_esn == b.replay_esn


def _policy_without_counters(policy: SpdEntry) -> SpdEntry:
    return dataclasses.replace(policy, lifetime_cur=LifetimeCur())


@dataclass(frozen=True)
class ResyncPlan:
    """What one store needs to become equal to the kernel."""

    put_sad: tuple[SadEntry, ...]
    """SAs it lacks or holds with other content (sent whole, with their policies)."""
    put_spd: tuple[SpdEntry, ...]
    """Policies it lacks or holds with other content."""
    replay_only: tuple[SadEntry, ...]
    """SAs it holds as they are but with other counters: only their counters are sent."""
    stale_sas: tuple[tuple[int, int], ...]
    """(SPI, protocol) of SAs it holds that the kernel no longer has."""
    stale_policies: tuple[int, ...]
    """Indexes of policies it holds that the kernel no longer has."""

    @property
    def sent_whole(self) -> int:
        return len(self.put_sad) + len(self.put_spd)


def plan_resync(
    kernel_sad: Sequence[SadEntry],
    kernel_spd: Sequence[SpdEntry],
    stored_sad: Iterable[SadEntry],
    stored_spd: Iterable[SpdEntry],
) -> ResyncPlan:
    """The difference between a store's entries and the kernel's (see the module docstring)."""
    stored = {_sa_id(sa): sa for sa in stored_sad}
    stored_sas = {i: without_counters(sa) for i, sa in stored.items()}
    stored_pols = {p.index: _policy_without_counters(p) for p in stored_spd}
    put_sad: list[SadEntry] = []
    replay_only: list[SadEntry] = []
    for sa in kernel_sad:
        held = stored_sas.get(_sa_id(sa))
        if held is None or held != without_counters(sa):
            put_sad.append(sa)
        elif not _same_counters(sa, stored[_sa_id(sa)]):
            replay_only.append(sa)
    put_spd = [p for p in kernel_spd if stored_pols.get(p.index) != _policy_without_counters(p)]
    kernel_sas = {_sa_id(sa) for sa in kernel_sad}
    kernel_pols = {p.index for p in kernel_spd}
    return ResyncPlan(
        put_sad=tuple(put_sad),
        put_spd=tuple(put_spd),
        replay_only=tuple(replay_only),
        stale_sas=tuple((i[0], i[1]) for i in stored_sas if i not in kernel_sas),
        stale_policies=tuple(i for i in stored_pols if i not in kernel_pols),
    )
