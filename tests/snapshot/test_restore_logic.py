"""Restore orchestration against a fake kernel: rollback, keep-going, replace, oseq jump."""

from __future__ import annotations

import datetime
import errno
import ipaddress
from collections.abc import Iterable, Sequence

import pytest

from appliance import model as m
from appliance.planner import policy_identity, sa_identity
from appliance.restore import RestoreError, jump_oseq, restore
from appliance.xfrm.types import AeState, BatchFailure

pytestmark = pytest.mark.unit

A = ipaddress.ip_address("192.0.2.1")
B = ipaddress.ip_address("192.0.2.2")
NET_A = ipaddress.ip_address("198.51.100.0")
NET_B = ipaddress.ip_address("203.0.113.0")


class FakeKernel:
    """A SAD/SPD in memory that refuses like the kernel does (``planner.XfrmKernel``)."""

    def __init__(self, unsupported: Iterable[str] = ()) -> None:
        self.sad: dict[tuple[object, ...], m.SadEntry] = {}
        self.spd: dict[tuple[object, ...], m.SpdEntry] = {}
        self.unsupported = set(unsupported)
        self.calls: list[list[tuple[str, m.SadEntry | m.SpdEntry]]] = []

    def dump_sad(self) -> list[m.SadEntry]:
        return list(self.sad.values())

    def dump_spd(self) -> list[m.SpdEntry]:
        return list(self.spd.values())

    def _one(self, kind: str, entry: m.SadEntry | m.SpdEntry) -> int:
        """0, or the errno the kernel would answer."""
        if isinstance(entry, m.SadEntry):
            key = sa_identity(entry)
            if kind == "add_sa":
                if key in self.sad:
                    return errno.EEXIST
                names = {a.name for a in (entry.aead, entry.crypt) if a is not None}
                if names & self.unsupported:
                    return errno.ENOSYS
                self.sad[key] = entry
            elif kind == "delete_sa" and self.sad.pop(key, None) is None:
                return errno.ESRCH
            return 0
        key = policy_identity(entry)
        if kind == "add_policy":
            if key in self.spd:
                return errno.EEXIST
            self.spd[key] = entry
        elif kind == "update_policy":
            self.spd[key] = entry
        elif kind == "delete_policy" and self.spd.pop(key, None) is None:
            return errno.ENOENT
        return 0

    def install_batch(
        self,
        operations: Sequence[tuple[str, m.SadEntry | m.SpdEntry]],
        *,
        with_lifetime_cur: bool = False,
    ) -> list[BatchFailure]:
        # Like XfrmSocket: everything is sent before an answer is read.
        self.calls.append(list(operations))
        answers = [(i, self._one(kind, entry)) for i, (kind, entry) in enumerate(operations)]
        return [BatchFailure(i, error, "") for i, error in answers if error]

    def get_ae_batch(self, entries: Sequence[m.SadEntry]) -> list[AeState | BatchFailure]:
        raise AssertionError("a restore reads no counters")

    def state(
        self,
    ) -> tuple[dict[tuple[object, ...], m.SadEntry], dict[tuple[object, ...], object]]:
        return dict(self.sad), dict(self.spd)


def sa(spi: int, src: m.Address = A, dst: m.Address = B, **kw: object) -> m.SadEntry:
    fields: dict[str, object] = {
        "daddr": dst,
        "saddr": src,
        "spi": spi,
        "mode": m.Mode.TUNNEL,
        "reqid": 1,
        "aead": m.AeadAlgorithm("rfc4106(gcm(aes))", 160, 128, m.KeyMaterial(bytes(20))),
        "replay": m.ReplayState(oseq=100, seq=50, bitmap=3),
    }
    fields.update(kw)
    return m.SadEntry(**fields)  # type: ignore[arg-type]


def policy(direction: int, src: m.Address, dst: m.Address, tmpl_dst: m.Address) -> m.SpdEntry:
    return m.SpdEntry(
        selector=m.Selector(daddr=dst, saddr=src, prefixlen_d=24, prefixlen_s=24),
        dir=direction,
        templates=(m.Template(daddr=tmpl_dst, saddr=A if tmpl_dst == B else B, reqid=1, mode=1),),
    )


def snapshot(sad: Sequence[m.SadEntry], spd: Sequence[m.SpdEntry] = ()) -> m.Snapshot:
    return m.Snapshot("gw-a", datetime.datetime.now(datetime.UTC), tuple(sad), tuple(spd))


OUT_POLICY = policy(m.Direction.OUT, NET_A, NET_B, B)
IN_POLICY = policy(m.Direction.IN, NET_B, NET_A, A)
FWD_POLICY = policy(m.Direction.FWD, NET_B, NET_A, A)


