"""``appliance.xfrm.codec``: its layouts and requests are the oracle's; it stays free of pyroute2.

The oracle is the pyroute2 declarations under ``tests/xfrm/oracle``.
Byte-for-byte agreement on SA and policy entries is tested in
``test_xfrm_convert`` (generated entries) and ``test_xfrm_recordings``
(kernel messages).
"""

import ipaddress
import struct
import subprocess
import sys

import pytest
from test_xfrm_recordings import MESSAGES as RECORDED

from appliance import model as m
from appliance.xfrm import codec, codec_migrate
from appliance.xfrm import constants as c
from appliance.xfrm.types import KmAddress, Migration
from tests.xfrm.oracle import convert as cv
from tests.xfrm.oracle import structs as s
from tests.xfrm.oracle.convert import ae_state_from_msg, policy_id_msg

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("layout", "declared", "swapped"),
    [
        # swapped: the __be16/__be32 members, packed after a byte swap
        (codec._USERSA_INFO, s.xfrm_usersa_info_struct, [2, 3, 4, 5, 13]),
        (codec._USERPOLICY_INFO, s.xfrm_userpolicy_info_struct, [2, 3, 4, 5]),
        (codec._TMPL, s.xfrm_user_tmpl, [1]),
        (codec._USERSA_ID, s.xfrm_usersa_id_struct, [1]),
        (codec._USERPOLICY_ID, s.xfrm_userpolicy_id, [2, 3, 4, 5]),
        (codec._AEVENT_ID, s.xfrm_aevent_id, [1]),
        (codec_migrate._MIGRATE, s.xfrm_user_migrate, []),
        (codec_migrate._KMADDRESS, s.xfrm_attrs.xfrm_user_kmaddress, []),
    ],
)
def test_layout_is_the_declared_struct(layout, declared, swapped) -> None:
    flat, _paths, big_endian = cv.flat_struct(declared)
    assert layout.format == flat.format
    assert layout.size == flat.size
    assert [i for i, big in enumerate(big_endian) if big] == swapped


