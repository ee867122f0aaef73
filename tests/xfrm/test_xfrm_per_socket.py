"""Per-socket policies on recorded kernel bytes (tests/data/xfrm/socket_policies.json).

The recording holds a real policy dump with charon-style bypass policies on
an IPv4 and an IPv6 socket beside one ordinary policy, and the kernel's
refusal to delete a per-socket policy.
"""

import json
import struct
from pathlib import Path

import pytest
from xfrm_fake_kernel import FakeXfrmKernel

from appliance.xfrm import codec
from appliance.xfrm import constants as c
from appliance.xfrm.netlink import RawMessage, iter_messages, parse_error
from appliance.xfrm.per_socket import (
    POLICY_DIR_OFFSET,
    is_per_socket_dir,
    is_per_socket_message,
)
from appliance.xfrm.socket import XfrmSocket

pytestmark = pytest.mark.unit

DATA_DIR = Path(__file__).parents[1] / "data" / "xfrm"
RECORDED = json.loads((DATA_DIR / "socket_policies.json").read_text())
DUMP = [bytes.fromhex(m["hex"]) for m in RECORDED["messages"] if m["name"].startswith("policy_")]
POLICIES = [m for m in DUMP if int.from_bytes(m[4:6], "little") == c.XFRM_MSG_NEWPOLICY]
OTHER_RECORDINGS = [
    bytes.fromhex(m["hex"])
    for m in json.loads((DATA_DIR / "recordings.json").read_text())["messages"]
    if m["type"] in ("XFRM_MSG_NEWPOLICY", "XFRM_MSG_UPDPOLICY")
]


def test_the_recording_holds_four_socket_policies_and_one_ordinary() -> None:
    assert sum("socket in" in line for line in RECORDED["ip_xfrm_policy"]) == 2
    assert sum("socket out" in line for line in RECORDED["ip_xfrm_policy"]) == 2
    assert sorted(codec.spd_from_bytes(m).dir for m in POLICIES) == [
        c.XFRM_POLICY_OUT,
        c.XFRM_POLICY_MAX + c.XFRM_POLICY_IN,
        c.XFRM_POLICY_MAX + c.XFRM_POLICY_IN,
        c.XFRM_POLICY_MAX + c.XFRM_POLICY_OUT,
        c.XFRM_POLICY_MAX + c.XFRM_POLICY_OUT,
    ]


@pytest.mark.parametrize("message", POLICIES + OTHER_RECORDINGS)
def test_the_raw_direction_is_the_one_the_codec_decodes(message: bytes) -> None:
    entry = codec.spd_from_bytes(message)
    assert message[POLICY_DIR_OFFSET] == entry.dir
    assert is_per_socket_message(message) == is_per_socket_dir(entry.dir)


def test_only_socket_policies_are_per_socket() -> None:
    flags = [is_per_socket_message(m) for m in POLICIES]
    assert flags.count(True) == 4
    assert not any(is_per_socket_message(m) for m in OTHER_RECORDINGS)
    assert [is_per_socket_dir(d) for d in range(6)] == [False] * 3 + [True] * 3


def test_a_message_too_short_for_a_direction_is_left_to_the_decoder() -> None:
    assert not is_per_socket_message(POLICIES[1][:POLICY_DIR_OFFSET])


def test_the_kernel_refuses_to_delete_a_per_socket_policy() -> None:
    (error,) = [bytes.fromhex(m["hex"]) for m in RECORDED["messages"] if m["kind"] == "error"]
    (reply,) = iter_messages(error)
    answer = parse_error(reply)
    assert answer.request_type == c.XFRM_MSG_DELPOLICY
    assert answer.error == -22 and answer.extack == "Invalid policy direction"


def replay_dump(request: RawMessage) -> bytes:
    """The recorded dump, renumbered to answer ``request``."""
    assert request.type == c.XFRM_MSG_GETPOLICY and request.flags & c.NLM_F_DUMP
    out = bytearray()
    for message in DUMP:
        renumbered = bytearray(message)
        struct.pack_into("=I", renumbered, 8, request.seq)
        out += renumbered
    return bytes(out)


def test_dump_spd_leaves_per_socket_policies_out_unless_asked() -> None:
    xs = XfrmSocket.from_socket(FakeXfrmKernel(lambda msg: 0, replay_dump))
    (served,) = xs.dump_spd()
    assert served.dir == c.XFRM_POLICY_OUT and served.templates[0].reqid == 1
    assert sorted(p.dir for p in xs.dump_spd(per_socket=True)) == [1, 3, 3, 4, 4]