def test_restore_installs_everything_into_an_empty_namespace() -> None:
    kernel = FakeKernel()
    snap = snapshot([sa(1), sa(2, src=B, dst=A)], [OUT_POLICY, IN_POLICY, FWD_POLICY])
    report = restore(snap, kernel)
    assert (report.sa_added, report.policy_added, report.failures) == (2, 3, [])
    assert set(kernel.sad.values()) == set(snap.sad)
    assert set(kernel.spd.values()) == set(snap.spd)
    # SAs go in before the policies that use them.
    kinds = [kind for call in kernel.calls for kind, _ in call]
    assert kinds == ["add_sa", "add_sa", "add_policy", "add_policy", "add_policy"]


def test_a_refused_entry_undoes_everything_sent_with_it() -> None:
    kernel = FakeKernel(unsupported={"foo"})
    existing = sa(99, dst=ipaddress.ip_address("192.0.2.99"))
    kernel.sad[sa_identity(existing)] = existing
    before = kernel.state()
    bad = sa(3, aead=m.AeadAlgorithm("foo", 160, 128, m.KeyMaterial(bytes(20))))
    snap = snapshot([sa(1), sa(2, src=B, dst=A), bad, sa(4), sa(5)], [OUT_POLICY, IN_POLICY])
    with pytest.raises(RestoreError) as caught:
        restore(snap, kernel)
    message = str(caught.value)
    assert "SA spi 0x00000003 dst 192.0.2.2" in message
    assert "kernel does not support algorithm 'foo' (ENOSYS)" in message
    assert "undone" in message
    assert kernel.state() == before


def test_duplicate_without_replace_is_rolled_back_and_named() -> None:
    kernel = FakeKernel()
    existing = sa(2)
    kernel.sad[sa_identity(existing)] = existing
    before = kernel.state()
    with pytest.raises(RestoreError, match=r"spi 0x00000002.*already exists.*--replace"):
        restore(snapshot([sa(1), sa(2, reqid=5)], [OUT_POLICY]), kernel)
    assert kernel.state() == before


def test_keep_going_installs_what_it_can_and_reports_every_failure() -> None:
    kernel = FakeKernel(unsupported={"foo"})
    foo = m.AeadAlgorithm("foo", 160, 128, m.KeyMaterial(bytes(20)))
    snap = snapshot([sa(1), sa(2, aead=foo), sa(3), sa(4, aead=foo)], [OUT_POLICY])
    report = restore(snap, kernel, keep_going=True)
    assert report.sa_added == 2
    assert report.policy_added == 1
    assert [f.entry for f in report.failures] == [
        "SA spi 0x00000002 dst 192.0.2.2 proto 50",
        "SA spi 0x00000004 dst 192.0.2.2 proto 50",
    ]
    assert not report.rolled_back


def test_replace_overwrites_existing_entries_and_rollback_puts_them_back() -> None:
    kernel = FakeKernel(unsupported={"foo"})
    old_sa = sa(1, reqid=9)
    old_policy = m.SpdEntry(selector=OUT_POLICY.selector, dir=m.Direction.OUT, priority=5)
    kernel.sad[sa_identity(old_sa)] = old_sa
    kernel.spd[policy_identity(old_policy)] = old_policy
    before = kernel.state()

    bad = sa(7, aead=m.AeadAlgorithm("foo", 160, 128, m.KeyMaterial(bytes(20))))
    with pytest.raises(RestoreError, match="spi 0x00000007"):
        restore(snapshot([sa(1), bad], [OUT_POLICY]), kernel, replace=True)
    assert kernel.state() == before

    report = restore(snapshot([sa(1)], [OUT_POLICY]), kernel, replace=True)
    assert (report.sa_replaced, report.sa_added, report.policy_replaced) == (1, 0, 1)
    assert kernel.sad[sa_identity(old_sa)] == sa(1)
    assert kernel.spd[policy_identity(OUT_POLICY)] == OUT_POLICY


def test_keep_going_replace_keeps_the_old_sa_when_the_new_one_is_refused() -> None:
    kernel = FakeKernel(unsupported={"foo"})
    old_sa = sa(1, reqid=9)
    kernel.sad[sa_identity(old_sa)] = old_sa
    bad = sa(1, aead=m.AeadAlgorithm("foo", 160, 128, m.KeyMaterial(bytes(20))))
    report = restore(snapshot([bad]), kernel, replace=True, keep_going=True)
    assert len(report.failures) == 1
    assert kernel.sad[sa_identity(old_sa)] == old_sa


def test_oseq_jump_moves_only_outbound_sas() -> None:
    kernel = FakeKernel()
    outbound, inbound = sa(1), sa(2, src=B, dst=A)
    report = restore(snapshot([outbound, inbound], [OUT_POLICY, IN_POLICY]), kernel, oseq_jump=1000)
    assert report.oseq_jumped == 1
    assert kernel.sad[sa_identity(outbound)].replay == m.ReplayState(1100, 50, 3)
    assert kernel.sad[sa_identity(inbound)].replay == inbound.replay


