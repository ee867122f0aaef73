"""``XfrmSocket``'s single requests: what goes out is the oracle's message, what comes back decodes.

A fake kernel stands in for the socket; replies are the recorded ones
(tests/data/xfrm/recordings.json), renumbered to the request.
"""

import errno
import ipaddress
import struct

import pytest
from test_xfrm_recordings import recorded
from xfrm_fake_kernel import FakeXfrmKernel

from appliance import model as m
from appliance.xfrm import constants as c
from appliance.xfrm.netlink import RawMessage
from appliance.xfrm.socket import XfrmSocket
from appliance.xfrm.types import KmAddress, Migration, XfrmError
from tests.xfrm.oracle import convert as cv
from tests.xfrm.oracle import structs as s

pytestmark = pytest.mark.unit

A = ipaddress.ip_address


def answering(name: str | None = None, refuse: int = 0) -> tuple[XfrmSocket, FakeXfrmKernel]:
    """A socket whose kernel answers every request with the recording ``name`` (or only acks)."""

    def reply(request: RawMessage) -> bytes | None:
        if name is None:
            return None
        data = bytearray(recorded(name))
        struct.pack_into("=I", data, 8, request.seq)
        return bytes(data)

    kernel = FakeXfrmKernel(lambda msg: refuse, reply)
    return XfrmSocket.from_socket(kernel), kernel


def oracle_sa(name: str) -> m.SadEntry:
    """The SA of a recorded NEWSA, as the oracle decodes it."""
    msg = s.xfrm_usersa_info(recorded(name))
    msg.decode()
    return cv.sad_from_msg(msg)


def test_flushes_send_the_oracles_messages() -> None:
    xs, kernel = answering()
    xs.flush_sa()
    xs.flush_policy()
    xs.flush_policy(c.XFRM_POLICY_TYPE_SUB)
    seqs = [r.seq for r in kernel.requests]
    assert kernel.sent == [
        cv.encode_request(cv.flush_sa_msg(c.IPSEC_PROTO_ANY), c.XFRM_MSG_FLUSHSA, seqs[0]),
        cv.encode_request(cv.flush_policy_msg(None), c.XFRM_MSG_FLUSHPOLICY, seqs[1]),
        cv.encode_request(cv.flush_policy_msg(1), c.XFRM_MSG_FLUSHPOLICY, seqs[2]),
    ]


def test_allocspi_sends_the_oracles_message_and_returns_the_reply_spi() -> None:
    xs, kernel = answering("allocspi_reply.0")
    spi = xs.alloc_spi(A("192.0.2.2"), spi_min=0x2000, spi_max=0x2FFF, reqid=9, mark=m.Mark(1, 1))
    assert spi == oracle_sa("allocspi_reply.0").spi
    [request] = kernel.requests
    wanted = cv.alloc_spi_msg(A("192.0.2.2"), 50, 0x2000, 0x2FFF, reqid=9, mark=m.Mark(1, 1))
    assert kernel.sent == [cv.encode_request(wanted, c.XFRM_MSG_ALLOCSPI, request.seq)]


def test_allocspi_of_a_full_range_says_so() -> None:
    xs, _ = answering(refuse=errno.ENOENT)
    with pytest.raises(XfrmError, match="no free SPI found") as caught:
        xs.alloc_spi(A("192.0.2.2"), spi_min=0x2000, spi_max=0x2000)
    assert caught.value.errno == errno.ENOENT


def test_migrate_sends_the_oracles_message() -> None:
    xs, kernel = answering()
    selector = m.Selector(daddr=A("198.51.100.0"), prefixlen_d=24)
    moves = [Migration(A("192.0.2.2"), A("192.0.2.1"), A("192.0.2.12"), A("192.0.2.11"))]
    km = KmAddress(A("192.0.2.11"), A("192.0.2.12"))
    xs.migrate(selector, c.XFRM_POLICY_OUT, moves, kmaddress=km)
    [request] = kernel.requests
    wanted = cv.migrate_msg(selector, c.XFRM_POLICY_OUT, moves, kmaddress=km)
    assert kernel.sent == [cv.encode_request(wanted, c.XFRM_MSG_MIGRATE, request.seq)]


def test_get_sa_and_get_ae_decode_the_recorded_replies() -> None:
    xs, _ = answering("getsa_reply.0")
    entry = xs.get_sa(A("192.0.2.2"), 0x1000)
    assert entry == oracle_sa("getsa_reply.0")
    xs, _ = answering("getae_reply_esn.0")
    state = xs.get_ae(entry.daddr, entry.spi)
    assert state.replay_esn is not None and state.replay_esn.oseq == 77


def test_a_refused_sa_request_names_the_sa() -> None:
    xs, _ = answering(refuse=errno.ESRCH)
    with pytest.raises(XfrmError, match=r"SA spi 0x00001234 dst 192\.0\.2\.2 proto 50"):
        xs.delete_sa(A("192.0.2.2"), 0x1234)
