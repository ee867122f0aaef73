"""The oracle's struct layouts match the kernel's x86_64 C layout of include/uapi/linux/xfrm.h."""

import struct

import pytest

from tests.xfrm.oracle import structs as s

pytestmark = pytest.mark.unit

# sizeof() of each struct as gcc lays it out on x86_64 (checked by hand against xfrm.h).
C_SIZES = {
    "xfrm_selector": 56,
    "xfrm_id": 24,
    "xfrm_lifetime_cfg": 64,
    "xfrm_lifetime_cur": 32,
    "xfrm_stats": 12,
    "xfrm_usersa_info_struct": 224,
    "xfrm_userpolicy_info_struct": 168,
    "xfrm_usersa_id_struct": 24,
    "xfrm_user_tmpl": 64,
    "xfrm_user_migrate": 76,
}

MESSAGE_SIZES = {
    s.xfrm_usersa_info: 224,
    s.xfrm_usersa_id: 24,
    s.xfrm_aevent_id: 48,
    s.xfrm_userspi_info: 232,
    s.xfrm_userpolicy_info: 168,
    s.xfrm_userpolicy_id: 64,
    s.xfrm_user_acquire: 280,
    s.xfrm_user_expire: 232,
    s.xfrm_user_polexpire: 176,
    s.xfrm_usersa_flush: 1,
    s.xfrm_flushpolicy: 0,
    s.xfrm_user_report: 60,
    s.xfrm_user_mapping: 64,
    s.xfrm_userpolicy_default: 3,
    s.xfrm_migrate_msg: 64,
}

ATTR_SIZES = {
    "xfrm_algo": 68,
    "xfrm_algo_auth": 72,
    "xfrm_algo_aead": 72,
    "xfrm_encap_tmpl": 24,
    "xfrm_user_sec_ctx": 8,
    "xfrm_lifetime_cur_nla": 32,
    "xfrm_replay_state": 12,
    "xfrm_replay_state_esn": 24,
    "xfrm_address": 16,
    "xfrm_userpolicy_type": 6,
    "xfrm_user_kmaddress": 40,
    "xfrm_mark": 8,
    "xfrm_address_filter": 36,
    "xfrm_user_offload": 8,
    "xfrm_usersa_info_nla": 224,
    "xfrm_userpolicy_info_nla": 168,
}


def fixed_size(fields: tuple[tuple[str, object], ...]) -> int:
    total = 0
    for _, fmt in fields:
        if isinstance(fmt, type):
            total += fmt.size  # type: ignore[attr-defined]
        else:
            total += struct.calcsize("=" + str(fmt).lstrip("<>!="))
    return total


@pytest.mark.parametrize("name,size", sorted(C_SIZES.items()))
def test_member_struct_has_kernel_size(name: str, size: int) -> None:
    assert getattr(s, name).size == size


@pytest.mark.parametrize(
    "cls,size", MESSAGE_SIZES.items(), ids=lambda v: getattr(v, "__name__", str(v))
)
def test_message_fixed_part_has_kernel_size(cls: type, size: int) -> None:
    assert fixed_size(cls.fields) == size


@pytest.mark.parametrize(
    "cls,size", MESSAGE_SIZES.items(), ids=lambda v: getattr(v, "__name__", str(v))
)
def test_empty_message_encodes_to_header_plus_fixed_part(cls: type, size: int) -> None:
    msg = cls()
    msg["attrs"] = []
    msg.encode()
    # nlmsg_len counts the padding to 4 bytes, as the kernel's nlmsg_end() does.
    assert msg["header"]["length"] == 16 + ((size + 3) & ~3)


@pytest.mark.parametrize("name,size", sorted(ATTR_SIZES.items()))
def test_attribute_struct_has_kernel_size(name: str, size: int) -> None:
    assert getattr(s.xfrm_attrs, name).fixed_size == size


def test_usersa_info_member_offsets_match_c() -> None:
    # offsetof() values from the C layout: sel 0, id 56, saddr 80, lft 96,
    # curlft 160, stats 192, seq 204, reqid 208, family 212, mode 214, flags 216.
    data = bytearray(224)
    info = s.xfrm_usersa_info_struct.zero()
    info.update(
        seq=0x11111111, reqid=0x22222222, family=0x3333, mode=0x44, replay_window=0x55, flags=0x66
    )
    info["id"]["spi"] = 0x01020304
    s.xfrm_usersa_info_struct.encode_into(data, 0, info)
    assert data[72:76] == b"\x01\x02\x03\x04"  # __be32 spi after 16-byte daddr
    assert data[204:208] == b"\x11" * 4
    assert data[208:212] == b"\x22" * 4
    assert data[212:214] == b"\x33" * 2
    assert data[214:217] == b"\x44\x55\x66"
    assert data[217:] == bytes(7)


def test_user_tmpl_pads_after_family_and_optional() -> None:
    tmpl = s.xfrm_user_tmpl.zero()
    tmpl.update(family=0xAAAA, reqid=0xBBBBBBBB, optional=1, aalgos=0xCCCCCCCC)
    data = bytearray()
    s.xfrm_user_tmpl.encode_into(data, 0, tmpl)
    assert data[24:26] == b"\xaa\xaa" and data[26:28] == b"\0\0"
    assert data[44:48] == b"\xbb" * 4  # reqid after the 4-aligned saddr at 28
    assert data[50] == 1 and data[51] == 0
    assert data[52:56] == b"\xcc" * 4


def test_every_kernel_attribute_is_mapped_in_order() -> None:
    from appliance.xfrm import constants as c

    names = {t: n for t, n, _ in s.xfrm_attrs.nla_map if not n.endswith(s.RAW_SUFFIX)}
    for index, name in enumerate(c.XFRMA_NAMES):
        assert names[index] == name
        assert getattr(c, name) == index


def test_unknown_attribute_survives_decode_and_encode() -> None:
    msg = s.xfrm_usersa_flush()
    msg["proto"] = 50
    msg["attrs"] = [("XFRMA_99", b"\x01\x02\x03")]
    msg.encode()
    data = bytes(msg.data)
    back = s.xfrm_usersa_flush(data)
    back.decode()
    assert [(a.name, a.value) for a in back["attrs"]] == [("XFRMA_99", b"\x01\x02\x03")]