def test_oseq_jump_uses_local_addresses_without_policies() -> None:
    kernel = FakeKernel()
    restore(snapshot([sa(1), sa(2, src=B, dst=A)]), kernel, oseq_jump=5, local_addresses=[A])
    assert kernel.sad[sa_identity(sa(1))].replay == m.ReplayState(105, 50, 3)
    assert kernel.sad[sa_identity(sa(2, src=B, dst=A))].replay == m.ReplayState(100, 50, 3)


def test_non_esn_wrap_is_refused_before_anything_changes() -> None:
    kernel = FakeKernel()
    near_end = sa(1, replay=m.ReplayState(oseq=0xFFFF_FF00))
    with pytest.raises(RestoreError, match=r"32-bit \(no ESN\) limit.*rekey; nothing was changed"):
        restore(snapshot([sa(3), near_end], [OUT_POLICY]), kernel, oseq_jump=0x100)
    assert kernel.calls == []
    report = restore(
        snapshot([sa(3), near_end], [OUT_POLICY]), kernel, oseq_jump=0x100, keep_going=True
    )
    assert report.sa_added == 1 and "32-bit (no ESN) limit" in report.failures[0].reason


def test_esn_jump_carries_into_oseq_hi() -> None:
    esn = m.ReplayStateEsn(
        bmp_len=4, oseq=0xFFFF_FFF0, oseq_hi=7, replay_window=128, bmp=(0, 0, 0, 0)
    )
    jumped = jump_oseq(sa(1, replay=None, replay_esn=esn, flags=m.StateFlag.ESN), 0x20)
    assert jumped.replay_esn is not None
    assert (jumped.replay_esn.oseq_hi, jumped.replay_esn.oseq) == (8, 0x10)
    assert jumped.oseq64 == (7 << 32) + 0xFFFF_FFF0 + 0x20


def test_esn_jump_past_64_bits_is_refused() -> None:
    esn = m.ReplayStateEsn(oseq=0xFFFF_FFFF, oseq_hi=0xFFFF_FFFF)
    with pytest.raises(RestoreError, match=r"64-bit \(ESN\) limit 18446744073709551615"):
        jump_oseq(sa(1, replay=None, replay_esn=esn, flags=m.StateFlag.ESN), 1)


def test_non_esn_sa_with_a_large_window_still_counts_in_32_bits() -> None:
    # The kernel keeps a non-ESN SA's replay state in xfrm_replay_state_esn when
    # its window exceeds 32; oseq_hi is unused then.
    esn = m.ReplayStateEsn(bmp_len=2, oseq=0xFFFF_FF00, replay_window=64, bmp=(0, 0))
    big_window = sa(1, replay=None, replay_esn=esn)
    assert not big_window.esn
    jumped = jump_oseq(big_window, 0x10)
    assert jumped.replay_esn is not None
    assert (jumped.replay_esn.oseq_hi, jumped.replay_esn.oseq) == (0, 0xFFFF_FF10)
    with pytest.raises(RestoreError, match=r"32-bit \(no ESN\) limit"):
        jump_oseq(big_window, 0x100)


def test_non_esn_jump_up_to_the_last_number_is_allowed() -> None:
    assert (
        jump_oseq(sa(1, replay=m.ReplayState(oseq=0x8000_0000)), 0x7FFF_FFFF).oseq64 == 0xFFFF_FFFF
    )


@pytest.mark.parametrize("jump", [-1, 1 << 31])
def test_jump_out_of_range_is_refused(jump: int) -> None:
    with pytest.raises(RestoreError, match=r"SA spi 0x00000001 .*: jump must be an integer 0\.\."):
        jump_oseq(sa(1), jump)


@pytest.mark.parametrize("keep_going", [False, True])
def test_jump_of_2_31_is_refused_before_anything_changes(keep_going: bool) -> None:
    kernel = FakeKernel()
    with pytest.raises(RestoreError, match=r"--oseq-jump .*0\.\.2147483647 .*2\^31"):
        restore(snapshot([sa(1)], [OUT_POLICY]), kernel, oseq_jump=1 << 31, keep_going=keep_going)
    assert kernel.calls == []


def test_progress_counts_every_op() -> None:
    seen: list[int] = []
    snap = snapshot([sa(i) for i in range(1, 3000)], [OUT_POLICY])
    restore(snap, FakeKernel(), progress=seen.append)
    assert sum(seen) == 3000


def test_a_failure_in_an_early_chunk_stops_the_later_chunks() -> None:
    kernel = FakeKernel(unsupported={"foo"})
    foo = m.AeadAlgorithm("foo", 160, 128, m.KeyMaterial(bytes(20)))
    sas = [sa(i, aead=foo if i == 5 else sa(1).aead) for i in range(1, 3500)]
    with pytest.raises(RestoreError, match="spi 0x00000005"):
        restore(snapshot(sas), kernel)
    assert kernel.sad == {}
    sent = [op for call in kernel.calls[:-1] for op in call]  # the last call is the undo
    assert len(sent) == 1024
