"""install_batch: many requests per sendmsg, failures attributed to their entries."""

import dataclasses
import errno
import ipaddress

import pytest
from xfrm_fake_kernel import FakeXfrmKernel

from appliance.model import (
    AeadAlgorithm,
    KeyMaterial,
    ReplayStateEsn,
    SadEntry,
    Selector,
    SpdEntry,
    Template,
)
from appliance.xfrm import codec
from appliance.xfrm import constants as c
from appliance.xfrm import socket as xsock
from appliance.xfrm.netlink import RawMessage
from appliance.xfrm.socket import XfrmSocket
from appliance.xfrm.types import AeState, BatchFailure, XfrmError

pytestmark = pytest.mark.unit

A = ipaddress.ip_address


def sa(n: int) -> SadEntry:
    return SadEntry(
        daddr=A("192.0.2.2"),
        saddr=A("192.0.2.1"),
        spi=0x1000 + n,
        mode=1,
        reqid=n,
        aead=AeadAlgorithm("rfc4106(gcm(aes))", 160, 128, KeyMaterial(bytes(20))),
    )


def policy(n: int) -> SpdEntry:
    return SpdEntry(
        selector=Selector(daddr=A(f"198.51.{100 + n // 256}.{n % 256}"), prefixlen_d=32),
        dir=1,
        templates=(Template(daddr=A("192.0.2.2"), saddr=A("192.0.2.1"), mode=1, reqid=n),),
    )


def spi_of(msg: RawMessage) -> int:
    return int.from_bytes(msg.data[16 + 72 : 16 + 76], "big")


def test_failures_name_their_entry_index_errno_and_entry() -> None:
    ops: list[tuple[str, SadEntry | SpdEntry]] = []
    for n in range(300):
        ops.append(("add_sa", sa(n)))
        ops.append(("add_policy", policy(n)))
    bad_spis = {0x1000 + 7, 0x1000 + 250}

    def verdict(msg: RawMessage) -> int:
        if msg.type == c.XFRM_MSG_NEWSA and spi_of(msg) in bad_spis:
            return errno.EEXIST
        if msg.type == c.XFRM_MSG_NEWPOLICY and msg.seq % 97 == 0:
            return errno.EINVAL
        return 0

    kernel = FakeXfrmKernel(verdict)
    xs = XfrmSocket.from_socket(kernel)
    failures = xs.install_batch(ops)

    expected_sa = [2 * 7, 2 * 250]
    assert [f.index for f in failures if f.errno == errno.EEXIST] == expected_sa
    for f in failures:
        op, entry = ops[f.index]
        assert op in f.message and entry.label() in f.message
        assert "fake refusal" in f.message
    policy_failures = [f for f in failures if f.errno == errno.EINVAL]
    assert policy_failures and all(ops[f.index][0] == "add_policy" for f in policy_failures)
    assert "SA spi 0x00001007 dst 192.0.2.2 proto 50 already exists" in failures[0].message


def test_requests_are_sent_without_acks_in_few_big_buffers() -> None:
    ops = [("add_sa", sa(n)) for n in range(2000)]
    kernel = FakeXfrmKernel(lambda msg: 0)
    xs = XfrmSocket.from_socket(kernel)
    assert xs.install_batch(ops) == []
    batch = [m for m in kernel.requests if m.type == c.XFRM_MSG_NEWSA]
    assert len(batch) == 2000
    assert all(not (m.flags & c.NLM_F_ACK) for m in batch)
    assert len({m.seq for m in batch}) == 2000
    assert len(kernel.sent) <= 1 + sum(len(m.data) for m in batch) // xsock.BATCH_CHUNK
    assert kernel.requests[-1].type == c.NLMSG_NOOP and kernel.requests[-1].flags & c.NLM_F_ACK


def test_batch_rejects_unknown_operation_before_sending() -> None:
    kernel = FakeXfrmKernel(lambda msg: 0)
    xs = XfrmSocket.from_socket(kernel)
    with pytest.raises(XfrmError, match="unknown operation 'add_state'"):
        xs.install_batch([("add_sa", sa(1)), ("add_state", sa(2))])  # type: ignore[list-item]
    assert kernel.sent == []


def test_batch_rejects_wrong_entry_type() -> None:
    xs = XfrmSocket.from_socket(FakeXfrmKernel(lambda msg: 0))
    with pytest.raises(XfrmError, match="batch entry 0: add_policy needs an SpdEntry"):
        xs.install_batch([("add_policy", sa(1))])


def test_batch_deletes_are_encoded_per_entry() -> None:
    kernel = FakeXfrmKernel(lambda msg: errno.ENOENT if msg.type == c.XFRM_MSG_DELPOLICY else 0)
    xs = XfrmSocket.from_socket(kernel)
    failures = xs.install_batch([("delete_sa", sa(1)), ("delete_policy", policy(1))])
    assert [(f.index, f.errno_name) for f in failures] == [(1, "ENOENT")]
    assert "does not exist" in failures[0].message


