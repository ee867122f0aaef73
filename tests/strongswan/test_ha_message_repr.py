"""Key material never shows in repr() or str() of a decoded message."""

from __future__ import annotations

import pytest
from ha_recordings import datagrams

from appliance.strongswan import (
    SECRET_ATTRIBUTES,
    HaAttributeType,
    HaChunk,
    HaMessage,
    HaMessageType,
    decode,
)

pytestmark = pytest.mark.unit


def _leaks(secret: bytes, text: str) -> bool:
    return secret.hex() in text or repr(secret) in text or secret.hex(" ") in text


def test_no_secret_bytes_in_repr_or_str_of_recorded_messages() -> None:
    checked = 0
    for recorded in datagrams():
        message = decode(recorded.data)
        shown = [repr(message), str(message)] + [f"{a!r} {a!s}" for a in message.attributes]
        for attr in message.attributes:
            if isinstance(attr, HaChunk) and attr.type in SECRET_ATTRIBUTES:
                assert len(attr.data) >= 16
                assert not any(_leaks(attr.data, text) for text in shown), attr.type.name
                assert f"<{len(attr.data)} bytes hidden>" in repr(attr)
                checked += 1
    # the capture holds nonces, DH secrets and an old SK_d
    assert checked >= 10


def test_secret_attributes_are_the_key_material() -> None:
    a = HaAttributeType
    assert {a.NONCE_I, a.NONCE_R, a.SECRET, a.OLD_SKD, a.PSK, a.IV} == SECRET_ATTRIBUTES


def test_public_dh_values_are_shown() -> None:
    attr = HaChunk(HaAttributeType.LOCAL_DH, b"\x12\x34")
    assert "1234" in repr(attr)
    message = HaMessage(HaMessageType.IKE_ADD, (HaChunk(HaAttributeType.PSK, b"\x12\x34" * 8),))
    assert "1234" not in repr(message) and "1234" not in str(message)