def test_restore_path_imports_neither_pyroute2_nor_asyncio() -> None:
    # What `ipsec-ha restore` loads before it reads the file: pyroute2's package
    # import alone costs more than the restore of 1,000 SA pairs in the lab VM.
    probe = (
        "import sys\n"
        "from appliance.cli import load_commands\n"
        "load_commands(['restore'])\n"
        "import appliance.restore, appliance.snapshot, appliance.xfrm.socket\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.split()
    assert "appliance" in loaded
    assert "pyroute2" not in loaded
    assert "asyncio" not in loaded


# --- GETAE / NEWAE, DELSA / DELPOLICY against the declarative classes ------------------

GW = ipaddress.ip_address("2001:db8::1")
ESN = m.ReplayStateEsn(4, 77, 5, 2, 0, 128, (1, 2, 3, 4))


def declarative_ae(msg_type: int, flags: int, seq: int, ae_flags: int, attrs: list) -> bytes:
    msg = s.xfrm_aevent_id()
    msg["sa_id"] = {"daddr": GW.packed, "spi": 0x1234, "family": 10, "proto": 50}
    msg["saddr"] = bytes(16)
    msg["flags"] = ae_flags
    msg["reqid"] = 0
    msg["attrs"] = attrs
    msg["header"].update({"type": msg_type, "flags": flags, "sequence_number": seq})
    return cv.encode_msg(msg)


def test_newae_with_esn_replay_and_mark_is_the_declared_message() -> None:
    flags = c.NLM_F_REQUEST | c.NLM_F_REPLACE
    fast = codec.encode_ae(
        c.XFRM_MSG_NEWAE, flags, 9, GW, 0x1234, 50, replay=ESN, mark=m.Mark(7, 0xFF)
    )
    esn = {
        "bmp_len": 4,
        "oseq": 77,
        "seq": 5,
        "oseq_hi": 2,
        "seq_hi": 0,
        "replay_window": 128,
        "bmp": struct.pack("=4I", 1, 2, 3, 4),
    }
    reference = declarative_ae(
        c.XFRM_MSG_NEWAE,
        flags,
        9,
        c.XFRM_AE_RVAL,
        [("XFRMA_REPLAY_ESN_VAL", esn), ("XFRMA_MARK", {"v": 7, "m": 0xFF})],
    )
    assert fast == reference


def test_newae_with_legacy_replay_lifetime_and_thresholds_is_the_declared_message() -> None:
    cur = m.LifetimeCur(bytes=10, packets=2, add_time=1700000000, use_time=0)
    fast = codec.encode_ae(
        c.XFRM_MSG_NEWAE,
        c.NLM_F_REQUEST,
        3,
        GW,
        0x1234,
        50,
        replay=m.ReplayState(oseq=9, seq=8, bitmap=0xFF),
        lifetime_cur=cur,
        replay_thresh=1000,
        etimer_thresh=30,
    )
    reference = declarative_ae(
        c.XFRM_MSG_NEWAE,
        c.NLM_F_REQUEST,
        3,
        c.XFRM_AE_RVAL | c.XFRM_AE_LVAL | c.XFRM_AE_RTHR | c.XFRM_AE_ETHR,
        [
            ("XFRMA_REPLAY_VAL", {"oseq": 9, "seq": 8, "bitmap": 0xFF}),
            (
                "XFRMA_LTIME_VAL",
                {"bytes": 10, "packets": 2, "add_time": 1700000000, "use_time": 0},
            ),
            ("XFRMA_REPLAY_THRESH", 1000),
            ("XFRMA_ETIMER_THRESH", 30),
        ],
    )
    assert fast == reference


def test_getae_request_is_the_declared_message() -> None:
    ask = c.XFRM_AE_RVAL | c.XFRM_AE_LVAL
    fast = codec.encode_ae(c.XFRM_MSG_GETAE, c.NLM_F_REQUEST, 5, GW, 0x1234, 50, ae_flags=ask)
    assert fast == declarative_ae(c.XFRM_MSG_GETAE, c.NLM_F_REQUEST, 5, ask, [])


@pytest.mark.parametrize("name", ["getae_reply.0", "getae_reply_esn.0", "event_newae"])
def test_recorded_ae_messages_decode_as_the_declarative_path_does(name: str) -> None:
    [data] = [b for n, b, _ in RECORDED if n == name]
    msg = s.xfrm_aevent_id(data)
    msg.decode()
    assert codec.ae_state_from_bytes(data) == ae_state_from_msg(msg)


def test_delsa_is_the_declared_message() -> None:
    entry = m.SadEntry(
        daddr=GW, saddr=GW, spi=0x1234, mode=1, reqid=1, mark=m.Mark(3, 0xF), family=10
    )
    msg = s.xfrm_usersa_id()
    msg.update({"daddr": GW.packed, "spi": 0x1234, "family": 10, "proto": 50})
    msg["attrs"] = [("XFRMA_MARK", {"v": 3, "m": 0xF})]
    msg["header"].update({"type": c.XFRM_MSG_DELSA, "flags": 1, "sequence_number": 4})
    fast = codec.encode_sa_id(
        c.XFRM_MSG_DELSA, 1, 4, entry.daddr, entry.spi, entry.proto, mark=entry.mark
    )
    assert fast == cv.encode_msg(msg)


@pytest.mark.parametrize("if_id", [None, 42])
def test_delpolicy_is_the_declared_message(if_id: int | None) -> None:
    entry = m.SpdEntry(
        selector=m.Selector(
            daddr=ipaddress.ip_address("2001:db8:2::"),
            saddr=ipaddress.ip_address("2001:db8:1::"),
            prefixlen_d=64,
            prefixlen_s=64,
            family=10,
            dport=4500,
            dport_mask=0xFFFF,
        ),
        dir=m.Direction.FWD,
        mark=m.Mark(1, 1),
        if_id=if_id,
    )
    reference = policy_id_msg(entry.selector, entry.dir, mark=entry.mark, if_id=if_id)
    reference["header"].update({"type": c.XFRM_MSG_DELPOLICY, "flags": 1, "sequence_number": 8})
    fast = codec.encode_policy_id(
        c.XFRM_MSG_DELPOLICY, 1, 8, entry.selector, entry.dir, mark=entry.mark, if_id=if_id
    )
    assert fast == cv.encode_msg(reference)


# --- the rarer requests: flushes, ALLOCSPI, MIGRATE -----------------------------------


@pytest.mark.parametrize("proto", [c.IPSEC_PROTO_ANY, c.IPPROTO_ESP])
def test_flushsa_is_the_declared_message(proto: int) -> None:
    reference = cv.encode_request(cv.flush_sa_msg(proto), c.XFRM_MSG_FLUSHSA, 6)
    assert codec.encode_flush_sa(6, proto) == reference
    assert len(reference) == 20  # the one-byte struct, padded and counted


@pytest.mark.parametrize("ptype", [None, c.XFRM_POLICY_TYPE_MAIN, c.XFRM_POLICY_TYPE_SUB])
def test_flushpolicy_is_the_declared_message(ptype: int | None) -> None:
    reference = cv.encode_request(cv.flush_policy_msg(ptype), c.XFRM_MSG_FLUSHPOLICY, 7)
    assert codec.encode_flush_policy(7, ptype) == reference


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"saddr": ipaddress.ip_address("2001:db8::2"), "reqid": 9, "sa_seq": 77},
        {"mark": m.Mark(5, 0xFF), "if_id": 3, "mode": c.XFRM_MODE_TRANSPORT},
    ],
    ids=["plain", "saddr-reqid-seq", "mark-ifid-transport"],
)
def test_allocspi_is_the_declared_message(options: dict) -> None:
    wanted = {
        "saddr": None,
        "mode": c.XFRM_MODE_TUNNEL,
        "reqid": 0,
        "sa_seq": 0,
        "mark": None,
        "if_id": None,
        **options,
    }
    for daddr in (GW, ipaddress.ip_address("192.0.2.2")):
        if daddr.version == 4 and wanted["saddr"] is not None:
            continue
        fast = codec.encode_alloc_spi(11, daddr, 50, 0x2000, 0x2FFF, **wanted)
        msg = cv.alloc_spi_msg(daddr, 50, 0x2000, 0x2FFF, **wanted)
        assert fast == cv.encode_request(msg, c.XFRM_MSG_ALLOCSPI, 11)