def test_single_request_error_names_the_entry_and_missing_esp() -> None:
    kernel = FakeXfrmKernel(lambda msg: errno.EPROTONOSUPPORT)
    xs = XfrmSocket.from_socket(kernel)
    with pytest.raises(XfrmError) as info:
        xs.add_sa(sa(3))
    assert info.value.errno == errno.EPROTONOSUPPORT
    assert "kernel lacks ESP support (CONFIG_INET_ESP" in str(info.value)
    assert "SA spi 0x00001003 dst 192.0.2.2" in str(info.value)


def with_esn(entry: SadEntry, oseq: int) -> SadEntry:
    return dataclasses.replace(
        entry, flags=c.XFRM_STATE_ESN, replay_esn=ReplayStateEsn(4, oseq, 0, 1, 0, 128, (0,) * 4)
    )


def test_batch_sets_replay_states_and_thresholds_with_newae() -> None:
    kernel = FakeXfrmKernel(lambda msg: errno.ESRCH if spi_of_ae(msg) == 0x1002 else 0)
    xs = XfrmSocket.from_socket(kernel)
    thresholds = dataclasses.replace(sa(3), replay_thresh=64, etimer_thresh=100)
    ops = [
        ("set_replay", with_esn(sa(1), 500)),
        ("set_replay", with_esn(sa(2), 600)),
        ("set_thresholds", thresholds),
    ]
    failures = xs.install_batch(ops)
    assert [(f.index, f.errno_name) for f in failures] == [(1, "ESRCH")]
    sent = [m for m in kernel.requests if m.type == c.XFRM_MSG_NEWAE]
    states = [codec.ae_state_from_bytes(m.data) for m in sent]
    assert [s.oseq64 for s in states[:2]] == [(1 << 32) | 500, (1 << 32) | 600]
    assert (states[2].replay_thresh, states[2].etimer_thresh, states[2].replay_esn) == (
        64,
        100,
        None,
    )
    assert all(m.flags & c.NLM_F_REPLACE for m in sent)  # xfrm_new_ae refuses NEWAE without it


def test_batch_refuses_set_replay_without_a_replay_state() -> None:
    kernel = FakeXfrmKernel(lambda msg: 0)
    xs = XfrmSocket.from_socket(kernel)
    with pytest.raises(XfrmError, match="batch entry 1: set_replay needs an SA with a replay"):
        xs.install_batch([("set_replay", with_esn(sa(1), 5)), ("set_replay", sa(2))])
    with pytest.raises(XfrmError, match="batch entry 0: set_thresholds needs an SA with a thr"):
        xs.install_batch([("set_thresholds", sa(1))])
    with pytest.raises(XfrmError, match="batch entry 0: set_replay needs a SadEntry"):
        xs.install_batch([("set_replay", policy(1))])
    assert kernel.sent == []


def spi_of_ae(msg: RawMessage) -> int:
    return int.from_bytes(msg.data[16 + 16 : 16 + 20], "big")


def test_get_ae_batch_answers_in_order_with_failures_in_place() -> None:
    def reply(msg: RawMessage) -> bytes | None:
        if msg.type != c.XFRM_MSG_GETAE:
            return None
        spi = spi_of_ae(msg)
        entry = with_esn(sa(spi - 0x1000), 1000 + spi)
        assert entry.replay_esn is not None
        return codec.encode_ae(
            c.XFRM_MSG_NEWAE, 0, msg.seq, entry.daddr, spi, 50, replay=entry.replay_esn
        )

    kernel = FakeXfrmKernel(lambda msg: errno.ESRCH if spi_of_ae(msg) == 0x1005 else 0, reply)
    xs = XfrmSocket.from_socket(kernel)
    entries = [sa(n) for n in range(1, 1201)]
    results = xs.get_ae_batch(entries)
    assert len(results) == 1200
    failure = results[4]
    assert isinstance(failure, BatchFailure) and failure.errno_name == "ESRCH"
    assert "SA spi 0x00001005" in failure.message
    others = [r for i, r in enumerate(results) if i != 4]
    assert all(isinstance(r, AeState) for r in others)
    assert [r.replay_esn.oseq for r in others[:3]] == [1000 + 0x1001, 1000 + 0x1002, 1000 + 0x1003]  # type: ignore[union-attr]
    asked = [m for m in kernel.requests if m.type == c.XFRM_MSG_GETAE]
    assert len(asked) == 1200 and not any(m.flags & c.NLM_F_ACK for m in asked)
    assert len(kernel.sent) < 10  # pipelined, not one sendmsg per SA


def test_get_ae_batch_raises_when_answers_are_missing() -> None:
    kernel = FakeXfrmKernel(lambda msg: 0)  # accepts, but never answers a GETAE
    xs = XfrmSocket.from_socket(kernel)
    with pytest.raises(XfrmError, match="no answer for 2 of 2 SAs"):
        xs.get_ae_batch([sa(1), sa(2)])


def test_buffers_respect_both_the_byte_and_the_request_caps() -> None:
    requests = [bytes([n]) * 10 for n in range(25)]
    by_count = list(xsock._chunks(requests, 1000, b"END", per_buffer=10))
    assert [len(b) for b in by_count] == [100, 100, 53]
    by_size = list(xsock._chunks(requests, 35, b"END"))
    assert len(by_size) == 9 and by_size[-1].endswith(b"END")
    assert b"".join(by_size) == b"".join(requests) + b"END"
