"""XfrmSocket against the host kernel (no ESP) inside a throwaway network namespace."""

import asyncio
import errno
import ipaddress
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
    Mark,
    SadEntry,
    Selector,
    SpdEntry,
    Template,
)
from appliance.xfrm import PolicyAdded, PolicyDeleted, XfrmSocket, dump_spd, xfrm_events

pytestmark = pytest.mark.netns

A = ipaddress.ip_address


@pytest.fixture
def netns(require_root: None) -> Iterator[str]:
    name = f"iha-{secrets.token_hex(3)}-xfrm"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def policy(n: int, direction: int = 1) -> SpdEntry:
    return SpdEntry(
        selector=Selector(
            daddr=A(f"198.51.100.{n}"), saddr=A("203.0.113.0"), prefixlen_d=32, prefixlen_s=24
        ),
        dir=direction,
        priority=1000 + n,
        templates=(
            Template(daddr=A("192.0.2.2"), saddr=A("192.0.2.1"), mode=1, reqid=n),
            Template(daddr=A("192.0.2.2"), saddr=A("192.0.2.1"), mode=1, proto=51, reqid=n),
        ),
        mark=Mark(n, 0xFF),
        if_id=7,
    )


def test_policies_add_dump_update_delete_flush(netns: str) -> None:
    with XfrmSocket(netns) as xs:
        xs.add_policy(policy(1))
        xs.add_policy(policy(2, direction=0))
        dumped = {p.selector.daddr: p for p in xs.dump_spd()}
        assert set(dumped) == {A("198.51.100.1"), A("198.51.100.2")}
        one = dumped[A("198.51.100.1")]
        assert one.templates == policy(1).templates
        assert (one.mark, one.if_id, one.priority, one.dir) == (Mark(1, 0xFF), 7, 1001, 1)
        iproute = subprocess.run(
            ["ip", "-n", netns, "xfrm", "policy"], capture_output=True, text=True, check=True
        ).stdout
        assert "dst 198.51.100.1/32" in iproute and "proto ah" in iproute

        changed = policy(1)
        changed = SpdEntry(**{**{f: getattr(changed, f) for f in changed.__slots__}, "priority": 5})
        xs.update_policy(changed)
        assert {p.priority for p in xs.dump_spd()} == {5, 1002}

        xs.delete_policy_entry(policy(2, direction=0))
        assert [p.selector.daddr for p in xs.dump_spd()] == [A("198.51.100.1")]
        xs.flush_policy()
        assert xs.dump_spd() == []
    assert dump_spd(netns) == []


def test_duplicate_policy_is_a_clear_error(netns: str) -> None:
    with XfrmSocket(netns) as xs:
        xs.add_policy(policy(3))
        with pytest.raises(
            KernelError,
            match=r"policy out src 203\.0\.113\.0/24 dst 198\.51\.100\.3/32 .*already exists",
        ):
            xs.add_policy(policy(3))
        with pytest.raises(KernelError, match="does not exist"):
            xs.delete_policy_entry(policy(4))


def test_sa_add_without_esp_names_missing_esp_support(netns: str) -> None:
    sa = SadEntry(
        daddr=A("192.0.2.2"),
        saddr=A("192.0.2.1"),
        spi=0x1234,
        mode=1,
        crypt=Algorithm("cbc(aes)", 128, KeyMaterial(bytes(16))),
        auth_trunc=AuthTruncAlgorithm("hmac(sha256)", 256, 128, KeyMaterial(bytes(32))),
    )
    with XfrmSocket(netns) as xs:
        with pytest.raises(KernelError) as info:
            xs.add_sa(sa)
        assert "kernel lacks ESP support (CONFIG_INET_ESP" in str(info.value)
        assert "SA spi 0x00001234 dst 192.0.2.2" in str(info.value)
        assert xs.dump_sad() == []


def test_sa_with_algorithm_the_kernel_lacks_names_the_algorithm(netns: str) -> None:
    # The host kernel has no GCM: the algorithm check fails before the ESP one.
    sa = SadEntry(
        daddr=A("192.0.2.2"),
        spi=0x1235,
        aead=AeadAlgorithm("rfc4106(gcm(aes))", 160, 128, KeyMaterial(bytes(20))),
    )
    with XfrmSocket(netns) as xs, pytest.raises(KernelError) as info:
        xs.add_sa(sa)
    message = str(info.value)
    assert message.startswith("algorithm not supported by the kernel (rfc4106(gcm(aes)))")
    assert "SA spi 0x00001235" in message


def test_batch_of_policies_reports_the_duplicate_by_index(netns: str) -> None:
    ops: list[tuple[str, SadEntry | SpdEntry]] = [("add_policy", policy(n)) for n in range(1, 200)]
    ops.insert(57, ("add_policy", policy(20)))
    with XfrmSocket(netns) as xs:
        failures = xs.install_batch(ops)
        assert len(xs.dump_spd()) == 199
    assert [(f.index, f.errno) for f in failures] == [(57, errno.EEXIST)]
    assert "dst 198.51.100.20/32" in failures[0].message


def test_missing_namespace_is_a_clear_error() -> None:
    with pytest.raises(KernelError, match="network namespace 'iha-no-such-ns' does not exist"):
        XfrmSocket("iha-no-such-ns")


def test_policy_events_arrive_for_add_and_delete(netns: str) -> None:
    async def scenario() -> list[object]:
        events: list[object] = []

        async def listen() -> None:
            async for event in xfrm_events(netns):
                events.append(event)
                if len(events) == 2:
                    return

        task = asyncio.create_task(listen())
        await asyncio.sleep(0.2)  # let the listener subscribe
        with XfrmSocket(netns) as xs:
            xs.add_policy(policy(9))
            xs.delete_policy_entry(policy(9))
        await asyncio.wait_for(task, 5)
        return events

    added, deleted = asyncio.run(scenario())
    assert isinstance(added, PolicyAdded) and added.entry.selector == policy(9).selector
    assert isinstance(deleted, PolicyDeleted) and deleted.dir == 1
    assert deleted.entry is not None and deleted.entry.templates == policy(9).templates
    # Deleted by selector (as charon deletes): the event still names the policy's index.
    assert deleted.index == added.entry.index != 0