MIGRATIONS = (
    Migration(
        old_daddr=ipaddress.ip_address("192.0.2.2"),
        old_saddr=ipaddress.ip_address("192.0.2.1"),
        new_daddr=ipaddress.ip_address("2001:db8::2"),
        new_saddr=ipaddress.ip_address("2001:db8::1"),
        reqid=4,
        reserved=1,
    ),
    Migration(
        old_daddr=ipaddress.ip_address("192.0.2.2"),
        old_saddr=ipaddress.ip_address("192.0.2.1"),
        new_daddr=ipaddress.ip_address("198.51.100.2"),
        new_saddr=ipaddress.ip_address("198.51.100.1"),
        proto=51,
        mode=0,
    ),
)
KM = KmAddress(ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2"), 3)


@pytest.mark.parametrize("kmaddress", [None, KM], ids=["plain", "kmaddress"])
def test_migrate_is_the_declared_message(kmaddress: KmAddress | None) -> None:
    selector = m.Selector(
        daddr=ipaddress.ip_address("198.51.100.0"),
        saddr=ipaddress.ip_address("203.0.113.0"),
        prefixlen_d=24,
        prefixlen_s=24,
    )
    fast = codec_migrate.encode_migrate(12, selector, 1, MIGRATIONS, kmaddress=kmaddress)
    msg = cv.migrate_msg(selector, 1, MIGRATIONS, kmaddress=kmaddress)
    assert fast == cv.encode_request(msg, c.XFRM_MSG_MIGRATE, 12)
