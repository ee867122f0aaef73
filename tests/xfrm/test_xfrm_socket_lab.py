"""XfrmSocket against a kernel with ESP (the lab VM): SAs, AE, ALLOCSPI, events, batches."""

import asyncio
import dataclasses
import errno
import ipaddress
import re
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from appliance.errors import KernelError
from appliance.model import (
    AeadAlgorithm,
    Algorithm,
    AuthTruncAlgorithm,
    KeyMaterial,
    LifetimeCfg,
    Mark,
    ReplayState,
    ReplayStateEsn,
    SadEntry,
    Selector,
    SpdEntry,
    Template,
)
from appliance.xfrm import Migration, SaAdded, SaDeleted, XfrmSocket, xfrm_events
from appliance.xfrm import constants as c

pytestmark = pytest.mark.lab

A = ipaddress.ip_address


@pytest.fixture
def netns(require_root: None) -> Iterator[str]:
    subprocess.run(["modprobe", "-a", "esp4", "esp6", "xfrm_user"], check=False)
    name = f"iha-{secrets.token_hex(3)}-xfrm"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def ip_xfrm(netns: str, *args: str) -> str:
    return subprocess.run(
        ["ip", "-n", netns, "xfrm", *args], capture_output=True, text=True, check=True
    ).stdout


def sa(spi: int, **changes: object) -> SadEntry:
    entry = SadEntry(
        daddr=A("192.0.2.2"),
        saddr=A("192.0.2.1"),
        spi=spi,
        mode=1,
        reqid=spi & 0xFFFF,
        replay_window=32,
        selector=Selector(
            daddr=A("198.51.100.0"), saddr=A("203.0.113.0"), prefixlen_d=24, prefixlen_s=24
        ),
        crypt=Algorithm("cbc(aes)", 128, KeyMaterial(bytes(range(16)))),
        auth_trunc=AuthTruncAlgorithm("hmac(sha256)", 256, 128, KeyMaterial(bytes(range(32)))),
    )
    return dataclasses.replace(entry, **changes)  # type: ignore[arg-type]


def test_sa_add_get_update_delete_flush(netns: str) -> None:
    with XfrmSocket(netns) as xs:
        xs.add_sa(sa(0x1001))
        xs.add_sa(sa(0x1002, mark=Mark(5, 0xFF), if_id=7))
        got = xs.get_sa(A("192.0.2.2"), 0x1001)
        assert got.crypt == sa(0x1001).crypt and got.auth_trunc == sa(0x1001).auth_trunc
        assert got.auth is not None  # the kernel reports the plain auth algorithm as well
        assert "spi 0x00001002" in ip_xfrm(netns, "state")
        with pytest.raises(
            KernelError, match=re.escape("SA spi 0x00001001 dst 192.0.2.2 proto 50 already exists")
        ):
            xs.add_sa(sa(0x1001))
        # UPDSA changes lifetimes (not the reqid or the replay state).
        longer = LifetimeCfg(soft_add_expires_seconds=100, hard_add_expires_seconds=200)
        xs.update_sa(sa(0x1001, lifetime_cfg=longer))
        assert xs.get_sa(A("192.0.2.2"), 0x1001).lifetime_cfg == longer
        xs.delete_sa(A("192.0.2.2"), 0x1002, mark=Mark(5, 0xFF))
        with pytest.raises(KernelError, match="does not exist"):
            xs.get_sa(A("192.0.2.2"), 0x1002, mark=Mark(5, 0xFF))
        assert [e.spi for e in xs.dump_sad()] == [0x1001]
        xs.flush_sa()
        assert xs.dump_sad() == []


