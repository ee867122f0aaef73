"""Datagrams recorded from the real plugin (tests/data/strongswan_ha/recordings.json)
decode to the messages the recorded steps should produce, and re-encode byte for byte."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

import pytest
from ha_recordings import datagrams, recording, step

from appliance.strongswan import (
    HaAttributeType,
    HaHost,
    HaIdentity,
    HaIkeSaId,
    HaMessage,
    HaMessageType,
    HaNumber,
    HaText,
    HaTrafficSelector,
    decode,
    encode,
    spi_from_little_endian_sender,
)

pytestmark = pytest.mark.unit

A = HaAttributeType
T = HaMessageType


def _messages(step_name: str) -> list[HaMessage]:
    return [decode(bytes.fromhex(h)) for h in step(step_name)["datagrams"]]


def _of_type(messages: list[HaMessage], message_type: HaMessageType) -> list[HaMessage]:
    return [m for m in messages if m.type is message_type]


def _spis(sa_id: HaIkeSaId | None) -> tuple[int, int]:
    assert sa_id is not None
    return sa_id.initiator_spi, sa_id.responder_spi


def test_every_recorded_datagram_decodes_and_re_encodes_to_the_same_bytes() -> None:
    recorded = datagrams()
    assert len(recorded) > 30
    for r in recorded:
        assert encode(decode(r.data)) == r.data, (r.step, r.index)


def test_the_capture_holds_every_message_type_but_ikev1s() -> None:
    seen = Counter(decode(r.data).type for r in datagrams())
    assert set(seen) == set(HaMessageType) - {T.IKE_IV}, seen
    assert seen[T.IKE_ADD] == 2  # the IKE SA and its rekeyed successor


def test_the_segment_steps_drop_and_take_segment_1() -> None:
    for name, message_type in (("segment_drop", T.SEGMENT_DROP), ("segment_take", T.SEGMENT_TAKE)):
        (message,) = _of_type(_messages(name), message_type)
        assert message.attributes == (HaNumber(A.SEGMENT, 1),)
    resync = _of_type(_messages("start"), T.RESYNC)
    assert resync and all(m.attributes == (HaNumber(A.SEGMENT, 1),) for m in resync)


def test_one_ike_sa_keeps_its_spis_from_add_to_delete() -> None:
    initiate = _messages("initiate")
    (add,) = _of_type(initiate, T.IKE_ADD)
    spis = _spis(add.ike_sa_id)
    assert all(s != 0 for s in spis)
    updates = _of_type(initiate, T.IKE_UPDATE)
    assert updates and all(_spis(m.ike_sa_id) == spis for m in updates)
    assert all(_spis(m.ike_sa_id) == spis for m in _of_type(initiate, T.CHILD_ADD))
    # the client's IKE rekey replaces it: the new IKE_ADD names it, then it is deleted
    rekey = _messages("rekey_ike_client")
    (new_add,) = _of_type(rekey, T.IKE_ADD)
    rekeyed = new_add.get(A.IKE_REKEY_ID)
    assert isinstance(rekeyed, HaIkeSaId) and _spis(rekeyed) == spis
    assert new_add.get(A.OLD_SKD) is not None and new_add.number(A.ALG_OLD_PRF) is not None
    assert [_spis(m.ike_sa_id) for m in _of_type(rekey, T.IKE_DELETE)] == [spis]
    new_spis = _spis(new_add.ike_sa_id)
    assert new_spis != spis
    terminate = _messages("terminate_ike_client")
    assert [_spis(m.ike_sa_id) for m in _of_type(terminate, T.IKE_DELETE)] == [new_spis]


def test_ike_spis_are_those_swanctl_shows() -> None:
    (add,) = _of_type(_messages("initiate"), T.IKE_ADD)
    spi_i, spi_r = _spis(add.ike_sa_id)
    listed = step("initiate")["gateway"]["list_sas"]
    assert f"{spi_i:016x}_i" in listed and f"{spi_r:016x}_r*" in listed


def test_ike_add_carries_what_the_config_asked_for() -> None:
    (add,) = _of_type(_messages("initiate"), T.IKE_ADD)
    assert add.number(A.IKE_VERSION) == 2
    assert add.ike_sa_id is not None and add.ike_sa_id.ike_version == 2
    assert add.ike_sa_id.initiator is False  # the gateway is the responder
    # aes128-sha256-modp2048: ENCR_AES_CBC 12 / 128 bits, AUTH_HMAC_SHA2_256_128 12,
    # PRF_HMAC_SHA2_256 5, MODP_2048 14
    assert [add.number(t) for t in (A.ALG_ENCR, A.ALG_ENCR_LEN, A.ALG_INTEG, A.ALG_PRF,
                                    A.ALG_DH)] == [12, 128, 12, 5, 14]  # fmt: skip
    secret = add.get(A.SECRET)
    assert secret is not None and len(secret.data) == 256  # type: ignore[union-attr]
    client = ipaddress.IPv4Address(recording()["client"]["address"])
    assert add.get(A.REMOTE_ADDR) == HaHost(A.REMOTE_ADDR, client, 500)


def test_ike_update_carries_identities_addresses_and_config_name() -> None:
    update = _of_type(_messages("initiate"), T.IKE_UPDATE)[-1]
    assert update.get(A.LOCAL_ID) == HaIdentity(A.LOCAL_ID, 2, b"gw.example")  # ID_FQDN
    assert update.get(A.REMOTE_ID) == HaIdentity(A.REMOTE_ID, 2, b"client.example")
    gw = ipaddress.IPv4Address(recording()["gateway"]["address"])
    local = update.get(A.LOCAL_ADDR)
    assert isinstance(local, HaHost) and local.address == gw and local.port in (500, 4500)
    assert update.get(A.CONFIG_NAME) == HaText(A.CONFIG_NAME, "gw")


def _ts(attr: object) -> tuple[str, str, int, int, int]:
    assert isinstance(attr, HaTrafficSelector)
    return (str(attr.from_address), str(attr.to_address), attr.protocol, attr.from_port,
            attr.to_port)  # fmt: skip


def test_child_add_carries_the_configured_traffic_selectors() -> None:
    children = {}
    for name in ("initiate", "add_child"):
        for m in _of_type(_messages(name), T.CHILD_ADD):
            config = m.get(A.CONFIG_NAME)
            assert isinstance(config, HaText)
            children[config.text] = m
    net, net2 = children["net"], children["net2"]
    assert [_ts(a) for a in net.get_all(A.LOCAL_TS)] == [
        ("198.51.100.0", "198.51.100.255", 0, 0, 65535)
    ]
    assert [_ts(a) for a in net.get_all(A.REMOTE_TS)] == [
        ("203.0.113.0", "203.0.113.255", 0, 0, 65535)
    ]
    assert [_ts(a) for a in net2.get_all(A.LOCAL_TS)] == [("192.0.2.1", "192.0.2.1", 6, 443, 443)]
    assert [_ts(a) for a in net2.get_all(A.REMOTE_TS)] == [
        ("203.0.113.128", "203.0.113.255", 6, 0, 65535)
    ]
    # net: aes128gcm16 (ENCR_AES_GCM_ICV16 20), no integrity, no ESN; net2: aes128-sha256, ESN
    assert (net.number(A.ALG_ENCR), net.get(A.ALG_INTEG), net.number(A.ESN)) == (20, None, 0)
    assert (net2.number(A.ALG_ENCR), net2.number(A.ALG_INTEG), net2.number(A.ESN)) == (12, 12, 1)
    # the initial CHILD SA comes with IKE_AUTH: no DH; net2 with CREATE_CHILD_SA and PFS
    assert net.get(A.SECRET) is None and net2.get(A.SECRET) is not None
    assert net.number(A.IPSEC_MODE) == net2.number(A.IPSEC_MODE)


def test_child_spis_are_those_of_the_kernel_sas_byte_swapped() -> None:
    (net,) = [m for m in _of_type(_messages("initiate"), T.CHILD_ADD)]
    xfrm = step("initiate")["gateway"]["xfrm_state"]
    kernel_spis = {int(s, 16) for s in re.findall(r"spi 0x([0-9a-f]{8})", xfrm)}
    for attr_type in (A.INBOUND_SPI, A.OUTBOUND_SPI):
        attr = net.get(attr_type)
        assert isinstance(attr, HaNumber)
        assert spi_from_little_endian_sender(attr) in kernel_spis
        assert attr.value not in kernel_spis


def test_rekeys_produce_child_adds_and_message_ids_from_the_right_side() -> None:
    client_rekey, gateway_rekey = _messages("rekey_child_client"), _messages("rekey_child_gateway")
    assert _of_type(client_rekey, T.CHILD_ADD) and _of_type(gateway_rekey, T.CHILD_ADD)
    # the gateway answers the client's CREATE_CHILD_SA, and initiates its own
    assert _of_type(client_rekey, T.IKE_MID_RESPONDER)
    assert _of_type(gateway_rekey, T.IKE_MID_INITIATOR)
    for m in _of_type(client_rekey + gateway_rekey, T.IKE_MID_RESPONDER):
        mid = m.number(A.MID)
        assert mid is not None and mid >= 1


def test_child_deletes_name_child_sas_announced_before() -> None:
    """A rekeyed CHILD SA is deleted a few seconds after its rekey (charon keeps it for
    delete_rekeyed_delay), under the IKE SA that owns it then; an IKE SA that is
    deleted takes its CHILD SAs without a CHILD_DELETE each."""
    adds: list[int] = []
    deletes: list[tuple[str, int]] = []
    for r in datagrams():
        m = decode(r.data)
        spi = m.number(A.INBOUND_SPI)
        if m.type is T.CHILD_ADD and spi is not None:
            adds.append(spi)
        elif m.type is T.CHILD_DELETE and spi is not None:
            assert spi in adds, r.step
            deletes.append((r.step, spi))
    # net, net2, net rekeyed, net2 rekeyed
    assert len(adds) == 4
    assert deletes == [
        ("rekey_child_gateway", adds[0]),
        ("rekey_ike_client", adds[1]),
        ("terminate_child_client", adds[3]),
    ]
    (new_add,) = _of_type(_messages("rekey_ike_client"), T.IKE_ADD)
    (late_delete,) = _of_type(_messages("rekey_ike_client"), T.CHILD_DELETE)
    assert late_delete.ike_sa_id == new_add.ike_sa_id