def test_dumped_sas_restore_identically(netns: str) -> None:
    with XfrmSocket(netns) as xs:
        xs.add_sa(sa(0x2001))
        xs.add_sa(
            sa(
                0x2002,
                crypt=None,
                auth_trunc=None,
                aead=AeadAlgorithm("rfc4106(gcm(aes))", 160, 128, KeyMaterial(bytes(20))),
                flags=c.XFRM_STATE_ESN,
                replay_window=0,
                replay_esn=ReplayStateEsn(4, 77, 0, 2, 0, 128, (0, 0, 0, 0)),
            )
        )
        before = xs.dump_sad()
        xs.flush_sa()
        assert xs.install_batch([("add_sa", e) for e in before], with_lifetime_cur=True) == []
        after = xs.dump_sad()
    key = lambda e: e.spi  # noqa: E731
    assert sorted(after, key=key) == sorted(before, key=key)


def test_newae_moves_the_outbound_sequence_number(netns: str) -> None:
    with XfrmSocket(netns) as xs:
        xs.add_sa(sa(0x3001))
        assert xs.get_ae(A("192.0.2.2"), 0x3001).oseq64 == 0
        xs.update_sa(sa(0x3001, replay=ReplayState(5000, 0, 0)))  # UPDSA leaves replay alone
        assert xs.get_ae(A("192.0.2.2"), 0x3001).oseq64 == 0
        xs.set_replay(sa(0x3001), ReplayState(oseq=5000, seq=10, bitmap=1))
        state = xs.get_ae(A("192.0.2.2"), 0x3001)
        assert state.replay == ReplayState(5000, 10, 1)
    assert "oseq 0x1388" in ip_xfrm(
        netns,
        "state",
        "get",
        "src",
        "192.0.2.1",
        "dst",
        "192.0.2.2",
        "proto",
        "esp",
        "spi",
        "0x3001",
    )


def test_batched_getae_and_newae_read_and_move_many_counters(netns: str) -> None:
    esn = [
        sa(
            0x4000 + n,
            flags=c.XFRM_STATE_ESN,
            replay_window=0,
            replay_esn=ReplayStateEsn(4, 0, 0, 0, 0, 128, (0, 0, 0, 0)),
        )
        for n in range(300)
    ]
    legacy = [sa(0x5000 + n) for n in range(300)]
    with XfrmSocket(netns) as xs:
        assert xs.install_batch([("add_sa", e) for e in esn + legacy]) == []
        before = xs.get_ae_batch(esn + legacy)
        assert all(a.oseq64 == 0 for a in before)  # type: ignore[union-attr]
        moved = [
            dataclasses.replace(
                e,
                replay_esn=dataclasses.replace(e.replay_esn, oseq=7 + i, oseq_hi=1),  # type: ignore[type-var]
            )
            for i, e in enumerate(esn)
        ] + [dataclasses.replace(e, replay=ReplayState(9 + i, 0, 0)) for i, e in enumerate(legacy)]
        gone = sa(0x6000, replay=ReplayState(1, 0, 0))  # never installed: refused, by index
        # The thresholds have no GETAE echo; that the kernel accepted them is the check.
        ops = [("set_replay", e) for e in moved] + [("set_replay", gone)]
        ops += [
            ("set_thresholds", dataclasses.replace(e, replay_thresh=50, etimer_thresh=20))
            for e in esn[:5]
        ]
        failures = xs.install_batch(ops)  # type: ignore[arg-type]
        assert [(f.index, f.errno_name) for f in failures] == [(600, "ESRCH")]
        after = xs.get_ae_batch([*esn, *legacy, gone])
        assert [a.oseq64 for a in after[:300]] == [(1 << 32) | (7 + i) for i in range(300)]  # type: ignore[union-attr]
        assert [a.oseq64 for a in after[300:600]] == [9 + i for i in range(300)]  # type: ignore[union-attr]
        assert after[600].errno_name == "ESRCH"  # type: ignore[union-attr]


def test_allocspi_stays_in_range(netns: str) -> None:
    with XfrmSocket(netns) as xs:
        # The kernel probes a range at random (as many probes as it is wide), so
        # a range close to full can fail by chance: 3 SPIs out of 256 cannot.
        spis = {
            xs.alloc_spi(A("192.0.2.2"), spi_min=0x5000, spi_max=0x50FF, reqid=n, seq=n + 1)
            for n in range(3)
        }
        assert len(spis) == 3 and all(0x5000 <= spi <= 0x50FF for spi in spis)
        # A one-SPI range is looked up, not probed: the second request must fail.
        assert (
            xs.alloc_spi(A("192.0.2.2"), spi_min=0x6000, spi_max=0x6000, reqid=9, seq=9) == 0x6000
        )
        with pytest.raises(KernelError, match="no free SPI found"):
            xs.alloc_spi(A("192.0.2.2"), spi_min=0x6000, spi_max=0x6000, reqid=10, seq=10)
        with pytest.raises(KernelError):
            xs.alloc_spi(A("192.0.2.2"), spi_min=0x10, spi_max=0x1)


def test_sa_events_for_add_and_delete(netns: str) -> None:
    async def scenario() -> list[object]:
        events: list[object] = []

        async def listen() -> None:
            async for event in xfrm_events(netns, groups=(c.XFRMNLGRP_SA,)):
                events.append(event)
                if len(events) == 2:
                    return

        task = asyncio.create_task(listen())
        await asyncio.sleep(0.3)
        with XfrmSocket(netns) as xs:
            xs.add_sa(sa(0x4001))
            xs.delete_sa(A("192.0.2.2"), 0x4001)
        await asyncio.wait_for(task, 10)
        return events

    added, deleted = asyncio.run(scenario())
    assert isinstance(added, SaAdded) and added.entry.spi == 0x4001
    assert added.entry.crypt == sa(0x4001).crypt
    assert isinstance(deleted, SaDeleted) and deleted.spi == 0x4001
    assert deleted.entry is not None and deleted.entry.reqid == 0x4001


def test_batch_with_one_bad_entry_reports_its_index(netns: str) -> None:
    ops: list[tuple[str, SadEntry | SpdEntry]] = []
    for n in range(50):
        ops.append(("add_sa", sa(0x6000 + n)))
        ops.append(
            (
                "add_policy",
                SpdEntry(
                    selector=Selector(daddr=A(f"198.51.100.{n}"), prefixlen_d=32),
                    dir=1,
                    templates=(
                        Template(daddr=A("192.0.2.2"), saddr=A("192.0.2.1"), mode=1, reqid=n),
                    ),
                ),
            )
        )
    ops[37] = (
        "add_sa",
        sa(0x6000 + 18, crypt=Algorithm("no-such-cipher", 128, KeyMaterial(bytes(16)))),
    )
    with XfrmSocket(netns) as xs:
        failures = xs.install_batch(ops)
        assert [(f.index, f.errno) for f in failures] == [(37, errno.ENOSYS)]
        assert "no-such-cipher" in failures[0].message and "spi 0x00006012" in failures[0].message
        # Entry 37 replaced a policy: 50 good SAs, 49 policies.
        assert len(xs.dump_sad()) == 50 and len(xs.dump_spd()) == 49


def test_migrate_moves_policy_template_and_sa(netns: str) -> None:
    sel = Selector(daddr=A("198.51.100.0"), saddr=A("203.0.113.0"), prefixlen_d=24, prefixlen_s=24)
    with XfrmSocket(netns) as xs:
        xs.add_sa(sa(0x7001, reqid=1))
        xs.add_policy(
            SpdEntry(
                selector=sel,
                dir=1,
                templates=(Template(daddr=A("192.0.2.2"), saddr=A("192.0.2.1"), mode=1, reqid=1),),
            )
        )
        xs.migrate(
            sel,
            1,
            [Migration(A("192.0.2.2"), A("192.0.2.1"), A("192.0.2.3"), A("192.0.2.1"), reqid=1)],
        )
        [policy] = xs.dump_spd()
        assert policy.templates[0].daddr == A("192.0.2.3")
        assert {e.daddr for e in xs.dump_sad()} == {A("192.0.2.3")}
